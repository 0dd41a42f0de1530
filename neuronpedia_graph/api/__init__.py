"""The HTTP front end: a Flask app whose routes are generated from the operations table.

`create_app` only assembles parts; each part attaches itself through its own `init_app`
(request ids and logging, errors, metrics, routes, the viewer), as in Flask's tutorial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from neuronpedia_graph.limits import MAX_BODY_BYTES

if TYPE_CHECKING:
    from neuronpedia_graph.service import GraphService


def create_app(service: GraphService, secret: str | None = None) -> Flask:
    """Build the app around an already-loaded model.

    Args:
        service: the loaded model's service.
        secret: the x-secret-key clients must send; defaults to the service's SECRET setting,
            which must be set (the server is never open to the world).

    Returns:
        The Flask app.
    """
    from neuronpedia_graph.api import auth, errors, hooks, jobs, routes
    from neuronpedia_graph.metrics import Metrics

    app = Flask("neuronpedia_graph")
    # Never redirect: werkzeug's slash redirects (`/viewer//x`, `/health/`) answer 308 with an
    # HTML body and a Location built from the client's Host header, and bypass the JSON error
    # handlers. Without them a non-matching path is a JSON 404 like any other.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["npg_service"] = service
    auth.init_app(app, secret if secret is not None else service.settings.require_secret())
    Metrics().init_app(app)
    hooks.init_app(app)
    errors.init_app(app)
    routes.init_app(app)
    jobs.init_app(app)
    if service.settings.viewer:
        from neuronpedia_graph.viewer import viewer_blueprint

        app.register_blueprint(viewer_blueprint)
    from neuronpedia_graph.serving.stream_handoff import HandoffMiddleware

    # method-assign: replacing wsgi_app is how Flask documents wrapping it in middleware.
    app.wsgi_app = HandoffMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app
