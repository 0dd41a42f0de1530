"""One attribution, forward pass or steer at a time: circuit-tracer is not thread-safe.

A request that finds the model busy is refused at once (HTTP 503) instead of queueing behind
a graph that may take minutes; callers that must wait (the Runpod worker) pass a timeout.

Graph jobs (`neuronpedia_graph.jobs`) share the model through `hold_for_job`, with these rules
so that synchronous callers never lose to the queue:
- a job takes the model only when it is free and no synchronous caller is waiting for it;
- a synchronous `/generate-graph` that finds a *job* on the model waits for it (`behind_job`)
  instead of answering 503, and goes before every queued job; at most `MAX_WAITING` do so,
  further ones are refused as today (the model would be busy with the first one's graph);
- a caller refused while a job held the model is given `grace` seconds after that job, before
  the next job starts, to come back (its Retry-After): interactive calls run between jobs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from neuronpedia_graph.errors import ServerBusy

MAX_WAITING = 1


class ModelLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: str | None = None  # "request" or "job"
        self._waiting = 0  # synchronous callers waiting for the model
        self._refused_during_job = False
        self._last_request_end = 0.0

    @property
    def busy(self) -> bool:
        return self._holder is not None

    @property
    def held_by_job(self) -> bool:
        return self._holder == "job"

    @contextmanager
    def hold(
        self,
        timeout: float | None = None,
        *,
        behind_job: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        """Hold the model for a synchronous caller.

        Args:
            timeout: None refuses at once when busy (503); seconds to wait (the Runpod worker).
            behind_job: wait (without a time limit) when the holder is a job, not a request.
            on_wait: called once this caller is counted as waiting (a test hook point).
        """
        with self._cond:
            waits = self._holder is not None
            if not waits:
                self._holder = "request"
            else:
                waits = timeout is not None or (
                    behind_job and self._holder == "job" and self._waiting < MAX_WAITING
                )
                if not waits:
                    if self._holder == "job":
                        self._refused_during_job = True
                    raise ServerBusy()
                self._waiting += 1
        if waits:  # the model is not ours yet
            try:
                if on_wait is not None:
                    on_wait()
                with self._cond:
                    free = self._cond.wait_for(lambda: self._holder is None, timeout)
                    if free:
                        self._holder = "request"
            finally:
                with self._cond:
                    self._waiting -= 1
                    self._cond.notify_all()
            if not free:
                raise ServerBusy()
        try:
            yield
        finally:
            with self._cond:
                self._holder = None
                self._last_request_end = time.monotonic()
                self._cond.notify_all()

    @contextmanager
    def hold_for_job(self, grace: float = 0.0) -> Iterator[None]:
        """Hold the model for a queued job: after synchronous callers (see the module doc).

        Args:
            grace: seconds to leave the model to synchronous callers refused during the
                previous job before this one starts (their Retry-After).
        """
        with self._cond:
            if self._refused_during_job and grace > 0:
                self._refused_during_job = False
                asked = time.monotonic()
                # Until a synchronous caller has used the model, or the grace is over.
                self._cond.wait_for(lambda: self._last_request_end > asked, grace)
            self._cond.wait_for(lambda: self._holder is None and self._waiting == 0)
            self._holder = "job"
            self._refused_during_job = False
        try:
            yield
        finally:
            with self._cond:
                self._holder = None
                self._cond.notify_all()
