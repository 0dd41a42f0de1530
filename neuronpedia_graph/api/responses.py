"""JSON replies, and the one shape of every error reply."""

from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from pydantic import BaseModel

from neuronpedia_graph.errors import ServerBusy
from neuronpedia_graph.logging_setup import request_id_var


def json_response(
    payload: BaseModel | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    return Response(
        orjson.dumps(payload), status=status, mimetype="application/json", headers=headers
    )


def error_response(status: int, message: str, **extra: Any) -> Response:
    """{"error": message, ...extra, "request_id"}; 503 says when to come back."""
    body = {"error": message, **extra, "request_id": request_id_var.get()}
    headers = {"Retry-After": str(ServerBusy.retry_after_seconds)} if status == 503 else None
    return json_response(body, status, headers)
