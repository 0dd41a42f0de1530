"""A gunicorn worker that reads whole requests and writes whole responses in its event loop.

gunicorn's `gthread` worker hands a connection to a pool thread as soon as it is readable; the
thread then parses the request with blocking reads and writes the response with blocking sends.
A client that sends part of a request, or never reads its response, keeps that thread for as long
as it likes, and a handful of them freeze the server, `/health` included, without a secret.

`BufferedThreadWorker` subclasses gunicorn's `ThreadWorker` and changes only where bytes move,
so that a pool thread never waits for a client and the event loop never does work that grows
faster than the bytes it received:
- reading: connections stay non-blocking in the worker's selector loop; each readable event
  appends what the socket holds to that connection's buffer, and `framing.RequestFramer`
  decides (in time linear in the bytes) when one complete request is there. Only then is the
  request given to a pool thread, whose gunicorn parser reads from memory. A body shorter than
  its Content-Length is never executed;
- writing: the thread writes to an `_Outbox`, which sends what the kernel takes at once and keeps
  the rest in memory; the event loop sends that rest when the client reads. A client that reads
  nothing for `WRITE_TIMEOUT` is disconnected. The thread is free as soon as the application has
  produced its response, and the next pipelined request is only read once the response is out;
- deadlines: a new connection must send its first byte within `IDLE_TIMEOUT`, a request must be
  complete within `REQUEST_READ_TIMEOUT` of its first byte (else 408), a kept-alive connection
  may idle for gunicorn's `keepalive` (2 s);
- the connection limit (`MAX_CONNECTIONS`) counts every socket the worker holds, closing ones
  included. At the limit the oldest idle connection is closed to admit the new one (then the
  oldest closing one, then the oldest partial request, answered 503), so idle clients cannot lock
  others out; only connections busy in a thread or writing a response are never shed;
- memory: partial requests together may buffer at most `REQUEST_BUFFER_BUDGET` bytes; over it, the
  connection with the largest partial request is answered 503 (with `Retry-After`) and closed;
- descriptors: when `accept()` fails for lack of descriptors (EMFILE, ENFILE) or memory, the
  oldest idle connection is closed to make room, or accepting pauses for a second; the worker
  never dies of it;
- errors that need no application are answered in the loop as JSON `{"error": ...}` with
  `Connection: close` (400, 408, 413, 414, 431, 501, 503), and closing is non-blocking too: a
  closing connection's unread input is drained from the loop for up to 2 s (RFC 9112 section 9.6).

Why this worker and not another design (the measurements are in docs/server-layer.md): gunicorn
stays, and its only workers that never tie a thread to a slow client are the async ones (gevent,
eventlet, tornado), which would run the model's blocking work on their event loop. A subclass of
the worker we already run keeps gunicorn's arbiter, signals, graceful shutdown and access log.

Limits, by design: no TLS or HTTP/2 (terminate TLS in a reverse proxy; docs/deployment-nginx.md);
a connection that sent nothing, or closed before its request was complete, is closed without a
reply; errors raised after the application started its response cannot be changed.

The class relies on gunicorn 27's `gthread` internals (TConn, handle, finish_request, method
queue); pyproject pins gunicorn to 27.x and tests/test_http_edges.py and
tests/test_server_limits.py exercise every path through a real gunicorn process.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from collections import deque
from concurrent.futures import Future
from datetime import timedelta
from functools import partial
from typing import BinaryIO

from gunicorn import util
from gunicorn.http.errors import (
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    ParseException,
)
from gunicorn.http.parser import RequestParser
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import TConn, ThreadWorker

from neuronpedia_graph.limits import MAX_BODY_BYTES
from neuronpedia_graph.serving.framing import (
    RequestFramer,
    RequestRejected,
    body_reader,
    error_response_bytes,
    rejection_for,
)
from neuronpedia_graph.serving.gunicorn_types import (
    ClientSocket,
    GunicornConfig,
    GunicornLogger,
    GunicornRequest,
    SocketAddress,
)
from neuronpedia_graph.serving.stream_handoff import HandoffWorkerMixin
from neuronpedia_graph.settings import Settings

DEFAULT_REQUEST_READ_TIMEOUT: float = Settings.model_fields["request_read_timeout"].default
DEFAULT_MAX_BODY_BYTES = MAX_BODY_BYTES
DEFAULT_IDLE_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_REQUEST_BUFFER_BUDGET = 64 << 20
DEFAULT_WRITE_TIMEOUT = 30.0
LINGER_SECONDS = 2.0  # how long a closing connection's unread input is drained
LINGER_MAX_BYTES = 1 << 16  # and at most this much of it: a client that keeps sending is cut
# Fairness: one readable event reads (and frames) at most this much, so one turn of the loop
# over many busy connections stays short and a new client's turn comes soon.
READ_PER_EVENT = 1 << 14
WRITE_PER_EVENT = 1 << 20  # fairness: one writable event sends at most this much
# Descriptors kept free for the application (model files, uploads, logs) under the soft
# RLIMIT_NOFILE: connections beyond it are shed like any others at the connection limit.
DESCRIPTOR_RESERVE = 64
ACCEPT_PAUSE_SECONDS = 1.0
ACCEPT_PER_EVENT = 64  # accepting pauses this long when no descriptor can be freed
_RECV_SIZE = 1 << 14
_NO_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# misc: gunicorn is untyped, so its classes are `Any` to mypy (see gunicorn_types).
class _BufferedRequestParser(RequestParser):  # type: ignore[misc]
    """gunicorn's request parser over the bytes of exactly one buffered request."""

    def __init__(
        self,
        cfg: GunicornConfig,
        request: bytes,
        client: SocketAddress,
        decoded: bytes | None,
    ) -> None:
        super().__init__(cfg, [request], client)
        self._decoded = decoded

    def __next__(self) -> GunicornRequest:
        req: GunicornRequest = super().__next__()
        # The whole body is already here: the event loop answered any `Expect: 100-continue`.
        req._expected_100_continue = False
        if self._decoded is not None:  # chunked: the framer decoded it; the head came alone
            req.body = body_reader(self._decoded)
            self._decoded = None
        return req


class _Outbox:
    """The socket a pool thread writes to: what the kernel does not take at once waits here.

    The thread never blocks on the client: `sendall` sends without blocking and keeps the rest;
    the event loop sends it (`flush`) once the thread is done. Only one side uses it at a time
    (the thread while it runs, then the loop), so it needs no lock.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending: deque[memoryview] = deque()
        self.closing = False  # the thread asked to close the connection

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not self.pending:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                view = view[self.sock.send(view) :]
        if len(view):
            # keep immutable bytes by reference; copy anything the caller could still change
            self.pending.append(view if isinstance(data, bytes) else memoryview(bytes(view)))

    def send(self, data: bytes | bytearray | memoryview) -> int:
        self.sendall(data)
        return len(data)

    def sendfile(self, file: BinaryIO, offset: int = 0, count: int | None = None) -> int:
        file.seek(offset)
        total = 0
        while count is None or total < count:
            block = file.read(_RECV_SIZE if count is None else min(_RECV_SIZE, count - total))
            if not block:
                break
            self.sendall(block)
            total += len(block)
        return total

    def detach(self) -> socket.socket:
        """The socket itself, for an application that takes the connection over (a stream).

        Nothing may be pending: a handoff happens before the response's first byte.
        """
        if self.pending:
            raise RuntimeError("cannot hand over a connection with a response half written")
        return self.sock

    def flush(self, budget: int) -> int:
        """Send pending bytes (at most `budget`) without blocking; returns how many were sent."""
        sent = 0
        while self.pending and sent < budget:
            view = self.pending[0]
            try:
                n = self.sock.send(view[: budget - sent])
            except (BlockingIOError, InterruptedError):
                break
            sent += n
            if n == len(view):
                self.pending.popleft()
            else:
                self.pending[0] = view[n:]
                break
        return sent

    # what gunicorn's Response and util helpers call besides the writes
    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, _flag: bool) -> None:
        return None

    def settimeout(self, _value: float | None) -> None:
        return None

    def fileno(self) -> int:
        return self.sock.fileno()

    def getpeername(self) -> SocketAddress:
        address: SocketAddress = self.sock.getpeername()
        return address

    def getsockname(self) -> SocketAddress:
        address: SocketAddress = self.sock.getsockname()
        return address

    def shutdown(self, _how: int) -> None:
        self.closing = True
        raise OSError(errno.ENOTCONN, "closed by the event loop once the response is sent")

    def close(self) -> None:
        self.closing = True


class _Conn(TConn):  # type: ignore[misc]  # misc: gunicorn's TConn is untyped
    """A gthread connection plus what the event loop knows about its next request.

    `sock` is what gunicorn's thread writes to (the outbox while a thread has the connection);
    the event loop reads, lingers and closes through `raw_sock`, the socket itself.
    """

    sock: ClientSocket
    client: SocketAddress

    def __init__(
        self,
        cfg: GunicornConfig,
        sock: socket.socket,
        client: SocketAddress,
        server: SocketAddress,
    ) -> None:
        super().__init__(cfg, sock, client, server)
        self.initialized = True  # never let the thread wait for data or wrap the socket
        self.buf = bytearray()
        self.counted = 0  # bytes of this connection in the worker's buffer total
        self.framer: RequestFramer | None = None
        self.deadline = 0.0
        self.close_after = False  # the client half-closed: answer, then close
        self.raw_sock = sock
        self.outbox: _Outbox | None = None
        self.keep_after_write = False


class BufferedThreadWorker(ThreadWorker):  # type: ignore[misc]  # misc: gunicorn is untyped
    """gthread, except that pool threads only ever see complete requests and never block."""

    # What this class uses of gunicorn's (untyped) worker, with its types.
    cfg: GunicornConfig
    log: GunicornLogger
    poller: selectors.BaseSelector
    alive: bool
    nr_conns: int
    worker_connections: int

    request_read_timeout: float = DEFAULT_REQUEST_READ_TIMEOUT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    request_buffer_budget: int = DEFAULT_REQUEST_BUFFER_BUDGET
    write_timeout: float = DEFAULT_WRITE_TIMEOUT

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        # gthread stops accepting at worker_connections; we shed before reaching it.
        self.worker_connections = self.max_connections
        self._reading: dict[_Conn, None] = {}  # insertion-ordered: oldest first
        self._writing: dict[_Conn, float] = {}  # connection -> write deadline
        self._lingering: dict[socket.socket, float] = {}  # oldest first
        self._drained: dict[socket.socket, int] = {}  # bytes drained from each lingering one
        self._buffered = 0  # bytes of partial requests held, all connections
        self._stop_deadline: float | None = None
        self._accept_paused_until = 0.0
        self._last_warning: dict[str, float] = {}

    @classmethod
    def check_config(cls, cfg: GunicornConfig, log: GunicornLogger) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl:
            raise RuntimeError(
                f"{cls.__name__} does not terminate TLS: put a TLS reverse proxy in front"
            )

    def _warn(self, key: str, message: str, *args: object) -> None:
        """A warning at most every 10 s per kind: an attack must not flood the log."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -1e9) >= 10.0:
            self._last_warning[key] = now
            self.log.warning(message, *args)

    def run(self) -> None:
        self._fit_descriptor_limit()
        super().run()

    def _fit_descriptor_limit(self) -> None:
        """Lower the connection limit to what RLIMIT_NOFILE leaves after the application's share."""
        import os
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return
        try:
            in_use = len(os.listdir("/proc/self/fd"))
        except OSError:
            in_use = 64
        room = max(soft - in_use - DESCRIPTOR_RESERVE, 16)
        if room < self.max_connections:
            self.log.warning(
                "MAX_CONNECTIONS lowered from %d to %d: the descriptor limit (ulimit -n) is %d",
                self.max_connections,
                room,
                soft,
            )
            self.max_connections = self.worker_connections = room

    # ------------------------------------------------------------ accepting
    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and time.monotonic() < self._accept_paused_until:
            enabled = False
        super().set_accept_enabled(enabled)

    def accept(self, listener: socket.socket) -> None:
        """Accept every waiting connection (up to a batch): one per loop turn would leave
        honest clients queued in the kernel behind a flood of attackers' connects."""
        for _ in range(ACCEPT_PER_EVENT):
            if not self._accept_one(listener):
                return

    def _accept_one(self, listener: socket.socket) -> bool:
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return False
            if exc.errno in _NO_RESOURCES and self._shed_one():
                self._warn("accept", "accept() failed (%s): closed an idle connection", exc)
                return True
            # Nothing to shed, or an unexpected error: pause accepting rather than spin or die.
            self._warn("accept", "accept() failed (%s): accepting paused %g s", exc, 1.0)
            self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_SECONDS
            self.set_accept_enabled(False)
            return False
        try:
            conn = _Conn(self.cfg, sock, client, listener.getsockname())
        except OSError:
            util.close(sock)
            return True
        self.nr_conns += 1
        self._await_request(conn, idle_timeout=self.idle_timeout)
        while self.nr_conns >= self.max_connections:
            if not self._shed_one(keep=conn):
                break
            self._warn(
                "limit",
                "Connection limit (%d) reached: shedding the oldest idle connections",
                self.max_connections,
            )
        return bool(self.nr_conns < self.max_connections)

    def _shed_one(self, keep: _Conn | None = None) -> bool:
        """Close one connection to make room: idle, then closing, then a partial request."""
        for conn in self._reading:
            if not conn.buf and conn is not keep:
                self._drop(conn)
                return True
        for sock in self._lingering:
            self._close_lingering(sock)
            return True
        for conn in self._reading:
            if conn is not keep:
                busy = RequestRejected(503, "Server at its connection limit")
                self._reject(conn, busy, linger=False, quiet=True)
                return True
        return False

    # ------------------------------------------------------------ reading requests
    def _await_request(self, conn: _Conn, idle_timeout: float) -> None:
        """Put the connection in the loop until its next request is complete."""
        conn.sock.setblocking(False)
        conn.framer = RequestFramer(self.cfg, conn.client, self.max_body_bytes)
        timeout = self.request_read_timeout if conn.buf else idle_timeout
        conn.deadline = time.monotonic() + timeout
        self._reading[conn] = None
        self._account(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if conn.buf:  # pipelined bytes that arrived with the previous request
            self._advance(conn, eof=False)

    def _account(self, conn: _Conn) -> None:
        """Keep the worker's total of buffered request bytes in step with this connection."""
        held = 0
        if conn in self._reading:
            held = len(conn.buf) + (conn.framer.decoded_size if conn.framer else 0)
        self._buffered += held - conn.counted
        conn.counted = held

    def _on_readable(self, conn: _Conn, _fileobj: socket.socket) -> None:
        if conn not in self._reading:  # shed earlier in the same batch of events
            return
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
                data = conn.raw_sock.recv(_RECV_SIZE)
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
        if self._buffered > self.request_buffer_budget:
            self._enforce_budget()

    def _enforce_budget(self) -> None:
        """Over the budget: the largest partial requests are refused until it is met."""
        while self._buffered > self.request_buffer_budget and self._reading:
            largest = max(self._reading, key=lambda c: c.counted)
            if not largest.counted:
                break
            self._warn(
                "budget",
                "Request buffer budget (%d bytes, REQUEST_BUFFER_BUDGET) exceeded: refusing the "
                "largest partial requests",
                self.request_buffer_budget,
            )
            self._reject(
                largest,
                RequestRejected(
                    503, "Server is buffering too many request bytes (REQUEST_BUFFER_BUDGET)"
                ),
                quiet=True,
            )

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
            self._account(conn)
            if eof:  # the client closed before finishing: the request is never executed
                self._drop(conn)
            elif conn.framer.take_continue():
                with contextlib.suppress(OSError):
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._stop_reading(conn)
        decoded = conn.framer.decoded_body
        head = conn.framer.head_length or 0
        request = bytes(conn.buf[: head if decoded is not None else size])
        del conn.buf[:size]
        conn.close_after = eof
        conn.parser = _BufferedRequestParser(self.cfg, request, conn.client, decoded)
        conn.framer = None
        conn.outbox = _Outbox(conn.raw_sock)
        conn.sock = conn.outbox  # what the thread writes to; restored in finish_request
        self.enqueue_req(conn)

    def _stop_reading(self, conn: _Conn) -> None:
        self._reading.pop(conn, None)
        self._account(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.raw_sock)

    # ------------------------------------------------------------ after a request
    def _keepalive_after(self, conn: _Conn, keepalive: bool) -> bool:
        # The unread rest of the body is in memory: drain it all (gthread stops after 64 KiB
        # and then closes a connection it announced as keep-alive).
        return bool(keepalive) and bool(conn.parser.finish_body())

    def finish_request(self, conn: _Conn, fs: Future[bool]) -> None:
        """Runs on the main thread when a pool thread is done with the connection."""
        conn.sock = conn.raw_sock
        outbox, conn.outbox = conn.outbox, None
        try:
            keep = fs.result() if not fs.cancelled() else False
        except Exception:
            keep = False
        keep = keep is True and not conn.close_after and not (outbox and outbox.closing)
        if outbox is not None and outbox.pending:
            conn.outbox = outbox
            conn.keep_after_write = keep
            self._writing[conn] = time.monotonic() + self.write_timeout
            try:
                self.poller.register(
                    conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, conn)
                )
            except (OSError, ValueError, KeyError):
                self._abort_write(conn)
            return
        self._after_response(conn, keep)

    def _on_writable(self, conn: _Conn, _fileobj: socket.socket) -> None:
        if conn not in self._writing or conn.outbox is None:  # closed earlier in this batch
            return
        try:
            sent = conn.outbox.flush(WRITE_PER_EVENT)
        except OSError:
            self._abort_write(conn)
            return
        if conn.outbox.pending:
            if sent:
                self._writing[conn] = time.monotonic() + self.write_timeout
            return
        self._writing.pop(conn, None)
        conn.outbox = None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        self._after_response(conn, conn.keep_after_write)

    def _abort_write(self, conn: _Conn) -> None:
        """The client is gone or reads nothing: close at once (nothing more can reach it)."""
        self._writing.pop(conn, None)
        conn.outbox = None
        self._drop(conn)

    def _after_response(self, conn: _Conn, keep: bool) -> None:
        if keep:
            idle = self.cfg.keepalive if self.alive else min(self.cfg.keepalive, LINGER_SECONDS)
            try:
                self._await_request(conn, idle_timeout=idle)
            except (OSError, ValueError, KeyError):
                self._forget(conn)
                util.close(conn.sock)
            return
        self._stop_reading(conn)
        self._linger(conn.raw_sock)

    # ------------------------------------------------------------ closing
    def _forget(self, conn: _Conn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1

    def _drop(self, conn: _Conn) -> None:
        """Close at once: the peer is gone, or it never sent a byte."""
        self._forget(conn)
        util.close(conn.sock)

    def _reject(
        self, conn: _Conn, rejected: RequestRejected, linger: bool = True, quiet: bool = False
    ) -> None:
        """Answer with a JSON error and close; `quiet` when a rate-limited warning covers it."""
        log = self.log.debug if quiet else self.log.warning
        log(
            "Rejected request from %s: %d %s", _peer(conn.client), rejected.status, rejected.message
        )
        self._stop_reading(conn)
        conn.buf = bytearray()
        with contextlib.suppress(OSError):
            conn.sock.send(error_response_bytes(rejected.status, rejected.message))
        if linger:
            self._linger(conn.raw_sock)
        else:
            self.nr_conns -= 1
            util.close(conn.sock)

    def _linger(self, sock: socket.socket) -> None:
        """Half-close and drain the client's unread input from the loop, without blocking.

        Closing with unread input makes the kernel send RST, which can destroy the response
        the client has not read yet (RFC 9112 section 9.6). A lingering socket still counts
        against the connection limit (it holds a descriptor) until it is closed.
        """
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self._on_linger_readable)
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            util.close(sock)
            return
        self._lingering[sock] = time.monotonic() + LINGER_SECONDS
        self._drained[sock] = 0

    def _on_linger_readable(self, sock: socket.socket) -> None:
        if sock not in self._lingering:  # shed earlier in the same batch of events
            return
        try:
            data = sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            self._drained[sock] += len(data)
            if self._drained[sock] < LINGER_MAX_BYTES:
                return
        self._close_lingering(sock)

    def _close_lingering(self, sock: socket.socket) -> None:
        self._drained.pop(sock, None)
        if self._lingering.pop(sock, None) is not None:
            self.nr_conns -= 1
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
        for conn, deadline in list(self._writing.items()):
            if deadline <= now:
                self._warn(
                    "write",
                    "Closed a connection that read none of its response for %g s (WRITE_TIMEOUT)",
                    self.write_timeout,
                )
                self._abort_write(conn)
        for sock, deadline in list(self._lingering.items()):
            if deadline <= now:
                self._close_lingering(sock)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0

    # ------------------------------------------------------------ errors in a thread
    def handle_error(
        self,
        req: GunicornRequest | None,
        client: ClientSocket,
        addr: SocketAddress | None,
        exc: BaseException,
    ) -> None:
        """gunicorn-level errors raised in a thread, answered as JSON without echoing input."""
        host, port = (str(addr[0]), str(addr[1])) if isinstance(addr, tuple) else ("", "-1")
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
                "Rejected request from %s: %d %s", host, rejected.status, rejected.message
            )
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = host
            environ["REMOTE_PORT"] = port
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
    *,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    request_buffer_budget: int = DEFAULT_REQUEST_BUFFER_BUDGET,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
) -> type[BufferedThreadWorker]:
    """A `BufferedThreadWorker` subclass carrying these limits (gunicorn takes a class).

    Args:
        request_read_timeout: seconds a client has to deliver a complete request.
        max_body_bytes: the application's body limit; larger bodies get 413 unread.
        idle_timeout: seconds a new connection may stay silent before it is closed.
        max_connections: sockets the worker holds at once; the oldest idle is shed at the limit.
        request_buffer_budget: total bytes of partial requests; over it the largest gets 503.
        write_timeout: seconds a response may wait for its client to read before it is dropped.

    Returns:
        The class to pass as gunicorn's `worker_class`.
    """
    return type(
        "BufferedThreadWorker",
        (HandoffWorkerMixin, BufferedThreadWorker),
        {
            "request_read_timeout": float(request_read_timeout),
            "max_body_bytes": int(max_body_bytes),
            "idle_timeout": float(idle_timeout),
            "max_connections": int(max_connections),
            "request_buffer_budget": int(request_buffer_budget),
            "write_timeout": float(write_timeout),
            "__module__": __name__,
        },
    )


def _peer(client: SocketAddress | None) -> str:
    if isinstance(client, tuple) and client:
        return str(client[0])
    return str(client or "-")
