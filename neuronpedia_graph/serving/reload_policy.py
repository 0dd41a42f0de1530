"""What a reload (SIGHUP to the gunicorn master) does to a model server: never reload the model.

gunicorn's reload starts a new worker and only then stops the old one. For this server that
means a second copy of the model loading while the first still holds its memory (two copies of
gemma-2-2b do not fit on many GPUs), and the old worker's running graph killed once it outlives
the 30 s graceful timeout. The policy here is to refuse model reloads: on SIGHUP the master

1. re-reads the settings exactly as the start did (the same command line, the process's
   environment, the `.env` file), and if they are invalid says so and changes nothing;
2. applies what can change without a second model: the log level (`LOG_LEVEL`, in the master
   and, through a shared byte and SIGUSR1, in the worker) and reopened log files;
3. logs one line naming every other setting that changed, which applies only after a restart.

The worker, its model and any graph in flight are untouched, so a graph running during a
reload finishes normally. SIGTTIN (one more worker, i.e. one more model) is refused the same
way. A restart (`systemctl restart`, SIGTERM then start) is how a new model is loaded.
"""

from __future__ import annotations

import logging
import mmap
import signal
from collections.abc import Callable
from types import FrameType

from neuronpedia_graph.serving.gunicorn_types import GunicornApplication, GunicornArbiter
from neuronpedia_graph.settings import Settings, SettingsError

# Settings that the running server applies on SIGHUP; every other change needs a restart.
RELOADABLE = frozenset({"log_level"})
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

log = logging.getLogger("gunicorn.error")


class LogLevelChannel:
    """The log level the master last applied, in one byte of shared memory (survives fork)."""

    def __init__(self, level: str = "INFO") -> None:
        self._byte = mmap.mmap(-1, 1)
        self.set(level)

    def set(self, level: str) -> None:
        self._byte[0] = _LEVELS.index(level.upper())

    def get(self) -> str:
        return _LEVELS[self._byte[0]]


def apply_log_level(level: str) -> None:
    """Set the level of this process's root logger and gunicorn's error log."""
    logging.getLogger().setLevel(level.upper())
    logging.getLogger("gunicorn.error").setLevel(level.upper())


def follow_log_level(channel: LogLevelChannel) -> None:
    """In the worker: on SIGUSR1, take the master's level, then do what SIGUSR1 did before.

    Called from gunicorn's ``post_worker_init``, after the worker set its own handlers
    (gunicorn's SIGUSR1 reopens the log files).
    """
    apply_log_level(channel.get())  # a reload may have come while this worker was loading
    previous = signal.getsignal(signal.SIGUSR1)

    def on_usr1(signum: int, frame: FrameType | None) -> None:
        apply_log_level(channel.get())
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.siginterrupt(signal.SIGUSR1, False)


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """The names of the fields whose values differ (secrets compared by value, never shown)."""
    names = []
    for name in type(old).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if hasattr(before, "get_secret_value") or hasattr(after, "get_secret_value"):
            before = before.get_secret_value() if before is not None else None
            after = after.get_secret_value() if after is not None else None
        if before != after:
            names.append(name)
    return names


def arbiter_class(
    current: Settings, reread: Callable[[], Settings], channel: LogLevelChannel
) -> type[GunicornArbiter]:
    """gunicorn's Arbiter with the reload policy of the module docstring.

    Args:
        current: the settings the server started with.
        reread: loads the settings again from the start's sources (raises SettingsError).
        channel: where the worker reads the log level from on SIGUSR1.

    Returns:
        The Arbiter subclass to run.
    """
    from gunicorn.arbiter import Arbiter

    class ModelServerArbiter(Arbiter):  # type: ignore[misc]  # misc: gunicorn is untyped
        settings: Settings = current

        def reload(self) -> None:
            pids = ", ".join(str(pid) for pid in self.WORKERS) or "none"
            log.warning(
                "SIGHUP: the model is not reloaded (a reload would load a second copy of it "
                "next to the first and stop graphs in flight); re-reading the log "
                "configuration only. Worker %s keeps serving. Restart the server to load a "
                "new model or apply other settings.",
                pids,
            )
            try:
                fresh = reread()
            except SettingsError as exc:
                log.error("SIGHUP: the configuration is invalid now (%s); nothing changed", exc)
                return
            except Exception:  # an error here would stop gunicorn's main loop: never that
                log.exception("SIGHUP: reading the configuration failed; nothing changed")
                return
            later = [n for n in changed_settings(self.settings, fresh) if n not in RELOADABLE]
            if later:
                log.warning(
                    "SIGHUP: changed settings that apply only after a restart: %s",
                    ", ".join(n.upper() for n in later),
                )
            level = fresh.log_level.upper()
            if level not in _LEVELS:
                log.error("SIGHUP: LOG_LEVEL=%s is not a log level; nothing changed", level)
                return
            self.cfg.set("loglevel", level.lower())
            self.log.setup(self.cfg)
            self.log.reopen_files()
            apply_log_level(level)
            channel.set(level)
            self.kill_workers(signal.SIGUSR1)
            self.settings = fresh.model_copy(update={n: getattr(self.settings, n) for n in later})
            log.warning("SIGHUP: done; LOG_LEVEL=%s, log files reopened", level)

        def handle_ttin(self) -> None:
            log.warning(
                "SIGTTIN refused: one worker holds the model; another worker would load a "
                "second copy of it"
            )

    return ModelServerArbiter


def run_arbiter(
    app: GunicornApplication, arbiter: Callable[[GunicornApplication], GunicornArbiter]
) -> None:
    """`BaseApplication.run` with our Arbiter (gunicorn's own builds its Arbiter itself)."""
    import sys

    try:
        arbiter(app).run()
    except RuntimeError as exc:
        print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
        sys.exit(1)
