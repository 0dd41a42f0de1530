"""Slow uploads and SIGTERM against the real gunicorn server (issue 11, findings 2, 4 and 5).

Each test that changes the server's configuration, or stops it, starts its own
`python -m neuronpedia_graph demo` (same launch as conftest's live_server). Timeouts on the
client side are guards against hangs, never measurements: the failure modes they catch are
indefinite waits (a request thread stuck for the whole 120 s upload read timeout).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import orjson
import pytest
import requests

from testkit import live
from tests import conftest
from tests.conftest import LOCAL_UPLOAD_HOSTS, SECRET, Api, LiveServer
from tests.fault_targets import flaky_target, gated_target

# No answer from /health within this long means a starved server: the uploads it waits behind
# hang for 120 s. A healthy server answers in milliseconds, even on a loaded CI machine.
HANG_GUARD_S = 5
GUNICORN_GRACEFUL_S = 30  # __main__.serve_gunicorn


@contextlib.contextmanager
def start_server(workdir: Path, **env: str) -> Iterator[LiveServer]:
    """The product as deployed, with extra environment; stopped (whole group) on exit."""
    settings = {
        "UPLOAD_BACKOFF": "0.01",
        "UPLOAD_ALLOWED_HOSTS": LOCAL_UPLOAD_HOSTS,
        "UPLOAD_READ_TIMEOUT": "120",
        "MAX_FEATURE_NODES": "2000",
        **env,
    }
    with live.start_server(workdir, settings, secret=SECRET, new_session=True) as server:
        yield server


graph_body = partial(conftest.graph_body, slug_identifier="slow")


def post(server: LiveServer, path: str, body: dict, timeout: float = 180) -> requests.Response:
    return Api(server).post(path, body, timeout=timeout)


def in_background(fn) -> tuple[threading.Thread, list]:
    """Run fn in a thread; its return value or exception lands in the returned list."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(fn())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_log(server: LiveServer, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in server.log():
            return
        time.sleep(0.1)
    pytest.fail(f"{text!r} never appeared in the server log:\n{server.log()[-3000:]}")


# --- finding 2: slow uploads do not starve the server --------------------------------------


@pytest.fixture(scope="module")
def slow_upload_server(tmp_path_factory) -> Iterator[LiveServer]:
    with start_server(
        tmp_path_factory.mktemp("slow-uploads"), THREADS="2", UPLOAD_WORKERS="2"
    ) as server:
        yield server


def test_health_answers_while_every_upload_slot_hangs(slow_upload_server) -> None:
    server = slow_upload_server
    with gated_target() as target:
        base = target.url.rsplit("/", 2)[0]
        uploads = []
        for i in range(2):  # as many as there are upload slots
            url = f"{base}/bucket/slow-{i}.json"
            body = graph_body(slug_identifier=f"slow-{i}", signed_url=url)
            uploads.append((url, *in_background(lambda b=body: post(server, "/generate-graph", b))))
            assert target.wait_for_arrival(180), "the graph never reached its upload"

        # Both uploads are held by the target now. The server must still answer at once.
        for _ in range(3):
            health = requests.get(f"{server.base}/health", timeout=HANG_GUARD_S)
            assert health.status_code == 200 and health.json()["busy"] is False
            busy = requests.get(f"{server.base}/check-busy", timeout=HANG_GUARD_S)
            assert busy.json() == {"busy": False}
        # Any number of further uploads: refused before any work, with Retry-After.
        for _ in range(6):
            res = post(server, "/generate-graph", graph_body(signed_url=target.url), HANG_GUARD_S)
            assert res.status_code == 503, res.text
            assert res.json()["error"].startswith("Server busy: all 2 upload slots are in use")
            assert int(res.headers["Retry-After"]) > 0 and "Server-Timing" not in res.headers
        assert post(server, "/forward-pass", {"prompt": "1 2 3"}, HANG_GUARD_S).status_code == 200
        assert len(target.requests) == 2  # the refused ones never computed or uploaded

        target.release(200)
        for _url, thread, _outcome in uploads:
            thread.join(60)

    # Each client got the answer for its own upload.
    for url, _thread, outcome in uploads:
        (res,) = outcome
        assert res.status_code == 200, res
        assert res.json()["url"] == url and res.json()["success"] == "Graph uploaded"
    for request in target.requests:
        slug = orjson.loads(request.body)["metadata"]["slug"]
        assert request.path == f"/bucket/{slug}.json"
    # The slots came back: the next upload goes through.
    with flaky_target(fail_times=0) as again:
        assert post(server, "/generate-graph", graph_body(signed_url=again.url)).status_code == 200
    assert list((Path(server.log_path).parent / "spool").iterdir()) == []


# --- finding 4: SIGTERM during uploads loses no graph ---------------------------------------


def test_sigterm_during_uploads_keeps_every_graph_and_says_where(tmp_path) -> None:
    spool = tmp_path / "spool"
    with (
        start_server(tmp_path, UPLOAD_WORKERS="2") as server,
        gated_target() as finishing,
        gated_target() as stuck,
    ):
        finish_req = graph_body(slug_identifier="finishing", signed_url=finishing.url)
        finish_thread, finish_outcome = in_background(
            lambda: post(server, "/generate-graph", finish_req)
        )
        assert finishing.wait_for_arrival(180)
        stuck_req = graph_body(slug_identifier="stuck", signed_url=stuck.url)
        stuck_thread, stuck_outcome = in_background(
            lambda: post(server, "/generate-graph", stuck_req, timeout=GUNICORN_GRACEFUL_S + 60)
        )
        assert stuck.wait_for_arrival(180)

        server.proc.send_signal(signal.SIGTERM)  # to the gunicorn master, as `docker stop` does
        wait_for_log(server, "Handling signal: term")
        finishing.release(200)  # this upload completes within the grace period
        finish_thread.join(60)
        # The other never does: gunicorn kills its worker after the graceful timeout.
        server.proc.wait(timeout=GUNICORN_GRACEFUL_S + 60)
        stuck_thread.join(60)
        log = server.log()

    (finished,) = finish_outcome
    assert finished.status_code == 200 and finished.json()["url"] == finishing.url
    (lost_reply,) = stuck_outcome
    assert isinstance(lost_reply, requests.ConnectionError)  # the client was cut off...
    (kept,) = spool.iterdir()  # ...but its graph is on disk, and only its graph
    assert orjson.loads(kept.read_bytes())["metadata"]["slug"] == "stuck"
    assert kept.read_bytes() == stuck.requests[0].body  # exactly what was being uploaded
    assert f"graph stuck written to spool file {kept} until its upload" in log
    assert (
        f"shutdown requested during the upload of graph stuck to {stuck.url}; the graph "
        f"stays in spool file {kept} unless the upload finishes first"
    ) in log
    assert f"graph finishing uploaded to {finishing.url}; removed its spool file" in log


# --- finding 5 over real HTTP ---------------------------------------------------------------


def test_decimal_loopback_url_is_422_over_http_and_the_server_goes_on(live_server) -> None:
    with flaky_target(fail_times=0) as target:
        port = target.url.split(":")[2].split("/")[0]
        res = post(
            live_server,
            "/generate-graph",
            graph_body(signed_url=f"http://2130706433:{port}/bucket/graph.json?X-Amz-Signature=s"),
        )
        assert res.status_code == 422, res.text
        assert res.json()["fields"] == ["signed_url"]
        assert "non-standard form" in res.json()["error"]
        assert target.requests == []
        assert post(live_server, "/generate-graph", graph_body(signed_url=target.url)).ok
    assert len(target.requests) == 1
