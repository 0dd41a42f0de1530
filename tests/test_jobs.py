"""Graph jobs on the real server (gunicorn, demo model): queue, progress, cancel, events, store.

Every wait is on something the server does (its event stream ends, the test hold is reached),
never a sleep. The server's settings: a queue of 3, at most 50 event streams, heartbeats every
0.5 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.hold import HoldControl
from tests.conftest import LIVE_SETTINGS, SECRET, LiveServer, start_server, steer_body
from tests.jobs_client import (
    AUTH,
    final_state,
    job,
    job_document,
    open_stream,
    parse_events,
    read_events,
    read_to_end,
    submit,
    synchronous_graph,
)

QUEUE_SIZE = 3
STREAMS = 50
PHASE_ORDER = ["activations", "forward_pass", "logit_batches", "feature_batches", "prune"]


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("jobs")
    settings = {
        **LIVE_SETTINGS,
        "GRAPH_STORE_DIR": str(workdir / "store"),
        "JOB_QUEUE_SIZE": str(QUEUE_SIZE),
        "JOB_EVENT_STREAMS": str(STREAMS),
        "JOB_EVENTS_HEARTBEAT": "0.5",
    }
    with (
        HoldControl() as control,
        start_server(workdir, settings, secret=SECRET, hold=control) as server,
    ):
        yield server


def hold_of(server: LiveServer) -> HoldControl:
    assert server.hold is not None
    return server.hold


def test_three_jobs_at_once_all_finish_and_equal_their_synchronous_graphs(jobs_server):
    prompts = ["The city of Paris is in", "1 2 3 4 5 6", "The city of Rome is in"]
    ids = []
    for prompt in prompts:
        res = submit(jobs_server, prompt=prompt)
        assert res.status_code == 202, res.text
        assert res.headers["Location"] == f"/graphs/{res.json()['id']}"
        ids.append(res.json()["id"])
    assert len(set(ids)) == 3
    for job_id, prompt in zip(ids, prompts, strict=True):
        state = final_state(jobs_server, job_id)
        assert state["status"] == "done" and state["progress"] == 1.0, state
        assert state["result"]["nodes"] > 0
        assert job_document(jobs_server, job_id) == synchronous_graph(jobs_server, prompt=prompt)


def test_progress_is_monotonic_through_the_phases_and_ends_at_one(jobs_server):
    control = hold_of(jobs_server)
    with control.hold("job-start") as held:
        res = submit(jobs_server, batch_size=16)
        job_id = res.json()["id"]
        held.wait()
        collected: list = []
        reader = threading.Thread(
            target=lambda: collected.extend(read_events(jobs_server, job_id)), daemon=True
        )
        reader.start()
        # The stream's first event is sent before the job may go on.
        assert job(jobs_server, job_id)["status"] == "running"
    reader.join(120)
    states = [data for event, data in collected if event == "state"]
    progress = [s["progress"] for s in states]
    assert progress == sorted(progress), progress
    assert states[-1]["status"] == "done" and progress[-1] == 1.0
    assert all(p < 1.0 for p in progress[:-1])
    phases = [s["phase"] for s in states if s["phase"]]
    seen = list(dict.fromkeys(phases))
    assert seen[: len(PHASE_ORDER)] == PHASE_ORDER, seen
    # Several feature batches, each moving the value.
    assert len({s["progress"] for s in states if s["phase"] == "feature_batches"}) >= 3


def test_cancelling_a_running_job_frees_the_model_within_one_batch(jobs_server):
    control = hold_of(jobs_server)
    with control.hold("graph-feature-batch") as held:
        job_id = submit(jobs_server, batch_size=8).json()["id"]
        held.wait()
        batches_before = control.seen.count("graph-feature-batch")
        res = requests.delete(jobs_server.url(f"/graphs/{job_id}"), headers=AUTH, timeout=30)
        assert res.status_code == 202 and res.json()["cancel_requested"] is True
        assert requests.get(jobs_server.url("/check-busy"), timeout=10).json()["busy"] is True
    state = final_state(jobs_server, job_id)
    assert state["status"] == "cancelled" and state["result"] is None and state["error"] is None
    assert state["progress"] < 1.0
    # No feature batch ran after the cancel: the held one raised instead of computing.
    assert control.seen.count("graph-feature-batch") == batches_before
    assert requests.get(jobs_server.url("/check-busy"), timeout=10).json()["busy"] is False
    res = requests.get(jobs_server.url(f"/graphs/{job_id}/document"), headers=AUTH, timeout=10)
    assert res.status_code == 409 and "cancelled" in res.json()["error"]
    again = requests.delete(jobs_server.url(f"/graphs/{job_id}"), headers=AUTH, timeout=10)
    assert again.status_code == 409
    # The next graph is a fresh graph.
    fresh = submit(jobs_server, batch_size=8).json()["id"]
    assert final_state(jobs_server, fresh)["status"] == "done"
    assert job_document(jobs_server, fresh) == synchronous_graph(jobs_server, batch_size=8)


def test_a_full_queue_answers_503_and_queued_jobs_can_be_removed(jobs_server):
    control = hold_of(jobs_server)
    with control.hold("job-start") as held:
        running = submit(jobs_server).json()["id"]
        held.wait()
        queued = [submit(jobs_server, slug_identifier=f"q{i}") for i in range(QUEUE_SIZE)]
        assert [r.status_code for r in queued] == [202] * QUEUE_SIZE
        assert [r.json()["queue_position"] for r in queued] == [1, 2, 3]
        over = submit(jobs_server)
        assert over.status_code == 503 and over.headers["Retry-After"].isdigit()
        assert "JOB_QUEUE_SIZE" in over.json()["error"]
        first = queued[0].json()["id"]
        res = requests.delete(jobs_server.url(f"/graphs/{first}"), headers=AUTH, timeout=10)
        assert res.status_code == 200 and res.json()["status"] == "cancelled"
        assert job(jobs_server, queued[1].json()["id"])["queue_position"] == 1
        assert job(jobs_server, running)["queue_position"] == 0
        for r in queued[1:]:
            requests.delete(jobs_server.url(f"/graphs/{r.json()['id']}"), headers=AUTH, timeout=10)
    assert final_state(jobs_server, running)["status"] == "done"
    assert final_state(jobs_server, first)["status"] == "cancelled"


def test_bodies_are_validated_before_queueing_and_jobs_need_the_secret(jobs_server):
    before = requests.get(jobs_server.url("/graphs"), headers=AUTH, timeout=10).json()["total"]
    assert submit(jobs_server, batch_size="48").status_code == 422
    assert submit(jobs_server, model_id="gpt-2").status_code == 400
    assert submit(jobs_server, prompt="1 " * 200).status_code == 400
    res = submit(jobs_server, signed_url="https://evil.example.com/x?X-Amz-Signature=abc")
    assert res.status_code == 422 and res.json()["fields"] == ["signed_url"]
    assert requests.get(jobs_server.url("/graphs"), headers=AUTH, timeout=10).json()["total"] == (
        before
    )
    job_id = submit(jobs_server).json()["id"]
    assert requests.get(jobs_server.url(f"/graphs/{job_id}"), timeout=10).status_code == 401
    wrong = {"x-secret-key": "wrong"}
    assert requests.get(jobs_server.url(f"/graphs/{job_id}"), headers=wrong).status_code == 403
    assert requests.get(jobs_server.url("/graphs"), timeout=10).status_code == 401
    assert requests.get(jobs_server.url(f"/graphs/{job_id}/events")).status_code == 401
    for path in ("/graphs/" + "A" * 24, "/graphs/..%2F..%2Fetc", "/graphs/" + "A" * 24 + "/events"):
        res = requests.get(jobs_server.url(path), headers=AUTH, timeout=10)
        assert res.status_code == 404 and res.json()["error"], path
    assert final_state(jobs_server, job_id)["status"] == "done"


def test_listing_is_newest_first_and_paginated(jobs_server):
    ids = [submit(jobs_server, slug_identifier=f"list{i}").json()["id"] for i in range(2)]
    for job_id in ids:
        final_state(jobs_server, job_id)
    page = requests.get(jobs_server.url("/graphs?limit=1"), headers=AUTH, timeout=10).json()
    assert [j["id"] for j in page["jobs"]] == [ids[1]]
    assert page["next"] == "/graphs?offset=1&limit=1" and page["total"] >= 2
    second = requests.get(jobs_server.url(page["next"]), headers=AUTH, timeout=10).json()
    assert [j["id"] for j in second["jobs"]] == [ids[0]]
    res = requests.get(jobs_server.url("/graphs?limit=0"), headers=AUTH, timeout=10)
    assert res.status_code == 422 and res.json()["fields"] == ["limit"]


def test_synchronous_calls_share_the_model_with_jobs(jobs_server):
    """While a job attributes: /forward-pass and /steer get 503 as today, chat parsing runs,
    and a synchronous /generate-graph waits for the job, then goes before every queued job."""
    control = hold_of(jobs_server)
    replies: dict[str, requests.Response] = {}
    with control.hold("graph-feature-batch") as held:
        first = submit(jobs_server).json()["id"]
        held.wait()
        second = submit(jobs_server, slug_identifier="second").json()["id"]
        post = lambda path, body: requests.post(  # noqa: E731
            jobs_server.url(path), json=body, headers=AUTH, timeout=120
        )
        busy = post("/forward-pass", {"prompt": "1 2 3", "model_id": "demo"})
        assert busy.status_code == 503 and busy.headers["Retry-After"]
        assert post("/steer", steer_body()).status_code == 503
        assert post("/parse-chat-prompt", {"prompt": "hello"}).status_code == 200
        with control.hold("wait-for-model") as waiting:
            thread = threading.Thread(
                target=lambda: replies.update(sync=post("/generate-graph", graph_body_sync())),
                daemon=True,
            )
            thread.start()
            waiting.wait()
        mark = len(control.seen)
    thread.join(120)
    assert replies["sync"].status_code == 200, replies["sync"].text
    assert final_state(jobs_server, first)["status"] == "done"
    assert final_state(jobs_server, second)["status"] == "done"
    after = control.seen[mark:]
    assert after.index("generate-graph") < after.index("graph-job"), after


def graph_body_sync() -> dict:
    from tests.conftest import graph_body

    return graph_body(slug_identifier="sync")


def test_fifty_event_streams_leave_health_fast_and_the_next_is_refused(jobs_server):
    control = hold_of(jobs_server)
    with control.hold("job-start") as held:
        job_id = submit(jobs_server).json()["id"]
        held.wait()
        streams = [open_stream(jobs_server, job_id) for _ in range(STREAMS)]
        for _, head in streams:
            assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        for _ in range(10):
            started = time.perf_counter()
            assert requests.get(jobs_server.url("/health"), timeout=10).status_code == 200
            # Generous guard: a stream holding a thread would make this hang, not slow.
            assert time.perf_counter() - started < 5
        assert job(jobs_server, job_id)["status"] == "running"
        res = requests.get(jobs_server.url(f"/graphs/{job_id}/events"), headers=AUTH, timeout=10)
        assert res.status_code == 503 and res.headers["Retry-After"]
        assert "JOB_EVENT_STREAMS" in res.json()["error"]
        # Heartbeats arrive while the job waits.
        sock, received = streams[0]
        while b"event: heartbeat" not in received:
            received += sock.recv(65536)
        streams[0] = (sock, received)
        # A client that goes away gives its place back (the event thread sees it close).
        streams.pop()[0].close()
        deadline = time.monotonic() + 30
        while True:
            url = jobs_server.url(f"/graphs/{job_id}/events")
            res = requests.get(url, headers=AUTH, timeout=10, stream=True)
            if res.status_code == 200 or time.monotonic() > deadline:
                break
            res.close()
        assert res.status_code == 200
        res.close()
    for sock, received in streams:
        text = (received + read_to_end(sock)).decode()
        body = text.split("\r\n\r\n", 1)[1]
        assert body.endswith("0\r\n\r\n")  # the chunked body ends properly
        lines = [ln for ln in body.replace("\r\n", "\n").split("\n") if not _is_chunk_size(ln)]
        states = [d for e, d in parse_events(lines) if e == "state"]
        assert states[-1]["status"] == "done"
    # Every stream was given back: a new one is accepted.
    assert final_state(jobs_server, job_id)["status"] == "done"


def _is_chunk_size(line: str) -> bool:
    return bool(line) and all(c in "0123456789abcdef" for c in line)


def test_an_upload_job_never_stores_its_signed_url(jobs_server, s3):
    url = s3.presign_put("jobs/upload.json")
    signature = url.split("X-Amz-Signature=")[1].split("&")[0]
    res = requests.post(
        jobs_server.url("/graphs"),
        json={**graph_body_sync(), "signed_url": url},
        headers=AUTH,
        timeout=30,
    )
    assert res.status_code == 202 and signature not in res.text
    job_id = res.json()["id"]
    state = final_state(jobs_server, job_id)
    assert state["status"] == "done", state
    upload = state["result"]["upload"]
    assert upload["url"].endswith("/jobs/upload.json") and "?" not in upload["url"]
    stored = s3.client.get_object(Bucket=s3.bucket, Key="jobs/upload.json")["Body"].read()
    assert len(stored) == state["result"]["json_bytes"]
    listing = requests.get(jobs_server.url("/graphs?limit=100"), headers=AUTH, timeout=10)
    assert signature not in listing.text and "X-Amz" not in listing.text
    res = requests.get(jobs_server.url(f"/graphs/{job_id}/document"), headers=AUTH, timeout=10)
    assert res.status_code == 409 and "uploaded" in res.json()["error"]
    for path in Path(jobs_server.workdir).rglob("*"):
        if path.is_file():
            assert signature.encode() not in path.read_bytes(), path


def test_a_presigned_url_that_expired_while_queued_fails_the_job_at_start(jobs_server, s3):
    control = hold_of(jobs_server)
    with control.hold("job-start") as held:
        blocker = submit(jobs_server).json()["id"]
        held.wait()
        url = s3.presign_put("jobs/expired.json", expires=1)
        res = requests.post(
            jobs_server.url("/graphs"),
            json={**graph_body_sync(), "signed_url": url},
            headers=AUTH,
            timeout=30,
        )
        assert res.status_code == 202, res.text
        expired_id = res.json()["id"]
        # Wall time must pass for a URL to expire; this waits for the clock, not for an event.
        deadline = time.time() + 2.5
        while time.time() < deadline:
            time.sleep(0.1)
    assert final_state(jobs_server, blocker)["status"] == "done"
    state = final_state(jobs_server, expired_id)
    assert state["status"] == "failed" and state["error"]["status"] == 422
    assert "expired" in state["error"]["body"]["error"]
    assert state["timings"].get("attribute") is None  # no graph was computed


def test_a_restart_keeps_finished_jobs_and_fails_the_running_one(tmp_path):
    import os
    import signal

    store = tmp_path / "store"
    settings = {**LIVE_SETTINGS, "GRAPH_STORE_DIR": str(store)}
    with (
        HoldControl() as control,
        start_server(
            tmp_path / "first", settings, secret=SECRET, hold=control, new_session=True
        ) as server,
    ):
        done = submit(server).json()["id"]
        assert final_state(server, done)["status"] == "done"
        document = job_document(server, done)
        with control.hold("graph-feature-batch") as held:
            running = submit(server).json()["id"]
            held.wait()
            queued = submit(server, slug_identifier="queued").json()["id"]
            os.killpg(server.proc.pid, signal.SIGKILL)  # a crash, not a clean stop
            server.proc.wait(30)
    with start_server(tmp_path / "second", settings, secret=SECRET) as server:
        assert job(server, done)["status"] == "done"
        assert job_document(server, done) == document
        failed = job(server, running)
        assert failed["status"] == "failed" and failed["error"]["status"] == 503
        assert "server stopped while this job was running" in failed["error"]["body"]["error"]
        gone = job(server, queued)
        assert (
            gone["status"] == "failed"
            and "before this job started" in gone["error"]["body"]["error"]
        )
        events = read_events(server, running)
        assert events[-1][1]["status"] == "failed"
        # The restarted server runs new jobs.
        assert final_state(server, submit(server).json()["id"])["status"] == "done"


def test_a_call_refused_during_a_job_runs_before_the_next_job(jobs_server):
    """After a job during which /steer was refused, the next job leaves the model to
    synchronous callers for up to their Retry-After: the retried /steer runs first."""
    control = hold_of(jobs_server)
    post = lambda path, body: requests.post(  # noqa: E731
        jobs_server.url(path), json=body, headers=AUTH, timeout=120
    )
    with control.hold("graph-feature-batch") as held:
        first = submit(jobs_server).json()["id"]
        held.wait()
        second = submit(jobs_server, slug_identifier="after-steer").json()["id"]
        assert post("/steer", steer_body()).status_code == 503
        job_holds = control.hold("graph-job")
        job_holds.__enter__()
    try:
        assert final_state(jobs_server, first)["status"] == "done"
        mark = len(control.seen)
        # Within the Retry-After (5 s) of the refused call; the test does nothing in between.
        assert post("/steer", steer_body()).status_code == 200
    finally:
        job_holds.__exit__(None, None, None)
    assert final_state(jobs_server, second)["status"] == "done"
    after = control.seen[mark:]
    assert after.index("steer") < after.index("graph-job"), after


def test_a_failed_job_carries_the_error_the_synchronous_call_gives(jobs_server):
    from tests.fault_targets import closed_port_url

    url = closed_port_url("/bucket/failing.json")
    sync = requests.post(
        jobs_server.url("/generate-graph"),
        json={**graph_body_sync(), "signed_url": url},
        headers=AUTH,
        timeout=120,
    )
    assert sync.status_code == 502
    res = requests.post(
        jobs_server.url("/graphs"),
        json={**graph_body_sync(), "signed_url": url},
        headers=AUTH,
        timeout=30,
    )
    state = final_state(jobs_server, res.json()["id"])
    assert state["status"] == "failed" and state["error"]["status"] == 502
    expected = {k: v for k, v in sync.json().items() if k not in ("request_id", "spool_file")}
    body = state["error"]["body"]
    assert {k: v for k, v in body.items() if k not in ("request_id", "spool_file")} == expected
    assert body["request_id"] == state["id"] and body["spool_file"]
    assert state["progress"] < 1.0 and state["result"] is None


def test_a_bug_in_a_job_fails_it_with_500_and_the_next_job_runs(jobs_server):
    control = hold_of(jobs_server)
    control.fail("graph-prune")
    state = final_state(jobs_server, submit(jobs_server).json()["id"])
    assert state["status"] == "failed" and state["error"]["status"] == 500
    assert state["error"]["body"]["error"] == "Internal server error (InjectedFault)"
    assert requests.get(jobs_server.url("/check-busy"), timeout=10).json()["busy"] is False
    assert final_state(jobs_server, submit(jobs_server).json()["id"])["status"] == "done"
