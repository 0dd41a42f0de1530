"""The request framer on its own: fed byte by byte, it must say "complete" at exactly the last
byte, reject bad framing as soon as it is visible, and agree with gunicorn's parser.

Plus the worker's JSON `handle_error` over a real socket pair (errors a thread can still meet:
an application that sends a malformed response header).
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http.errors import InvalidResponseHeader, LimitRequestLine

from neuronpedia_graph.serving.framing import RequestFramer, RequestRejected
from neuronpedia_graph.serving.worker import BufferedThreadWorker, _Conn

MAX_BODY = 1000


def framer() -> RequestFramer:
    return RequestFramer(Config(), ("127.0.0.1", 1), MAX_BODY)


@contextlib.contextmanager
def worker_outside_arbiter(cfg: Config) -> Iterator[BufferedThreadWorker]:
    """A worker no arbiter started: its heartbeat file, which the arbiter would close, is
    closed here."""
    worker = BufferedThreadWorker(1, 0, [], None, 30, cfg, Logger(cfg))
    with contextlib.closing(worker.tmp):
        yield worker


def feed_bytewise(data: bytes) -> list[int | None]:
    """The framer's answer after each byte."""
    f, buf, answers = framer(), bytearray(), []
    for byte in data:
        buf.append(byte)
        answers.append(f.feed(buf))
        if answers[-1] is not None:
            break
    return answers


CHUNKED = (
    b"POST /steer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
)
LENGTH = b"POST /steer HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED_HEAD = b"POST /steer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
HEAD_ONLY = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "request_bytes", [CHUNKED, LENGTH, HEAD_ONLY], ids=["chunked", "cl", "get"]
)
def test_complete_exactly_at_the_last_byte(request_bytes):
    answers = feed_bytewise(request_bytes)
    assert answers[:-1] == [None] * (len(request_bytes) - 1)
    assert answers[-1] == len(request_bytes)


def test_pipelined_request_is_cut_where_gunicorn_ends_it():
    f = framer()
    assert f.feed(bytearray(CHUNKED + HEAD_ONLY)) == len(CHUNKED)


def test_bad_chunk_size_is_rejected_once_its_line_ends():
    head = b"POST /steer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    f = framer()
    assert f.feed(bytearray(head + b"ZZ")) is None
    with pytest.raises(RequestRejected) as err:
        f.feed(bytearray(head + b"ZZ\r\n"))
    assert err.value.status == 400


def test_chunk_without_terminator_is_rejected():
    bad = CHUNKED_HEAD + b"3\r\nabcXY0\r\n\r\n"
    with pytest.raises(RequestRejected) as err:
        framer().feed(bytearray(bad))
    assert err.value.status == 400


def test_chunked_body_reaching_the_limit_is_413_before_it_ends():
    head = b"POST /steer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with pytest.raises(RequestRejected) as err:
        framer().feed(bytearray(head + b"%x\r\n" % MAX_BODY))
    assert err.value.status == 413


def test_declared_length_over_the_limit_is_413_before_the_body():
    with pytest.raises(RequestRejected) as err:
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        framer().feed(bytearray(head))
    assert err.value.status == 413


def test_request_line_over_the_limit_is_414_before_the_head_ends():
    with pytest.raises(RequestRejected) as err:
        framer().feed(bytearray(b"GET /" + b"a" * 5000))
    assert err.value.status == 414


def test_head_over_gunicorns_buffer_is_431_before_it_ends():
    head = b"GET / HTTP/1.1\r\n" + b"X-A: " + b"b" * 8000 + b"\r\n"
    f = framer()
    buf = bytearray()
    with pytest.raises(RequestRejected) as err:
        for _ in range(200):
            buf += head[16:] if buf else head
            f.feed(buf)
    assert err.value.status == 431


def test_expect_continue_is_reported_once_and_only_while_the_body_is_missing():
    head = b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    f = framer()
    assert f.feed(bytearray(head)) is None
    assert f.take_continue() is True
    assert f.take_continue() is False
    g = framer()
    assert g.feed(bytearray(head + b"{}")) == len(head) + 2
    assert g.take_continue() is False


@pytest.mark.parametrize(
    ("exc", "status"),
    [(InvalidResponseHeader("bad\nname"), 500), (LimitRequestLine(9000, 4094), 414)],
)
def test_worker_handle_error_answers_json(exc, status):
    cfg = Config()
    server_side, client_side = socket.socketpair()
    with worker_outside_arbiter(cfg) as worker, server_side, client_side:
        worker.handle_error(None, server_side, ("127.0.0.1", 1), exc)
        server_side.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := client_side.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"Content-Type: application/json" in head
    assert b"Connection: close" in head
    assert "error" in orjson.loads(body)
    assert b"bad" not in body  # the offending input is never echoed


def test_chunked_body_is_decoded_by_the_framer():
    f = framer()
    assert f.feed(bytearray(CHUNKED)) == len(CHUNKED)
    assert f.decoded_body == b"hello world"
    assert f.head_length == CHUNKED.index(b"\r\n\r\n") + 4


def test_many_tiny_chunks_decode_in_one_pass():
    """100,000 one-byte chunks, fed 64 KiB at a time: complete, decoded, at the right length."""
    body = b"1\r\nx\r\n" * 100_000 + b"0\r\n\r\n"
    data = CHUNKED_HEAD + body
    f = RequestFramer(Config(), ("127.0.0.1", 1), 1 << 20)
    buf = bytearray()
    answers = []
    for start in range(0, len(data), 65536):
        buf += data[start : start + 65536]
        answers.append(f.feed(buf))
    assert answers[-1] == len(data) and set(answers[:-1]) == {None}
    assert f.decoded_body == b"x" * 100_000


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n",
            501,
        ),
        (b"GET / HTTP/1.1\r\nUser-Agent: t\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (CHUNKED_HEAD + b"1;a\x01b\r\nx\r\n", 400),
        (CHUNKED_HEAD + b"1\r\nx\r\n0\r\nX-T: a\nb\r\n\r\n", 400),
    ],
    ids=["gzip-chunked", "gzip-then-chunked", "no-host", "two-hosts", "ext-ctl", "trailer-lf"],
)
def test_framing_the_docs_refuse(raw, status):
    with pytest.raises(RequestRejected) as err:
        framer().feed(bytearray(raw))
    assert err.value.status == status


def test_http_1_0_needs_no_host():
    raw = b"GET / HTTP/1.0\r\n\r\n"
    assert framer().feed(bytearray(raw)) == len(raw)


class _ListenerOutOfDescriptors:
    """An injected fault: a listening socket whose accept() fails as under `ulimit -n`."""

    def accept(self):
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_without_descriptors_sheds_an_idle_connection_or_pauses():
    cfg = Config()
    server_side, client_side = socket.socketpair()
    poller = selectors.DefaultSelector()
    with worker_outside_arbiter(cfg) as worker, client_side, contextlib.closing(poller):
        worker.poller = poller
        worker.nr_conns = 1
        worker._await_request(_Conn(cfg, server_side, ("127.0.0.1", 1), ("127.0.0.1", 2)), 60)
        worker.accept(_ListenerOutOfDescriptors())  # must not raise: the worker lives on
        assert worker.nr_conns == 0 and not worker._reading  # the idle connection made room
        assert client_side.recv(1) == b""
        worker.accept(_ListenerOutOfDescriptors())  # nothing left to shed: accepting pauses
        assert worker._accept_paused_until > time.monotonic()
        worker.set_accept_enabled(True)
        assert worker._accepting is False
