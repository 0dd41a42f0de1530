"""JSON replies, and HTTP's parts of every error reply (the body is `errors.error_body`'s)."""

from __future__ import annotations

import orjson
from flask import Response
from pydantic import BaseModel

from neuronpedia_graph.errors import ServerBusy, error_body
from neuronpedia_graph.json_types import JSONObject, JSONValue
from neuronpedia_graph.logging_setup import request_id_var


def json_response(
    payload: BaseModel | JSONObject, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    return Response(
        orjson.dumps(payload), status=status, mimetype="application/json", headers=headers
    )


def error_response(status: int, message: str, **extra: JSONValue) -> Response:
    """{"error": message, ...extra, "request_id"}; 503 says when to come back."""
    return render_error(status, error_body(message, **extra))


def render_error(status: int, body: JSONObject) -> Response:
    """An error body as HTTP sends it: with the request id, and `Retry-After` on a 503."""
    headers = {"Retry-After": str(ServerBusy.retry_after_seconds)} if status == 503 else None
    return json_response({**body, "request_id": request_id_var.get()}, status, headers)
