"""Flask app factory: routes, auth, request ids and error mapping. No model work happens here."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from neuronpedia_graph.errors import InvalidRequest, ServerBusy, ServiceError
from neuronpedia_graph.logging_setup import request_id_var
from neuronpedia_graph.metrics import Metrics
from neuronpedia_graph.schemas import (
    BusyResponse,
    ForwardPassRequest,
    GraphRequest,
    HealthResponse,
    ParseChatPromptRequest,
    UploadResponse,
    parse_request,
)
from neuronpedia_graph.service import GraphService

logger = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_BODY_BYTES = 1 << 20


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(mode="json")
    return Response(
        orjson.dumps(payload), status=status, mimetype="application/json", headers=headers
    )


def error_response(status: int, message: str, **extra: Any) -> Response:
    body = {"error": message, **extra, "request_id": request_id_var.get()}
    headers = {"Retry-After": str(ServerBusy.retry_after_seconds)} if status == 503 else None
    return json_response(body, status, headers)


def create_app(service: GraphService, secret: str) -> Flask:
    """Build the app around an already-loaded model; the secret is required, never optional."""
    if not secret:
        raise ValueError("a non-empty secret is required")
    app = Flask("neuronpedia_graph")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    metrics = Metrics()
    secret_bytes = secret.encode()
    app.extensions["npg_metrics"] = metrics
    app.extensions["npg_service"] = service

    def require_secret(view: Callable[..., Response]) -> Callable[..., Response]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Response:
            given = request.headers.get("x-secret-key")
            if not given:
                return error_response(401, "x-secret-key header missing")
            if not hmac.compare_digest(given.encode(), secret_bytes):
                return error_response(403, "Invalid x-secret-key")
            return view(*args, **kwargs)

        return wrapper

    def body_json() -> Any:
        raw = request.get_data(cache=False)
        if request.content_length is None and len(raw) >= MAX_BODY_BYTES:  # chunked, cut at limit
            raise RequestEntityTooLarge()
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("Request body is not valid JSON") from None

    @app.before_request
    def start_request() -> None:
        incoming = request.headers.get("x-request-id", "")
        rid = incoming if REQUEST_ID_PATTERN.match(incoming) else uuid.uuid4().hex
        g.request_id = rid
        g.token = request_id_var.set(rid)
        g.started = time.perf_counter()

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        if request.method == "POST":
            logger.info(
                "%s %s -> %d in %.0f ms",
                request.method,
                request.path,
                response.status_code,
                (time.perf_counter() - g.get("started", time.perf_counter())) * 1000,
            )
        return response

    @app.teardown_request
    def reset_context(_exc: BaseException | None) -> None:
        token = g.pop("token", None)
        if token is not None:
            request_id_var.reset(token)

    @app.errorhandler(ServiceError)
    def handle_service_error(exc: ServiceError) -> Response:
        return error_response(exc.status, exc.message, **exc.extra)

    @app.errorhandler(HTTPException)
    def handle_http_error(exc: HTTPException) -> Response:
        messages = {
            404: "Not found",
            405: "Method not allowed",
            413: f"Request body too large (max {MAX_BODY_BYTES} bytes)",
        }
        code = exc.code or 500
        return error_response(code, messages.get(code, exc.description or exc.name))

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, f"Internal server error ({type(exc).__name__})")

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    def health() -> Response:
        return json_response(HealthResponse(**service.health()))

    @app.get("/check-busy")
    def check_busy() -> Response:
        return json_response(BusyResponse(busy=service.lock.busy))

    @app.get("/metrics")
    def prometheus() -> Response:
        metrics.busy.set(1 if service.lock.busy else 0)
        return Response(metrics.render(), mimetype=metrics.content_type)

    @app.post("/generate-graph")
    @require_secret
    def generate_graph() -> Response:
        req = parse_request(GraphRequest, body_json())
        try:
            result = service.generate_graph(req)
        except ServiceError as exc:
            if exc.status == 502:
                metrics.uploads.labels("failed").inc()
            raise
        for phase, ms in result.timings.phases.items():
            metrics.phase_seconds.labels(phase).observe(ms / 1000)
        metrics.graph_bytes.observe(result.json_bytes)
        headers = {"Server-Timing": result.timings.server_timing()}
        if result.upload is not None:
            metrics.uploads.labels("ok").inc()
            up = result.upload
            payload = UploadResponse(url=up.url, bytes=up.bytes, compressed=up.compressed)
            return json_response(payload, headers=headers)
        body = result.body or b""
        if request.accept_encodings.best_match(("gzip", "identity")) == "gzip":  # q-values
            from neuronpedia_graph.compression import gzip_compress

            body = gzip_compress(body, level=service.settings.gzip_level)
            headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
        return Response(body, status=200, mimetype="application/json", headers=headers)

    @app.post("/forward-pass")
    @require_secret
    def forward_pass() -> Response:
        req = parse_request(ForwardPassRequest, body_json())
        return json_response(service.forward_pass(req))

    @app.post("/steer")
    @require_secret
    def steer() -> Response:
        return json_response(service.steer(body_json()))

    @app.post("/parse-chat-prompt")
    @require_secret
    def parse_chat_prompt() -> Response:
        req = parse_request(ParseChatPromptRequest, body_json())
        return json_response(service.parse_chat_prompt(req.prompt))

    return app
