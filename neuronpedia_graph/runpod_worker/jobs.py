"""One Runpod job through the service: the job's envelope, its deadline, and its output.

An output is the HTTP 200 body of that request type, or, on failure, the HTTP error body
(`neuronpedia_graph.errors.error_reply`) plus the status HTTP would have answered with, since a
job output has no status line. Nothing here imports the SDK or torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuronpedia_graph.errors import ServiceError, error_reply
from neuronpedia_graph.jobs.progress import ProgressTracker
from neuronpedia_graph.jobs.reporter import ThrottledReporter
from neuronpedia_graph.json_types import JSONObject, JSONValue
from neuronpedia_graph.logging_setup import request_id_var
from neuronpedia_graph.operations import BY_NAME
from neuronpedia_graph.schemas import GraphRequest, parse_request

if TYPE_CHECKING:  # the service module imports torch; a worker imports it when it loads
    from neuronpedia_graph.service import GraphService

logger = logging.getLogger("neuronpedia_graph.runpod")

# Runpod runs one job per worker by default, so the model lock is normally free; if a job does
# find it held (a concurrency modifier, a local API with several callers), waiting is what the
# queue promised the caller, unlike HTTP where a busy server answers 503 at once.
LOCK_TIMEOUT_S = 600.0

# The SDK warns above 20 MB of output and Runpod does not deliver larger results reliably.
# The graph is re-encoded by the SDK's json.dumps (looser than orjson), hence the margin.
MAX_OUTPUT_BYTES = 15_000_000

# Progress updates (graphs): on a phase change, else at most one per this many seconds.
PROGRESS_INTERVAL_S = 2.0

# Epoch values below this are seconds (or garbage), not milliseconds: 1e11 ms is March 1973.
_SMALLEST_PLAUSIBLE_MS = 1e11

#: A Runpod handler: the SDK's job dict in, the job's output dict out.
Handler = Callable[[JSONObject], JSONObject]
#: Sends one progress update (`{"phase", "progress"}`) of a job.
ProgressSender = Callable[[JSONObject], None]


class DeadlineExpired(ServiceError):
    """The caller no longer wants the result; doing the work would only waste a GPU."""

    status = 408


class OutputTooLarge(ServiceError):
    status = 413


class JobEnvelope(BaseModel):
    """The worker-only fields of a job; everything else is the HTTP body of that request type.

    `request_type` names an operation (`neuronpedia_graph.operations`) by its name or one of
    its aliases (the web app sends "forward_pass"); a job without one is a graph.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    request_type: str = "graph"
    deadline: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @field_validator("request_type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in BY_NAME:
            raise ValueError(f"must be one of {', '.join(sorted(BY_NAME))}")
        return value


WORKER_FIELDS = frozenset(JobEnvelope.model_fields)


def check_deadline(deadline_ms: float | None, now_ms: float) -> None:
    if deadline_ms is None or now_ms <= deadline_ms:
        return
    hint = (
        "; deadline must be milliseconds since the epoch and this value looks like seconds"
        if deadline_ms < _SMALLEST_PLAUSIBLE_MS
        else ""
    )
    raise DeadlineExpired(
        f"Job deadline passed {now_ms - deadline_ms:.0f} ms before the job started, so it was "
        f"not run (deadline {deadline_ms:.0f} ms since the epoch){hint}",
        deadline=deadline_ms,
    )


def error_output(exc: BaseException) -> JSONObject:
    """The HTTP error body plus the HTTP status the server would have answered with."""
    status, body = error_reply(exc)
    return {**body, "status": status}


def run_request(
    service: GraphService,
    request_type: str,
    body: JSONObject,
    *,
    lock_timeout: float,
    max_output_bytes: int,
    progress: Callable[[str, float], None] | None = None,
) -> JSONObject:
    """Do one job through the service, shaping the output like the HTTP 200 body.

    `progress` receives a graph's (phase, progress) as it moves (see `ThrottledReporter`).
    """
    from neuronpedia_graph.service import GraphResult

    tracker = None
    if progress is not None and BY_NAME[request_type].request is GraphRequest:
        tracker = ProgressTracker(on_change=progress, hooks=service.hooks)
    outcome = service.run(BY_NAME[request_type], body, lock_timeout=lock_timeout, tracker=tracker)
    value = outcome.value
    if not isinstance(value, GraphResult):
        return value.model_dump(mode="json")
    if value.upload is not None:
        # HTTP sends these as a Server-Timing header; a job output has no headers.
        timings = {name: round(ms, 1) for name, ms in outcome.timings.phases.items()}
        return {**value.upload.model_dump(mode="json"), "timings_ms": timings}
    graph = value.document or b""
    if len(graph) > max_output_bytes:
        raise OutputTooLarge(
            f"Graph JSON is {len(graph)} bytes, more than a Runpod job output can carry "
            f"({max_output_bytes} bytes here); send signed_url to have it uploaded instead",
            json_bytes=len(graph),
        )
    document: JSONObject = orjson.loads(graph)
    return document


def process_job(
    job: JSONObject,
    get_service: Callable[[], GraphService],
    *,
    lock_timeout: float = LOCK_TIMEOUT_S,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    send_progress: Callable[[JSONObject], ProgressSender] | None = None,
) -> JSONObject:
    """Never raises: every outcome is an output, and failures carry ``error``.

    With `send_progress` (the worker passes `sdk.sdk_progress_update`), a graph's phases are
    reported while it runs, throttled.
    """
    arrived_ms = time.time() * 1000
    token = request_id_var.set(str(job.get("id", "-")))
    started = time.perf_counter()
    reporter: ThrottledReporter | None = None
    request_type = outcome = "-"
    try:
        job_input: JSONValue = job.get("input")  # an object once parse_request accepts it
        envelope = parse_request(JobEnvelope, job_input)
        request_type = envelope.request_type
        check_deadline(envelope.deadline, arrived_ms)
        body = {k: v for k, v in job_input.items() if k not in WORKER_FIELDS}
        if send_progress is not None:
            reporter = ThrottledReporter(send_progress(job), PROGRESS_INTERVAL_S)
        try:
            output = run_request(
                get_service(),
                envelope.request_type,
                body,
                lock_timeout=lock_timeout,
                max_output_bytes=max_output_bytes,
                progress=reporter,
            )
        finally:
            if reporter is not None:
                reporter.close()
        outcome = "ok"
        return output
    except Exception as exc:
        if not isinstance(exc, ServiceError):
            logger.exception("job failed unexpectedly")
        output = error_output(exc)
        outcome = f"error {output['status']}"
        return output
    finally:
        logger.info(
            "job %s -> %s in %.0f ms",
            request_type,
            outcome,
            (time.perf_counter() - started) * 1000,
        )
        request_id_var.reset(token)


def make_handler(
    service: GraphService | Callable[[], GraphService],
    *,
    lock_timeout: float = LOCK_TIMEOUT_S,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    send_progress: Callable[[JSONObject], ProgressSender] | None = None,
) -> Handler:
    """A Runpod handler around a loaded service (tests) or a loader called per job (worker)."""
    get_service: Callable[[], GraphService] = (
        service if callable(service) else (lambda: service)  # a GraphService is not callable
    )

    def handler(job: JSONObject) -> JSONObject:
        return process_job(
            job,
            get_service,
            lock_timeout=lock_timeout,
            max_output_bytes=max_output_bytes,
            send_progress=send_progress,
        )

    return handler
