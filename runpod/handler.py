"""Runpod Serverless worker: the HTTP service's work, fed from Runpod's job queue.

This is a thin adapter. Validation, attribution, serialization and upload all live in
``neuronpedia_graph`` (the same code the Flask routes call); this file only unpacks the job,
picks the service method and turns results and ``ServiceError``s into Runpod job outputs.

Runpod marks a job FAILED when the handler's output dict has a truthy ``"error"`` key (the SDK
pops it into the job's ``error`` and keeps the rest as ``output``), so every failure is returned
that way and never as a successful output. ``refresh_worker: True`` (also popped by the SDK)
asks Runpod to replace this worker after the job; it is only set when the model failed to load.

Run: ``python runpod/handler.py`` on Runpod, ``--rp_serve_api`` for the SDK's local API,
``--test_input '{"input": {...}}'`` for one local job. See runpod/README.md.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from neuronpedia_graph.errors import ServiceError
from neuronpedia_graph.jobs.progress import ProgressTracker
from neuronpedia_graph.jobs.reporter import ThrottledReporter
from neuronpedia_graph.logging_setup import request_id_var
from neuronpedia_graph.operations import BY_NAME
from neuronpedia_graph.schemas import GraphRequest, parse_request
from neuronpedia_graph.service import GraphResult, GraphService

logger = logging.getLogger("neuronpedia_graph.runpod")

# Runpod runs one job per worker by default, so the model lock is normally free; if a job does
# find it held (a concurrency modifier, a local API with several callers), waiting is what the
# queue promised the caller, unlike HTTP where a busy server answers 503 at once.
LOCK_TIMEOUT_S = 600.0

# The SDK warns above 20 MB of output and Runpod does not deliver larger results reliably.
# The graph is re-encoded by the SDK's json.dumps (looser than orjson), hence the margin.
MAX_OUTPUT_BYTES = 15_000_000

# Progress updates (graphs): on a phase change, else at most one per this many seconds; each
# one's POST may take this long before the next is sent anyway.
PROGRESS_INTERVAL_S = 2.0
PROGRESS_SEND_TIMEOUT_S = 10.0

# Epoch values below this are seconds (or garbage), not milliseconds: 1e11 ms is March 1973.
_SMALLEST_PLAUSIBLE_MS = 1e11

Job = dict[str, Any]
Handler = Callable[[Job], dict[str, Any]]


class DeadlineExpired(ServiceError):
    """The caller no longer wants the result; doing the work would only waste a GPU."""

    status = 408


class OutputTooLarge(ServiceError):
    status = 413


class ModelUnavailable(ServiceError):
    status = 503


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


class ServiceLoader:
    """Builds the service on first use, configured like the server (env vars, then .env).

    A failed load is remembered: retrying it for every queued job would make each one wait for
    the same failure. The worker is replaced instead (``refresh_worker``), which also retries
    transient causes such as a Hub outage on a fresh machine.
    """

    def __init__(
        self, environ: Mapping[str, str] | None = None, env_file: Path | str | None = None
    ) -> None:
        self._environ = environ
        self._env_file = env_file
        self._lock = threading.Lock()
        self._service: GraphService | None = None
        self._error: str | None = None

    def settings(self) -> Any:
        from neuronpedia_graph.settings import load_settings

        return load_settings([], self._environ, self._env_file)

    def get(self) -> GraphService:
        with self._lock:
            if self._service is not None:
                return self._service
            if self._error is None:
                self._service, self._error = self._load()
            if self._service is None:
                raise ModelUnavailable(self._error or "model not loaded", refresh_worker=True)
            return self._service

    def _load(self) -> tuple[GraphService | None, str | None]:
        from neuronpedia_graph.models.loading import load_model
        from neuronpedia_graph.models.spec import ModelLoadError
        from neuronpedia_graph.settings import SettingsError

        try:
            settings = self.settings()
            loaded = load_model(settings)
        except (ModelLoadError, SettingsError) as exc:
            logger.error("model could not be loaded: %s", exc)
            return None, f"Model could not be loaded on this worker: {exc}"
        logger.info(
            "model %s loaded on %s/%s in %.1f s",
            loaded.spec.model_id,
            loaded.device,
            str(loaded.dtype).removeprefix("torch."),
            loaded.load_seconds,
        )
        # A worker has no /graphs routes to re-prune from, and its disk goes with it: it keeps
        # no stored attributions (so none is reused either).
        return GraphService(loaded, settings.model_copy(update={"graph_store_bytes": 0})), None


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


def error_output(exc: ServiceError) -> dict[str, Any]:
    """The HTTP error body plus the HTTP status the server would have answered with."""
    return {**exc.body(), "status": exc.status}


def sdk_progress_update(job: Job) -> Callable[[dict[str, Any]], None]:
    """The SDK's `progress_update` for `job`, waiting for the thread it starts, so that the
    updates of one job reach Runpod in the order they were made."""

    def send(update: dict[str, Any]) -> None:
        from runpod.serverless import progress_update

        before = set(threading.enumerate())
        progress_update(job, update)
        for thread in set(threading.enumerate()) - before:
            thread.join(PROGRESS_SEND_TIMEOUT_S)

    return send


def run_request(
    service: GraphService,
    request_type: str,
    body: dict[str, Any],
    *,
    lock_timeout: float,
    max_output_bytes: int,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Do one job through the service, shaping the output like the HTTP 200 body.

    `progress` receives a graph's (phase, progress) as it moves (see `ThrottledReporter`).
    """
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
    return orjson.loads(graph)


def process_job(
    job: Any,
    get_service: Callable[[], GraphService],
    *,
    lock_timeout: float = LOCK_TIMEOUT_S,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    send_progress: Callable[[Job], Callable[[dict[str, Any]], None]] | None = None,
) -> dict[str, Any]:
    """Never raises: every outcome is an output, and failures carry ``error``.

    With `send_progress` (the worker passes `sdk_progress_update`), a graph's phases are
    reported while it runs, throttled.
    """
    arrived_ms = time.time() * 1000
    job_id = str(job.get("id", "-")) if isinstance(job, dict) else "-"
    token = request_id_var.set(job_id)
    started = time.perf_counter()
    reporter: ThrottledReporter | None = None
    request_type = outcome = "-"
    try:
        job_input = job.get("input") if isinstance(job, dict) else None
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
    except ServiceError as exc:
        outcome = f"error {exc.status}"
        return error_output(exc)
    except Exception as exc:
        outcome = "error 500"
        logger.exception("job failed unexpectedly")
        return {"error": f"Internal server error ({type(exc).__name__})", "status": 500}
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
    send_progress: Callable[[Job], Callable[[dict[str, Any]], None]] | None = None,
) -> Handler:
    """A Runpod handler around a loaded service (tests) or a loader called per job (worker)."""
    get_service = (lambda: service) if isinstance(service, GraphService) else service

    def handler(job: Job) -> dict[str, Any]:
        return process_job(
            job,
            get_service,
            lock_timeout=lock_timeout,
            max_output_bytes=max_output_bytes,
            send_progress=send_progress,
        )

    return handler


# Reads the environment on first use, not at import: importing this module loads nothing.
LOADER = ServiceLoader()
handler: Handler = make_handler(LOADER.get, send_progress=sdk_progress_update)


def main() -> None:
    import runpod

    from neuronpedia_graph.logging_setup import configure_logging

    # `import runpod` runs logging.basicConfig (serverless/utils/rp_upload.py); with our handler
    # added as well, every line would be printed twice.
    logging.getLogger().handlers.clear()
    try:
        configure_logging(LOADER.settings().log_level)
    except Exception:  # a settings error is reported to every job by LOADER.get()
        configure_logging("INFO")
    # Load before taking jobs so the first job does not pay for it; a failure is reported
    # to every job instead of crashing, so callers see why rather than a job stuck in queue.
    with contextlib.suppress(ModelUnavailable):
        LOADER.get()
    runpod.serverless.start({"handler": handler})


if __name__ == "__main__":
    main()
