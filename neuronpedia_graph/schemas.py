"""Request and response models for every endpoint, with the bounds the service enforces.

Requests are validated in strict mode: a JSON API that silently turns "48" into 48 or 1 into
True hides client bugs, so wrong types are rejected with the field named.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from neuronpedia_graph.chat import ChatMessage
from neuronpedia_graph.errors import InvalidField, InvalidRequest

MAX_PROMPT_CHARS = 10_000
SLUG_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Probability = Annotated[float, Field(gt=0, le=1)]
ModelT = TypeVar("ModelT", bound=BaseModel)


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class PromptOrMessages(_Request):
    """Exactly one of a raw prompt or chat messages (rendered with the model's chat template)."""

    prompt: Prompt | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PromptOrMessages:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None:
            total = sum(len(m.content) for m in self.messages)
            if total > MAX_PROMPT_CHARS:
                raise ValueError(f"messages are too long ({total} > {MAX_PROMPT_CHARS} characters)")
        return self


class GraphRequest(PromptOrMessages):
    model_id: Annotated[str, Field(min_length=1, max_length=256)]
    slug_identifier: str
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 48
    max_n_logits: Annotated[int, Field(ge=1, le=50)] = 10
    desired_logit_prob: Probability = 0.95
    node_threshold: Probability = 0.8
    edge_threshold: Probability = 0.98
    max_feature_nodes: Annotated[int, Field(ge=1)] = 5000
    signed_url: Annotated[str, Field(max_length=8192)] | None = None
    compress: bool = False
    user_id: Annotated[str, Field(max_length=256)] | None = None

    @field_validator("slug_identifier")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG_PATTERN.match(value):
            raise ValueError("must be 1-128 characters of A-Z, a-z, 0-9, '.', '_' or '-'")
        return value

    @field_validator("signed_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        # Kept as the exact string: re-normalising a presigned URL would break its signature.
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value


class ForwardPassRequest(PromptOrMessages):
    model_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    max_n_logits: Annotated[int, Field(ge=1, le=50)] = 10
    desired_logit_prob: Probability = 0.95


class ParseChatPromptRequest(_Request):
    prompt: Prompt


class SalientLogit(BaseModel):
    token: str
    token_id: int
    probability: float


class ForwardPassResponse(BaseModel):
    prompt: str
    input_tokens: list[str]
    salient_logits: list[SalientLogit]
    total_salient_tokens: int
    cumulative_probability: float


class UploadResponse(BaseModel):
    success: Literal["Graph uploaded"] = "Graph uploaded"
    url: str
    bytes: int
    compressed: bool


class BusyResponse(BaseModel):
    busy: bool


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model_id: str
    neuronpedia_id: str
    scan: str
    transcoder_set: str
    backend: str
    device: str
    dtype: str
    circuit_tracer_version: str
    version: str
    uptime_seconds: float
    busy: bool
    token_limit: int
    max_feature_nodes: int
    # GraphRequest's numeric defaults, so clients (the viewer) prefill forms without copying them.
    defaults: dict[str, Any] = Field(
        default_factory=lambda: {
            k: f.default
            for k, f in GraphRequest.model_fields.items()
            if type(f.default) in (int, float)
        }
    )


class ErrorResponse(BaseModel):
    error: str
    request_id: str | None = None


class SteerEnvelope(PromptOrMessages):
    """The transport part of a steer request; the steering fields live in steering.SteerRequest."""

    model_id: Annotated[str, Field(min_length=1, max_length=256)]


def describe_validation_error(exc: ValidationError) -> str:
    """'field: message; other.field: message' — names every offending field for the client."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)


def parse_request(model_cls: type[ModelT], data: Any) -> ModelT:
    """Validate a decoded JSON body; raises InvalidRequest (not an object) or InvalidField."""
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object")
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise InvalidField(
            f"Invalid request: {describe_validation_error(exc)}",
            fields=sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()}),
        ) from None
