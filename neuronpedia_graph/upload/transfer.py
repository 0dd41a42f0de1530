"""Deliver a finished graph to its presigned S3 PUT URL, or keep it on local disk.

A graph can take minutes of GPU time to compute, so the upload must not hang forever, must ride
out transient S3 errors, and must not lose the body when it finally fails (see `spool_graph`).
The presigned URL's query string is a bearer credential: it never reaches logs or error text.

`put_graph` takes an `UploadTarget`, which only `upload_guard.UploadGuard.check` makes: there is
no way to upload to a URL that skipped the SSRF policy, and the connection goes to an address
that policy checked (urllib3 connection pools opened on that IP, with SNI, certificate check
and Host header for the original name). Whatever the target sends back is read at most
`MAX_REPLY_BYTES`, and only a sanitized S3 error code from it ever reaches the client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar, cast

from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.response import BaseHTTPResponse
from urllib3.util import Timeout
from urllib3.util.retry import Retry

from neuronpedia_graph.settings import Settings
from neuronpedia_graph.upload.guard import UploadTarget

__all__ = [
    "MAX_REPLY_BYTES",
    "UploadError",
    "UploadPolicy",
    "UploadResult",
    "byte_view",
    "put_graph",
]

log = logging.getLogger(__name__)

# S3 and its clones answer 500/503 for transient overload; 502/504 come from proxies in front.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# urllib3 writes request paths (with the signed query) into these loggers' records.
_URLLIB3_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.response",
    "urllib3.util.retry",
)
_QUERY_IN_TEXT = re.compile(r"\?[^\s'\"<>]+")
# An S3 error document is a few hundred bytes; a reply is never read past this.
MAX_REPLY_BYTES = 64 * 1024
_READ_BLOCK = 16 * 1024
# What of the target's reply may reach the client: an S3-style error code, nothing else.
_SAFE_CODE = re.compile(r"[A-Za-z0-9]{1,64}")


_T = TypeVar("_T")


def _default(name: str, kind: type[_T]) -> _T:
    """The default of the `Settings` field `name`, checked to be a `kind`."""
    value = Settings.model_fields[name].default
    if not isinstance(value, kind):
        raise TypeError(f"Settings.{name} defaults to {value!r}, not a {kind.__name__}")
    return value


@dataclass(frozen=True)
class UploadPolicy:
    """How long to wait and how often to retry; tests shrink these to stay fast.

    The defaults are the settings' defaults (one declaration, in `Settings`). Retry-After from
    the target is honoured but capped at `backoff_max`, so a target cannot park a worker for
    hours. `ca_certs` is a PEM bundle for https targets (None: certifi's).
    """

    connect_timeout: float = _default("upload_connect_timeout", float)
    read_timeout: float = _default("upload_read_timeout", float)
    retries: int = _default("upload_retries", int)  # extra attempts after the first
    backoff_factor: float = _default("upload_backoff", float)  # exponential backoff (Retry)
    backoff_max: float = 10.0
    ca_certs: str | None = None
    deadline: float = _default("upload_deadline", float)  # the whole upload: attempts, waits, 1xx

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPolicy:
        return cls(
            connect_timeout=settings.upload_connect_timeout,
            read_timeout=settings.upload_read_timeout,
            retries=settings.upload_retries,
            backoff_factor=settings.upload_backoff,
            deadline=settings.upload_deadline,
        )


@dataclass(frozen=True)
class UploadResult:
    """What was delivered, safe to log or return to the web app (the URL is redacted)."""

    url: str  # redacted: scheme://host[:port]/path, no query string
    bytes: int
    compressed: bool
    status: int
    attempts: int
    seconds: float


class UploadError(Exception):
    """The upload failed for good; the caller should spool the body and report `detail`.

    `status` is the last HTTP status (None when no response came back) and `code` the S3
    error code from the XML error body, kept only when it is 1-64 ASCII letters and digits.
    `detail` is built from those and from local facts (timeouts, OS errors): no text the
    target wrote (its error message, reason phrase) and never the URL's query string, so it
    is safe to return to the client. Raised without a chained cause for the same reason.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code
        self.attempts = attempts

    def __reduce__(self) -> tuple[type[UploadError], tuple[str], dict[str, object]]:
        # Keyword-only attributes are not in `args`; keep them when the error crosses processes.
        return (type(self), (self.detail,), self.__dict__)


def _scrub(text: str) -> str:
    return _QUERY_IN_TEXT.sub("?<redacted>", text)


class _RedactQueryFilter(logging.Filter):
    """Rewrites urllib3 log records so signed query strings never reach any handler.

    urllib3 logs the request path including the query at DEBUG; a filter on the emitting
    logger runs before every handler sees the record.

    It is attached process-wide (urllib3's loggers are shared), which only ever removes query
    strings from urllib3's own messages.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _scrub(record.getMessage())
        record.args = ()
        if record.exc_info:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _install_log_redaction() -> None:
    """Attach the redaction filter once per urllib3 logger (lazily: no import-time side effects)."""
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueryFilter) for f in logger.filters):
            logger.addFilter(_RedactQueryFilter())


def _retry_for(policy: UploadPolicy) -> Retry:
    """urllib3's retry bookkeeping (counts, backoff, Retry-After), driven by `put_graph`.

    Read errors are never retried (`read=False`): once the request has gone out the target may
    have stored it, and a stalled target must fail within one read timeout. TLS and other
    errors are not retried either (`other=0`): a bad certificate does not heal in a second.
    """
    return Retry(
        total=policy.retries,
        connect=policy.retries,
        read=False,
        status=policy.retries,
        other=0,
        redirect=0,
        allowed_methods=frozenset({"PUT"}),
        status_forcelist=_RETRY_STATUSES,
        backoff_factor=policy.backoff_factor,
        backoff_max=policy.backoff_max,
        retry_after_max=max(1, round(policy.backoff_max)),
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
    )


class _Deadline:
    """One upload's overall time limit, enforced on the sockets themselves.

    Per-read timeouts cannot bound an upload: http.client reads any number of `100 Continue`
    replies in one call, so a target sending one every 2 s never trips a 5 s read timeout and
    holds the upload slot for as long as it likes. A timer shuts down every connection the
    upload opened when the deadline passes; whatever call was blocked on it (sending the body,
    reading a status line) returns at once with an error, which `put_graph` reports as the
    deadline. Between attempts the remaining time also caps timeouts and backoff waits.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def watch(self, sock: socket.socket | None) -> None:
        """Cut this connection when the deadline passes (at once if it already has)."""
        if sock is None:
            return
        with self._lock:
            if self.expired:
                _cut(sock)
            else:
                self._sockets.append(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _cut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _cut(sock: socket.socket) -> None:
    """Shut a connection down under whoever is blocked on it (plain socket level, also TLS)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watched(connection_cls: type, deadline: _Deadline) -> type:
    """A urllib3 connection class whose sockets the deadline can cut."""

    # misc: the base is chosen at run time (urllib3's HTTP or HTTPS connection class).
    class Watched(connection_cls):  # type: ignore[misc]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _BodyReader:
    """File-like, zero-copy view of the body, sent in blocks with a Content-Length.

    Handing http.client plain bytes makes it push the whole body in one `sendall`, and since
    Python 3.5 a socket timeout bounds that entire call: a 100 MB graph on a link slower than
    20 MB/s would hit the 5 s connect timeout (urllib3 uses it while sending). Read in blocks,
    each send gets its own timeout. `seek` rewinds the body for a retry.
    """

    def __init__(self, view: memoryview) -> None:
        self._view = view
        self._pos = 0

    def __len__(self) -> int:
        return self._view.nbytes

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._view.nbytes}[whence]
        self._pos = min(max(base + offset, 0), self._view.nbytes)
        return self._pos

    def read(self, size: int = -1) -> memoryview:
        end = self._view.nbytes if size is None or size < 0 else self._pos + size
        chunk = self._view[self._pos : end]
        self._pos += chunk.nbytes
        return chunk


def byte_view(body: bytes | memoryview) -> memoryview:
    """A flat unsigned-byte view of the body, so lengths and slices count bytes, not items.

    Re-viewing never copies; only a view that is not C-contiguous has to be copied.
    """
    view = memoryview(body)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _read_head(response: BaseHTTPResponse, limit: int, seconds: float) -> bytes:
    """At most `limit` bytes of a reply, within about `seconds`; the rest is never read.

    A 200 MB reply costs 64 KiB, and a target that trickles its reply cannot hold the upload
    much past one read timeout. Read errors just end the head: it is only used for the code.
    """
    deadline = time.monotonic() + seconds
    parts: list[bytes] = []
    size = 0
    try:
        while size < limit and time.monotonic() < deadline:
            block = response.read(min(_READ_BLOCK, limit - size), decode_content=False)
            if not block:
                break
            parts.append(block)
            size += len(block)
    except (HTTPError, OSError):
        pass
    return b"".join(parts)


def _s3_error(head: bytes) -> tuple[str | None, str | None]:
    """(Code, Message) of an S3 XML error document; (None, None) when it is not one.

    Parsed incrementally, so the code is found even when the reply was cut at
    `MAX_REPLY_BYTES`. The code is kept only when it is 1-64 ASCII letters and digits (every
    S3 code is): it is the one piece of the target's reply that is passed on to the client.
    The message is only for the server log. A document with a DTD is not parsed at all, so
    no entity is ever expanded (and ElementTree never fetches external ones).
    """
    if not head.lstrip().startswith(b"<") or b"<!DOCTYPE" in head.upper():
        return None, None  # S3 error documents have no DTD, so none is parsed (no entities)
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    fields: dict[str, str] = {}
    depth = 0
    try:
        parser.feed(head)
        for event, element in cast(Iterator[tuple[str, ET.Element]], parser.read_events()):
            depth += 1 if event == "start" else -1
            if event == "end" and depth == 1:  # a direct child of <Error>
                fields.setdefault(element.tag.rsplit("}", 1)[-1], (element.text or "").strip())
    except ET.ParseError:
        pass
    code = fields.get("Code") or ""
    return (code if _SAFE_CODE.fullmatch(code) else None), (fields.get("Message") or None)


def _root_cause(exc: BaseException) -> BaseException:
    """Innermost error under urllib3 wrappers (MaxRetryError.reason, ProtocolError args)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nested = getattr(exc, "reason", None)
        if not isinstance(nested, BaseException):
            nested = next((a for a in exc.args if isinstance(a, BaseException)), None)
        if nested is None:
            nested = exc.__cause__ or exc.__context__
        if nested is None:
            break
        exc = nested
    return exc


def _failure_detail(exc: Exception, policy: UploadPolicy, attempts: int) -> str:
    """Client-safe summary of a request that got no HTTP response; never includes the URL."""
    error = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
    if isinstance(error, ReadTimeoutError):
        return f"timed out after {policy.read_timeout:g}s waiting for a response"
    root = _root_cause(error)
    if isinstance(error, SSLError):
        reason = getattr(root, "verify_message", None) or getattr(root, "reason", None)
        return f"TLS error ({_scrub(str(reason or type(root).__name__))})"
    reason = _scrub(getattr(root, "strerror", None) or str(root) or type(root).__name__)
    if isinstance(error, ConnectTimeoutError):  # NewConnectionError (refused, DNS) included
        return f"connection failed after {attempts} attempts ({reason})"
    if isinstance(root, TimeoutError):
        # urllib3 sends the body under the connect timeout; the target stopped reading it.
        return f"timed out after {policy.connect_timeout:g}s sending the body"
    if isinstance(error, ProtocolError):
        return f"connection lost before a response ({type(root).__name__}: {reason})"
    return f"request failed ({type(root).__name__}: {reason})"


def _open_pool(
    target: UploadTarget, address: str, policy: UploadPolicy, deadline: _Deadline
) -> HTTPConnectionPool:
    """A one-connection pool to a checked address that still speaks as the original host.

    For https the TLS handshake sends SNI for, and verifies the certificate against, the
    URL's host name; the address only decides where the TCP connection goes. Its connections
    are cut when the upload's deadline passes.
    """
    pool = _new_pool(target, address, policy)
    pool.ConnectionCls = _watched(pool.ConnectionCls, deadline)
    return pool


def _new_pool(target: UploadTarget, address: str, policy: UploadPolicy) -> HTTPConnectionPool:
    timeout = Timeout(connect=policy.connect_timeout, read=policy.read_timeout)
    if target.scheme == "https":
        import certifi

        return HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeout,
            maxsize=1,
            retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=policy.ca_certs or certifi.where(),
            server_hostname=target.host,
        )
    return HTTPConnectionPool(address, target.port, timeout=timeout, maxsize=1, retries=False)


def put_graph(
    target: UploadTarget,
    body: bytes | memoryview,
    *,
    compressed: bool,
    policy: UploadPolicy = UploadPolicy(),
) -> UploadResult:
    """PUT the graph to a checked presigned URL; retries 5xx and connection failures, never 4xx.

    The whole upload (every attempt, the waits between them, and any number of 1xx replies)
    ends within `policy.deadline` seconds (`UPLOAD_DEADLINE`).

    Args:
        target: from `UploadGuard.check`; connections go only to its checked addresses
            (rotating through them on connection failures).
        body: the bytes to store (gzip'd already when `compressed`).
        compressed: send ``Content-Encoding: gzip``.
        policy: timeouts, retries and the CA bundle.

    Returns:
        What was delivered, with the redacted URL.

    Raises:
        UploadError: the final failure; the caller keeps the body (`spool_graph`).
    """
    shown = target.shown
    _install_log_redaction()
    view = byte_view(body)
    size = view.nbytes
    # An empty body stays bytes: an empty stream would make http.client frame it as chunked.
    data: _BodyReader | bytes = _BodyReader(view) if size else b""
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "Content-Length": str(size),
    }
    if compressed:
        headers["Content-Encoding"] = "gzip"

    retry = _retry_for(policy)
    pools: dict[str, HTTPConnectionPool] = {}
    attempts = 0
    started = time.monotonic()
    deadline = _Deadline(policy.deadline)

    def fail(detail: str, status: int | None = None, code: str | None = None) -> UploadError:
        log.warning(
            "upload to %s failed: %s (%d bytes, %.2fs)",
            shown,
            detail,
            size,
            time.monotonic() - started,
        )
        return UploadError(detail, status=status, code=code, attempts=attempts)

    def past_deadline() -> UploadError:
        return fail(
            f"upload deadline of {policy.deadline:g}s (UPLOAD_DEADLINE) exceeded after "
            f"{attempts} attempt(s)"
        )

    def wait_before_retry(response: BaseHTTPResponse | None) -> None:
        seconds = retry.get_retry_after(response) if response is not None else None
        if not seconds:  # no (or a zero) Retry-After: the exponential backoff, as urllib3
            seconds = retry.get_backoff_time()
        if seconds >= deadline.remaining():
            raise past_deadline()
        time.sleep(seconds)

    try:
        while True:
            if deadline.expired or deadline.remaining() <= 0:
                raise past_deadline()
            attempts += 1
            address = target.addresses[(attempts - 1) % len(target.addresses)]
            pool = pools.get(address) or pools.setdefault(
                address, _open_pool(target, address, policy, deadline)
            )
            left = deadline.remaining()
            timeout = Timeout(
                connect=min(policy.connect_timeout, left), read=min(policy.read_timeout, left)
            )
            if isinstance(data, _BodyReader):
                data.seek(0)
            try:
                response = pool.urlopen(
                    "PUT",
                    target.request_target,
                    body=data,  # type: ignore[arg-type]  # a seekable reader: urllib3 reads it
                    headers=headers,
                    retries=False,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    release_conn=False,
                    chunked=False,
                    timeout=timeout,
                )
            except (HTTPError, OSError) as exc:
                log.warning(
                    "upload attempt %d to %s failed: %s", attempts, shown, type(exc).__name__
                )
                if deadline.expired:
                    raise past_deadline() from None
                try:
                    retry = retry.increment("PUT", shown, error=exc)
                except (HTTPError, OSError) as final:
                    raise fail(_failure_detail(final, policy, attempts)) from None
                wait_before_retry(None)
                continue
            status = response.status
            try:
                head = (
                    b""
                    if 200 <= status < 300
                    else _read_head(
                        response,
                        MAX_REPLY_BYTES,
                        min(policy.read_timeout, deadline.remaining()),
                    )
                )
            finally:
                response.close()
            if 200 <= status < 300:
                break
            code, message = _s3_error(head)
            log.warning(
                "upload attempt %d to %s failed: HTTP %d %s %r",
                attempts,
                shown,
                status,
                code or "-",
                _scrub(message or "")[:200],
            )
            if retry.is_retry("PUT", status, bool(response.headers.get("Retry-After"))):
                try:
                    retry = retry.increment("PUT", shown, response=response)
                except MaxRetryError:
                    pass
                else:
                    wait_before_retry(response)
                    continue
            detail = f"{status} {code}" if code else f"{status} (no S3 error code)"
            if attempts > 1:
                detail += f" after {attempts} attempts"
            raise fail(detail, status, code)
    finally:
        deadline.cancel()
        for pool in pools.values():
            pool.close()
    seconds = time.monotonic() - started
    log.info(
        "uploaded graph to %s: %d bytes%s, status %d, %d attempt(s), %.2fs",
        shown,
        size,
        " gzip" if compressed else "",
        status,
        attempts,
        seconds,
    )
    return UploadResult(shown, size, compressed, status, attempts, seconds)
