"""Start gunicorn with one worker that loads the model, and build the app inside it.

The model is loaded inside the (single) gunicorn worker, not in the master before fork:
CUDA cannot be used in a process forked after CUDA was initialised, and one worker means
the weights are still loaded exactly once. A worker that dies while loading stops the server
(`boot_guard`); SIGHUP re-reads settings but never reloads the model (`reload_policy`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from neuronpedia_graph.hooks import NO_HOOKS, Hooks
from neuronpedia_graph.serving.boot_guard import (
    WORKER_BOOT_ERROR,  # gunicorn halts on this exit code
)
from neuronpedia_graph.serving.gunicorn_types import GunicornWorker
from neuronpedia_graph.settings import Settings, SettingsError

if TYPE_CHECKING:
    from flask import Flask

    from neuronpedia_graph.models.loading import LoadedModel

logger = logging.getLogger("neuronpedia_graph")


def banner(loaded: LoadedModel, settings: Settings) -> str:
    from neuronpedia_graph.versions import describe_versions

    spec = loaded.spec
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    lines = [
        "neuronpedia-graph ready",
        f"  model          {spec.model_id} (scan {spec.scan}, backend {spec.backend})",
        *(f"  WARNING        {warning}" for warning in spec.warnings),
        f"  transcoders    {spec.transcoder_ref}",
        f"  device/dtype   {loaded.device} / {str(loaded.dtype).removeprefix('torch.')}",
        f"  load time      {loaded.load_seconds:.1f} s",
        f"  token limit    {settings.token_limit}   max feature nodes {settings.max_feature_nodes}",
        f"  url            http://{host}:{settings.port}  (POSTs need the x-secret-key header)",
        f"  versions       {describe_versions()}",
    ]
    return "\n".join(lines)


def build_app(settings: Settings, hooks: Hooks = NO_HOOKS) -> Flask:
    """Load the model and wrap it in the Flask app (runs in the serving process)."""
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.service import GraphService

    hooks.reached("load")
    loaded = load_model(settings)
    app = create_app(GraphService(loaded, settings, hooks=hooks), settings.require_secret())
    from neuronpedia_graph.api.jobs import start_jobs

    start_jobs(app)  # recover the job store now, not at the first job request
    print(banner(loaded, settings), file=sys.stderr, flush=True)
    return app


def serve_gunicorn(
    settings: Settings,
    worker_class: str | type | None = None,
    hooks: Hooks = NO_HOOKS,
    reread: Callable[[], Settings] | None = None,
) -> None:
    """Run gunicorn in this process: one worker, the model loaded inside it.

    Args:
        settings: resolved settings.
        worker_class: override of the buffering worker (benchmarks compare "gthread").
        hooks: the service's hooks (the test kit's holds and faults); none in production.
        reread: loads the settings again on SIGHUP (`reload_policy`); default: these settings.
    """
    from gunicorn.app.base import BaseApplication

    from neuronpedia_graph.limits import MAX_BODY_BYTES
    from neuronpedia_graph.models.spec import ModelLoadError
    from neuronpedia_graph.serving.access_log import RedactingLogger
    from neuronpedia_graph.serving.boot_guard import BootGuard
    from neuronpedia_graph.serving.reload_policy import (
        LogLevelChannel,
        arbiter_class,
        follow_log_level,
        run_arbiter,
    )
    from neuronpedia_graph.serving.worker import configured_worker
    from neuronpedia_graph.upload.queue import install_shutdown_notice

    guard = BootGuard()
    channel = LogLevelChannel(settings.log_level)

    def post_worker_init(_worker: GunicornWorker) -> None:
        install_shutdown_notice()
        follow_log_level(channel)

    if worker_class is None:
        worker_class = configured_worker(
            settings.request_read_timeout,
            MAX_BODY_BYTES,
            idle_timeout=settings.idle_timeout,
            max_connections=settings.max_connections,
            request_buffer_budget=settings.request_buffer_budget,
            write_timeout=settings.write_timeout,
        )

    class GraphServer(BaseApplication):  # type: ignore[misc]  # misc: gunicorn is untyped
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.host}:{settings.port}",
                "workers": 1,
                "worker_class": worker_class,
                # Requests waiting on their upload hold a thread each: give them their own.
                "threads": settings.threads + settings.upload_workers,
                "post_worker_init": post_worker_init,
                "worker_connections": settings.max_connections,
                "timeout": 0,
                "graceful_timeout": 30,
                "control_socket_disable": True,
                "accesslog": "-",
                "errorlog": "-",
                "logger_class": RedactingLogger,
                "loglevel": settings.log_level.lower(),
                "pre_fork": guard.pre_fork,
                "child_exit": guard.child_exit,
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            try:
                app = build_app(settings, hooks)
            except (ModelLoadError, SettingsError) as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                sys.exit(WORKER_BOOT_ERROR)
            except Exception as exc:
                logger.exception("loading the model failed")
                print(
                    f"error: loading the model failed: {type(exc).__name__}: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(WORKER_BOOT_ERROR)
            guard.mark_ready()
            return app

        def run(self) -> None:
            run_arbiter(self, arbiter_class(settings, reread or (lambda: settings), channel))

    GraphServer().run()
