"""The job queue: FIFO, bounded, run one job at a time by one thread on the shared model.

`submit` takes a request already validated by the route (a bad body is refused before it is
queued) and answers at once; the runner thread takes jobs in order and runs each through
`GraphService.execute(..., job=True)`, the same code as the synchronous `/generate-graph`, so
the document, the upload and every error are the ones that call would have given. The model
is shared through `ModelLock.hold_for_job`, which lets synchronous callers go first.

The upload slot of a job with `signed_url` is reserved when the job starts (`UploadQueue.admit`
through the service's reservation), not when it is queued: a queued job holds no slot, and the
URL's policy (and its expiry) is checked again at that moment.

After a restart (`recover`), finished jobs are kept as they were; a job that was running or
still queued ends `failed` with a message that says the server stopped. Queued jobs are not
resumed: their `signed_url` was never written to disk, so they could not be delivered.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from neuronpedia_graph.errors import ServerBusy, ServiceError, error_reply
from neuronpedia_graph.jobs.models import (
    FINISHED,
    JobError,
    JobList,
    JobRecord,
    JobView,
    Status,
    links_for,
)
from neuronpedia_graph.jobs.progress import JobCancelled, ProgressTracker
from neuronpedia_graph.jobs.store import JobStore
from neuronpedia_graph.logging_setup import request_id_var
from neuronpedia_graph.operations import BY_NAME
from neuronpedia_graph.schemas import GraphRequest

if TYPE_CHECKING:
    from neuronpedia_graph.service import GraphService

logger = logging.getLogger(__name__)

# How long a starting job waits for an upload slot (other graphs are uploading).
UPLOAD_SLOT_WAIT_S = 600.0
STOPPED_RUNNING = "The server stopped while this job was running; submit it again."
STOPPED_QUEUED = (
    "The server stopped before this job started (queued jobs are not resumed, since their "
    "signed_url is never stored); submit it again."
)


class QueueFull(ServerBusy):
    def __init__(self, size: int) -> None:
        ServiceError.__init__(
            self, f"Job queue full ({size} jobs waiting, JOB_QUEUE_SIZE); try again later."
        )


class JobNotFound(ServiceError):
    status = 404

    def __init__(self) -> None:
        super().__init__("No such job")


class JobConflict(ServiceError):
    status = 409


@dataclass(eq=False)
class _Job:
    record: JobRecord
    request: GraphRequest | None = None  # in memory only (it holds the signed_url)
    cancel: threading.Event = field(default_factory=threading.Event)
    version: int = 0


class JobRunner:
    """The queue, the jobs this server knows, and the thread that runs them.

    Args:
        service: the loaded model's service.
        store: where records and documents are kept.
        queue_size: how many jobs may wait (JOB_QUEUE_SIZE).
    """

    def __init__(self, service: GraphService, store: JobStore, queue_size: int) -> None:
        self.service = service
        self.store = store
        self.queue_size = queue_size
        self.cond = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[str] = deque()
        self._listeners: list[Callable[[], None]] = []
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="graph-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ state
    def recover(self) -> None:
        """Load the store; jobs that were queued or running when the server stopped fail."""
        for record in sorted(self.store.load_all(), key=lambda r: r.created_at):
            if record.status not in FINISHED:
                message = STOPPED_RUNNING if record.status == "running" else STOPPED_QUEUED
                record.status = "failed"
                record.finished_at = time.time()
                record.error = JobError(
                    status=503, body={"error": message, "request_id": record.id}
                )
                self.store.save(record)
                logger.warning("job %s failed at startup: %s", record.id, message)
            self._jobs[record.id] = _Job(record)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Called (from any thread, without locks held) after any job changed."""
        self._listeners.append(listener)

    def _changed(self, job: _Job) -> None:
        """Call with `cond` held."""
        job.version += 1
        self.cond.notify_all()

    def _notify_listeners(self) -> None:
        for listener in list(self._listeners):
            listener()

    def version(self, job_id: str) -> int:
        with self.cond:
            return self._get(job_id).version

    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound()
        return job

    # ------------------------------------------------------------------ API
    def submit(self, request: GraphRequest) -> JobView:
        """Queue a validated request; 503 (`QueueFull`) when JOB_QUEUE_SIZE jobs wait."""
        with self.cond:
            if len(self._queue) >= self.queue_size:
                raise QueueFull(self.queue_size)
            job_id = secrets.token_urlsafe(18)
            record = JobRecord(
                id=job_id,
                status="queued",
                created_at=time.time(),
                request=request.model_dump(mode="json", exclude={"signed_url"}),
                uploads=request.signed_url is not None,
            )
            self.store.save(record)
            job = _Job(record, request)
            self._jobs[job_id] = job
            self._queue.append(job_id)
            self._changed(job)
            view = self._view(job)
        logger.info("job %s queued (slug=%s)", job_id, request.slug_identifier)
        self._notify_listeners()
        return view

    def view(self, job_id: str) -> JobView:
        with self.cond:
            return self._view(self._get(job_id))

    def list(self, offset: int, limit: int) -> JobList:
        with self.cond:
            newest = sorted(self._jobs.values(), key=lambda j: j.record.created_at, reverse=True)
            page = [self._view(j) for j in newest[offset : offset + limit]]
            total = len(newest)
        more = offset + limit < total
        return JobList(
            jobs=page,
            total=total,
            offset=offset,
            limit=limit,
            next=f"/graphs?offset={offset + limit}&limit={limit}" if more else None,
        )

    def cancel(self, job_id: str) -> JobView:
        """A queued job leaves the queue (cancelled); a running one stops at its next batch."""
        with self.cond:
            job = self._get(job_id)
            record = job.record
            if record.status in FINISHED:
                raise JobConflict(
                    f"Job already finished ({record.status})", job_status=record.status
                )
            if record.status == "queued":
                self._queue.remove(job_id)
                record.status = "cancelled"
                record.finished_at = time.time()
                job.request = None
                self.store.save(record)
            job.cancel.set()
            self._changed(job)
            view = self._view(job)
        logger.info("job %s cancel requested (%s)", job_id, record.status)
        self._notify_listeners()
        return view

    def document(self, job_id: str) -> bytes:
        """A done job's graph document (409 when it has none)."""
        with self.cond:
            record = self._get(job_id).record
        if record.status != "done":
            raise JobConflict(
                f"Job is {record.status}; its document exists once it is done",
                job_status=record.status,
            )
        body = self.store.read_document(job_id)
        if body is None:
            raise JobConflict(
                "This job's graph was uploaded to its signed_url; the server keeps no copy",
                job_status=record.status,
            )
        return body

    def _view(self, job: _Job) -> JobView:
        r = job.record
        if r.status == "queued":
            position: int | None = self._queue.index(r.id) + 1
        elif r.status == "running":
            position = 0
        else:
            position = None
        return JobView(
            id=r.id,
            status=r.status,
            queue_position=position,
            phase=r.phase,
            progress=r.progress,
            cancel_requested=job.cancel.is_set() and r.status == "running",
            created_at=r.created_at,
            started_at=r.started_at,
            finished_at=r.finished_at,
            timings=r.timings,
            slug_identifier=r.request.get("slug_identifier"),
            result=r.result,
            error=r.error,
            links=links_for(r.id),
        )

    # ------------------------------------------------------------------ running
    def _loop(self) -> None:
        while True:
            with self.cond:
                self.cond.wait_for(lambda: bool(self._queue))
                job = self._jobs[self._queue.popleft()]
                job.record.status = "running"
                job.record.started_at = time.time()
                self.store.save(job.record)
                self._changed(job)
            self._notify_listeners()
            token = request_id_var.set(job.record.id)
            try:
                self._run(job)
            except Exception:  # a bug here must cost one job, never the runner thread
                logger.exception("job %s: runner error", job.record.id)
            finally:
                request_id_var.reset(token)

    def _run(self, job: _Job) -> None:
        from neuronpedia_graph.service import GraphResult, TrackedTimings

        request = job.request
        assert request is not None
        tracker = ProgressTracker(
            on_change=lambda phase, progress: self._progress(job, phase, progress),
            hooks=self.service.hooks,
            cancel=job.cancel,
        )
        timings = TrackedTimings(tracker)
        error: JobError | None = None
        status: Status = "failed"
        result: GraphResult | None = None
        try:
            tracker.checkpoint("job-start")
            outcome = self.service.execute(
                BY_NAME["generate-graph"],
                request,
                timings,
                lock_timeout=UPLOAD_SLOT_WAIT_S,
                tracker=tracker,
                job=True,
                graph_id=job.record.id,
            )
            assert isinstance(outcome.value, GraphResult)
            result = outcome.value
            if result.document is not None:
                self.store.save_document(job.record.id, result.document)
            status = "done"
        except JobCancelled:
            status = "cancelled"
        except Exception as exc:
            if not isinstance(exc, ServiceError):
                logger.exception("job %s failed unexpectedly", job.record.id)
            code, body = error_reply(exc)
            error = JobError(status=code, body={**body, "request_id": job.record.id})
        with self.cond:
            record = job.record
            record.status = status
            record.finished_at = time.time()
            record.timings = {k: round(v, 1) for k, v in timings.phases.items()}
            record.error = error
            if result is not None:
                record.result = {"json_bytes": result.json_bytes, "nodes": result.nodes}
                record.result["links"] = result.links
                if result.upload is not None:
                    record.result["upload"] = result.upload.model_dump(mode="json")
                record.progress = 1.0
            job.request = None  # forget the signed_url
            self.store.save(record)
            self._changed(job)
        logger.info("job %s %s", record.id, status)
        self._notify_listeners()

    def _progress(self, job: _Job, phase: str, progress: float) -> None:
        with self.cond:
            if progress >= 1.0:  # only the finished record says 1
                return
            record = job.record
            moved_phase = record.phase != phase
            record.phase = phase
            record.progress = round(max(record.progress, progress), 4)
            if moved_phase:
                self.store.save(record)
            self._changed(job)
        self._notify_listeners()
