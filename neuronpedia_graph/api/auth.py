"""The shared-secret check every POST goes through (x-secret-key, compared in constant time)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec

from flask import Flask, Response, current_app, request

from neuronpedia_graph.api.responses import error_response

HEADER = "x-secret-key"


def init_app(app: Flask, secret: str) -> None:
    if not secret:
        raise ValueError("a non-empty secret is required")
    app.extensions["npg_secret"] = secret.encode()


P = ParamSpec("P")


def require_secret(view: Callable[P, Response]) -> Callable[P, Response]:
    """401 without the header, 403 with a wrong one; the view runs only with the right one."""

    @wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        given = request.headers.get(HEADER)
        if not given:
            return error_response(401, f"{HEADER} header missing")
        if not hmac.compare_digest(given.encode(), current_app.extensions["npg_secret"]):
            return error_response(403, f"Invalid {HEADER}")
        return view(*args, **kwargs)

    return wrapper
