"""The routes: three GET probes, and one POST per entry of the operations table."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson
from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from neuronpedia_graph.api.auth import require_secret
from neuronpedia_graph.api.responses import json_response
from neuronpedia_graph.errors import InvalidRequest, ServiceError
from neuronpedia_graph.json_types import JSONValue
from neuronpedia_graph.limits import MAX_BODY_BYTES
from neuronpedia_graph.operations import OPERATIONS, Operation
from neuronpedia_graph.schemas import BusyResponse

if TYPE_CHECKING:
    from neuronpedia_graph.metrics import Metrics
    from neuronpedia_graph.service import GraphResult, GraphService, Timings


def init_app(app: Flask) -> None:
    app.register_blueprint(make_blueprint())


def make_blueprint() -> Blueprint:
    """A fresh blueprint per app (a registered blueprint cannot take new routes)."""
    bp = Blueprint("api", __name__)
    bp.add_url_rule("/health", view_func=health, methods=["GET"])
    bp.add_url_rule("/check-busy", view_func=check_busy, methods=["GET"])
    bp.add_url_rule("/metrics", view_func=prometheus, methods=["GET"])
    bp.add_url_rule("/openapi.json", view_func=openapi, methods=["GET"])
    for op in OPERATIONS:
        bp.add_url_rule(
            op.path, endpoint=op.name, view_func=require_secret(_view(op)), methods=["POST"]
        )
    return bp


def _service() -> GraphService:
    service: GraphService = current_app.extensions["npg_service"]
    return service


def _metrics() -> Metrics:
    metrics: Metrics = current_app.extensions["npg_metrics"]
    return metrics


def health() -> Response:
    return json_response(_service().health())


def check_busy() -> Response:
    return json_response(BusyResponse(busy=_service().lock.busy))


def prometheus() -> Response:
    metrics = _metrics()
    metrics.busy.set(1 if _service().lock.busy else 0)
    return Response(metrics.render(), content_type=metrics.content_type)


def openapi() -> Response:
    from neuronpedia_graph.api.openapi import build_openapi

    return json_response(build_openapi())


def _body() -> JSONValue:
    raw = request.get_data(cache=False)
    if request.content_length is None and len(raw) >= MAX_BODY_BYTES:  # chunked, cut at limit
        raise RequestEntityTooLarge()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("Request body is not valid JSON") from None


def _view(op: Operation) -> Callable[[], Response]:
    def view() -> Response:
        from neuronpedia_graph.service import GraphResult

        try:
            outcome = _service().run(op, _body())
        except ServiceError as exc:
            if exc.status == 502:
                _metrics().uploads.labels("failed").inc()
            raise
        headers = {"Server-Timing": outcome.timings.server_timing()}
        if isinstance(outcome.value, GraphResult):
            return _graph_reply(outcome.value, outcome.timings, headers)
        return json_response(outcome.value, headers=headers)

    view.__name__ = op.name.replace("-", "_")
    return view


def _graph_reply(result: GraphResult, timings: Timings, headers: dict[str, str]) -> Response:
    """The upload receipt, or the document itself (gzip'd when the client accepts it)."""
    metrics = _metrics()
    for phase, ms in timings.phases.items():
        metrics.phase_seconds.labels(phase).observe(ms / 1000)
    metrics.graph_bytes.observe(result.json_bytes)
    if result.graph_id is not None:  # where GET /graphs/<id>/document re-prunes it
        headers["X-Graph-Id"] = result.graph_id
    if result.upload is not None:
        metrics.uploads.labels("ok").inc()
        return json_response(result.upload, headers=headers)
    body = result.document or b""
    if request.accept_encodings.best_match(("gzip", "identity")) == "gzip":  # q-values
        from neuronpedia_graph.compression import gzip_compress

        body = gzip_compress(body, level=_service().settings.gzip_level)
        headers["Content-Encoding"] = "gzip"
    headers["Vary"] = "Accept-Encoding"
    return Response(body, status=200, mimetype="application/json", headers=headers)
