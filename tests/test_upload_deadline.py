"""UPLOAD_DEADLINE bounds a whole upload, 1xx replies included; expired URLs fail before any work.

Before: a target answering `100 Continue` every 2 s kept an upload (and its slot) in flight for
as long as it liked, whatever UPLOAD_READ_TIMEOUT said, because http.client reads interim
replies without limit; and an expired presigned URL was only found out after the graph was
computed. Client-side timeouts below are hang guards, never measurements.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest
import requests

from neuronpedia_graph.errors import InvalidField
from neuronpedia_graph.upload.guard import (
    UploadGuard,
    UploadURLRefused,
    check_not_expired,
    presigned_expiry,
)
from neuronpedia_graph.upload.queue import UploadQueue
from neuronpedia_graph.upload.transfer import UploadError, UploadPolicy, put_graph
from testkit import live
from tests.conftest import LOCAL_UPLOAD_HOSTS, SECRET, graph_body
from tests.fault_targets import continue_flood_target, flaky_target

LOCAL = UploadGuard("127.0.0.1")
GRAPH = orjson.dumps({"metadata": {"slug": "t"}, "nodes": []})
HANG_GUARD_S = 60  # far above every deadline below: reaching it means the upload never ended
AUTH = {"x-secret-key": SECRET}
SIGNATURE = "0123456789abcdef0123456789abcdef"


def run_with_guard(fn):
    """fn() in a thread; fails the test instead of hanging when it does not return."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(fn())
        except Exception as exc:  # the result under test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), "the upload was still running past the hang guard"
    return outcome[0], time.monotonic() - started


def test_interim_replies_cannot_outlast_the_deadline() -> None:
    policy = UploadPolicy(read_timeout=5.0, retries=3, backoff_factor=0.01, deadline=3.0)
    with continue_flood_target(interval=0.5) as target:
        error, seconds = run_with_guard(
            lambda: put_graph(LOCAL.check(target.url), GRAPH, compressed=False, policy=policy)
        )
    assert isinstance(error, UploadError), error
    assert error.detail == "upload deadline of 3s (UPLOAD_DEADLINE) exceeded after 1 attempt(s)"
    assert error.status is None and len(target.requests) == 1
    assert seconds < HANG_GUARD_S


def test_retries_stop_at_the_deadline() -> None:
    """A Retry-After that would land past the deadline is not waited for."""
    policy = UploadPolicy(retries=10, backoff_factor=0.01, backoff_max=30, deadline=2.0)
    with flaky_target(fail_times=100, status=503, retry_after=5) as target:
        error, _seconds = run_with_guard(
            lambda: put_graph(LOCAL.check(target.url), GRAPH, compressed=False, policy=policy)
        )
    assert isinstance(error, UploadError)
    assert "UPLOAD_DEADLINE" in error.detail
    assert len(target.requests) == 1  # the 5 s wait would have passed the 2 s deadline


def test_a_fast_upload_is_untouched_by_the_deadline() -> None:
    policy = UploadPolicy(deadline=30.0)
    with flaky_target(fail_times=1, status=500) as target:
        result = put_graph(LOCAL.check(target.url), GRAPH, compressed=False, policy=policy)
    assert result.status == 200 and result.attempts == 2


# --- the deadline frees the slot on the real server -----------------------------------------


def test_interim_reply_flood_does_not_keep_the_only_slot(tmp_path) -> None:
    settings = {
        "UPLOAD_WORKERS": "1",
        "UPLOAD_DEADLINE": "4",
        "UPLOAD_READ_TIMEOUT": "5",
        "UPLOAD_BACKOFF": "0.01",
        "UPLOAD_ALLOWED_HOSTS": LOCAL_UPLOAD_HOSTS,
        "MAX_FEATURE_NODES": "2000",
    }
    with (
        live.start_server(tmp_path, settings, secret=SECRET, new_session=True) as server,
        continue_flood_target(interval=2.0) as flood,
    ):
        reply = requests.post(
            server.url("/generate-graph"),
            json=graph_body(slug_identifier="flood", signed_url=flood.url),
            headers=AUTH,
            timeout=HANG_GUARD_S,
        )
        assert reply.status_code == 502, reply.text
        body = reply.json()
        assert body["error"] == (
            "Failed to upload graph: upload deadline of 4s (UPLOAD_DEADLINE) exceeded after "
            "1 attempt(s)"
        )
        assert (Path(tmp_path) / "spool" / body["spool_file"]).is_file()
        # The one slot is free again: the next upload is admitted and delivered.
        with flaky_target(fail_times=0) as good:
            again = requests.post(
                server.url("/generate-graph"),
                json=graph_body(slug_identifier="next", signed_url=good.url),
                headers=AUTH,
                timeout=HANG_GUARD_S,
            )
        assert again.status_code == 200, again.text


# --- expired presigned URLs -------------------------------------------------------------------


def amz_url(base: str, signed: datetime, expires: str = "60") -> str:
    return (
        f"{base}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20200101%2Fus-east-1"
        f"&X-Amz-Date={signed.strftime('%Y%m%dT%H%M%SZ')}&X-Amz-Expires={expires}"
        f"&X-Amz-SignedHeaders=host&X-Amz-Signature={SIGNATURE}"
    )


def test_expired_url_is_refused_before_any_work_on_the_real_server(live_server) -> None:
    signed = datetime(2020, 1, 1, tzinfo=timezone.utc)
    with flaky_target(fail_times=0) as target:
        url = amz_url(target.url, signed)
        reply = requests.post(
            live_server.url("/generate-graph"),
            json=graph_body(slug_identifier="expired", signed_url=url),
            headers={**AUTH, "x-request-id": "expired-url"},
            timeout=HANG_GUARD_S,
        )
        assert reply.status_code == 422, reply.text
        error = reply.json()["error"]
        assert error.startswith(
            "Invalid request: signed_url: the presigned URL expired at 2020-01-01T00:01:00Z "
            "(X-Amz-Date + X-Amz-Expires)"
        )
        assert error.endswith("; presign a new one")
        assert SIGNATURE not in reply.text and "X-Amz-Credential" not in reply.text
        assert target.requests == []  # nothing was uploaded
    log = live_server.log()
    assert SIGNATURE not in log
    assert "[expired-url] neuronpedia_graph.api: POST /generate-graph -> 422" in log
    follow = requests.get(live_server.url("/health"), timeout=30)
    assert follow.status_code == 200


@pytest.mark.parametrize(
    ("expires", "message"),
    [("soon", "X-Amz-Expires is not a number of seconds"), ("-5", "X-Amz-Expires is not")],
)
def test_malformed_lifetime_is_refused(expires: str, message: str) -> None:
    url = amz_url("https://bucket.s3.amazonaws.com/g.json", datetime.now(timezone.utc), expires)
    with pytest.raises(UploadURLRefused, match=message):
        check_not_expired(url)


def test_malformed_date_is_refused_without_echoing_it() -> None:
    url = "https://b.s3.amazonaws.com/g.json?X-Amz-Date=yesterday-secret&X-Amz-Expires=60"
    with pytest.raises(UploadURLRefused) as info:
        check_not_expired(url)
    assert "yesterday-secret" not in str(info.value)
    assert "X-Amz-Date is not a date" in str(info.value)


def test_real_presigned_url_expires_when_its_parameters_say(s3) -> None:
    url = s3.presign_put("graphs/lifetime.json", expires=60)
    found = presigned_expiry(url)
    assert found is not None
    expiry, shown = found
    now = datetime.now(timezone.utc)
    assert shown == "X-Amz-Date + X-Amz-Expires"
    assert timedelta(seconds=0) < expiry - now <= timedelta(seconds=61)
    check_not_expired(url)  # valid now
    with pytest.raises(UploadURLRefused, match="expired at"):
        check_not_expired(url, now=expiry + timedelta(seconds=1))


def test_gcs_v4_parameters_are_read_too() -> None:
    url = (
        "https://storage.googleapis.com/b/g.json?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        "&X-Goog-Date=20200101T000000Z&X-Goog-Expires=900&X-Goog-Signature=abc"
    )
    with pytest.raises(UploadURLRefused, match=r"2020-01-01T00:15:00Z \(X-Goog-Date"):
        check_not_expired(url)


def test_admit_refuses_an_expired_url_with_a_422(demo_settings) -> None:
    """The check sits in UploadQueue.check, which admit (and every caller of it) goes through."""
    queue = UploadQueue.from_settings(demo_settings)
    try:
        url = amz_url("http://127.0.0.1:9/bucket/g.json", datetime(2020, 1, 1, tzinfo=timezone.utc))
        with pytest.raises(InvalidField) as info:
            queue.admit(url)
        assert info.value.status == 422 and "expired at" in info.value.message
        assert SIGNATURE not in info.value.message
        fresh = amz_url("http://127.0.0.1:9/bucket/g.json", datetime.now(timezone.utc))
        queue.admit(fresh).release()  # a URL still valid is admitted
    finally:
        queue.shutdown()


def test_a_url_that_expired_while_the_graph_was_computed_is_not_attempted(tmp_path) -> None:
    """Admitted while valid, expired by upload time: no PUT is sent, the graph is spooled."""
    from neuronpedia_graph.errors import UploadFailed
    from neuronpedia_graph.upload.queue import Ticket

    queue = UploadQueue(LOCAL, UploadPolicy(retries=0), tmp_path / "spool", 1)
    with flaky_target(fail_times=0) as target:
        url = amz_url(target.url, datetime.now(timezone.utc) - timedelta(seconds=61))
        # What admit hands over, for a URL that was still valid then: a slot and its target.
        assert queue._slots.acquire(blocking=False)
        ticket = Ticket(queue, LOCAL.check(url))
        with pytest.raises(UploadFailed) as info:
            queue.deliver(ticket, GRAPH, slug="late", compressed=False)
        assert target.requests == []
    assert "upload target refused: the presigned URL expired at" in info.value.message
    assert SIGNATURE not in info.value.message
    (kept,) = (tmp_path / "spool").iterdir()
    assert info.value.extra["spool_file"] == kept.name
    queue.admit(target.url).release()  # the slot came back
    queue.shutdown()
