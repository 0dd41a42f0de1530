"""The operations table: every model operation the server offers, declared once.

The HTTP routes (`neuronpedia_graph.api.routes`), the Runpod worker
(`neuronpedia_graph.runpod_worker`) and the OpenAPI document (`neuronpedia_graph.api.openapi`)
are all generated from `OPERATIONS`, so adding an endpoint means one entry here plus one service
method. Light on purpose: it names service methods instead of importing the service, so reading
the table costs no ML imports.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from neuronpedia_graph.schemas import (
    ForwardPassRequest,
    ForwardPassResponse,
    GraphRequest,
    ParseChatPromptRequest,
    ParsedChatPrompt,
    SteerRequest,
    SteerResponse,
    UploadResponse,
)

# Every POST can fail these ways before the operation runs.
_COMMON = (400, 401, 403, 413, 422)


@dataclass(frozen=True)
class Operation:
    """One operation: its wire contract and the service method that does it.

    Attributes:
        name: the URL path (`/name`) and the Runpod `request_type`.
        summary: one line for the OpenAPI document.
        request: the request model (validated once, with the server's limits).
        response: the 200 reply's model; for graphs, the upload reply (a direct reply is the
            graph document itself, described by the web app's schema).
        method: the `GraphService` method that takes the validated request.
        needs_lock: the method uses the model, which runs one operation at a time (busy: 503).
        finish: a `GraphService` method run after the model is released (graph delivery), given
            the request, `method`'s result, the timings and the reservation.
        reserve: a `GraphService` method that reserves what `finish` needs (an upload slot)
            before the model is taken; a context manager that gives it back on failure.
        statuses: every status the operation can answer.
        runpod_aliases: other `request_type` values the web app sends for this operation.
    """

    name: str
    summary: str
    request: type[BaseModel]
    response: type[BaseModel]
    method: str
    needs_lock: bool
    statuses: tuple[int, ...]
    finish: str | None = None
    reserve: str | None = None
    runpod_aliases: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"/{self.name}"


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        name="generate-graph",
        summary="Attribution graph for a prompt: the graph JSON, or uploaded to signed_url",
        request=GraphRequest,
        response=UploadResponse,
        method="attribute_graph",
        finish="deliver_graph",
        reserve="reserve_upload",
        needs_lock=True,
        statuses=(200, *_COMMON, 502, 503),
        runpod_aliases=("graph",),
    ),
    Operation(
        name="forward-pass",
        summary="Tokens of a prompt and the model's most likely next tokens",
        request=ForwardPassRequest,
        response=ForwardPassResponse,
        method="forward_pass",
        needs_lock=True,
        statuses=(200, *_COMMON, 503),
        runpod_aliases=("forward_pass",),
    ),
    Operation(
        name="steer",
        summary="Continue a prompt with and without feature interventions",
        request=SteerRequest,
        response=SteerResponse,
        method="steer",
        needs_lock=True,
        statuses=(200, *_COMMON, 503),
    ),
    Operation(
        name="parse-chat-prompt",
        summary="Read a rendered chat prompt back into messages and unsteerable positions",
        request=ParseChatPromptRequest,
        response=ParsedChatPrompt,
        method="parse_chat_prompt",
        needs_lock=False,
        statuses=(200, *_COMMON),
        runpod_aliases=("parse_chat_prompt",),
    ),
)

BY_NAME: dict[str, Operation] = {
    name: op for op in OPERATIONS for name in (op.name, *op.runpod_aliases)
}
