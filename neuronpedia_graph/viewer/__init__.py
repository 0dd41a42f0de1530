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
# On every response under the viewer (page, assets, its JSON 404s). Only this server's own files
# and API: no inline script or style (the static files have none; element.style set from
# JavaScript is allowed), images also from data:/blob: URLs, no plugins, no <base>, forms post
# only here, and no page may frame the viewer (clickjacking its secret prompt).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Assets are small and change only with the package version; revalidating each load (ETag /
# Last-Modified answer 304) keeps an upgraded server from showing a stale page.
CACHE_CONTROL = "no-cache"

viewer_blueprint = Blueprint("viewer", __name__)


@viewer_blueprint.after_request
def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Frame-Options"] = "DENY"  # frame-ancestors for browsers without CSP 2
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _static(name: str) -> Response:
    response = send_from_directory(STATIC_DIR, name, max_age=0, conditional=True)
    response.headers["Cache-Control"] = CACHE_CONTROL
    return response


@viewer_blueprint.get("/")
def index() -> Response:
    """The viewer page."""
    return _static("index.html")


@viewer_blueprint.get("/viewer/<path:name>")
def asset(name: str) -> Response:
    """A file of the viewer (CSS, JavaScript); a missing or outside file is a JSON 404."""
    return _static(name)
