"""The built-in graph viewer: one static page at `/` and its assets under `/viewer/`.

The page is plain HTML, CSS and JavaScript shipped inside the package (no CDN, nothing fetched
from elsewhere), so a server on an offline machine can still show the graphs it computes.
Serving it needs no secret: the page holds no data, and every POST it makes carries the
x-secret-key the user types into it. Turned off with VIEWER=false for API-only deployments.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Assets are small and change only with the package version; revalidating each load (ETag /
# Last-Modified answer 304) keeps an upgraded server from showing a stale page.
CACHE_CONTROL = "no-cache"

viewer_blueprint = Blueprint("viewer", __name__)


def _static(name: str) -> Response:
    response = send_from_directory(STATIC_DIR, name, max_age=0, conditional=True)
    response.headers["Cache-Control"] = CACHE_CONTROL
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@viewer_blueprint.get("/")
def index() -> Response:
    """The viewer page."""
    response = _static("index.html")
    # The page only talks to this server; nothing else may load into it.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'"
    )
    return response


@viewer_blueprint.get("/viewer/<path:name>")
def asset(name: str) -> Response:
    """A file of the viewer (CSS, JavaScript); a missing or outside file is a JSON 404."""
    return _static(name)
