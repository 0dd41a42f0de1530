"""The bounded spool (SPOOL_MAX_BYTES, SPOOL_MAX_AGE) and re-uploading a spooled graph.

Before: every failed upload left its graph in the spool forever, with no cap on count, size or
age. Now each write makes room (age first, then oldest first), never removing the write-ahead
copy of an upload in flight; a full spool is said in the 502 and the log; the files are listed
at start-up; `reupload` (one function, `UploadQueue.reupload`, and a command on it) sends a
spooled graph again. Real files, real upload targets, real SeaweedFS and the real server.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from neuronpedia_graph.errors import InvalidField, UploadFailed
from neuronpedia_graph.upload.guard import UploadGuard
from neuronpedia_graph.upload.queue import UploadQueue
from neuronpedia_graph.upload.spool import Spool, SpoolFull, spool_graph
from neuronpedia_graph.upload.transfer import UploadPolicy
from testkit import live
from testkit.live import REPO
from tests.conftest import LOCAL_UPLOAD_HOSTS, SECRET, graph_body
from tests.fault_targets import closed_port_url, flaky_target, gated_target

FAST = UploadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=0, backoff_factor=0.01)
LOCAL = UploadGuard("127.0.0.1")
DAY = 24 * 3600.0


def age(path: Path, seconds: float) -> None:
    """Make a file look `seconds` old (its mtime is what the spool goes by)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# --- the spool on its own -------------------------------------------------------------------


def test_oldest_unpinned_files_make_room_first(tmp_path, caplog) -> None:
    spool = Spool(tmp_path, max_bytes=250, max_age=DAY)
    first = spool.write(b"a" * 100, slug="first", compressed=False)
    spool.unpin(first)
    age(first, 60)
    second = spool.write(b"b" * 100, slug="second", compressed=False)
    spool.unpin(second)
    age(second, 30)
    with caplog.at_level(logging.WARNING):
        third = spool.write(b"c" * 100, slug="third", compressed=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([second.name, third.name])
    assert f"removed spool file {first.name} (100 bytes" in caplog.text
    assert "to make room under SPOOL_MAX_BYTES=250" in caplog.text


def test_a_pinned_file_is_never_removed_and_a_full_spool_says_so(tmp_path) -> None:
    spool = Spool(tmp_path, max_bytes=250, max_age=DAY)
    in_flight = spool.write(b"a" * 200, slug="in-flight", compressed=False)
    age(in_flight, 2 * DAY)  # even past its age: it is an upload's only copy
    with pytest.raises(SpoolFull) as info:
        spool.write(b"b" * 100, slug="next", compressed=False)
    assert str(info.value) == (
        "spool full: 200 bytes held by uploads in flight plus this graph's 100 bytes exceed "
        "SPOOL_MAX_BYTES=250"
    )
    assert in_flight.is_file()
    spool.unpin(in_flight)  # its upload ended: now it may go
    spool.write(b"b" * 100, slug="next", compressed=False)
    assert not in_flight.exists()


def test_a_graph_larger_than_the_spool_is_refused_without_removing_anything(tmp_path) -> None:
    spool = Spool(tmp_path, max_bytes=100, max_age=DAY)
    kept = spool.write(b"a" * 50, slug="kept", compressed=False)
    spool.unpin(kept)
    with pytest.raises(SpoolFull, match=r"the graph \(101 bytes\) is larger than SPOOL_MAX"):
        spool.write(b"b" * 101, slug="big", compressed=False)
    assert kept.is_file()


def test_files_past_their_age_go_at_the_next_write_and_at_startup(tmp_path, caplog) -> None:
    old = spool_graph(b"{}", tmp_path, slug="old", compressed=False)
    fresh = spool_graph(b"{}", tmp_path, slug="fresh", compressed=True)
    (tmp_path / "notes.txt").write_text("not ours")  # never touched
    age(old, 2 * DAY)
    spool = Spool(tmp_path, max_bytes=10**6, max_age=DAY)
    with caplog.at_level(logging.INFO):
        spool.report()
    assert not old.exists() and fresh.is_file() and (tmp_path / "notes.txt").is_file()
    assert f"removed spool file {old.name}" in caplog.text and "older than SPOOL_MAX_AGE" in (
        caplog.text
    )
    assert "holds 1 graph file(s)" in caplog.text
    assert f"spool file waiting for upload: {fresh.name}" in caplog.text


# --- the queue: in-flight files are safe, a full spool is in the 502 --------------------------


def test_a_full_spool_never_removes_an_upload_in_flight_and_the_502_says_so(
    tmp_path, caplog
) -> None:
    body = b'{"nodes": []}' * 10  # 130 bytes
    queue = UploadQueue(LOCAL, FAST, tmp_path / "spool", 2, spool_max_bytes=200, spool_max_age=DAY)
    with gated_target() as held:
        ticket = queue.admit(held.url)
        outcome: list = []
        deliver = lambda: outcome.append(  # noqa: E731
            queue.deliver(ticket, body, slug="held", compressed=False)
        )
        worker = threading.Thread(target=deliver)
        worker.start()
        assert held.wait_for_arrival(30)
        (in_flight,) = (tmp_path / "spool").iterdir()

        with caplog.at_level(logging.INFO), pytest.raises(UploadFailed) as info:
            queue.deliver(queue.admit(closed_port_url()), body, slug="second", compressed=False)
        assert in_flight.is_file()  # the held upload's only copy is still there
        message = info.value.message
        assert message.startswith("Failed to upload graph: connection failed")
        assert message.endswith(
            "; it could not be kept on the server either (spool full: 130 bytes held by uploads "
            "in flight plus this graph's 130 bytes exceed SPOOL_MAX_BYTES=200)"
        )
        assert info.value.extra["spool_file"] is None
        assert "graph second LOST: upload failed" in caplog.text and "spool full" in caplog.text
        held.release(200)
        worker.join(30)
    assert outcome and outcome[0].status == 200
    assert list((tmp_path / "spool").iterdir()) == []
    queue.shutdown()


def test_reupload_refuses_what_is_not_a_spooled_graph(tmp_path) -> None:
    queue = UploadQueue(LOCAL, FAST, tmp_path, 1)
    (tmp_path / "x.txt").write_text("{}")
    with pytest.raises(InvalidField, match="not a spooled graph file"):
        queue.reupload(tmp_path / "x.txt", "http://127.0.0.1:9/b/k")
    with pytest.raises(InvalidField, match="not a spooled graph file"):
        queue.reupload(tmp_path / "missing.json", "http://127.0.0.1:9/b/k")
    queue.shutdown()


# --- the real server: full spool in the 502, files listed at start-up ------------------------


def test_server_lists_the_spool_at_startup_and_says_when_it_is_full(tmp_path) -> None:
    spool = tmp_path / "spool"
    waiting = spool_graph(b'{"nodes": []}', spool, slug="waiting", compressed=False)
    expired = spool_graph(b'{"nodes": []}', spool, slug="expired", compressed=False)
    age(expired, 3 * DAY)
    settings = {
        "SPOOL_MAX_BYTES": "1000",  # smaller than any demo graph
        "SPOOL_MAX_AGE": str(2 * DAY),
        "UPLOAD_RETRIES": "0",
        "UPLOAD_ALLOWED_HOSTS": LOCAL_UPLOAD_HOSTS,
        "MAX_FEATURE_NODES": "2000",
    }
    with live.start_server(tmp_path, settings, secret=SECRET, new_session=True) as server:
        log = server.log()
        assert "holds 1 graph file(s), 13 bytes (SPOOL_MAX_BYTES=1000" in log
        assert f"spool file waiting for upload: {waiting.name}" in log
        assert f"removed spool file {expired.name}" in log and not expired.exists()

        reply = requests.post(
            server.url("/generate-graph"),
            json=graph_body(slug_identifier="big", signed_url=closed_port_url()),
            headers={"x-secret-key": SECRET},
            timeout=300,
        )
        assert reply.status_code == 502, reply.text
        error = reply.json()["error"]
        assert "it could not be kept on the server either (spool full: the graph (" in error
        assert "bytes) is larger than SPOOL_MAX_BYTES=1000)" in error
        assert reply.json()["spool_file"] is None
        assert "graph big LOST: upload failed" in server.log()
        assert waiting.is_file()  # not removed to make room for a graph that cannot fit
        assert requests.get(server.url("/health"), timeout=30).status_code == 200


# --- the reupload command, against real S3 -----------------------------------------------------


def reupload(path: Path, url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "neuronpedia_graph", "reupload", str(path), "-"],
        input=url + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "UPLOAD_ALLOWED_HOSTS": LOCAL_UPLOAD_HOSTS,
            "UPLOAD_RETRIES": "0",
            "PYTHONPATH": str(REPO),
        },
        timeout=120,
    )


def test_reupload_command_stores_the_graph_and_removes_the_file(s3, tmp_path) -> None:
    graph = json.dumps({"metadata": {"slug": "again"}, "nodes": []}).encode()
    path = spool_graph(gzip.compress(graph), tmp_path / "spool", slug="again", compressed=True)
    url = s3.presign_put("graphs/again.json", content_encoding="gzip")

    done = reupload(path, url, tmp_path)

    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["success"] == "Graph uploaded" and reply["compressed"] is True
    assert reply["url"] == url.split("?", 1)[0]
    stored = s3.client.get_object(Bucket=s3.bucket, Key="graphs/again.json")
    assert stored["ContentEncoding"] == "gzip"
    assert gzip.decompress(stored["Body"].read()) == graph
    assert not path.exists()
    query = url.split("?", 1)[1]
    assert query not in done.stdout + done.stderr


def test_reupload_command_keeps_the_file_when_the_upload_fails(s3, tmp_path) -> None:
    path = spool_graph(b"{}", tmp_path / "spool", slug="kept", compressed=False)
    url = s3.presign_put("graphs/kept.json", content_type="text/plain")  # signed for another type

    done = reupload(path, url, tmp_path)

    assert done.returncode == 1, done.stderr
    assert "error: Failed to upload graph: 403" in done.stderr
    assert f"(the file is kept: {path})" in done.stderr
    assert path.read_bytes() == b"{}"
    assert url.split("?", 1)[1] not in done.stderr + done.stdout


def test_reupload_command_refuses_an_expired_url_before_uploading(tmp_path) -> None:
    path = spool_graph(b"{}", tmp_path / "spool", slug="late", compressed=False)
    with flaky_target(fail_times=0) as target:
        url = f"{target.url}?X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-Signature=feed"
        done = reupload(path, url, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "the presigned URL expired at 2020-01-01T00:01:00Z" in done.stderr
    assert target.requests == [] and path.is_file()
