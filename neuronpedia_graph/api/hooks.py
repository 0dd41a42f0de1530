"""Per-request bookkeeping: a request id in every log line and reply, metrics, a log line."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, current_app, g, request

from neuronpedia_graph.logging_setup import request_id_var

logger = logging.getLogger("neuronpedia_graph.api")

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_reset)


def _start() -> None:
    incoming = request.headers.get("x-request-id", "")
    rid = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
    g.request_id = rid
    g.token = request_id_var.set(rid)
    g.started = time.perf_counter()


def _finish(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "-")
    endpoint = request.url_rule.rule if request.url_rule else "unmatched"
    current_app.extensions["npg_metrics"].requests.labels(endpoint, str(response.status_code)).inc()
    if request.method == "POST":
        logger.info(
            "%s %s -> %d in %.0f ms",
            request.method,
            request.path,
            response.status_code,
            (time.perf_counter() - g.get("started", time.perf_counter())) * 1000,
        )
    return response


def _reset(_exc: BaseException | None) -> None:
    token = g.pop("token", None)
    if token is not None:
        request_id_var.reset(token)
