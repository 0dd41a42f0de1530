"""The upload queue in-process: slots, write-ahead spooling, and its error paths.

Findings 2 and 4 of issue 11 at unit level (the live-server tests are in
test_upload_server.py): an upload needs a slot, reserved before any work and given back on
every path; every graph is in the spool from before its first attempt until it is uploaded;
and when even the spool fails, the reply and the log say the graph is lost.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from neuronpedia_graph.errors import InvalidField, UploadFailed
from neuronpedia_graph.upload.guard import UploadGuard
from neuronpedia_graph.upload.queue import UploadQueue, UploadsBusy
from neuronpedia_graph.upload.transfer import UploadPolicy
from tests.fault_targets import closed_port_url, flaky_target, gated_target

LOCAL = UploadGuard("127.0.0.1")
FAST = UploadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=2, backoff_factor=0.01)
SIGNATURE = "X-Amz-Signature=5ecret5ecret5ecret"
GRAPH = b'{"metadata": {"slug": "q"}, "nodes": []}'


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


def test_refused_url_in_a_runpod_job_is_a_422_output(service) -> None:
    from neuronpedia_graph.operations import BY_NAME

    body = {
        "prompt": "The city of Paris is in",
        "model_id": "demo",
        "slug_identifier": "q",
        "signed_url": "http://10.0.0.1/b/k",
    }
    with pytest.raises(InvalidField) as info:
        service.run(BY_NAME["graph"], body, lock_timeout=1.0)
    assert info.value.status == 422 and "not an allowed upload host" in info.value.message


def test_a_graph_delivered_after_the_pool_stopped_is_still_uploaded(tmp_path) -> None:
    queue = make_queue(tmp_path)
    ticket = queue.admit(closed_port_url())
    queue.shutdown()  # as at interpreter exit, while a request thread still has a graph

    with pytest.raises(UploadFailed) as info:
        queue.deliver(ticket, GRAPH, slug="late", compressed=False)

    (kept,) = (tmp_path / "spool").iterdir()
    assert info.value.extra["spool_file"] == kept.name and kept.read_bytes() == GRAPH
    queue.admit(closed_port_url()).release()  # and its slot came back
