"""Decide, from the bytes received so far, whether one whole HTTP/1.1 request has arrived.

The buffering gunicorn worker (`neuronpedia_graph.serving.worker`) reads requests in its event
loop and hands a request to a thread only once every byte of it is in memory. This module is
that decision, kept apart from the socket code so it can be reasoned about (and tested) on its own.

Why gunicorn's own parser decides the framing: the request is executed by gunicorn's parser in
the thread. If a second, different parser chose where a request ends, a request that the two
read differently (duplicate Content-Length, `Transfer-Encoding: chunked, identity`, bare LF, ...)
could be cut in one place and executed from another. So the head is parsed by gunicorn's
`Request` (it decides Content-Length vs chunked and rejects ambiguous framing), and before a
Content-Length request is dispatched gunicorn parses it once more in full, body included, from
the buffer: the length it consumes is the length that is dispatched.

What is ours is only the incremental part that gunicorn cannot do without blocking: counting
Content-Length bytes, and walking a chunked body as it arrives. The walker decodes each chunk
exactly once (work linear in the bytes received, whatever the chunk sizes), and the thread is
handed the head (parsed by gunicorn) with the body the walker decoded, so the bytes the framer
accepted are the bytes the application reads. gunicorn's own chunked reader is not used for this:
it copies the rest of its buffer at each chunk, which is quadratic in the chunk count, so a body
of one-byte chunks would stall the event loop and every client with it. Chunked bodies are
rejected as soon as a size line, extension or trailer is malformed (400) or their decoded size
reaches the body limit (413), so the application never sees either.

Two framing rules are stricter than gunicorn's: any transfer coding other than `chunked` (gunicorn
accepts `gzip, chunked` and would pass the body on still compressed) is 501, and an HTTP/1.1
request without exactly one `Host` is 400 (RFC 9112 section 3.2).
"""

from __future__ import annotations

from http import HTTPStatus

from gunicorn.http import errors as gerr
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

from neuronpedia_graph.errors import error_body
from neuronpedia_graph.limits import RETRY_AFTER_SECONDS
from neuronpedia_graph.serving.gunicorn_types import GunicornConfig, SocketAddress

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# A chunk extension holds visible ASCII, space and tab only (no CR, LF, NUL or other controls).
_BAD_EXTENSION_BYTES = frozenset(range(0, 32)) - {9} | {127}
# Chunk data may be framed with large overhead (one-byte chunks take 6 bytes each); the buffer
# for a body is capped at this multiple of the body limit, whatever the chunk sizes.
_CHUNK_OVERHEAD_FACTOR = 4


class RequestRejected(Exception):
    """The request cannot be served; `status` and `message` are what the client is told."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def rejection_for(exc: BaseException, cfg: GunicornConfig) -> RequestRejected:
    """Map a gunicorn parse error to a status and a message that does not echo the input.

    gunicorn's own messages quote the offending bytes (a request line may carry a secret in
    its query string), so the reply and the log name only the kind of error.

    Args:
        exc: the exception raised by gunicorn's request parser or body reader.
        cfg: the gunicorn config (for the limits named in messages).

    Returns:
        The rejection to send; 400 for anything not listed.
    """
    if isinstance(exc, RequestRejected):
        return exc
    if isinstance(exc, gerr.LimitRequestLine):
        return RequestRejected(414, f"Request line too long (max {cfg.limit_request_line} bytes)")
    if isinstance(exc, gerr.LimitRequestHeaders):
        return RequestRejected(
            431,
            f"Request header fields too large (max {cfg.limit_request_fields} fields of "
            f"{cfg.limit_request_field_size} bytes)",
        )
    if isinstance(exc, (gerr.InvalidChunkSize, gerr.ChunkMissingTerminator)):
        return RequestRejected(400, "Malformed chunked request body")
    if isinstance(exc, gerr.InvalidChunkExtension):
        return RequestRejected(400, "Malformed chunked request body (chunk extension)")
    if isinstance(exc, gerr.UnsupportedTransferCoding):
        return RequestRejected(501, "Unsupported Transfer-Encoding")
    if isinstance(exc, gerr.ExpectationFailed):
        return RequestRejected(417, "Unsupported Expect header")
    if isinstance(exc, gerr.ConfigurationProblem):
        return RequestRejected(500, "Server configuration problem")
    return RequestRejected(400, f"Malformed HTTP request ({type(exc).__name__})")


def error_response_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response with a JSON body; the connection is closed after it.

    Args:
        status: HTTP status code (a 503 also says when to retry).
        message: the `error` text.

    Returns:
        The bytes to write to the socket.
    """
    import orjson

    body = orjson.dumps(error_body(message))
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    retry = f"Retry-After: {RETRY_AFTER_SECONDS}\r\n" if status == 503 else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{retry}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class RequestFramer:
    """Incremental completeness check for one request at the start of a connection's buffer.

    Call `feed(buffer)` each time bytes were appended; the buffer must only grow between calls.
    """

    def __init__(self, cfg: GunicornConfig, peer: SocketAddress, max_body_bytes: int) -> None:
        self.cfg = cfg
        self.peer = peer
        self.max_body_bytes = max_body_bytes
        self._line_limit = cfg.limit_request_line or 8190
        fields = cfg.limit_request_fields or 32768
        field_size = cfg.limit_request_field_size or 8190
        # gunicorn's own bound on a head (request line, CRLFs, and its header buffer).
        self._head_limit = self._line_limit + 4 + fields * (field_size + 2) + 4
        self._size_line_limit = field_size
        self._scanned = 0
        self.head_length: int | None = None
        self._continue_wanted = False
        self._chunked = False
        self._end: int | None = None
        # chunk walker state
        self._pos = 0
        self._chunk_left = 0
        self._in_trailers = False
        self._trailer_scan = 0
        self._decoded = 0
        self._body: bytearray | None = None

    @property
    def decoded_body(self) -> bytes | None:
        """The decoded body of a complete chunked request (None for other requests)."""
        return None if self._body is None else bytes(self._body)

    @property
    def decoded_size(self) -> int:
        """Bytes of chunk data decoded so far (held in memory besides the raw buffer)."""
        return 0 if self._body is None else len(self._body)

    def feed(self, buf: bytes | bytearray) -> int | None:
        """Length of the complete request at the start of `buf`, or None if more is needed.

        Args:
            buf: everything received for this request so far (and possibly what follows it).

        Returns:
            The number of bytes of `buf` that form the request, or None.

        Raises:
            RequestRejected: the request is malformed or over a limit; answer and close.
        """
        if self.head_length is None and not self._parse_head(buf):
            return None
        if self._end is None and self._chunked:
            self._walk_chunks(buf)
        if self._end is None or len(buf) < self._end:
            return None
        return self._confirm(buf)

    def take_continue(self) -> bool:
        """True once when the client waits for `100 Continue` before sending its body."""
        wanted, self._continue_wanted = self._continue_wanted, False
        return wanted

    # ------------------------------------------------------------------ head
    def _parse_head(self, buf: bytes | bytearray) -> bool:
        size = len(buf)
        start = max(0, self._scanned - 3)
        self._scanned = size
        ended = buf.find(b"\r\n\r\n", start) >= 0 or buf.find(b"\n\n", start) >= 0
        line_over = size > self._line_limit + 2 and buf.find(b"\n", 0, self._line_limit + 2) < 0
        head_over = size > self._head_limit
        if not (ended or line_over or head_over):
            return False
        try:
            req, unreader = self._parse(buf)
        except (gerr.NoMoreData, StopIteration):
            if line_over:
                raise rejection_for(
                    gerr.LimitRequestLine(size, self._line_limit), self.cfg
                ) from None
            if head_over:
                raise rejection_for(gerr.LimitRequestHeaders("head"), self.cfg) from None
            return False
        except Exception as exc:
            raise rejection_for(exc, self.cfg) from None
        _check_framing_headers(req)
        head_length = size - len(unreader.buf.getvalue())
        self.head_length = head_length
        reader = req.body.reader
        if isinstance(reader, ChunkedReader):
            self._chunked = True
            self._pos = head_length
            self._body = bytearray()
        elif isinstance(reader, LengthReader):
            if reader.length > self.max_body_bytes:
                raise RequestRejected(
                    413, f"Request body too large (max {self.max_body_bytes} bytes)"
                )
            self._end = head_length + reader.length
        else:  # gunicorn never gives a request an EOF-delimited body; be safe anyway
            self._end = head_length
        body_pending = self._chunked or (self._end is not None and self._end > size)
        expects = any(
            name == "EXPECT" and value.strip().lower() == "100-continue"
            for name, value in req.headers
        )
        self._continue_wanted = body_pending and expects and req.version >= (1, 1)
        return True

    def _parse(self, buf: bytes | bytearray) -> tuple[Request, IterUnreader]:
        unreader = IterUnreader([bytes(buf)])
        return Request(self.cfg, unreader, self.peer), unreader

    # ------------------------------------------------------------------ body
    def _walk_chunks(self, buf: bytes | bytearray) -> None:
        size = len(buf)
        if size - (self.head_length or 0) > _CHUNK_OVERHEAD_FACTOR * self.max_body_bytes + 65536:
            raise self._too_large()
        pos = self._pos
        while True:
            if self._chunk_left:
                if size < pos + self._chunk_left:
                    break
                pos += self._chunk_left
                if buf[pos - 2 : pos] != b"\r\n":
                    raise RequestRejected(400, "Malformed chunked request body")
                assert self._body is not None
                self._body += buf[pos - self._chunk_left : pos - 2]
                self._chunk_left = 0
            elif self._in_trailers:
                if size < pos + 2:
                    break
                if buf[pos : pos + 2] == b"\r\n":
                    self._end = pos + 2
                    break
                idx = buf.find(b"\r\n\r\n", max(pos, self._trailer_scan - 3))
                self._trailer_scan = size
                if idx >= 0:
                    _check_trailers(bytes(buf[pos : idx + 2]))
                    self._end = idx + 4
                elif size - pos > self._head_limit:
                    raise RequestRejected(431, "Request trailer fields too large")
                break
            else:
                idx = buf.find(b"\r\n", pos, pos + self._size_line_limit + 2)
                if idx < 0:
                    if size - pos > self._size_line_limit:
                        raise RequestRejected(400, "Malformed chunked request body")
                    break
                digits, _, extension = bytes(buf[pos:idx]).partition(b";")
                digits = digits.rstrip(b" \t")
                if not digits or not _HEX_DIGITS.issuperset(digits):
                    raise RequestRejected(400, "Malformed chunked request body (chunk size)")
                if not _BAD_EXTENSION_BYTES.isdisjoint(extension):
                    raise RequestRejected(400, "Malformed chunked request body (chunk extension)")
                chunk = int(digits, 16)
                self._decoded += chunk
                if self._decoded >= self.max_body_bytes:
                    raise self._too_large()
                pos = idx + 2
                if chunk == 0:
                    self._in_trailers = True
                else:
                    self._chunk_left = chunk + 2
        self._pos = pos

    def _too_large(self) -> RequestRejected:
        return RequestRejected(
            413, f"Request body too large (max {self.max_body_bytes} bytes; chunked bodies less)"
        )

    def _confirm(self, buf: bytes | bytearray) -> int:
        """gunicorn parses a Content-Length request once; its consumed length is the request.

        A chunked request is not re-parsed: its body was decoded by the walker, and the thread
        reads that decoded body (`decoded_body`), never the chunked bytes.
        """
        end = self._end or 0
        if self._chunked:
            return end
        try:
            req, unreader = self._parse(buf)
            decoded = req.body.read()
        except (gerr.NoMoreData, StopIteration):
            raise RequestRejected(400, "Malformed HTTP request (framing)") from None
        except Exception as exc:
            raise rejection_for(exc, self.cfg) from None
        consumed = len(buf) - len(unreader.buf.getvalue())
        if consumed != end:
            raise RequestRejected(400, "Malformed HTTP request (framing)")
        if len(decoded) > self.max_body_bytes:
            raise self._too_large()
        return end


def _check_framing_headers(req: Request) -> None:
    """Refuse what gunicorn lets through but the documented framing does not."""
    codings = [
        coding.strip().lower()
        for name, value in req.headers
        if name == "TRANSFER-ENCODING"
        for coding in value.split(",")
        if coding.strip()
    ]
    if any(coding != "chunked" for coding in codings):
        raise RequestRejected(501, "Unsupported Transfer-Encoding (only chunked is accepted)")
    if req.version >= (1, 1):
        hosts = sum(1 for name, _value in req.headers if name == "HOST")
        if hosts != 1:
            raise RequestRejected(400, "Malformed HTTP request (HTTP/1.1 needs one Host header)")


def _check_trailers(trailers: bytes) -> None:
    """Trailer lines are dropped, but must still be well-formed lines (no bare CR, LF or NUL)."""
    if (
        b"\0" in trailers
        or b"\n" in trailers.replace(b"\r\n", b"")
        or (b"\r" in trailers.replace(b"\r\n", b""))
    ):
        raise RequestRejected(400, "Malformed chunked request body (trailer)")
    for line in trailers.split(b"\r\n"):
        if line and b":" not in line:
            raise RequestRejected(400, "Malformed chunked request body (trailer)")


def body_reader(decoded: bytes) -> Body:
    """A gunicorn request body that yields `decoded` (the framer's decoding of a chunked body)."""
    return Body(LengthReader(IterUnreader([decoded]), len(decoded)))
