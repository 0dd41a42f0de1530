"""Long-lived responses (event streams) handed from a request thread to one stream thread.

gunicorn's gthread worker writes a response from the pool thread that ran the application, so
a stream that lasts minutes would hold that thread for minutes: a few open streams would take
every thread and `/health` would stop answering. Here the application writes the response head
itself, gives the socket to a `StreamPump` (one thread and a selector for every stream), and
tells the worker it has done so; the pool thread is free at once.

The protocol, kept apart from the buffering worker (`neuronpedia_graph.serving.worker`) so each has
one job:
- the WSGI app is wrapped by `HandoffMiddleware`; a view that wants to stream puts a
  `Handoff` in `environ[ENVIRON_KEY]` and returns its usual Flask response (status, headers,
  after-request hooks all apply). The middleware writes that head, hands the socket and the
  first bytes to the handoff's `take` callback, records the socket as claimed, and raises
  `StreamHandedOff`;
- the worker mixin (`HandoffWorkerMixin`) swallows `StreamHandedOff` (nothing is written, nothing
  logged as an error) and, when the pool thread is done, leaves claimed sockets open and no
  longer counted as its connections.

Where there is no such worker (Flask's development server, the test client), `supported()` is
false and views fall back to an ordinary streaming response, which holds its thread.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from neuronpedia_graph.serving.gunicorn_types import (
    ClientSocket,
    GthreadConnection,
    GunicornRequest,
    SocketAddress,
)

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

ENVIRON_KEY = "npg.stream_handoff"
_claimed: set[int] = set()
_claimed_lock = threading.Lock()
_supported = False


class StreamHandedOff(Exception):
    """The application took the connection; the worker must write nothing more on it."""


@dataclass
class Handoff:
    """What a view asks for: after the head, `first` is sent and `take(sock)` runs;
    `abandon()` runs instead when the client is already gone."""

    first: bytes
    take: Callable[[socket.socket], None]
    abandon: Callable[[], None]


def supported() -> bool:
    """Whether this process runs under a worker that accepts handed-off sockets."""
    return _supported


def _claim(sock: socket.socket) -> None:
    with _claimed_lock:
        _claimed.add(id(sock))


def _unclaim(sock: object) -> bool:
    with _claimed_lock:
        if id(sock) in _claimed:
            _claimed.discard(id(sock))
            return True
        return False


class DetachableSocket(Protocol):
    """A write buffer standing in for the connection (the buffering worker's outbox)."""

    def detach(self) -> socket.socket:
        """The socket itself; raises if part of a response is still buffered."""
        ...


class HandoffMiddleware:
    """Wraps the Flask WSGI app: performs the handoff a view asked for (see module doc)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        captured: list[tuple[str, list[tuple[str, str]]]] = []

        def capture(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            captured[:] = [(status, headers)]
            return start_response(status, headers, exc_info)

        result = self.app(environ, capture)
        handoff: Handoff | None = environ.get(ENVIRON_KEY)
        given: socket.socket | DetachableSocket | None = environ.get("gunicorn.socket")
        if handoff is None or given is None or not supported() or not captured:
            return result
        if (close := getattr(result, "close", None)) is not None:
            close()
        status, headers = captured[0]
        lines = [f"HTTP/1.1 {status}"]
        lines += [f"{name}: {value}" for name, value in headers if name.lower() != "content-length"]
        lines += ["Transfer-Encoding: chunked", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        # Our worker gives the thread a write buffer over the socket; the stream needs the socket.
        # (A real socket's own `detach()` would return a bare descriptor: use it as it is.)
        if isinstance(given, socket.socket):
            sock = given
        else:
            sock = given.detach()
            sock.settimeout(10.0)  # the head is small; the pump makes it non-blocking again
        try:
            sock.sendall(head + chunk(handoff.first))
        except OSError:
            handoff.abandon()
            raise
        _claim(sock)
        handoff.take(sock)
        raise StreamHandedOff()


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk (the empty chunk ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b"0\r\n\r\n"


class HandoffWorkerMixin:
    """For the gunicorn worker class: accept sockets the application took (see module doc)."""

    nr_conns: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        global _supported
        super().__init__(*args, **kwargs)
        _supported = True

    def handle_error(
        self,
        req: GunicornRequest | None,
        client: ClientSocket,
        addr: SocketAddress | None,
        exc: BaseException,
    ) -> None:
        if isinstance(exc, StreamHandedOff):
            return
        # misc: the worker class this is mixed into defines it; the mixin's own base is object.
        super().handle_error(req, client, addr, exc)  # type: ignore[misc]

    def finish_request(self, conn: GthreadConnection, fs: Future[bool]) -> None:
        if _unclaim(getattr(conn, "raw_sock", conn.sock)):
            self.nr_conns -= 1  # the stream thread owns the socket now
            return
        # misc: as above, gunicorn's worker defines it.
        super().finish_request(conn, fs)  # type: ignore[misc]
