"""End to end: the real gunicorn server on the demo model, talking HTTP, uploading to real S3.

These are the paths the web app takes. Each failure case is followed by a successful request,
and the server log is checked for leaked secrets at the end.
"""

from __future__ import annotations

import gzip
import threading
import time
from functools import partial
from pathlib import Path

import orjson
import pytest
import requests

from tests import conftest
from tests.conftest import SECRET, Api
from tests.fault_targets import closed_port_url, flaky_target, hanging_target
from tests.helpers import assert_still_serving, without_create_time

graph_body = partial(conftest.graph_body, slug_identifier="e2e")


def post(live_server, path, body, timeout=120, **kwargs):
    return Api(live_server).post(path, body, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def direct_doc(live_server):
    res = post(live_server, "/generate-graph", graph_body())
    assert res.status_code == 200, res.text
    assert res.headers["Content-Type"].startswith("application/json")
    assert "attribute;dur=" in res.headers["Server-Timing"]
    return without_create_time(orjson.loads(res.content))


def test_health_over_http(live_server):
    res = requests.get(f"{live_server.base}/health", timeout=5)
    assert res.status_code == 200 and res.json()["model_id"] == "demo"
    assert requests.get(f"{live_server.base}/check-busy", timeout=5).json() == {"busy": False}


def test_auth_over_http(live_server):
    res = requests.post(f"{live_server.base}/generate-graph", json=graph_body(), timeout=10)
    assert res.status_code == 401
    res = requests.post(
        f"{live_server.base}/generate-graph",
        json=graph_body(),
        timeout=10,
        headers={"x-secret-key": SECRET + "x"},
    )
    assert res.status_code == 403


@pytest.mark.parametrize("compress", [False, True])
def test_upload_to_real_s3_matches_direct_mode(live_server, s3, direct_doc, compress):
    key = f"graphs/e2e-{int(compress)}.json"
    url = s3.presign_put(key, content_encoding="gzip" if compress else None)
    res = post(live_server, "/generate-graph", graph_body(signed_url=url, compress=compress))
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["success"] == "Graph uploaded" and body["compressed"] is compress
    assert body["url"] == url.split("?")[0] and "Signature" not in res.text
    stored = s3.client.get_object(Bucket=s3.bucket, Key=key)
    assert stored["ContentType"] == "application/json"
    raw = stored["Body"].read()
    assert len(raw) == body["bytes"]
    if compress:
        assert stored["ContentEncoding"] == "gzip"
        raw = gzip.decompress(raw)
    else:
        assert not stored.get("ContentEncoding")
    assert without_create_time(orjson.loads(raw)) == direct_doc


def test_tampered_url_gives_502_and_keeps_the_graph(live_server, s3, tmp_path):
    url = s3.presign_put("graphs/tampered.json")
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    res = post(
        live_server, "/generate-graph", graph_body(signed_url=tampered, slug_identifier="tampered")
    )
    assert res.status_code == 502
    body = res.json()
    assert body["error"].startswith("Failed to upload graph: 403 ")
    assert "SignatureDoesNotMatch" in body["error"] or "AccessDenied" in body["error"]
    spool = Path(live_server.log_path).parent / "spool" / body["spool_file"]
    assert spool.is_file() and orjson.loads(spool.read_bytes())["metadata"]["slug"] == "tampered"
    assert_still_serving(live_server)


def test_expired_url_gives_422_before_any_work(live_server, s3):
    url = s3.presign_put("graphs/expired.json", expires=1)
    time.sleep(2)
    res = post(live_server, "/generate-graph", graph_body(signed_url=url, compress=True))
    assert res.status_code == 422 and "the presigned URL expired at" in res.json()["error"]
    assert "spool_file" not in res.json()
    assert_still_serving(live_server)


def test_flaky_target_succeeds_after_retries(live_server):
    with flaky_target(fail_times=2, status=500) as target:
        res = post(
            live_server,
            "/generate-graph",
            graph_body(signed_url=target.url + "?X-Amz-Signature=abc"),
        )
    assert res.status_code == 200, res.text
    assert len(target.requests) == 3
    for req in target.requests:
        assert "content-length" in req.headers and "transfer-encoding" not in req.headers
    assert orjson.loads(target.requests[-1].body)["metadata"]["slug"] == "e2e"


def test_hanging_target_gives_502_within_timeout(live_server):
    with hanging_target() as target:
        # The client's own timeout is the guard: a server without an upload read timeout would
        # hang on this target forever (its read timeout here is 2 s).
        res = post(live_server, "/generate-graph", graph_body(signed_url=target.url), timeout=90)
    assert res.status_code == 502 and "timed out" in res.json()["error"]
    assert_still_serving(live_server)


def test_unreachable_target_gives_502(live_server):
    res = post(live_server, "/generate-graph", graph_body(signed_url=closed_port_url()))
    assert res.status_code == 502 and "spool_file" in res.json()
    assert_still_serving(live_server)


def test_concurrent_graphs_one_busy_and_check_busy_answers(live_server):
    results: dict[str, requests.Response] = {}

    def fire() -> None:
        results["first"] = post(live_server, "/generate-graph", graph_body(), timeout=300)

    assert live_server.hold is not None
    with live_server.hold.hold("generate-graph") as held:
        first = threading.Thread(target=fire)
        first.start()
        held.wait()  # the first graph holds the model until the block ends
        busy = requests.get(f"{live_server.base}/check-busy", timeout=5).json()
        second = post(live_server, "/generate-graph", graph_body())
    first.join(timeout=300)
    assert busy == {"busy": True}
    assert second.status_code == 503 and int(second.headers["Retry-After"]) > 0
    assert second.json()["error"] == "Server busy, please try again later."
    assert results["first"].status_code == 200
    assert requests.get(f"{live_server.base}/check-busy", timeout=5).json() == {"busy": False}
    assert post(live_server, "/generate-graph", graph_body()).status_code == 200


def test_server_log_has_no_secrets(live_server, s3):
    url = s3.presign_put("graphs/logcheck.json")
    assert post(live_server, "/generate-graph", graph_body(signed_url=url)).status_code == 200
    log = live_server.log()
    query = url.split("?", 1)[1]
    signature = query.split("X-Amz-Signature=")[1].split("&")[0]
    assert SECRET not in log and signature not in log and "X-Amz-Credential" not in log
    assert "graph slug=e2e" in log and "attribute_ms=" in log
