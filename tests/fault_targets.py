"""Tiny local HTTP targets that misbehave on purpose, for upload fault tests.

SeaweedFS cannot be told to fail or stall on demand, so these stand in for an S3 endpoint that
returns transient 5xx errors or accepts a body and never answers. They record what arrived so
tests can check the wire format (Content-Length, no chunked encoding, body size).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

_S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{message}</Message>"
    "<RequestId>fault-target</RequestId></Error>"
)

_CODES = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "Bad gateway."),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "Gateway timeout."),
}


@dataclass(frozen=True)
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


@dataclass
class Target:
    """A running fault target: where to send requests and what it has received so far."""

    url: str
    requests: list[ReceivedRequest] = field(default_factory=list)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """Read the request body whichever framing the client chose, so chunked uploads are seen."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", "0")))


def _record(handler: BaseHTTPRequestHandler, target: Target) -> None:
    body = _read_body(handler)
    headers = {name.lower(): value for name, value in handler.headers.items()}
    target.requests.append(ReceivedRequest(handler.command, handler.path, headers, body))


class QuietHandler(BaseHTTPRequestHandler):
    """A target's request handler: HTTP/1.1 keep-alive as S3 speaks it, no request log."""

    protocol_version = "HTTP/1.1"

    def send_empty(self, status: int = 200) -> None:
        """Answer `status` with an empty body."""
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


T = TypeVar("T", bound=Target)


@contextlib.contextmanager
def serve(
    handler_cls: type[BaseHTTPRequestHandler],
    target: T,
    path: str = "",
    server_cls: type[ThreadingHTTPServer] = ThreadingHTTPServer,
    url_base: str = "http://127.0.0.1",
) -> Iterator[T]:
    """Serve `handler_cls` on a free loopback port until the block ends.

    Args:
        handler_cls: the request handler.
        target: what the caller gets back; its `url` is set to `path` on the new server.
        path: the URL path to point at.
        server_cls: the server class (to tune its socket or wrap it in TLS).
        url_base: scheme and host of `url` (the port is the server's).

    Yields:
        `target`, with its url set.
    """
    server = server_cls(("127.0.0.1", 0), handler_cls)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    target.url = f"{url_base}:{server.server_address[1]}{path}"
    try:
        yield target
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def flaky_target(
    fail_times: int = 2,
    status: int = 500,
    *,
    ok_status: int = 200,
    retry_after: int | None = None,
    path: str = "/bucket/graph.json",
) -> Iterator[Target]:
    """Answer `status` with an S3-style XML error `fail_times` times, then `ok_status`."""
    lock = threading.Lock()
    target = Target(url="")

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            with lock:
                failing = len(target.requests) <= fail_times
            if failing:
                code, message = _CODES.get(status, ("TestError", "Injected failure."))
                payload = _S3_ERROR.format(code=code, message=message).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
            else:
                payload = b""
                self.send_response(ok_status)
                self.send_header("ETag", '"fault-target"')
            if ok_status != 204 or failing:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    with serve(Handler, target, path):
        yield target


@contextlib.contextmanager
def hanging_target(path: str = "/bucket/graph.json") -> Iterator[Target]:
    """Accept the PUT and read its body, then never answer until the target is closed."""
    closed = threading.Event()
    target = Target(url="")

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            closed.wait()
            self.close_connection = True

    with serve(Handler, target, path):
        try:
            yield target
        finally:
            closed.set()


@contextlib.contextmanager
def slow_reader_target(bytes_per_second: int, path: str = "/bucket/graph.json") -> Iterator[Target]:
    """Read the body at a throttled rate (like a slow uplink), then answer 200.

    Small receive buffers keep the kernel from absorbing the body, so the client really spends
    about len(body) / bytes_per_second seconds sending it.
    """
    block = 16 * 1024
    target = Target(url="")

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            remaining = int(self.headers.get("Content-Length", "0"))
            parts = []
            while remaining:
                chunk = self.rfile.read1(min(block, remaining))
                if not chunk:
                    break
                parts.append(chunk)
                remaining -= len(chunk)
                time.sleep(len(chunk) / bytes_per_second)
            headers = {name.lower(): value for name, value in self.headers.items()}
            target.requests.append(ReceivedRequest("PUT", self.path, headers, b"".join(parts)))
            self.send_empty(200)

    class Server(ThreadingHTTPServer):
        def server_bind(self) -> None:
            # Set before listen() so accepted sockets inherit it and the TCP window stays small.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, block)
            super().server_bind()

    with serve(Handler, target, path, server_cls=Server):
        yield target


def closed_port_url(path: str = "/bucket/graph.json") -> str:
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@dataclass
class GatedTarget(Target):
    """A target that holds every PUT until `release` says how to answer it."""

    arrived: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _gate: threading.Event = field(default_factory=threading.Event)
    _status: int = 200

    def wait_for_arrival(self, timeout: float) -> bool:
        """Wait until one more PUT (whole body read) is being held."""
        return self.arrived.acquire(timeout=timeout)

    def release(self, status: int = 200) -> None:
        """Answer every held PUT, and any later one at once, with `status`."""
        self._status = status
        self._gate.set()


@contextlib.contextmanager
def gated_target(path: str = "/bucket/graph.json") -> Iterator[GatedTarget]:
    """Read each PUT's body, then hold it until `release(status)`; closing unreleased drops it.

    Stands in for an S3 endpoint that is slow to answer (for as long as a test needs), and
    lets the test decide when and how it answers.
    """
    target = GatedTarget(url="")
    closed = threading.Event()

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            target.arrived.release()
            while not (target._gate.wait(0.05) or closed.is_set()):
                pass
            if not target._gate.is_set():
                self.close_connection = True  # closed without an answer: drop the connection
                return
            self.send_empty(target._status)

    with serve(Handler, target, path):
        try:
            yield target
        finally:
            closed.set()


@dataclass
class BigReplyTarget(Target):
    bytes_sent: int = 0


@contextlib.contextmanager
def big_reply_target(
    size: int, status: int = 200, path: str = "/bucket/graph.json"
) -> Iterator[BigReplyTarget]:
    """Answer every PUT with `status` and a `size`-byte body (an XML error prefix, then filler).

    The body is streamed from one 1 MiB block, so the target itself stays small; it stops
    writing when the client hangs up. `bytes_sent` counts what the socket accepted.
    """
    target = BigReplyTarget(url="")
    prefix = b"<?xml version='1.0'?><Error><Code>HugeReply</Code><Message>"
    block = b"x" * (1 << 20)

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            remaining = size
            try:
                self.wfile.write(prefix)
                remaining -= len(prefix)
                target.bytes_sent += len(prefix)
                while remaining > 0:
                    chunk = block[: min(len(block), remaining)]
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
                    target.bytes_sent += len(chunk)
            except OSError:
                pass  # the client stopped reading and closed the connection
            self.close_connection = True

    with serve(Handler, target, path):
        yield target


@contextlib.contextmanager
def error_document_target(
    status: int, document: bytes, path: str = "/bucket/graph.json", reason: str | None = None
) -> Iterator[Target]:
    """Answer every PUT with `status`, the reason phrase `reason` and `document` as the body."""
    target = Target(url="")

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            self.send_response(status, reason)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

    with serve(Handler, target, path):
        yield target


@dataclass
class TlsTarget(Target):
    server_names: list[str | None] = field(default_factory=list)  # SNI of each handshake


@contextlib.contextmanager
def tls_target(
    context: ssl.SSLContext, host: str, path: str = "/bucket/graph.json"
) -> Iterator[TlsTarget]:
    """An https target on 127.0.0.1 with the server `context` given (a trustme certificate).

    Its `url` names `host` (which tests resolve to 127.0.0.1 through the guard's resolver) and
    it records the SNI name each TLS handshake asked for.
    """
    target = TlsTarget(url="")
    context.sni_callback = lambda _sock, name, _ctx: target.server_names.append(name)

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            self.send_empty(200)

    class Server(ThreadingHTTPServer):
        def get_request(self) -> tuple[socket.socket, object]:
            sock, addr = super().get_request()
            return context.wrap_socket(sock, server_side=True), addr

    with serve(Handler, target, path, server_cls=Server, url_base=f"https://{host}"):
        yield target


@contextlib.contextmanager
def continue_flood_target(
    interval: float = 2.0, path: str = "/bucket/graph.json"
) -> Iterator[Target]:
    """Read the PUT's body, then answer `100 Continue` every `interval` seconds, never more.

    Each interim reply is a complete response head, so a client's per-read timeout is never
    reached: only an overall deadline ends the upload. Closing the target drops the connection.
    """
    closed = threading.Event()
    target = Target(url="")

    class Handler(QuietHandler):
        def do_PUT(self) -> None:
            _record(self, target)
            try:
                while not closed.is_set():
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self.wfile.flush()
                    closed.wait(interval)
            except OSError:
                pass  # the client gave up and closed the connection
            self.close_connection = True

    with serve(Handler, target, path):
        try:
            yield target
        finally:
            closed.set()
