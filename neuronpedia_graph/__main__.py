"""Command line: resolve settings, check the model can load, then serve it with gunicorn.

The model is loaded inside the (single) gunicorn worker, not in the master before fork:
CUDA cannot be used in a process forked after CUDA was initialised, and one worker means
the weights are still loaded exactly once.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from neuronpedia_graph.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("neuronpedia_graph")

WORKER_BOOT_ERROR = 3  # gunicorn stops the master when a worker exits with this code


def banner(loaded: Any, settings: Settings) -> str:
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
    ]
    return "\n".join(lines)


def build_app(settings: Settings) -> Any:
    """Load the model and wrap it in the Flask app (runs in the serving process)."""
    from neuronpedia_graph.app import create_app
    from neuronpedia_graph.loading import load_model
    from neuronpedia_graph.service import GraphService

    loaded = load_model(settings)
    app = create_app(GraphService(loaded, settings), settings.require_secret())
    print(banner(loaded, settings), file=sys.stderr, flush=True)
    return app


def serve_gunicorn(settings: Settings) -> None:
    from gunicorn.app.base import BaseApplication

    from neuronpedia_graph.loading import ModelLoadError

    class GraphServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{settings.host}:{settings.port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": settings.threads,
                "timeout": 0,
                "graceful_timeout": 30,
                "control_socket_disable": True,
                "accesslog": "-",
                "errorlog": "-",
                "loglevel": settings.log_level.lower(),
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            try:
                return build_app(settings)
            except (ModelLoadError, SettingsError) as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                sys.exit(WORKER_BOOT_ERROR)

    GraphServer().run()


def main(argv: Sequence[str] | None = None) -> int:
    from neuronpedia_graph.logging_setup import configure_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["describe"]:
        from neuronpedia_graph.describe import main as describe_main

        return describe_main(args[1:])
    try:
        settings = load_settings(args)
        settings.require_secret()
        configure_logging(settings.log_level)
        from neuronpedia_graph.loading import ModelLoadError, preflight, resolve_spec

        try:
            preflight(resolve_spec(settings))
        except ModelLoadError as exc:
            raise SettingsError(str(exc)) from None
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.dev:
        try:
            app = build_app(settings)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        app.run(host=settings.host, port=settings.port, threaded=True)
        return 0
    serve_gunicorn(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
