"""Stop the server, instead of restarting forever, when the worker dies before the model is ready.

gunicorn restarts a worker that dies. That is right once the model has loaded (a crash while
serving is followed by a fresh worker), but a worker that dies WHILE LOADING will die again the
same way (a model too large for the machine is OOM-killed, re-booted and killed again forever,
and the master never says why; docs/decisions/boot-guard.md). gunicorn already halts when a worker
exits with its boot-error code (our loader does that for exceptions it reports), but a signal
(SIGKILL from the OOM killer) gives it no code to look at.

The guard is one byte of anonymous shared memory, created in the master before the fork: the
master clears it before forking a worker, the worker sets it once the model is ready, and the
master's `child_exit` hook halts the server with an `error:` line when the newest worker (the
one the byte describes) exits with the byte still clear. A worker that loads fine and dies later
is restarted as before, and an older worker that exits normally while a newer one loads (a
reload in stock gunicorn) is not mistaken for the newer one dying.
"""

from __future__ import annotations

import mmap
import sys

from neuronpedia_graph.serving.gunicorn_types import GunicornArbiter, GunicornWorker

WORKER_BOOT_ERROR = 3  # gunicorn's own code for "worker failed to boot": exit status of the CLI


class BootGuard:
    """Shared "model is ready" flag between the gunicorn master and its worker."""

    def __init__(self) -> None:
        self._flag = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: survives fork, shared

    @property
    def ready(self) -> bool:
        return self._flag[0] == 1

    def mark_ready(self) -> None:
        """Called in the worker once the model is loaded and the app is built."""
        self._flag[0] = 1

    def pre_fork(self, _arbiter: GunicornArbiter, _worker: GunicornWorker) -> None:
        """gunicorn hook (master): a new worker starts not ready."""
        self._flag[0] = 0

    def child_exit(self, arbiter: GunicornArbiter, worker: GunicornWorker) -> None:
        """gunicorn hook (master): halt if the worker died before the model was ready.

        Args:
            arbiter: gunicorn's Arbiter; `LISTENERS` is empty once it is stopping.
            worker: the Worker object of the exited process.

        Raises:
            HaltServer: caught by the arbiter's main loop, which stops and exits non-zero.
        """
        if self.ready or not arbiter.LISTENERS:
            return  # it had loaded (restart it), or the server is shutting down anyway
        if worker.age != arbiter.worker_age:
            return  # an older worker: the flag describes the newest one, still loading
        from gunicorn.errors import HaltServer

        print(
            f"error: the worker process (pid {worker.pid}) died while loading the model, "
            "before it was ready (see the line above for the signal or exit code: SIGKILL "
            "usually means the machine ran out of memory). Not restarting it: loading again "
            "would fail the same way. Free memory or load less (e.g. DTYPE=bfloat16 on CUDA, "
            "a smaller model, LAZY_ENCODER=true), then start the server again.",
            file=sys.stderr,
            flush=True,
        )
        raise HaltServer("worker died before the model was ready", WORKER_BOOT_ERROR)
