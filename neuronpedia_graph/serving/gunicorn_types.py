"""Typed boundary for gunicorn, which ships no type information.

mypy sees every gunicorn import as `Any` (pyproject's override). Rather than let that spread
through the serving package, the gunicorn objects our code touches are described here as
Protocols naming exactly the members we read, set or call, and the worker, its hooks and the
access logger are annotated with them. `tests/test_gunicorn_types.py` checks each Protocol
against gunicorn's real classes and instances, so an upgrade that renames or drops a member
fails a test instead of a request.

Our subclasses of gunicorn's classes still inherit from `Any` (mypy cannot see their bases);
what they use of those bases is declared on the subclass with these types.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, BinaryIO, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

#: A socket address as `accept()`, `getpeername()` and `getsockname()` return it: (host, port)
#: for IPv4, (host, port, flowinfo, scope_id) for IPv6, a path for a Unix socket (bytes for an
#: abstract one, empty when the peer is unnamed).
SocketAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int] | str | bytes


@runtime_checkable
class GunicornConfig(Protocol):
    """`gunicorn.config.Config`: the settings our worker, framer and reload policy use."""

    @property
    def is_ssl(self) -> str | None:
        """The certificate (or key) file when TLS is configured, else None (not a bool)."""
        ...

    @property
    def keepalive(self) -> int: ...

    @property
    def limit_request_line(self) -> int: ...

    @property
    def limit_request_fields(self) -> int: ...

    @property
    def limit_request_field_size(self) -> int: ...

    def set(self, name: str, value: object) -> None: ...


@runtime_checkable
class GunicornRequest(Protocol):
    """`gunicorn.http.message.Request`: what the worker reads or replaces on a parsed request."""

    path: str | None
    #: gunicorn's body reader; the worker replaces it with one over an already decoded body.
    body: object
    _expected_100_continue: bool


@runtime_checkable
class GunicornResponse(Protocol):
    """`gunicorn.http.wsgi.Response`: what the worker's error path sets before logging it."""

    status: str | None
    sent: int


@runtime_checkable
class ClientSocket(Protocol):
    """The connection gunicorn's `Response` and `util` helpers write to.

    A `socket.socket`, or the buffering worker's outbox standing in for it while a pool thread
    runs the application (so these are exactly the calls the outbox must answer).
    """

    def sendall(self, data: bytes, /) -> None: ...

    def send(self, data: bytes, /) -> int: ...

    def sendfile(self, file: BinaryIO, offset: int = 0, count: int | None = None) -> int: ...

    def gettimeout(self) -> float | None: ...

    def setblocking(self, flag: bool, /) -> None: ...

    def settimeout(self, value: float | None, /) -> None: ...

    def fileno(self) -> int: ...

    def getpeername(self) -> SocketAddress: ...

    def getsockname(self) -> SocketAddress: ...

    def shutdown(self, how: int, /) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class GunicornLogger(Protocol):
    """`gunicorn.glogging.Logger`: the calls the worker, the arbiter and our logger make."""

    def setup(self, cfg: GunicornConfig) -> None: ...

    def reopen_files(self) -> None: ...

    def debug(self, msg: str, *args: object) -> None: ...

    def warning(self, msg: str, *args: object) -> None: ...

    def exception(self, msg: str, *args: object) -> None: ...

    def access(
        self,
        resp: GunicornResponse,
        req: GunicornRequest,
        environ: WSGIEnvironment,
        request_time: timedelta,
    ) -> None: ...


@runtime_checkable
class GthreadConnection(Protocol):
    """`gunicorn.workers.gthread.TConn`: one client connection of the gthread worker."""

    sock: ClientSocket
    client: SocketAddress


@runtime_checkable
class GunicornWorker(Protocol):
    """`gunicorn.workers.base.Worker` as the master's hooks see it (after the fork)."""

    age: int
    pid: int


@runtime_checkable
class GunicornApplication(Protocol):
    """`gunicorn.app.base.BaseApplication`: what the arbiter is built from."""

    cfg: GunicornConfig

    def wsgi(self) -> WSGIApplication: ...


@runtime_checkable
class GunicornArbiter(Protocol):
    """`gunicorn.arbiter.Arbiter`: what our hooks read and how the server is run."""

    #: the listening sockets (gunicorn's wrappers); empty once the arbiter is stopping.
    LISTENERS: Sequence[object]
    #: the age of the newest worker spawned.
    worker_age: int

    def run(self) -> None: ...


__all__ = [
    "ClientSocket",
    "GthreadConnection",
    "GunicornApplication",
    "GunicornArbiter",
    "GunicornConfig",
    "GunicornLogger",
    "GunicornRequest",
    "GunicornResponse",
    "GunicornWorker",
    "SocketAddress",
]
