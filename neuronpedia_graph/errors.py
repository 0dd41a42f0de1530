"""Errors the service raises on purpose, each mapped to one HTTP status and a clear message.

Keeping them transport-free lets the Flask routes and the Runpod worker report the same
failure in their own way without a second copy of the rules.
"""

from __future__ import annotations

from typing import Any

from neuronpedia_graph.limits import RETRY_AFTER_SECONDS


class ServiceError(Exception):
    status: int = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.message, **self.extra}


class InvalidRequest(ServiceError):
    status = 400


class InvalidField(ServiceError):
    status = 422


class GraphTooLarge(ServiceError):
    """The pruned graph is over a size limit; the message names the limit and what to lower."""

    status = 413


class ServerBusy(ServiceError):
    status = 503
    retry_after_seconds = RETRY_AFTER_SECONDS

    def __init__(self) -> None:
        super().__init__("Server busy, please try again later.")


class UploadFailed(ServiceError):
    status = 502
