"""README promises that no other test pinned: each one here fails if the promise breaks.

Defaults written into graphs, number types, the CLI's configuration error, a real 500, the
metrics (names and amounts), Server-Timing on every POST, and credential headers kept out of
the access log.
"""

from __future__ import annotations

import base64
import gzip
import re
import time
import uuid

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, REPO, SECRET, Api, graph_body, steer_body
from tests.fault_targets import closed_port_url, flaky_target
from tests.helpers import assert_still_serving, run_cli

# A graph as small as the demo model makes it: these tests read metadata and headers.
SMALL = {"max_feature_nodes": 20}


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(sample name, sorted labels): value}."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# ------------------------------------------------------------------------ graph defaults
def test_default_creator_name(client, auth):
    res = client.post("/generate-graph", json=graph_body(**SMALL), headers=auth)
    assert res.status_code == 200, res.get_json()
    assert orjson.loads(res.data)["metadata"]["info"]["creator_name"] == "Anonymous (CT)"


# ---------------------------------------------------------------------------- integers
@pytest.fixture(scope="module")
def uncapped_client(demo_loaded, demo_settings):
    """The app with the default MAX_FEATURE_NODES (10000), so 5000 is inside every bound."""
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.service import GraphService
    from neuronpedia_graph.settings import Settings

    default_cap = Settings.model_fields["max_feature_nodes"].default
    settings = demo_settings.model_copy(update={"max_feature_nodes": default_cap})
    return create_app(GraphService(demo_loaded, settings), SECRET).test_client()


def test_an_integral_float_is_an_integer(uncapped_client):
    """`5000.0` is accepted (JavaScript cannot tell it from 5000) and used as the integer."""
    res = uncapped_client.post(
        "/generate-graph", json=graph_body(max_feature_nodes=5000.0, batch_size=48.0), headers=AUTH
    )
    assert res.status_code == 200, res.get_json()
    settings = orjson.loads(res.data)["metadata"]["generation_settings"]
    assert settings["max_feature_nodes"] == 5000 and type(settings["max_feature_nodes"]) is int
    assert settings["batch_size"] == 48 and type(settings["batch_size"]) is int
    res = uncapped_client.post(
        "/forward-pass", json={"prompt": "1 2 3", "max_n_logits": 2.0}, headers=AUTH
    )
    assert res.status_code == 200 and len(res.get_json()["salient_logits"]) <= 2


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate-graph", graph_body(batch_size=48.5), "batch_size"),
        ("/generate-graph", graph_body(max_feature_nodes=5000.5), "max_feature_nodes"),
        ("/forward-pass", {"prompt": "1 2 3", "max_n_logits": 2.5}, "max_n_logits"),
        ("/steer", steer_body(n_tokens=3.5), "n_tokens"),
    ],
    ids=["batch_size", "max_feature_nodes", "max_n_logits", "n_tokens"],
)
def test_a_fractional_number_is_not_an_integer(uncapped_client, path, body, field):
    res = uncapped_client.post(path, json=body, headers=AUTH)
    assert res.status_code == 422, res.get_json()
    error = res.get_json()["error"]
    assert error.startswith("Invalid request: ") and field in error and "integer" in error
    assert_still_serving(uncapped_client)


# --------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--threads", "1"], {}, "--threads (given '1')"),
        ([], {"GZIP_LEVEL": "11"}, "GZIP_LEVEL (given '11')"),
    ],
    ids=["flag", "environment"],
)
def test_an_invalid_setting_stops_the_start_with_one_line_and_exit_2(tmp_path, args, env, named):
    result = run_cli(
        "demo", *args, "--env-file", str(tmp_path / "none.env"), env={"SECRET": "x", **env}
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid configuration: {named}: ")
    assert "Traceback" not in result.stderr and result.stdout == ""


# ------------------------------------------------------------------------- a real 500
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate-graph", graph_body(**SMALL)),
        ("/forward-pass", {"prompt": "1 2 3"}),
        ("/steer", steer_body()),
    ],
    ids=["generate-graph", "forward-pass", "steer"],
)
def test_a_bug_is_a_json_500_with_its_request_id_and_a_logged_traceback(live_server, path, body):
    """A fault injected where the operation holds the model stands in for a real bug."""
    assert live_server.hold is not None
    request_id = f"bug-{uuid.uuid4().hex[:12]}"
    live_server.hold.fail(path.lstrip("/"))
    res = Api(live_server).post(path, body, headers={"x-request-id": request_id})
    assert res.status_code == 500
    assert res.headers["Content-Type"] == "application/json"
    assert res.headers["X-Request-Id"] == request_id
    assert res.json() == {
        "error": "Internal server error (InjectedFault)",
        "request_id": request_id,
    }
    # The log keeps what the reply does not: the traceback, under the request id.
    log = _wait_for(live_server, f"[{request_id}] neuronpedia_graph.api: unhandled error")
    after = log[log.index(f"[{request_id}] neuronpedia_graph.api: unhandled error") :]
    assert "Traceback (most recent call last):" in after
    assert "testkit.hold.InjectedFault: injected fault at" in after
    # The model was released: not busy, and the same request now succeeds.
    assert requests.get(live_server.url("/check-busy"), timeout=10).json() == {"busy": False}
    assert Api(live_server).post(path, body).status_code == 200
    assert_still_serving(live_server)


def _wait_for(server, text: str, timeout: float = 30) -> str:
    """The server log once it holds `text` (log lines are written by another process)."""
    deadline = time.monotonic() + timeout
    while text not in (log := server.log()):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log[-3000:]}"
        time.sleep(0.05)
    return log


# ----------------------------------------------------------------------------- metrics
def test_every_metric_the_api_reference_lists_is_served_and_no_other(client):
    reference = (REPO / "docs" / "api.md").read_text()
    bullet = next(line for line in reference.split("\n- ") if line.startswith("`/metrics` →"))
    documented = set(re.findall(r"`(npg_[a-z_]+)`", bullet))
    assert len(documented) == 5
    text = client.get("/metrics").data.decode()
    # prometheus_client names a counter's family without its `_total` suffix, and adds a
    # `_created` timestamp family per labelled counter or histogram.
    served = {
        family.name
        for family in text_string_to_metric_families(text)
        if family.name.startswith("npg_") and not family.name.endswith("_created")
    }
    assert {name.removesuffix("_total") for name in documented} == served


def test_metrics_move_by_the_right_amount(service):
    """A fresh app (its own registry) and a known sequence of requests."""
    from neuronpedia_graph.api import create_app

    client = create_app(service, SECRET).test_client()
    direct = client.post("/generate-graph", json=graph_body(**SMALL), headers=AUTH)
    assert direct.status_code == 200
    with flaky_target(fail_times=0) as target:
        body = graph_body(**SMALL, signed_url=target.url, compress=True)
        uploaded = client.post("/generate-graph", json=body, headers=AUTH)
    assert uploaded.status_code == 200, uploaded.get_json()
    failed = client.post(
        "/generate-graph", json=graph_body(**SMALL, signed_url=closed_port_url()), headers=AUTH
    )
    assert failed.status_code == 502
    for _ in range(2):
        assert client.post("/forward-pass", json={"prompt": "1 2"}, headers=AUTH).status_code == 200
    assert client.post("/forward-pass", json={}, headers=AUTH).status_code == 422
    assert client.post("/forward-pass", json={"prompt": "1 2"}).status_code == 401

    first = metric_samples(client.get("/metrics").data.decode())
    with service.lock.hold():
        during = metric_samples(client.get("/metrics").data.decode())
    after = metric_samples(client.get("/metrics").data.decode())

    def requests_total(samples, endpoint: str, status: str) -> float:
        key = ("npg_requests_total", (("endpoint", endpoint), ("status", status)))
        return samples.get(key, 0.0)

    assert requests_total(first, "/generate-graph", "200") == 2
    assert requests_total(first, "/generate-graph", "502") == 1
    assert requests_total(first, "/forward-pass", "200") == 2
    assert requests_total(first, "/forward-pass", "422") == 1
    assert requests_total(first, "/forward-pass", "401") == 1
    # A scrape is counted once it is answered: the first sees none, the third two.
    assert requests_total(first, "/metrics", "200") == 0
    assert requests_total(after, "/metrics", "200") == 2
    assert first[("npg_uploads_total", (("outcome", "ok"),))] == 1
    assert first[("npg_uploads_total", (("outcome", "failed"),))] == 1
    # Phases of the two delivered graphs (the failed upload's graph is not observed).
    timings = [_server_timing(direct), _server_timing(uploaded)]
    for phase in ("tokenize", "attribute", "prune", "build_json", "compress", "upload"):
        expected = [t[phase] for t in timings if phase in t]
        count = first[("npg_graph_phase_seconds_count", (("phase", phase),))]
        total = first[("npg_graph_phase_seconds_sum", (("phase", phase),))]
        assert count == len(expected) == (2 if phase not in ("compress", "upload") else 1)
        # Server-Timing shows each phase to 0.1 ms.
        assert total == pytest.approx(sum(expected) / 1000, abs=1e-4 * len(expected))
    # Document sizes before compression: the direct reply, and the upload's gzip'd body.
    json_bytes = len(direct.data) + len(gzip.decompress(target.requests[-1].body))
    assert first[("npg_graph_json_bytes_count", ())] == 2
    assert first[("npg_graph_json_bytes_sum", ())] == json_bytes
    assert (first[("npg_busy", ())], during[("npg_busy", ())], after[("npg_busy", ())]) == (0, 1, 0)


def _server_timing(res) -> dict[str, float]:
    """{phase: ms} from a reply's Server-Timing header."""
    pairs = (item.split(";dur=") for item in res.headers["Server-Timing"].split(", "))
    return {name: float(ms) for name, ms in pairs}


# ------------------------------------------------------------------------ Server-Timing
@pytest.mark.parametrize(
    ("path", "body", "phases"),
    [
        ("/forward-pass", {"prompt": "1 2 3"}, ["tokenize"]),
        ("/steer", steer_body(), ["tokenize", "steer"]),
        ("/parse-chat-prompt", {"prompt": "1 2 3"}, ["tokenize"]),
    ],
    ids=["forward-pass", "steer", "parse-chat-prompt"],
)
def test_every_successful_post_has_server_timing(api, path, body, phases):
    res = api.post(path, body)
    assert res.status_code == 200, res.text
    timing = _server_timing(res)
    assert list(timing)[: len(phases)] == phases and all(ms >= 0 for ms in timing.values())


# ------------------------------------------------------------------------- access log
def test_credential_headers_never_reach_the_access_log(live_server):
    """Authorization (Basic, whose user gunicorn's default access line would show, and
    Bearer) and Cookie: the request is logged, the credentials are not."""
    token = f"CRED{uuid.uuid4().hex}"
    basic = base64.b64encode(f"{token}user:{token}pass".encode()).decode()
    marker = f"access-{uuid.uuid4().hex[:8]}"
    for authorization in (f"Basic {basic}", f"Bearer {token}bearer"):
        res = requests.post(
            live_server.url("/forward-pass"),
            json={"prompt": "1 2 3"},
            headers={
                **AUTH,
                "Authorization": authorization,
                "Cookie": f"session={token}cookie",
                "User-Agent": marker,
            },
            timeout=60,
        )
        assert res.status_code == 200
    log = live_server.log()
    deadline = time.monotonic() + 30
    while log.count(marker) < 2:
        assert time.monotonic() < deadline, "access log lines never written"
        time.sleep(0.05)
        log = live_server.log()
    lines = [line for line in log.splitlines() if marker in line]
    assert len(lines) == 2 and all('"POST /forward-pass HTTP/1.1" 200' in line for line in lines)
    assert token not in log and SECRET not in log
