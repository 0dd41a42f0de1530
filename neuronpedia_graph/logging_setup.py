"""Log lines carry the request id so one graph's story can be followed across threads."""

from __future__ import annotations

import contextvars
import logging
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


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
    handler._npg = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.addFilter(PrintedOnce())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s")
    )
    root.addHandler(handler)
    # Third-party request logging would print full URLs, including presigned query strings.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
