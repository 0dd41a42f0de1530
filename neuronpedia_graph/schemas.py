"""Request and response models for every operation, and the one place requests are validated.

Requests are validated in strict mode: a JSON API that silently turns "48" into 48 or 1 into
True hides client bugs, so wrong types are rejected with the field named. (An integral float such
as 5000.0 is accepted for an integer field, since JavaScript clients cannot tell them apart.)

Server limits (token limits, the feature-node cap, layer and index bounds) depend on the loaded
model, so they come in through pydantic's validation context (`RequestContext`). Validating with
a context also tokenizes the prompt once and keeps the result on the request (`encoded`), so no
later step tokenizes or checks again. This module imports no ML code: the context carries a
`PromptEncoder`, implemented next to the model (`neuronpedia_graph.prompts.encoding`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Protocol, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from neuronpedia_graph.errors import InvalidField, InvalidRequest
from neuronpedia_graph.json_types import JSONObject, JSONValue
from neuronpedia_graph.upload.guard import check_url_syntax

MAX_PROMPT_CHARS = 10_000
# Slugs become part of spool file names, which upload.py shortens to stay under NAME_MAX.
SLUG_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,1024}$")
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
ModelT = TypeVar("ModelT", bound=BaseModel)


def _integral_float(value: object) -> object:
    """5000.0 -> 5000: JSON from JavaScript cannot tell integers from integral floats."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral_float)]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Probability = Annotated[float, Field(gt=0, le=1)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
ModelId = Annotated[str, Field(min_length=1, max_length=256)]
# Sane ranges for steering numbers: beyond them float32 logits overflow to inf or NaN.
Delta = Annotated[float, Field(ge=-10_000, le=10_000, allow_inf_nan=False)]
FreqPenalty = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]
MIN_TEMPERATURE = 1e-3
Temperature = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]


# ---------------------------------------------------------------------------- context
@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model sees it.

    Attributes:
        text: the canonical prompt text (chat messages rendered with the model's template).
        ids: token ids by position, as attribution and steering see them (BOS at 0).
        content_tokens: tokens not counting the BOS that circuit-tracer prepends.
        unsteerable: positions steering must not touch (the BOS positions).
    """

    text: str
    ids: list[int]
    content_tokens: int
    unsteerable: frozenset[int] = frozenset()


@dataclass(frozen=True)
class TokenPiece:
    """One token of a tokenized string: its id, its text, and whether it is the unknown token."""

    id: int
    text: str
    unknown: bool = False


class PromptEncoder(Protocol):
    """Renders and tokenizes prompts for one loaded model (`neuronpedia_graph.prompts.encoding`)."""

    def render(self, messages: list[ChatMessage]) -> str: ...

    def encode(self, text: str) -> EncodedPrompt: ...

    def tokenize(self, text: str) -> list[TokenPiece]: ...


@dataclass(frozen=True)
class RequestContext:
    """What validation needs to know about the server and its model."""

    prompts: PromptEncoder
    model_id: str
    model_ids: frozenset[str]
    token_limit: int
    forward_pass_token_limit: int
    max_feature_nodes: int
    n_layers: int
    d_transcoder: int


def _context(info: ValidationInfo) -> RequestContext | None:
    return info.context if isinstance(info.context, RequestContext) else None


def _check_model(model_id: str | None, context: RequestContext) -> None:
    if model_id is not None and model_id not in context.model_ids:
        raise InvalidRequest(
            f"Model '{model_id}' is not available. Only '{context.model_id}' is currently loaded."
        )


# ---------------------------------------------------------------------------- requests
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


Role = Literal["system", "user", "assistant"]


class ChatMessage(_Request):
    role: Role
    content: str


class PromptOrMessages(_Request):
    """Exactly one of a raw prompt or chat messages (rendered with the model's chat template).

    Validated with a `RequestContext`, the prompt is rendered, tokenized and checked against
    the token limit named by `token_limit_setting`; the result is `encoded`.
    """

    token_limit_setting: ClassVar[str] = "token_limit"

    prompt: Prompt | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=256)] | None = None
    _encoded: EncodedPrompt | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _exactly_one(self, info: ValidationInfo) -> PromptOrMessages:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.messages is not None:
            total = sum(len(m.content) for m in self.messages)
            if total > MAX_PROMPT_CHARS:
                raise ValueError(f"messages are too long ({total} > {MAX_PROMPT_CHARS} characters)")
        context = _context(info)
        if context is not None:
            _check_model(getattr(self, "model_id", None), context)
            self._encoded = self._encode(context)
        return self

    def _encode(self, context: RequestContext) -> EncodedPrompt:
        if self.prompt is not None:
            text = self.prompt
        else:
            text = context.prompts.render(self.messages or [])
        encoded = context.prompts.encode(text)
        if encoded.content_tokens == 0:
            raise InvalidRequest("Prompt produced no tokens")
        limit = getattr(context, self.token_limit_setting)
        if encoded.content_tokens > limit:
            raise InvalidRequest(
                f"Prompt exceeds token limit ({encoded.content_tokens} > {limit} tokens, not "
                "counting the BOS token)",
                token_count=encoded.content_tokens,
                token_limit=limit,
            )
        return encoded

    @property
    def encoded(self) -> EncodedPrompt:
        """The validated prompt; only requests validated with a RequestContext have one."""
        if self._encoded is None:
            raise RuntimeError(f"{type(self).__name__} was validated without a RequestContext")
        return self._encoded


TargetToken = Annotated[str, Field(min_length=1, max_length=256)]
# The most token targets one graph takes: as many logit nodes as max_n_logits allows.
MAX_TOKEN_TARGETS = 50
# Joins a contrast's two tokens into its label, as in "a−b" (U+2212, not a hyphen: a token
# may itself hold "-").
CONTRAST_SIGN = "\u2212"


class ContrastTargets(_Request):
    """Attribute to the logit difference logit(a) − logit(b) of two single tokens."""

    contrast: Annotated[list[TargetToken], Field(min_length=2, max_length=2)]


def _targets_kind(value: object) -> str:
    """Which form `attribution_targets` takes, so errors speak of that form alone."""
    return "contrast" if isinstance(value, (dict, ContrastTargets)) else "tokens"


TargetsSpec = Annotated[
    Annotated[list[TargetToken], Field(min_length=1, max_length=MAX_TOKEN_TARGETS), Tag("tokens")]
    | Annotated[ContrastTargets, Tag("contrast")],
    Discriminator(_targets_kind),
]


@dataclass(frozen=True)
class ResolvedTargets:
    """Validated attribution targets: the tokens as given and their ids, in order.

    `contrast` is True for a logit difference (tokens[0] − tokens[1]), False for a list of
    token targets.
    """

    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    contrast: bool

    @property
    def label(self) -> str:
        """The contrast target's token_str ("a−b"); empty for token targets."""
        return CONTRAST_SIGN.join(self.tokens) if self.contrast else ""


class GraphRequest(PromptOrMessages):
    model_id: ModelId
    slug_identifier: Annotated[str, Field(pattern=SLUG_PATTERN.pattern)]
    batch_size: Annotated[Int, Field(ge=1, le=1024)] = 48
    max_n_logits: Annotated[Int, Field(ge=1, le=50)] = 10
    desired_logit_prob: Probability = 0.95
    node_threshold: Probability = 0.8
    edge_threshold: Probability = 0.98
    max_feature_nodes: Annotated[Int, Field(ge=1)] = 5000
    signed_url: Annotated[str, Field(max_length=8192)] | None = None
    compress: bool = False
    user_id: Annotated[str, Field(max_length=256)] | None = None
    no_cache: bool = Field(
        default=False,
        description="attribute afresh even when the store holds this prompt's attribution "
        "with the same parameters",
    )
    # None: circuit-tracer picks the salient logits (max_n_logits, desired_logit_prob).
    attribution_targets: TargetsSpec | None = Field(
        default=None,
        description="Token strings to attribute to (each exactly one token of the model's "
        'tokenizer), or {"contrast": [a, b]} for the logit difference a − b; absent: the '
        "salient logits (max_n_logits, desired_logit_prob)",
    )
    _targets: ResolvedTargets | None = PrivateAttr(default=None)

    @field_validator("signed_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        # Shape only; the host policy (allowlist, DNS) is applied by the service before work.
        return None if value is None else check_url_syntax(value)

    @model_validator(mode="after")
    def _feature_node_cap(self, info: ValidationInfo) -> GraphRequest:
        context = _context(info)
        if context is None:
            return self
        cap = context.max_feature_nodes
        if "max_feature_nodes" not in self.model_fields_set:
            # The default must work on a server configured with a lower cap.
            self.max_feature_nodes = min(self.max_feature_nodes, cap)
        elif self.max_feature_nodes > cap:
            raise InvalidField(
                f"max_feature_nodes: must be at most {cap} on this server "
                f"(got {self.max_feature_nodes})",
                fields=["max_feature_nodes"],
            )
        if self.attribution_targets is not None:
            self._targets = _resolve_targets(self.attribution_targets, context.prompts)
        return self

    @property
    def targets(self) -> ResolvedTargets | None:
        """The validated attribution targets (None: the salient logits); only requests
        validated with a RequestContext have them resolved."""
        if self.attribution_targets is not None and self._targets is None:
            raise RuntimeError("GraphRequest was validated without a RequestContext")
        return self._targets


class StoredUploadRequest(_Request):
    """POST /graphs/{id}/upload: a stored graph, re-pruned, uploaded to `signed_url`."""

    signed_url: Annotated[str, Field(max_length=8192)]
    node_threshold: Probability | None = Field(None, description="absent: the stored graph's")
    edge_threshold: Probability | None = Field(None, description="absent: the stored graph's")
    compress: bool = False

    @field_validator("signed_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url_syntax(value)


def _resolve_targets(
    targets: list[str] | ContrastTargets, prompts: PromptEncoder
) -> ResolvedTargets:
    """Each target must be exactly one known token of the model's tokenizer (tokenized as
    circuit-tracer tokenizes token targets); tokens must differ, or two logit nodes would
    share an id (a list) or the difference would be zero (a contrast)."""
    contrast = isinstance(targets, ContrastTargets)
    tokens = targets.contrast if isinstance(targets, ContrastTargets) else targets
    where = "attribution_targets.contrast" if contrast else "attribution_targets"
    ids: list[int] = []
    for i, token in enumerate(tokens):
        pieces = prompts.tokenize(token)
        if len(pieces) != 1 or pieces[0].unknown:
            found = (
                "no tokens"
                if not pieces
                else "the unknown token " + repr(pieces[0].text)
                if len(pieces) == 1
                else f"{len(pieces)} tokens {[p.text for p in pieces]}"
            )
            raise InvalidRequest(
                f"{where}[{i}]: {token!r} is not exactly one token of this model's tokenizer: "
                f"it tokenizes to {found}",
                target=token,
                tokens=[p.text for p in pieces],
                token_ids=[p.id for p in pieces],
            )
        if pieces[0].id in ids:
            first = ids.index(pieces[0].id)
            raise InvalidRequest(
                f"{where}[{i}]: {token!r} is the same token as {where}[{first}] "
                f"({tokens[first]!r}); each target must be a different token",
                target=token,
            )
        ids.append(pieces[0].id)
    return ResolvedTargets(tokens=tuple(tokens), ids=tuple(ids), contrast=contrast)


class ForwardPassRequest(PromptOrMessages):
    # The web app counts tokens with this endpoint and shows "Prompt Too Long" itself, so it
    # has its own, much larger bound instead of TOKEN_LIMIT.
    token_limit_setting: ClassVar[str] = "forward_pass_token_limit"

    model_id: ModelId | None = None
    max_n_logits: Annotated[Int, Field(ge=1, le=50)] = 10
    desired_logit_prob: Probability = 0.95


class ParseChatPromptRequest(_Request):
    # An empty prompt is answered (not a chat), as the original server does.
    prompt: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
    model_id: ModelId | None = None

    @model_validator(mode="after")
    def _model(self, info: ValidationInfo) -> ParseChatPromptRequest:
        context = _context(info)
        if context is not None:
            _check_model(self.model_id, context)
        return self


class SteerFeature(_Request):
    layer: Int
    index: Int
    token_active_position: Int
    steer_position: Int | None = None
    steer_generated_tokens: bool = False
    delta: Delta | None = None
    ablate: bool = False

    def problem(self, context: RequestContext | None, n_prompt: int | None) -> str | None:
        """Why this feature cannot be applied, or None. Bounds need the server's context."""
        if self.ablate == (self.delta is not None):
            return "give exactly one of ablate=true or a delta"
        if self.steer_generated_tokens == (self.steer_position is not None):
            return "give exactly one of steer_position or steer_generated_tokens=true"
        if context is None or n_prompt is None:
            return None
        if not 0 <= self.layer < context.n_layers:
            return f"layer {self.layer} is outside [0, {context.n_layers})"
        if not 0 <= self.index < context.d_transcoder:
            return f"index {self.index} is outside [0, {context.d_transcoder})"
        where = f"the prompt's {n_prompt} token positions [0, {n_prompt}) (BOS is position 0)"
        if not 0 <= self.token_active_position < n_prompt:
            return f"token_active_position {self.token_active_position} is outside {where}"
        if self.steer_position is not None and not 0 <= self.steer_position < n_prompt:
            return f"steer_position {self.steer_position} is outside {where}"
        return None


class SteerRequest(PromptOrMessages):
    # The original server set no limit on steering; FORWARD_PASS_TOKEN_LIMIT still bounds it.
    token_limit_setting: ClassVar[str] = "forward_pass_token_limit"

    model_id: ModelId
    features: Annotated[list[SteerFeature], Field(max_length=1024)]
    n_tokens: Annotated[Int, Field(ge=1, le=256)] = 10
    top_k: Annotated[Int, Field(ge=0, le=20)] = 5
    temperature: Temperature = 0.0
    freq_penalty: FreqPenalty = 0.0
    seed: Annotated[Int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])] | None = None
    freeze_attention: bool = False

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"must be 0 (greedy) or at least {MIN_TEMPERATURE}")
        return value

    @model_validator(mode="after")
    def _features(self, info: ValidationInfo) -> SteerRequest:
        context = _context(info)
        n_prompt = len(self._encoded.ids) if self._encoded is not None else None
        for i, feature in enumerate(self.features):
            problem = feature.problem(context, n_prompt)
            if problem:
                raise InvalidRequest(f"features[{i}]: {problem}")
        return self


# --------------------------------------------------------------------------- responses
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


class TopLogit(BaseModel):
    token: str
    prob: float


class TokenLogits(BaseModel):
    token: str
    top_logits: list[TopLogit]


class IgnoredFeature(BaseModel):
    """A requested feature that was not applied, and why (the original server dropped these
    silently; listing them keeps a client from mistaking "no effect" for a finding)."""

    request_index: int  # its index in the request's `features`
    feature: SteerFeature
    reason: str


class SteerResponse(BaseModel):
    """Both runs, token by token.

    *_GENERATION: the prompt exactly as sent, followed by the continuation (as the original
    Neuronpedia server did). *_LOGITS_BY_TOKEN: one entry per position, BOS first, so the list
    index is the steering position; prompt + generated tokens. The entry at position i holds the
    model's top_k next-token distribution *after* token i: empty for prompt positions before the
    last, and present for the last prompt token and every generated token (the final entry's is
    computed with one extra forward pass). Probabilities are the (steered) model's own softmax,
    before temperature and frequency penalty, so runs with different sampling compare directly.
    ignored_features: the features dropped because their steer_position holds a BOS
    (`chat.unsteerable_positions`); empty when every feature was applied.
    """

    DEFAULT_GENERATION: str
    STEERED_GENERATION: str
    DEFAULT_LOGITS_BY_TOKEN: list[TokenLogits]
    STEERED_LOGITS_BY_TOKEN: list[TokenLogits]
    ignored_features: list[IgnoredFeature] = Field(default_factory=list)


class ParsedChatPrompt(BaseModel):
    """The `/parse-chat-prompt` reply, field for field as the original server sends it."""

    messages: list[ChatMessage] | None
    is_chat: bool
    prompt: str
    unsteerable_positions: list[int]


class UploadResponse(BaseModel):
    success: Literal["Graph uploaded"] = "Graph uploaded"
    url: str
    bytes: int
    compressed: bool


class BusyResponse(BaseModel):
    busy: bool


class SmallVocabulary(BaseModel):
    """A model's whole vocabulary, offered only when it is small (the demo model's), so that a
    client can say which words a prompt may use before anything is sent."""

    words: list[str] = Field(description="Every ordinary token, in id order (specials left out)")
    unk_token: str | None = Field(description="What an unknown word becomes, e.g. <unk>")


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
    forward_pass_token_limit: int
    max_feature_nodes: int
    vocabulary: SmallVocabulary | None = None  # null for real models' large vocabularies
    # GraphRequest's numeric defaults, so clients (the viewer) prefill forms without copying them.
    defaults: JSONObject = Field(
        default_factory=lambda: {
            k: f.default
            for k, f in GraphRequest.model_fields.items()
            if type(f.default) in (int, float)
        }
    )


class ErrorResponse(BaseModel):
    """Every error reply: a clear message, plus fields that help a client react."""

    model_config = ConfigDict(extra="allow")

    error: str
    request_id: str | None = None


# -------------------------------------------------------------------------- validation
def describe_validation_error(exc: ValidationError) -> str:
    """'field: message; other.field: message' — names every offending field for the client."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {message}")
    return "; ".join(parts)


def parse_request(
    model_cls: type[ModelT], data: JSONValue, context: RequestContext | None = None
) -> ModelT:
    """Validate a decoded JSON body, once, against the server's limits when `context` is given.

    Args:
        model_cls: the request model.
        data: the decoded JSON body.
        context: the server's limits and prompt encoder; None checks the shape only.

    Returns:
        The validated request.

    Raises:
        InvalidRequest: not a JSON object, or a limit the model imposes (400).
        InvalidField: a field is missing, of the wrong type or out of bounds (422).
    """
    if not isinstance(data, dict):
        raise InvalidRequest("Request body must be a JSON object")
    try:
        return model_cls.model_validate(data, context=context)
    except ValidationError as exc:
        raise InvalidField(
            f"Invalid request: {describe_validation_error(exc)}",
            fields=sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()}),
        ) from None
