"""Uploads on their own bounded thread pool, admitted before the model runs, never lost.

Why a separate pool with admission: an upload to a slow or hanging target can take minutes
(read timeout x attempts). Run in the request thread, four of them used every gunicorn thread
and `/health` stopped answering. Here each upload needs a *slot* (``UPLOAD_WORKERS`` of them),
reserved before the graph is computed: when all slots are taken the request is refused at
once with 503 + Retry-After instead of computing a graph nobody can deliver. The request
thread still waits for its upload's result, so the client that asked gets the real answer
(200 with the URL, or 502); the server gives gunicorn ``THREADS + UPLOAD_WORKERS`` threads, so
those waiting threads never take the ones that serve `/health`, `/check-busy` and the model.

Why write-ahead spooling: a graph is written to the spool directory *before* the first upload
attempt and the file is removed once the upload succeeded. Whatever stops the process
mid-upload (SIGTERM past the grace period, SIGKILL, OOM) the graph is on disk, and the log
says where: "written to spool file X until ..." then either "uploaded ...; removed spool file
X" or "kept in spool file X". On SIGTERM (`install_shutdown_notice`) the log also lists every
upload still in flight and its spool file. The spool is bounded (`spool.Spool`: size, age, and
never the copy of an upload in flight), and a spooled graph is sent again with `reupload`, the
one path for that (the `reupload` command uses it).
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING

from neuronpedia_graph.errors import InvalidField, ServerBusy, ServiceError, UploadFailed
from neuronpedia_graph.upload.guard import (
    UploadGuard,
    UploadTarget,
    UploadURLRefused,
    check_not_expired,
)
from neuronpedia_graph.upload.spool import Spool, SpoolFull
from neuronpedia_graph.upload.transfer import UploadError, UploadPolicy, UploadResult, put_graph

if TYPE_CHECKING:
    from neuronpedia_graph.settings import Settings

log = logging.getLogger(__name__)

# How `spool_graph` names files: SLUG-UTCSTAMP-RANDOM.json[.gz].
_SPOOL_NAME = re.compile(r"(.+)-\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}\.json(?:\.gz)?")

_QUEUES: weakref.WeakSet[UploadQueue] = weakref.WeakSet()


class UploadsBusy(ServerBusy):
    """503: every upload slot is taken; refused before any work, like a busy model."""

    def __init__(self, slots: int) -> None:
        ServiceError.__init__(
            self,
            f"Server busy: all {slots} upload slots are in use, please try again later.",
        )


@dataclass(eq=False)
class Ticket:
    """A reserved upload slot for one request, and the target that passed the policy.

    Used as a context manager around the work before the upload: if that work fails, the slot
    is given back on the way out; on success the upload job gives it back when it ends.
    `release` is idempotent. A ticket without a queue (no `signed_url`) does nothing.
    """

    queue: UploadQueue | None = None
    target: UploadTarget | None = None
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        if self.queue is not None and not self._released:
            self._released = True
            self.queue._slots.release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.release()


@dataclass
class _InFlight:
    slug: str
    shown: str
    spool: Path | None


class UploadQueue:
    """Admits, runs and accounts for graph uploads (see the module docstring).

    Args:
        guard: the SSRF policy every URL passes, at admission and again before connecting.
        policy: timeouts and retries for `put_graph`.
        spool_dir: where every graph is written before its upload.
        workers: the number of upload slots and threads.
        spool_max_bytes: SPOOL_MAX_BYTES (default: the setting's default).
        spool_max_age: SPOOL_MAX_AGE in seconds (default: the setting's default).
    """

    def __init__(
        self,
        guard: UploadGuard,
        policy: UploadPolicy,
        spool_dir: Path,
        workers: int,
        *,
        spool_max_bytes: int | None = None,
        spool_max_age: float | None = None,
    ) -> None:
        from neuronpedia_graph.settings import Settings

        defaults = Settings.model_fields
        self.guard = guard
        self.policy = policy
        self.spool_dir = Path(spool_dir)
        self.spool = Spool(
            self.spool_dir,
            defaults["spool_max_bytes"].default if spool_max_bytes is None else spool_max_bytes,
            defaults["spool_max_age"].default if spool_max_age is None else spool_max_age,
        )
        self.workers = workers
        self._slots = threading.BoundedSemaphore(workers)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._in_flight: dict[int, _InFlight] = {}
        _QUEUES.add(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadQueue:
        """Build the queue from `Settings` (upload_* fields, spool_dir).

        Args:
            settings: the server's settings.

        Returns:
            The queue; its threads start with the first upload. The spool's files are listed
            in the log (and those past SPOOL_MAX_AGE removed).
        """
        policy = UploadPolicy.from_settings(settings)
        guard = UploadGuard(settings.upload_allowed_hosts)
        queue = cls(
            guard,
            policy,
            settings.spool_dir,
            settings.upload_workers,
            spool_max_bytes=settings.spool_max_bytes,
            spool_max_age=settings.spool_max_age,
        )
        queue.spool.report()
        return queue

    # ------------------------------------------------------------------ admission
    def check(self, url: str) -> UploadTarget:
        """The URL through the expiry check and the SSRF policy, as a 422 naming `signed_url`.

        An expired presigned URL (its `X-Amz-Date` + `X-Amz-Expires`, or the `X-Goog-` pair,
        are in the past) is refused here, before any work: the upload could only fail.

        Args:
            url: the presigned URL.

        Returns:
            The checked target.

        Raises:
            InvalidField: expired, malformed, or refused by the policy (the message never
            contains the query).
        """
        try:
            check_not_expired(url)
            return self.guard.check(url)
        except UploadURLRefused as exc:
            raise InvalidField(
                f"Invalid request: signed_url: {exc}", fields=["signed_url"]
            ) from None

    def admit(self, url: str | None, timeout: float | None = None) -> Ticket:
        """Check the URL and reserve an upload slot, before any work is done for the request.

        Args:
            url: the request's `signed_url`; None (direct response) needs no slot.
            timeout: None to refuse at once when every slot is taken (HTTP); seconds to wait
                for one (the Runpod worker, which waits for the model the same way).

        Returns:
            The ticket to hand to `deliver`.

        Raises:
            InvalidField: 422, the URL is refused.
            UploadsBusy: 503, no slot came free.
        """
        if url is None:
            return Ticket()
        target = self.check(url)
        if timeout is None:
            acquired = self._slots.acquire(blocking=False)
        else:
            acquired = self._slots.acquire(timeout=timeout)
        if not acquired:
            raise UploadsBusy(self.workers)
        return Ticket(self, target)

    # ------------------------------------------------------------------- delivery
    def deliver(self, ticket: Ticket, body: bytes, *, slug: str, compressed: bool) -> UploadResult:
        """Upload on the upload pool and wait for the outcome; the slot is freed when it ends.

        Args:
            ticket: from `admit` for the same request.
            body: the bytes to store (already gzip'd when `compressed`).
            slug: the graph's slug, for the spool file name and the log.
            compressed: the body is gzip'd.

        Returns:
            What was uploaded.

        Raises:
            UploadFailed: 502; the graph is in the spool file the error names.
        """
        if ticket.queue is not self or ticket.target is None:
            raise ValueError("deliver needs a ticket from this queue's admit()")
        return self._on_pool(ticket, body, slug, compressed, None)

    def _on_pool(
        self, ticket: Ticket, body: bytes, slug: str, compressed: bool, existing: Path | None
    ) -> UploadResult:
        try:
            future = self._executor.submit(self._job, ticket, body, slug, compressed, existing)
        except RuntimeError:  # the pool is shut down (interpreter exit): the graph still counts
            return self._job(ticket, body, slug, compressed, existing)
        return future.result()

    def reupload(self, path: Path, url: str, timeout: float | None = None) -> UploadResult:
        """Upload a spooled graph file to a (fresh) presigned URL; the file goes once it is stored.

        The one way a kept graph is sent again: the `reupload` command and any later feature
        (jobs) call this. It runs the same checks and the same job as a new graph's upload:
        the URL through `check` (expiry, SSRF policy), a slot, the file pinned so that spool
        eviction cannot remove it meanwhile, removed after success, kept after a failure.

        Args:
            path: the spool file (``.json`` or ``.json.gz``; the suffix says whether the body is
                gzip'd, and is sent with ``Content-Encoding: gzip`` when it is).
            url: the presigned PUT URL.
            timeout: as for `admit` (None: refuse at once when every slot is busy).

        Returns:
            What was uploaded.

        Raises:
            InvalidField: 422, the URL is refused, or the file is not a spooled graph.
            UploadsBusy: 503, no slot came free.
            UploadFailed: 502, the upload failed; the file is still there.
        """
        path = Path(path)
        compressed = path.name.endswith(".json.gz")
        if not (compressed or path.name.endswith(".json")) or not path.is_file():
            raise InvalidField(
                f"Invalid request: {path.name} is not a spooled graph file (.json or .json.gz)",
                fields=["spool_file"],
            )
        ticket = self.admit(url, timeout)
        with ticket:
            body = path.read_bytes()
        named = _SPOOL_NAME.fullmatch(path.name)
        slug = named.group(1) if named else path.name.removesuffix(".gz").removesuffix(".json")
        return self._on_pool(ticket, body, slug, compressed, path)

    def _job(
        self,
        ticket: Ticket,
        body: bytes,
        slug: str,
        compressed: bool,
        existing: Path | None = None,
    ) -> UploadResult:
        assert ticket.target is not None
        shown = ticket.target.shown
        job_id = next(self._ids)
        spool: Path | None = None
        problem: str | None = None
        try:
            if existing is not None:
                spool = existing
                self.spool.pin(existing)
                log.info("graph %s in spool file %s: re-uploading to %s", slug, spool, shown)
            else:
                spool, problem = self._spool(body, slug, compressed, why="before upload")
                if spool is not None:
                    log.info(
                        "graph %s written to spool file %s until its upload to %s succeeds",
                        slug,
                        spool,
                        shown,
                    )
            with self._lock:
                self._in_flight[job_id] = _InFlight(slug, shown, spool)
            try:
                # Checked again right before connecting: the URL may have expired while the
                # graph was computed, and the addresses used are the ones this check passed,
                # however DNS answers after it.
                check_not_expired(ticket.target.url)
                target = self.guard.check(ticket.target.url)
                result = put_graph(target, body, compressed=compressed, policy=self.policy)
            except UploadURLRefused as exc:
                error = UploadError(f"upload target refused: {exc}")
            except UploadError as exc:
                error = exc
            else:
                self._remove(spool, slug, result)
                return result
            finally:
                with self._lock:
                    self._in_flight.pop(job_id, None)
            raise self._failed(error, spool, problem, body, slug, compressed)
        finally:
            self.spool.unpin(spool)
            ticket.release()

    def _spool(
        self, body: bytes, slug: str, compressed: bool, *, why: str
    ) -> tuple[Path | None, str | None]:
        """(the pinned spool file, None), or (None, why it could not be written)."""
        try:
            return self.spool.write(body, slug=slug, compressed=compressed), None
        except SpoolFull as exc:
            log.error("graph %s could not be written to the spool %s: %s", slug, why, exc)
            return None, str(exc)
        except OSError as exc:
            log.error(
                "graph %s could not be written to the spool directory %s %s: %s: %s",
                slug,
                self.spool_dir,
                why,
                type(exc).__name__,
                exc.strerror or exc,
            )
            return None, "spool directory not writable"

    def _remove(self, spool: Path | None, slug: str, result: UploadResult) -> None:
        if spool is None:
            log.info("graph %s uploaded to %s (no spool file was written)", slug, result.url)
            return
        try:
            spool.unlink()
        except OSError as exc:
            log.warning(
                "graph %s uploaded to %s, but its spool file %s could not be removed: %s",
                slug,
                result.url,
                spool,
                exc.strerror or exc,
            )
            return
        log.info("graph %s uploaded to %s; removed its spool file %s", slug, result.url, spool)

    def _failed(
        self,
        error: UploadError,
        spool: Path | None,
        problem: str | None,
        body: bytes,
        slug: str,
        compressed: bool,
    ) -> UploadFailed:
        if spool is None:  # the write-ahead failed; one more try now that it is needed
            spool, problem = self._spool(body, slug, compressed, why="after the upload failed")
            self.spool.unpin(spool)
        extra = {"upload_status": error.status, "upload_code": error.code}
        if spool is None:
            log.error(
                "graph %s LOST: upload failed (%s) and no spool file (%s)",
                slug,
                error.detail,
                problem,
            )
            return UploadFailed(
                f"Failed to upload graph: {error.detail}; it could not be kept on the server "
                f"either ({problem})",
                spool_file=None,
                **extra,
            )
        log.error("graph %s kept in spool file %s: upload failed (%s)", slug, spool, error.detail)
        return UploadFailed(
            f"Failed to upload graph: {error.detail}", spool_file=spool.name, **extra
        )

    # ------------------------------------------------------------------- shutdown
    def in_flight(self) -> list[tuple[str, str, Path | None]]:
        """(slug, redacted URL, spool file) of every upload running now."""
        with self._lock:
            return [(j.slug, j.shown, j.spool) for j in self._in_flight.values()]

    def note_shutdown(self) -> None:
        """Log where each in-flight upload's graph is, in case the process is stopped first."""
        running = self.in_flight()
        if not running:
            log.info("shutdown requested; no uploads in flight")
            return
        for slug, shown, spool in running:
            log.warning(
                "shutdown requested during the upload of graph %s to %s; the graph stays in "
                "spool file %s unless the upload finishes first",
                slug,
                shown,
                spool if spool is not None else "(none: the spool directory is not writable)",
            )

    def shutdown(self, wait: bool = True) -> None:
        """Stop the upload threads (after the running uploads, when `wait`)."""
        self._executor.shutdown(wait=wait)


def _note_shutdowns(queues: list[UploadQueue]) -> None:
    for queue in queues:
        queue.note_shutdown()


def install_shutdown_notice() -> None:
    """On SIGTERM, log every in-flight upload and its spool file, then run the old handler.

    Called in the serving process after its own handlers are set (gunicorn's
    ``post_worker_init``). The log is written from a short-lived thread, because a signal
    handler must not block on locks the interrupted main thread may hold.
    """
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        queues = list(_QUEUES)
        threading.Thread(
            target=_note_shutdowns,
            args=(queues,),
            name="upload-shutdown-notice",
            daemon=True,
        ).start()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:  # terminate as if this handler had not been there
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    # gunicorn makes SIGTERM restart interrupted system calls; keep that for its requests.
    signal.siginterrupt(signal.SIGTERM, False)
