"""Every failure becomes a JSON error reply with the right status; 500 only for real bugs."""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from neuronpedia_graph.api.responses import error_response, render_error
from neuronpedia_graph.errors import ServiceError, error_reply

logger = logging.getLogger("neuronpedia_graph.api")


def init_app(app: Flask) -> None:
    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)


def _service_error(exc: ServiceError) -> Response:
    return render_error(*error_reply(exc))


def _http_error(exc: HTTPException) -> Response:
    from neuronpedia_graph.limits import MAX_BODY_BYTES

    messages = {
        404: "Not found",
        405: "Method not allowed",
        413: f"Request body too large (max {MAX_BODY_BYTES} bytes)",
    }
    code = exc.code or 500
    return error_response(code, messages.get(code, exc.description or exc.name))


def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return render_error(*error_reply(exc))
