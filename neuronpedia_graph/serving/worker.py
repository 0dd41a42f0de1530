"""A gunicorn worker that reads whole requests in its event loop before any thread sees them.

The problem (issue 11, finding 1): gunicorn's `gthread` worker hands a connection to a pool
thread as soon as it is readable, and the thread then parses the request with blocking reads.
A client that sends `GET /health HTTP/1.1\\r\\nHost: x\\r\\n` and nothing more (or a body shorter
than its Content-Length) keeps that thread waiting forever. With `THREADS=4`, four such
connections froze the server, `/health` included, without a secret and without a log line.

The mechanism, `BufferedThreadWorker`, subclasses gunicorn's `ThreadWorker` and changes only
where bytes are read:
- accepted and kept-alive connections stay non-blocking in the worker's selector loop; each
  readable event appends what the socket holds to that connection's buffer;
- `http_framing.RequestFramer` decides when the buffer holds one complete request (head and
  whole body, Content-Length or chunked). Only then is the connection given to a pool thread,
  whose gunicorn parser reads from that buffer, never from the socket. A thread therefore never
  waits for a client, and a body shorter than its Content-Length is never executed;
- a connection that has not delivered a complete request within `REQUEST_READ_TIMEOUT`
  (default 30 s; counted from the first byte, or from accept) is answered 408 and closed
  (silently when it sent nothing). Idle kept-alive connections close after gunicorn's
  `keepalive` (2 s);
- requests are checked in the loop, so errors that need no application are answered there as
  JSON `{"error": ...}` with `Connection: close`: 400 malformed head or chunked body, 413 body
  over the limit (declared Content-Length, or decoded chunked size) before the body is read,
  414 request line, 431 header fields, 501 transfer coding;
- closing is non-blocking too: gthread closes a finished `Connection: close` request with a
  blocking linger of up to 2 s in its main loop, so clients that do not close their end would
  stall every other connection 2 s each; here the linger is a selector entry.

Measured with `make bench-half-open` (bench/half_open.py: the real server on the demo model,
2-core CPU shared with other jobs (load average ~6); 5 rounds alternating a baseline with 64
half-open connections held (32 partial heads, 32 authenticated POSTs with half their body);
/health x 10 and one 200-node graph per round; a /health without answer in 10 s = frozen):
- stock `gthread`, 4 threads (the old setup): FROZEN;
- stock `gthread`, 64 threads: FROZEN with 64 attackers; with 32 attackers /health p50 2.0 ms,
  p99 9.7 ms. More threads only move the limit: it takes one thread per attacker;
- `BufferedThreadWorker`, 4 threads: /health p50 3.6 ms, p99 10.1 ms (baseline p50 2.3 ms);
  graph median 62 ms against 92 ms without attackers (noise: not slower).
Other servers were considered but not measured: gunicorn's `gevent` and `tornado` workers are
not installed and would run blocking model work on their event loop; an ASGI worker behind a
WSGI adapter hands the body to the WSGI thread as it arrives, so a partial body would again hold
a thread. A subclass of the worker we already run (a few hundred lines with the framer) keeps
gunicorn (arbiter, signals, graceful shutdown, access log) and every deployment form unchanged.

Limits and exceptions, by design:
- TLS and HTTP/2 are not supported by this worker (terminate TLS in a reverse proxy);
- one connection buffers at most one request: its head (gunicorn's limits) and a body of at most
  `max_body_bytes` (1 MiB; chunked framing may add up to 4x overhead), so memory per
  connection is bounded; `worker_connections` (1000) bounds the number of connections;
- a response is written by a thread with a blocking socket, as in gthread: a client that does not
  read a large response holds that thread (only authenticated requests have large responses);
- not JSON: a connection that sent nothing, or closed before its request was complete, is
  closed without a reply (there is nobody to read one); errors raised after the application
  started its response cannot be changed; under `--dev` (Flask's server) werkzeug's own
  protocol errors are HTML.

The class relies on gunicorn 27's `gthread` internals (TConn, finish_request, method queue);
pyproject pins gunicorn to 27.x and tests/test_http_edges.py exercises every path through a real
gunicorn process.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from datetime import timedelta
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.http.errors import (
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    ParseException,
)
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import TConn, ThreadWorker

from neuronpedia_graph.serving.framing import (
    RequestFramer,
    RequestRejected,
    error_response_bytes,
    rejection_for,
)
from neuronpedia_graph.serving.stream_handoff import HandoffWorkerMixin

DEFAULT_REQUEST_READ_TIMEOUT = 30.0
DEFAULT_MAX_BODY_BYTES = 1 << 20
LINGER_SECONDS = 2.0  # how long a closing connection's unread input is drained
LINGER_MAX_BYTES = 1 << 20
READ_PER_EVENT = 1 << 18  # fairness: one readable event reads at most this much
_RECV_SIZE = 1 << 16


class _BufferedRequestParser(RequestParser):
    """gunicorn's request parser over the bytes of exactly one buffered request."""

    def __next__(self) -> Any:
        req = super().__next__()
        # The whole body is already here: the event loop answered any `Expect: 100-continue`.
        req._expected_100_continue = False
        return req


class _Conn(TConn):  # type: ignore[misc]
    """A gthread connection plus what the event loop knows about its next request."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.initialized = True  # never let the thread wait for data or wrap the socket
        self.buf = bytearray()
        self.framer: RequestFramer | None = None
        self.deadline = 0.0
        self.close_after = False  # the client half-closed: answer, then close


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, except that pool threads only ever see complete, buffered requests."""

    request_read_timeout: float = DEFAULT_REQUEST_READ_TIMEOUT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: dict[_Conn, None] = {}  # insertion-ordered set
        self._lingering: dict[socket.socket, float] = {}
        self._stop_deadline: float | None = None

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl:
            raise RuntimeError(
                f"{cls.__name__} does not terminate TLS: put a TLS reverse proxy in front"
            )

    # ------------------------------------------------------------ reading requests
    def accept(self, listener: socket.socket) -> None:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        self.nr_conns += 1
        conn = _Conn(self.cfg, sock, client, listener.getsockname())
        self._await_request(conn, idle_timeout=self.request_read_timeout)

    def _await_request(self, conn: _Conn, idle_timeout: float) -> None:
        """Put the connection in the loop until its next request is complete."""
        conn.sock.setblocking(False)
        conn.framer = RequestFramer(self.cfg, conn.client, self.max_body_bytes)
        timeout = self.request_read_timeout if conn.buf else idle_timeout
        conn.deadline = time.monotonic() + timeout
        self._reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if conn.buf:  # pipelined bytes that arrived with the previous request
            self._advance(conn, eof=False)

    def _on_readable(self, conn: _Conn, _fileobj: Any) -> None:
        try:
            self._receive(conn)
        except Exception:  # a bug here must cost one connection, never the worker
            self.log.exception("Error reading a request")
            if conn in self._reading:
                self._drop(conn)

    def _receive(self, conn: _Conn) -> None:
        received = 0
        eof = False
        while received < READ_PER_EVENT:
            try:
                data = conn.sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._drop(conn)
                return
            if not data:
                eof = True
                break
            if not conn.buf:  # first byte of a request: its read timeout starts now
                conn.deadline = time.monotonic() + self.request_read_timeout
            conn.buf += data
            received += len(data)
            if len(data) < _RECV_SIZE:
                break
        self._advance(conn, eof)

    def _advance(self, conn: _Conn, eof: bool) -> None:
        """Dispatch the request if it is complete, reject it if it is bad, else wait."""
        assert conn.framer is not None
        if not conn.buf and eof:
            self._drop(conn)
            return
        try:
            size = conn.framer.feed(conn.buf)
        except RequestRejected as rejected:
            self._reject(conn, rejected)
            return
        if size is None:
            if eof:  # the client closed before finishing: the request is never executed
                self._drop(conn)
            elif conn.framer.take_continue():
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._stop_reading(conn)
        request = bytes(conn.buf[:size])
        del conn.buf[:size]
        conn.close_after = eof
        conn.parser = _BufferedRequestParser(self.cfg, [request], conn.client)
        self.enqueue_req(conn)

    def _stop_reading(self, conn: _Conn) -> None:
        self._reading.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    # ------------------------------------------------------------ after a request
    def _keepalive_after(self, conn: _Conn, keepalive: bool) -> bool:
        # The unread rest of the body is in memory: drain it all (gthread stops after 64 KiB
        # and then closes a connection it announced as keep-alive).
        return bool(keepalive) and bool(conn.parser.finish_body())

    def finish_request(self, conn: _Conn, fs: Any) -> None:
        """Runs on the main thread when a pool thread is done with the connection."""
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:
            keep = False
        if keep is True and not conn.close_after:
            idle = self.cfg.keepalive if self.alive else min(self.cfg.keepalive, LINGER_SECONDS)
            try:
                self._await_request(conn, idle_timeout=idle)
            except (OSError, ValueError, KeyError):
                self._forget(conn)
                util.close(conn.sock)
            return
        self._forget(conn)
        self._linger(conn.sock)

    # ------------------------------------------------------------ closing
    def _forget(self, conn: _Conn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1

    def _drop(self, conn: _Conn) -> None:
        """Close at once: the peer is gone, or it never sent a byte."""
        self._forget(conn)
        util.close(conn.sock)

    def _reject(self, conn: _Conn, rejected: RequestRejected) -> None:
        self.log.warning(
            "Rejected request from %s: %d %s", _peer(conn.client), rejected.status, rejected.message
        )
        self._forget(conn)
        with contextlib.suppress(OSError):
            conn.sock.send(error_response_bytes(rejected.status, rejected.message))
        self._linger(conn.sock)

    def _linger(self, sock: socket.socket) -> None:
        """Half-close and drain the client's unread input from the loop, without blocking.

        Closing with unread input makes the kernel send RST, which can destroy the response
        the client has not read yet (RFC 9112 section 9.6).
        """
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self._on_linger_readable)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._lingering[sock] = time.monotonic() + LINGER_SECONDS

    def _on_linger_readable(self, sock: socket.socket) -> None:
        drained = 0
        while drained < READ_PER_EVENT:
            try:
                data = sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                break
            if not data:
                break
            drained += len(data)
        else:
            return
        self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        self._lingering.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)

    def murder_pending(self) -> None:
        """Called by the run loop about once a second: enforce every deadline we own."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and self._stop_deadline is None:
            self._stop_deadline = now + LINGER_SECONDS
        for conn in list(self._reading):
            if self._stop_deadline is not None and not conn.buf:
                self._drop(conn)  # stopping: idle connections go now
            elif conn.deadline <= now or (
                self._stop_deadline is not None and self._stop_deadline <= now
            ):
                if conn.buf and self._stop_deadline is not None:
                    self._reject(conn, RequestRejected(503, "Server is shutting down"))
                elif conn.buf:
                    self._reject(
                        conn,
                        RequestRejected(
                            408,
                            f"Request not completed within {self.request_read_timeout:g} s "
                            "(REQUEST_READ_TIMEOUT)",
                        ),
                    )
                else:
                    self._drop(conn)
        for sock, deadline in list(self._lingering.items()):
            if deadline <= now:
                self._close_lingering(sock)

    # ------------------------------------------------------------ errors in a thread
    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn-level errors raised in a thread, answered as JSON without echoing input."""
        addr = addr or ("", -1)
        if isinstance(exc, ParseException) and not isinstance(
            exc, (InvalidResponseHeader, InvalidResponseHeaderName)
        ):
            rejected = rejection_for(exc, self.cfg)
        else:  # an application bug that reached gunicorn
            rejected = RequestRejected(500, "Internal server error")
        if rejected.status >= 500:
            path = getattr(req, "path", None) or "(no request line read)"
            self.log.exception("Error handling request %s", path)
        else:
            self.log.warning(
                "Rejected request from %s: %d %s", addr[0], rejected.status, rejected.message
            )
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = addr[0]
            environ["REMOTE_PORT"] = str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{rejected.status} {rejected.message}"
            self.log.access(resp, req, environ, timedelta(0))
        try:
            util.write_nonblock(client, error_response_bytes(rejected.status, rejected.message))
        except Exception:
            self.log.debug("Failed to send error message.")


def configured_worker(
    request_read_timeout: float = DEFAULT_REQUEST_READ_TIMEOUT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> type[BufferedThreadWorker]:
    """A `BufferedThreadWorker` subclass carrying these limits (gunicorn takes a class).

    Args:
        request_read_timeout: seconds a client has to deliver a complete request.
        max_body_bytes: the application's body limit; larger bodies get 413 unread.

    Returns:
        The class to pass as gunicorn's `worker_class`.
    """
    return type(
        "BufferedThreadWorker",
        (HandoffWorkerMixin, BufferedThreadWorker),
        {
            "request_read_timeout": float(request_read_timeout),
            "max_body_bytes": int(max_body_bytes),
            "__module__": __name__,
        },
    )


def _peer(client: Any) -> str:
    if isinstance(client, (tuple, list)) and client:
        return str(client[0])
    return str(client or "-")
