"""Command line: resolve settings, check the model can load, then serve it with gunicorn.

`describe` and `reupload` are subcommands; serving itself is `serving.gunicorn`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from neuronpedia_graph.hooks import NO_HOOKS, Hooks
from neuronpedia_graph.settings import SettingsError, load_settings


def main(argv: Sequence[str] | None = None, *, hooks: Hooks = NO_HOOKS) -> int:
    """The command line.

    Args:
        argv: the arguments (default: `sys.argv[1:]`).
        hooks: points where an embedding program (the test kit) may hold or fail the work.

    Returns:
        The exit status.
    """
    from neuronpedia_graph.logging_setup import configure_logging

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["describe"]:
        from neuronpedia_graph.models.describe import main as describe_main

        return describe_main(args[1:])
    if args[:1] == ["reupload"]:
        from neuronpedia_graph.upload.reupload import main as reupload_main

        return reupload_main(args[1:])
    try:
        settings = load_settings(args)
        settings.require_secret()
        configure_logging(settings.log_level)
        from neuronpedia_graph.models.spec import ModelLoadError, preflight, resolve_spec

        try:
            preflight(resolve_spec(settings))
        except ModelLoadError as exc:
            raise SettingsError(str(exc)) from None
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from neuronpedia_graph.serving.gunicorn import build_app, serve_gunicorn

    if settings.dev:
        try:
            app = build_app(settings, hooks)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        app.run(host=settings.host, port=settings.port, threaded=True)
        return 0
    serve_gunicorn(settings, hooks=hooks, reread=lambda: load_settings(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
