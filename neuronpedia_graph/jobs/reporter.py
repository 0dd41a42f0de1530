"""Progress sent to a slow channel: throttled, in order, never backwards.

The Runpod worker reports a graph's progress through the SDK's `progress_update`, and each
call starts a thread and an HTTP POST. Sending one per batch would start hundreds of threads,
and POSTs racing each other could arrive out of order (progress going backwards). A
`ThrottledReporter` sends on a phase change, or when `interval` seconds have passed since the
last send; one sender thread sends one update at a time, and when updates pile up only the
latest is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from neuronpedia_graph.json_types import JSONObject

logger = logging.getLogger(__name__)


class ThrottledReporter:
    """Pass as a `ProgressTracker`'s `on_change`; call `close()` when the graph is over.

    Args:
        send: delivers one update (`{"phase", "progress"}`); may block; called from one thread.
        interval: least seconds between two sends within one phase.
    """

    def __init__(self, send: Callable[[JSONObject], None], interval: float = 2.0) -> None:
        self._send = send
        self.interval = interval
        self._cond = threading.Condition()
        self._latest: JSONObject | None = None
        self._last_phase: str | None = None
        self._last_sent = float("-inf")
        self._last_progress = -1.0
        self._closed = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name="progress-reporter", daemon=True)
        self._thread.start()

    def __call__(self, phase: str, progress: float) -> None:
        now = time.monotonic()
        with self._cond:
            if progress < self._last_progress:
                return
            if phase == self._last_phase and now - self._last_sent < self.interval:
                return
            self._last_phase, self._last_sent, self._last_progress = phase, now, progress
            self._latest = {"phase": phase, "progress": round(progress, 4)}
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending, then stop (waits at most `timeout` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._latest is not None or self._closed)
                update, self._latest = self._latest, None
                if update is None:
                    return
            try:
                self._send(update)
            except Exception:  # progress is best effort; the job goes on
                logger.warning("progress update failed", exc_info=True)
