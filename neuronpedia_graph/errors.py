"""Errors the service raises on purpose, each mapped to one HTTP status and a clear message,
and the one shape of every error reply.

Keeping them transport-free lets the Flask routes, the job runner and the Runpod worker report
the same failure without a second copy of the rules: `error_reply` turns any exception into a
status and a body, and each transport only adds its own parts (HTTP the request id and
`Retry-After`, a Runpod output the status it cannot send as a header).

The tree (the concern-specific errors live beside the code that raises them)::

    ServiceError (500)
    ├── InvalidRequest (400)
    ├── InvalidField (422)
    ├── GraphTooLarge (413)
    ├── UploadFailed (502)
    ├── ServerBusy (503, Retry-After)
    │   ├── QueueFull          jobs.runner
    │   ├── StreamsBusy        jobs.events
    │   └── UploadsBusy        upload.queue
    ├── StoredGraphNotFound (404), StoredGraphUnreadable (410)    attribution_store
    ├── JobNotFound (404), JobConflict (409)                      jobs.runner
    └── DeadlineExpired (408), OutputTooLarge (413),              runpod_worker.jobs
        ModelUnavailable (503)                                    runpod_worker.loader

Anything else that escapes an operation is a bug: a 500 that names only the exception's type.
"""

from __future__ import annotations

from neuronpedia_graph.json_types import JSONObject, JSONValue
from neuronpedia_graph.limits import RETRY_AFTER_SECONDS


def error_body(message: str, **extra: JSONValue) -> JSONObject:
    """`{"error": message, ...extra}`: what every error reply carries, on every transport."""
    return {"error": message, **extra}


def internal_error_message(exc: BaseException) -> str:
    """The message of a bug: its type only (the traceback goes to the log, never the caller)."""
    return f"Internal server error ({type(exc).__name__})"


def error_reply(exc: BaseException) -> tuple[int, JSONObject]:
    """The status and body for `exc`: a `ServiceError`'s own, else a 500 (a real bug)."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.body()
    return 500, error_body(internal_error_message(exc))


class ServiceError(Exception):
    status: int = 500

    def __init__(self, message: str, **extra: JSONValue) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> JSONObject:
        return error_body(self.message, **self.extra)


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
