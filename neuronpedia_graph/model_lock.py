"""One attribution, forward pass or steer at a time: circuit-tracer is not thread-safe.

A request that finds the model busy is refused at once (HTTP 503) instead of queueing behind
a graph that may take minutes; callers that must wait (the Runpod worker) pass a timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from neuronpedia_graph.errors import ServerBusy


class ModelLock:
    def __init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        acquired = (
            self._lock.acquire(blocking=False)
            if timeout is None
            else self._lock.acquire(timeout=timeout)
        )
        if not acquired:
            raise ServerBusy()
        try:
            yield
        finally:
            self._lock.release()
