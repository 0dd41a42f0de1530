"""Log lines carry the request id so one graph's story can be followed across threads.

Every line is also made safe to read: control characters (NUL, ESC, DEL, CR, LF, ...) that a
client put in a path, header or URL are written as `\\xNN` escapes, so they cannot forge log
lines or drive a terminal, and the `user:password@` part of any URL is dropped (an
absolute-form request line `GET http://user:pw@host/ HTTP/1.1` carries one). `SafeLogFilter`
does both, on our handler and on gunicorn's (`access_log.RedactingLogger`).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# scheme://userinfo@ : the userinfo is everything up to the last "@" before the host's end.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s@]*@")


def safe_text(text: str) -> str:
    """`text` with URL userinfo removed and control characters escaped (see the docstring)."""
    text = _USERINFO.sub(r"\1", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeLogFilter(logging.Filter):
    """A handler filter that makes the record's message safe (`safe_text`), once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "_npg_safe", False):
            record.msg = safe_text(record.getMessage())
            record.args = None
            record._npg_safe = True
        return True


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class PrintedOnce(logging.Filter):
    """Drop records that a library's own handler has already printed.

    transformers and huggingface_hub attach a stream handler to their library logger and still
    let records propagate to the root, so each of their warnings appeared twice. They add that
    handler lazily, when first imported, so it cannot simply be removed here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger.parent is not None:  # stop below the root
            if logger.handlers:
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


def configure_logging(level: str = "INFO") -> None:
    """Idempotent: the CLI, gunicorn workers and tests may all call it."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in root.handlers:
        if getattr(handler, "_npg", False):
            return
    handler = logging.StreamHandler(sys.stderr)
    # attr-defined: a marker on the stdlib handler (read back above with getattr).
    handler._npg = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.addFilter(PrintedOnce())
    handler.addFilter(SafeLogFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    root.addHandler(handler)
    # Third-party request logging would print full URLs, including presigned query strings.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
