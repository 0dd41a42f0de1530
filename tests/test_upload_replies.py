"""What a target's reply can do to the server (issue 11, findings 5 and 8), and the upload queue.

Finding 8: a reply is read at most 64 KiB, however large the target says it is. Finding 5
(read channel): the 502 carries the upload status and a sanitized S3 error code, never the
target's text. Refused URLs are 422 before any work. Upload slots, write-ahead spooling and
the error paths of the queue (finding 2 and 4, in-process; the live-server tests are in
test_upload_server.py).
"""

from __future__ import annotations

import logging
import threading
import tracemalloc
from pathlib import Path

import orjson
import pytest

from neuronpedia_graph.errors import InvalidField, UploadFailed
from neuronpedia_graph.upload import MAX_REPLY_BYTES, UploadError, UploadPolicy, put_graph
from neuronpedia_graph.upload_guard import UploadGuard
from neuronpedia_graph.upload_queue import UploadQueue, UploadsBusy
from tests.fault_targets import (
    big_reply_target,
    closed_port_url,
    error_document_target,
    flaky_target,
    gated_target,
)
from tests.test_upload_guard import INTERNAL_URLS

LOCAL = UploadGuard("127.0.0.1")
FAST = UploadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=2, backoff_factor=0.01)
HUGE = 200 * 1000 * 1000  # the 200 MB reply of the finding
SIGNATURE = "X-Amz-Signature=5ecret5ecret5ecret"
GRAPH = b'{"metadata": {"slug": "q"}, "nodes": []}'


def graph_body(**overrides):
    body = {"prompt": "The city of Paris is in", "model_id": "demo", "slug_identifier": "replies"}
    body.update(overrides, max_feature_nodes=200)
    return body


def traced_peak(fn):
    """(result or exception, peak bytes Python allocated while fn ran, all threads)."""
    tracemalloc.start()
    try:
        try:
            outcome = fn()
        except Exception as exc:  # the caller asserts on it
            outcome = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


# --- finding 8: replies are read at most 64 KiB ---------------------------------------------


@pytest.mark.parametrize("status", [200, 403, 500])
def test_a_200_mb_reply_is_never_read_whole(status: int) -> None:
    with big_reply_target(HUGE, status) as target:
        outcome, peak = traced_peak(
            lambda: put_graph(LOCAL.check(target.url), GRAPH, compressed=False, policy=FAST)
        )

    assert peak < 4 << 20, f"{peak} bytes allocated for a {HUGE}-byte reply"
    assert target.bytes_sent < HUGE  # it stopped writing because the upload hung up
    if status == 200:
        assert outcome.status == 200
    else:
        assert isinstance(outcome, UploadError)
        assert (outcome.status, outcome.code) == (status, "HugeReply")  # found in the first 64 KiB
        assert outcome.attempts == (3 if status == 500 else 1)  # retries read no more either


def test_a_200_mb_error_reply_costs_the_service_no_memory(client, auth) -> None:
    """Over HTTP: before the fix the whole reply was read (300 MB RSS in the finding)."""
    with big_reply_target(HUGE, 403) as target:
        res, peak = traced_peak(
            lambda: client.post(
                "/generate-graph", json=graph_body(signed_url=target.url), headers=auth
            )
        )

    assert res.status_code == 502, res.get_data(as_text=True)
    assert res.json["upload_status"] == 403
    assert peak < 32 << 20, f"{peak} bytes allocated while the reply was {HUGE} bytes"
    assert client.post("/forward-pass", json={"prompt": "1 2 3"}, headers=auth).status_code == 200


# --- finding 5: the 502 is no read channel --------------------------------------------------

# Odd characters a target might send: a line break to forge log lines, markup, RTL override.
LEAKY_MESSAGE = "db password=hunter2\nFORGED log line <script>alert(1)</script> \u202e" + "y" * 5000


def s3_error(code: str, message: str = LEAKY_MESSAGE) -> bytes:
    text = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    return (
        text.replace("<script>", "&lt;script&gt;")
        .replace("</script>", "&lt;/script&gt;")
        .encode("utf-8", "surrogatepass")
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDenied", "AccessDenied"),
        ("A" * 64, "A" * 64),
        ("A" * 65, None),
        ("Access Denied", None),
        ("Access-Denied", None),
        ("hunter2&lt;b&gt;", None),
        ("Zugriff\u00e4", None),
        ("", None),
    ],
)
def test_502_has_only_the_status_and_a_sanitized_code(client, auth, code, expected, caplog) -> None:
    document = s3_error(code)
    with (
        error_document_target(403, document, reason="Forbidden hunter2") as target,
        caplog.at_level(logging.WARNING),
    ):
        res = client.post(
            "/generate-graph",
            json=graph_body(signed_url=f"{target.url}?{SIGNATURE}"),
            headers=auth,
        )

    assert res.status_code == 502
    body = res.json
    assert set(body) == {"error", "spool_file", "upload_status", "upload_code", "request_id"}
    assert body["upload_status"] == 403
    assert body["upload_code"] == expected
    suffix = expected or "(no S3 error code)"
    assert body["error"] == f"Failed to upload graph: 403 {suffix}"
    text = res.get_data(as_text=True)
    assert "hunter2" not in text and "script" not in text and "yyyy" not in text
    assert "5ecret" not in text and "5ecret" not in caplog.text
    # The operator still sees what the target said, truncated and quoted, in the log.
    assert "hunter2" in caplog.text and "y" * 300 not in caplog.text
    assert "\nFORGED" not in caplog.text  # quoted: the line break cannot start a log line
    assert client.post("/forward-pass", json={"prompt": "1 2 3"}, headers=auth).status_code == 200


def test_retried_5xx_error_text_is_not_echoed(client, auth) -> None:
    with flaky_target(fail_times=10, status=500) as target:
        res = client.post("/generate-graph", json=graph_body(signed_url=target.url), headers=auth)

    assert res.status_code == 502
    assert res.json["error"] == "Failed to upload graph: 500 InternalError after 4 attempts"
    assert "Please try again" not in res.get_data(as_text=True)  # the target's <Message>


def test_unreachable_target_detail_is_local_facts_only(client, auth) -> None:
    res = client.post(
        "/generate-graph", json=graph_body(signed_url=closed_port_url()), headers=auth
    )

    assert res.status_code == 502
    assert res.json["error"] == (
        "Failed to upload graph: connection failed after 4 attempts (Connection refused)"
    )
    assert res.json["upload_status"] is None and res.json["upload_code"] is None


# --- finding 5: refused URLs are 422 before any work ----------------------------------------


@pytest.mark.parametrize("url", [u for u in INTERNAL_URLS if "127.0.0.1" not in u])
def test_internal_targets_get_422_before_any_work(client, auth, service, url: str) -> None:
    # The model is busy: a request that got as far as the model would be answered 503.
    # (127.0.0.1 itself is left out: these tests' server allows it explicitly.)
    with service.lock.hold():
        res = client.post(
            "/generate-graph", json=graph_body(signed_url=f"{url}?{SIGNATURE}"), headers=auth
        )

    assert res.status_code == 422, res.get_data(as_text=True)
    assert res.json["fields"] == ["signed_url"]
    assert res.json["error"].startswith("Invalid request: signed_url: host ")
    assert "5ecret" not in res.get_data(as_text=True)


def test_loopback_in_decimal_form_never_reaches_the_target(client, auth) -> None:
    """The finding uploaded to http://2130706433:port/ (127.0.0.1, which these tests allow)."""
    with flaky_target(fail_times=0) as target:
        port = target.url.split(":")[2].split("/")[0]
        for host in ("2130706433", "0x7f000001", "0177.0.0.1", "127.1", "[::ffff:7f00:1]"):
            res = client.post(
                "/generate-graph",
                json=graph_body(signed_url=f"http://{host}:{port}/bucket/graph.json"),
                headers=auth,
            )
            if host.startswith("["):  # IPv4-mapped 127.0.0.1 is 127.0.0.1: allowed here
                assert res.status_code == 200, res.get_data(as_text=True)
            else:
                assert res.status_code == 422, (host, res.get_data(as_text=True))
                assert "non-standard form" in res.json["error"]
    assert len(target.requests) == 1


def test_refused_url_in_a_runpod_job_is_a_422_output(service) -> None:
    from neuronpedia_graph.schemas import GraphRequest

    request = GraphRequest.model_validate(graph_body(signed_url="http://10.0.0.1/b/k"))
    with pytest.raises(InvalidField) as info:
        service.generate_graph(request, lock_timeout=1.0)
    assert info.value.status == 422 and "not an allowed upload host" in info.value.message


# --- the queue: slots, write-ahead spool, error paths ---------------------------------------


def make_queue(tmp_path: Path, workers: int = 1, spool: Path | None = None) -> UploadQueue:
    return UploadQueue(LOCAL, FAST, spool or tmp_path / "spool", workers)


def test_slots_are_reserved_before_work_and_given_back_on_every_path(tmp_path) -> None:
    queue = make_queue(tmp_path, workers=1)
    with flaky_target(fail_times=0) as target:
        ticket = queue.admit(target.url)
        with pytest.raises(UploadsBusy) as info:
            queue.admit(target.url)
        assert info.value.status == 503 and "all 1 upload slots" in info.value.message
        with pytest.raises(RuntimeError), ticket:  # the graph failed before its upload
            raise RuntimeError("attribution failed")
        ticket = queue.admit(target.url)  # the slot came back
        with ticket:
            queue.deliver(ticket, GRAPH, slug="s", compressed=False)
        ticket = queue.admit(target.url)  # ...and after a successful upload
        ticket.release()
        ticket.release()  # idempotent: still exactly one slot
        queue.admit(target.url).release()
    with pytest.raises(UploadsBusy):
        held = queue.admit(target.url)
        queue.admit(target.url, timeout=0.05)  # waiting callers (Runpod) time out too
    held.release()
    assert queue.admit(None).target is None  # direct responses need no slot


def test_spool_file_exists_during_the_upload_and_goes_after_success(tmp_path, caplog) -> None:
    queue = make_queue(tmp_path)
    spool = tmp_path / "spool"
    with gated_target() as target, caplog.at_level(logging.INFO):
        ticket = queue.admit(target.url + "?" + SIGNATURE)
        done: list = []
        worker = threading.Thread(
            target=lambda: done.append(queue.deliver(ticket, GRAPH, slug="wal", compressed=False))
        )
        worker.start()
        assert target.wait_for_arrival(10)
        (during,) = spool.iterdir()
        assert during.read_bytes() == GRAPH
        assert queue.in_flight() == [("wal", target.url, during)]
        target.release(200)
        worker.join(10)

    assert done and done[0].status == 200
    assert list(spool.iterdir()) == []
    assert queue.in_flight() == []
    assert f"graph wal written to spool file {during}" in caplog.text
    assert f"graph wal uploaded to {target.url}; removed its spool file {during}" in caplog.text
    assert "5ecret" not in caplog.text


def test_failed_upload_keeps_the_write_ahead_file(tmp_path, caplog) -> None:
    queue = make_queue(tmp_path)
    with caplog.at_level(logging.INFO), pytest.raises(UploadFailed) as info:
        queue.deliver(queue.admit(closed_port_url()), GRAPH, slug="kept", compressed=False)

    (kept,) = (tmp_path / "spool").iterdir()
    assert info.value.extra["spool_file"] == kept.name and kept.read_bytes() == GRAPH
    assert f"graph kept kept in spool file {kept}: upload failed (connection failed" in caplog.text


def test_unwritable_spool_does_not_stop_a_good_upload(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    queue = make_queue(tmp_path, spool=blocker / "spool")
    with flaky_target(fail_times=0) as target, caplog.at_level(logging.INFO):
        result = queue.deliver(queue.admit(target.url), GRAPH, slug="nospool", compressed=False)

    assert result.status == 200 and target.requests[0].body == GRAPH
    assert "graph nospool could not be written to the spool directory" in caplog.text
    assert "graph nospool uploaded to" in caplog.text


def test_unwritable_spool_and_failed_upload_says_the_graph_is_lost(tmp_path, caplog) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    queue = make_queue(tmp_path, spool=blocker / "spool")
    with caplog.at_level(logging.INFO), pytest.raises(UploadFailed) as info:
        queue.deliver(queue.admit(closed_port_url()), GRAPH, slug="lost", compressed=False)

    assert info.value.extra["spool_file"] is None
    assert "could not be kept on the server either" in info.value.message
    assert "graph lost LOST: upload failed" in caplog.text
    queue.admit(closed_port_url()).release()  # the slot came back


def test_rebinding_between_admission_and_upload_is_refused_and_spooled(tmp_path) -> None:
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    guard = UploadGuard("*", resolver=lambda host, port: next(answers))
    guard.allowed = UploadGuard("*, 127.0.0.1").allowed  # 127.0.0.1 allowed, metadata not
    queue = UploadQueue(guard, FAST, tmp_path / "spool", 1)

    ticket = queue.admit("http://s3.rebind.invalid:9/b/k")  # first answer: allowed
    with pytest.raises(UploadFailed) as info:
        queue.deliver(ticket, GRAPH, slug="rebound", compressed=False)

    assert "upload target refused" in info.value.message
    assert "cloud metadata address" in info.value.message
    (kept,) = (tmp_path / "spool").iterdir()
    assert kept.read_bytes() == GRAPH


def test_reply_limit_is_64_kib() -> None:
    assert MAX_REPLY_BYTES == 64 * 1024


def test_service_upload_result_is_returned_to_the_caller(client, auth, s3) -> None:
    url = s3.presign_put("graphs/replies-own.json")
    res = client.post(
        "/generate-graph", json=graph_body(signed_url=url, slug_identifier="own"), headers=auth
    )

    assert res.status_code == 200, res.get_data(as_text=True)
    assert res.json["url"] == url.split("?")[0]
    stored = s3.client.get_object(Bucket=s3.bucket, Key="graphs/replies-own.json")
    assert orjson.loads(stored["Body"].read())["metadata"]["slug"] == "own"
