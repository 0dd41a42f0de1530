"""Deliver a finished graph to its presigned S3 PUT URL, or keep it on local disk.

A graph can take minutes of GPU time to compute, so the upload must not hang forever, must ride
out transient S3 errors, and must not lose the body when it finally fails (see `spool_graph`).
The presigned URL's query string is a bearer credential: it never reaches logs or error text.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from neuronpedia_graph.settings import Settings

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
_MAX_ERROR_BODY = 64 * 1024
_UNSAFE_SLUG_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# Called with (attempt number, urllib3 response or None, error or None) for each failed attempt.
_Observer = Callable[[int, Any, Exception | None], None]


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class UploadPolicy:
    """How long to wait and how often to retry; tests shrink these to stay fast.

    The defaults are the settings' defaults (one declaration, in `Settings`). Retry-After from
    the target is honoured but capped at `backoff_max`, so a target cannot park a worker for
    hours.
    """

    connect_timeout: float = _default("upload_connect_timeout")
    read_timeout: float = _default("upload_read_timeout")
    retries: int = _default("upload_retries")  # extra attempts after the first
    backoff_factor: float = _default("upload_backoff")  # exponential backoff (urllib3 Retry)
    backoff_max: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPolicy:
        return cls(
            connect_timeout=settings.upload_connect_timeout,
            read_timeout=settings.upload_read_timeout,
            retries=settings.upload_retries,
            backoff_factor=settings.upload_backoff,
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

    `status` is the last HTTP status (None when no response came back), `code` the S3 error
    code from the XML error body, `message` its human text. Nothing here carries the URL's
    query string, and the exception is raised without a chained cause for the same reason.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.code = code
        self.message = message
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only attributes are not in `args`; keep them when the error crosses processes.
        return (type(self), (self.detail,), self.__dict__)


def redact_url(url: str) -> str:
    """Drop the query (the signature), fragment and any user:password from a URL for display."""
    parts = urlsplit(url)
    if not (parts.scheme and parts.hostname):
        return parts.path
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _scrub(text: str) -> str:
    return _QUERY_IN_TEXT.sub("?<redacted>", text)


class _RedactQueryFilter(logging.Filter):
    """Rewrites urllib3 log records so signed query strings never reach any handler.

    urllib3 logs the request path including the query at DEBUG, and at WARNING when it retries a
    broken connection; a filter on the emitting logger runs before every handler sees the record.

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


class _ObservedRetry(Retry):
    """urllib3 Retry that reports each failed attempt, so we can log and count attempts.

    urllib3 copies the Retry object on every increment via `new`, so the observer is carried
    over explicitly. Read errors are never retried (`read=False`): once the request has gone out
    the target may have stored it, and a stalled target must fail within one read timeout.
    """

    observer: _Observer | None = None

    def new(self, **kw: Any) -> _ObservedRetry:
        retry = super().new(**kw)
        retry.observer = self.observer
        return retry

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> _ObservedRetry:
        if self.observer is not None:
            self.observer(len(self.history) + 1, response, error)
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _retry_for(policy: UploadPolicy, observer: _Observer) -> Retry:
    retry = _ObservedRetry(
        total=policy.retries,
        connect=policy.retries,
        read=False,
        status=policy.retries,
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
    retry.observer = observer
    return retry


class _BodyReader:
    """File-like, zero-copy view of the body that requests sends with a Content-Length.

    Handing requests plain bytes makes http.client push the whole body in one `sendall`, and
    since Python 3.5 a socket timeout bounds that entire call: a 100 MB graph on a link slower
    than 20 MB/s would hit the 5 s connect timeout (urllib3 uses it while sending). Read in
    blocks, each send gets its own timeout. `__len__` gives requests the Content-Length (so it
    never falls back to chunked encoding, which S3 rejects for presigned PUTs); `seek`/`tell`
    let urllib3 rewind the body for a retry.
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


def _byte_view(body: bytes | memoryview) -> memoryview:
    """A flat unsigned-byte view of the body, so lengths and slices count bytes, not items.

    Re-viewing never copies; only a view that is not C-contiguous has to be copied.
    """
    view = memoryview(body)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _as_sendable(body: bytes | memoryview) -> tuple[_BodyReader | bytes, int]:
    """The body as something requests sends with Content-Length, and its size in bytes.

    An empty body stays bytes, because requests would frame an empty stream as chunked.
    """
    view = _byte_view(body)
    if view.nbytes == 0:
        return b"", 0
    return _BodyReader(view), view.nbytes


def _s3_error(response: requests.Response) -> tuple[str | None, str | None]:
    """(Code, Message) from an S3 XML error body; (None, None) when the body is not one."""
    text = response.content[:_MAX_ERROR_BODY]
    if not text.lstrip().startswith(b"<"):
        return None, None
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None, None
    fields = {child.tag.rsplit("}", 1)[-1]: (child.text or "").strip() for child in root}
    return fields.get("Code") or None, fields.get("Message") or None


def _root_cause(exc: BaseException) -> BaseException:
    """Innermost error under requests/urllib3 wrappers (MaxRetryError.reason, ProtocolError)."""
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


def _failure_detail(exc: requests.RequestException, policy: UploadPolicy, attempts: int) -> str:
    """Human summary of a request that got no HTTP response; never includes the URL."""
    if isinstance(exc, requests.ReadTimeout):
        return f"timed out after {policy.read_timeout:g}s waiting for a response"
    root = _root_cause(exc)
    reason = _scrub(getattr(root, "strerror", None) or str(root) or type(root).__name__)
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, MaxRetryError):
        return f"connection failed after {attempts} attempts ({reason})"
    if isinstance(root, TimeoutError):
        # urllib3 sends the body under the connect timeout; the target stopped reading it.
        return f"timed out after {policy.connect_timeout:g}s sending the body"
    if isinstance(exc, requests.ConnectionError):
        return f"connection lost before a response ({type(root).__name__}: {reason})"
    return f"request failed ({type(exc).__name__}: {reason})"


def put_graph(
    url: str,
    body: bytes | memoryview,
    *,
    compressed: bool,
    policy: UploadPolicy = UploadPolicy(),
) -> UploadResult:
    """PUT the graph to a presigned URL; retries 5xx and connection failures, never 4xx.

    Raises UploadError on final failure; the caller keeps the body (`spool_graph`).
    """
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UploadError("invalid upload URL (expected an http or https URL)", attempts=0)
    _install_log_redaction()
    data, size = _as_sendable(body)
    headers = {"Content-Type": "application/json", "Content-Length": str(size)}
    if compressed:
        headers["Content-Encoding"] = "gzip"

    failed_attempts = 0

    def observe(attempt: int, response: Any, error: Exception | None) -> None:
        nonlocal failed_attempts
        failed_attempts = attempt
        cause = f"HTTP {response.status}" if response is not None else type(error).__name__
        log.warning("upload attempt %d to %s failed: %s", attempt, shown, cause)

    adapter = HTTPAdapter(max_retries=_retry_for(policy, observe))
    started = time.monotonic()
    with requests.Session() as session:
        # No ambient credentials (.netrc) may ride along with a URL that is its own credential.
        session.trust_env = False
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        try:
            response = session.put(
                url,
                data=data,
                headers=headers,
                timeout=(policy.connect_timeout, policy.read_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            attempts = max(failed_attempts, 1)
            detail = _failure_detail(exc, policy, attempts)
            log.warning(
                "upload to %s failed: %s (%d bytes, %.2fs)",
                shown,
                detail,
                size,
                time.monotonic() - started,
            )
            raise UploadError(detail, attempts=attempts) from None
        retries = getattr(response.raw, "retries", None)
        attempts = len(retries.history) + 1 if retries is not None else failed_attempts + 1
        seconds = time.monotonic() - started
        if not 200 <= response.status_code < 300:
            code, message = _s3_error(response)
            detail = f"{response.status_code} {code or response.reason or 'error'}"
            if attempts > 1:
                detail += f" after {attempts} attempts"
            if message:
                detail += f": {_scrub(message)}"
            log.warning("upload to %s failed: %s (%d bytes, %.2fs)", shown, detail, size, seconds)
            raise UploadError(
                detail,
                status=response.status_code,
                code=code,
                message=message and _scrub(message),
                attempts=attempts,
            )
    log.info(
        "uploaded graph to %s: %d bytes%s, status %d, %d attempt(s), %.2fs",
        shown,
        size,
        " gzip" if compressed else "",
        response.status_code,
        attempts,
        seconds,
    )
    return UploadResult(shown, size, compressed, response.status_code, attempts, seconds)


def _slug_for_filename(slug: str) -> str:
    cleaned = _UNSAFE_SLUG_CHARS.sub("-", slug).strip(".-")[:80]
    return cleaned or "graph"


def spool_graph(body: bytes | memoryview, spool_dir: Path, *, slug: str, compressed: bool) -> Path:
    """Keep a graph that could not be uploaded, written atomically so no half file is left.

    The name is unique (UTC timestamp + random suffix), so concurrent spools never collide.
    """
    spool_dir = Path(spool_dir)
    view = _byte_view(body)
    spool_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = ".json.gz" if compressed else ".json"
    final = spool_dir / f"{_slug_for_filename(slug)}-{stamp}-{secrets.token_hex(4)}{suffix}"
    fd, tmp_name = tempfile.mkstemp(dir=spool_dir, prefix=".spool-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(view)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(spool_dir)
    log.info("spooled graph %s (%d bytes) to %s", slug, view.nbytes, final)
    return final


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable; not all platforms can open a directory, so best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
