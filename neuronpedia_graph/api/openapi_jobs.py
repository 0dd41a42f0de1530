"""The job endpoints' part of the OpenAPI document (`neuronpedia_graph.api.openapi` merges it)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from neuronpedia_graph.jobs.models import (
    ID_PATTERN,
    MAX_OFFSET,
    MAX_PAGE,
    JobCreated,
    JobList,
    JobView,
)
from neuronpedia_graph.json_types import JSONObject, JSONValue
from neuronpedia_graph.schemas import GraphRequest, StoredUploadRequest, UploadResponse

MODELS: tuple[type[BaseModel], ...] = (JobCreated, JobView, JobList, StoredUploadRequest)

_TEXT = {
    401: "The x-secret-key header is missing",
    403: "The x-secret-key header is wrong",
    404: "No job with this id (for a re-prune or an upload: no stored attribution, or evicted)",
    410: "The stored attribution is unreadable (corrupt or truncated); it was removed",
    409: "The job is not in a state that allows this (the body says which it is in)",
    422: "A query parameter is out of bounds (`fields` names it)",
    503: "Busy: the job queue is full, or too many event streams are open; retry after "
    "Retry-After seconds",
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": ID_PATTERN.pattern},
}
_THRESHOLDS = [
    {
        "name": name,
        "in": "query",
        "description": "re-prune the stored attribution at this threshold (absent: the "
        "graph's own)",
        "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    }
    for name in ("node_threshold", "edge_threshold")
]


def job_paths(ref: Callable[[str], JSONObject], error: Callable[[int], JSONObject]) -> JSONObject:
    """The /graphs paths.

    Args:
        ref: a model name -> its `$ref` schema.
        error: a status -> its documented error response (for the statuses the POSTs share).
    """

    def err(status: int) -> JSONObject:
        if status in (400, 413):
            return error(status)
        response: JSONObject = {
            "description": _TEXT[status],
            "content": {"application/json": {"schema": ref("ErrorResponse")}},
        }
        if status == 503:
            response["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        return response

    def ok(description: str, schema: JSONObject, media: str = "application/json") -> JSONObject:
        return {"description": description, "content": {media: {"schema": schema}}}

    def op(
        op_id: str, summary: str, responses: dict[int, JSONObject], **extra: JSONValue
    ) -> JSONObject:
        return {
            "operationId": op_id,
            "summary": summary,
            "security": [{"secretKey": []}],
            "responses": {str(k): v for k, v in responses.items()},
            **extra,
        }

    view = ok("The job now", ref("JobView"))
    created = ok("Queued", ref("JobCreated"))
    created["headers"] = {
        "Location": {"description": "the job's path", "schema": {"type": "string"}}
    }
    return {
        "/graphs": {
            "post": op(
                "create_graph_job",
                "Queue an attribution graph: the /generate-graph body; answers at once",
                {
                    202: created,
                    **{s: error(s) for s in (400, 401, 403, 413, 422)},
                    503: err(503),
                },
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": ref(GraphRequest.__name__),
                            "example": {
                                "prompt": "The city of Paris is in",
                                "model_id": "demo",
                                "slug_identifier": "paris-job",
                                "max_feature_nodes": 500,
                            },
                        }
                    },
                },
            ),
            "get": op(
                "list_graph_jobs",
                "Jobs this server knows, newest first",
                {
                    200: ok("A page of jobs", ref("JobList")),
                    401: err(401),
                    403: err(403),
                    422: err(422),
                },
                parameters=[
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": 20,
                        },
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": MAX_OFFSET,
                            "default": 0,
                        },
                    },
                ],
            ),
        },
        "/graphs/{job_id}": {
            "get": op(
                "get_graph_job",
                "A job's status, queue position, phase, progress, timings, result or error",
                {200: view, 401: err(401), 403: err(403), 404: err(404)},
                parameters=[_JOB_ID],
            ),
            "delete": op(
                "cancel_graph_job",
                "Cancel: a queued job is removed (200); a running one stops at its next batch "
                "(202)",
                {
                    200: view,
                    202: ok("Cancel requested; the job ends cancelled", ref("JobView")),
                    401: err(401),
                    403: err(403),
                    404: err(404),
                    409: err(409),
                },
                parameters=[_JOB_ID],
            ),
        },
        "/graphs/{job_id}/document": {
            "get": op(
                "get_graph_job_document",
                "A done job's graph document, or with thresholds (or for a synchronous graph's "
                "X-Graph-Id) its stored attribution re-pruned, with no new attribution; "
                "gzip'd when the client accepts it",
                {
                    200: ok("The graph document", ref("GraphDocument")),
                    401: err(401),
                    403: err(403),
                    404: err(404),
                    409: err(409),
                    410: err(410),
                    413: err(413),
                    422: err(422),
                },
                parameters=[_JOB_ID, *_THRESHOLDS],
            ),
        },
        "/graphs/{job_id}/upload": {
            "post": op(
                "upload_stored_graph",
                "Re-prune a stored graph and upload it to signed_url (the upload policy applies)",
                {
                    200: ok("Uploaded", ref(UploadResponse.__name__)),
                    **{s: error(s) for s in (400, 401, 403, 413, 422)},
                    404: err(404),
                    410: err(410),
                    502: error(502),
                    503: err(503),
                },
                parameters=[_JOB_ID],
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": ref(StoredUploadRequest.__name__)}},
                },
            ),
        },
        "/graphs/{job_id}/events": {
            "get": op(
                "graph_job_events",
                "The job's states as Server-Sent Events (`state` events, a `heartbeat` every "
                "JOB_EVENTS_HEARTBEAT s); the stream ends after the finished state",
                {
                    200: ok("An event stream", {"type": "string"}, "text/event-stream"),
                    401: err(401),
                    403: err(403),
                    404: err(404),
                    503: err(503),
                },
                parameters=[_JOB_ID],
            ),
        },
    }
