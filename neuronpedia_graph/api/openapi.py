"""The OpenAPI 3.1 document, generated from the operations table and the pydantic models.

Served at GET /openapi.json; a committed copy (`openapi.json` at the repository root) is
checked against this generator by a test, so the published contract cannot drift from the code.
Run ``python -m neuronpedia_graph.api.openapi > openapi.json`` after changing a model.
"""

from __future__ import annotations

import json
import sys

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from neuronpedia_graph import __version__
from neuronpedia_graph.json_types import JSONObject
from neuronpedia_graph.operations import OPERATIONS, Operation
from neuronpedia_graph.schemas import BusyResponse, ErrorResponse, HealthResponse

_REF = "#/components/schemas/{model}"
_STATUS_TEXT = {
    200: "Success",
    400: "Bad input: not JSON, not an object, a model that is not loaded, a token limit, or a "
    "feature the model cannot steer",
    401: "The x-secret-key header is missing",
    403: "The x-secret-key header is wrong",
    413: "The request body is over 1 MiB, or the graph is over MAX_GRAPH_LINKS / MAX_GRAPH_BYTES",
    422: "A field is missing, of the wrong type or out of bounds (`fields` names them)",
    502: "The graph was computed but could not be uploaded; it was kept in the spool",
    503: "The model is busy with another request; retry after Retry-After seconds",
}
_EXAMPLES: dict[str, JSONObject] = {
    "generate-graph": {
        "prompt": "The city of Paris is in",
        "model_id": "demo",
        "slug_identifier": "paris-demo",
        "max_feature_nodes": 500,
    },
    "forward-pass": {"prompt": "The city of Paris is in", "model_id": "demo"},
    "steer": {
        "model_id": "demo",
        "prompt": "The city of Rome is in",
        "features": [
            {
                "layer": 1,
                "index": 382,
                "token_active_position": 6,
                "steer_position": 6,
                "delta": 20.0,
            }
        ],
        "n_tokens": 3,
    },
    "parse-chat-prompt": {
        "prompt": "<bos><start_of_turn>user\nThe city of Paris is in<end_of_turn>\n"
        "<start_of_turn>model\n"
    },
}
# A direct /generate-graph reply is the graph document itself (the web app's schema).
_GRAPH_DOCUMENT = {
    "type": "object",
    "description": "The Neuronpedia graph document (metadata, qParams, nodes, links)",
    "required": ["metadata", "qParams", "nodes", "links"],
    "properties": {
        "metadata": {"type": "object"},
        "qParams": {"type": "object"},
        "nodes": {"type": "array", "items": {"type": "object"}},
        "links": {"type": "array", "items": {"type": "object"}},
    },
}


def _error(status: int) -> JSONObject:
    response: JSONObject = {
        "description": _STATUS_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorResponse")}}},
    }
    if status == 503:
        response["headers"] = {
            "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
        }
    return response


def _success(op: Operation) -> JSONObject:
    schema: JSONObject = {"$ref": _REF.format(model=op.response.__name__)}
    headers: JSONObject = {
        "Server-Timing": {
            "description": "time per phase (tokenize, attribute or reused, prune, ...)",
            "schema": {"type": "string"},
        }
    }
    if op.name == "generate-graph":
        schema = {"anyOf": [{"$ref": _REF.format(model="GraphDocument")}, schema]}
        headers["X-Graph-Id"] = {
            "description": "the id its attribution is stored under: GET "
            "/graphs/{id}/document?node_threshold=&edge_threshold= re-prunes it (absent when "
            "not stored, GRAPH_STORE_BYTES=0)",
            "schema": {"type": "string"},
        }
    return {
        "description": _STATUS_TEXT[200],
        "headers": headers,
        "content": {"application/json": {"schema": schema}},
    }


def _operation(op: Operation) -> JSONObject:
    request_ref = {"$ref": _REF.format(model=op.request.__name__)}
    return {
        "operationId": op.name.replace("-", "_"),
        "summary": op.summary,
        "description": _doc(op.request)
        + f"\n\nRunpod request_type: {', '.join((op.name, *op.runpod_aliases))}.",
        "security": [{"secretKey": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": request_ref, "example": _EXAMPLES.get(op.name)}
            },
        },
        "responses": {
            str(status): _success(op) if status == 200 else _error(status) for status in op.statuses
        },
    }


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0]


def _get(
    summary: str,
    model: type[BaseModel] | None,
    media: str = "application/json",
    schema: JSONObject | None = None,
) -> JSONObject:
    if model is not None:
        schema = {"$ref": _REF.format(model=model.__name__)}
    content: JSONObject = {media: {"schema": schema or {"type": "string"}}}
    return {
        "get": {"summary": summary, "responses": {"200": {"description": "OK", "content": content}}}
    }


def build_openapi() -> JSONObject:
    """The OpenAPI 3.1 document for every endpoint.

    Returns:
        The document as a JSON-ready dict.
    """
    from neuronpedia_graph.api import openapi_jobs

    models: list[type[BaseModel]] = [HealthResponse, BusyResponse, ErrorResponse]
    models.extend(openapi_jobs.MODELS)
    for op in OPERATIONS:
        models.extend((op.request, op.response))
    _, definitions = models_json_schema(
        [(m, "validation") for m in dict.fromkeys(models)], ref_template=_REF
    )
    schemas = definitions.get("$defs", {})
    schemas["GraphDocument"] = _GRAPH_DOCUMENT
    paths: JSONObject = {
        "/health": _get("Model, limits and busy state (no secret needed)", HealthResponse),
        "/check-busy": _get("Whether the model is in use", BusyResponse),
        "/metrics": _get("Prometheus metrics", None, "text/plain"),
        "/openapi.json": _get("This document", None, schema={"type": "object"}),
    }
    for op in OPERATIONS:
        paths[op.path] = {"post": _operation(op)}
    paths.update(openapi_jobs.job_paths(lambda name: {"$ref": _REF.format(model=name)}, _error))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "neuronpedia-graph",
            "version": __version__,
            "description": "Attribution graphs (circuit-tracer), forward passes, steering and "
            "chat-prompt parsing for one loaded model, and queued graph jobs. Errors are JSON: "
            '{"error": "<message>", "request_id": "...", ...}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "secretKey": {"type": "apiKey", "in": "header", "name": "x-secret-key"}
            },
        },
    }


def render() -> str:
    """The document as committed: sorted keys, two-space indent, trailing newline."""
    return json.dumps(build_openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
