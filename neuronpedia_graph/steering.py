"""Steering: continue a prompt with and without interventions on transcoder features.

Researchers test a circuit by turning a graph's features off or pushing them up and comparing
the continuations and next-token distributions, so both runs share everything (tokens, seed,
sampling settings, code path) except the intervention.

Position convention (shared with attribution, `chat.prompt_positions`): positions index the
token ids circuit-tracer's `ensure_tokenized` produces for `chat.canonical_prompt(prompt)`, so
position 0 is the BOS and a graph node's `ctx_idx` is a valid `token_active_position` /
`steer_position`. A leading "<bos>" in the prompt text does not shift positions.

Generation runs one full forward pass per new token through circuit-tracer's
`feature_intervention` (no KV cache). That costs O(n²) in the continuation length, but it is the
same code on both backends and keeps every sampling detail here. circuit-tracer 0.5.0's
`feature_intervention_generate` was measured to fail (nnsight backend) when a steered run stops
early at an end-of-sequence token, returns text rather than token ids, and leaves sampling to
each backend's own `generate`, whose frequency-penalty formulas differ.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import BatchEncoding

from neuronpedia_graph.chat import canonical_prompt
from neuronpedia_graph.prompt_rules import check_prompt_format

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class SteerFeature(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    layer: int
    index: int
    token_active_position: int
    steer_position: int | None = None
    steer_generated_tokens: bool = False
    delta: FiniteFloat | None = None
    ablate: bool = False


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    prompt: Annotated[str, Field(min_length=1)]
    features: Annotated[list[SteerFeature], Field(min_length=1)]
    n_tokens: Annotated[int, Field(ge=1, le=256)] = 10
    top_k: Annotated[int, Field(ge=1, le=20)] = 5
    temperature: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    freq_penalty: FiniteFloat = 0.0
    seed: Annotated[int, Field(ge=SEED_RANGE[0], le=SEED_RANGE[1])] | None = None
    freeze_attention: bool = False


class TopLogit(BaseModel):
    token: str
    prob: float


class TokenLogits(BaseModel):
    token: str
    top_logits: list[TopLogit]


class SteerResponse(BaseModel):
    """Both runs, token by token.

    *_GENERATION: the prompt exactly as sent, followed by the continuation (as the original
    Neuronpedia server did). *_LOGITS_BY_TOKEN: one entry per position, BOS first, so the list
    index is the steering position; prompt + generated tokens. The entry at position i holds the
    model's top_k next-token distribution *after* token i: empty for prompt positions before the
    last, and present for the last prompt token and every generated token (the final entry's is
    computed with one extra forward pass). Probabilities are the (steered) model's own softmax,
    before temperature and frequency penalty, so runs with different sampling compare directly.
    """

    DEFAULT_GENERATION: str
    STEERED_GENERATION: str
    DEFAULT_LOGITS_BY_TOKEN: list[TokenLogits]
    STEERED_LOGITS_BY_TOKEN: list[TokenLogits]


class SteerValidationError(ValueError):
    """A request the model cannot run; the message names the field, e.g. 'features[1]: ...'."""


def prompt_token_ids(model: Any, prompt: str) -> torch.Tensor:
    """The prompt's token ids by position (1-D, on the model's device), BOS at 0."""
    text = canonical_prompt(model.tokenizer, prompt)
    if not text or not model.tokenizer(text, add_special_tokens=False).input_ids:
        raise SteerValidationError("prompt: the prompt contains no tokens")
    check_prompt_format(model, text)
    return model.ensure_tokenized(text)


def validate_features(model: Any, request: SteerRequest, n_prompt_tokens: int) -> None:
    """Reject features the model cannot apply, naming the first offending one.

    `n_prompt_tokens` counts positions as `prompt_token_ids` does (BOS included).
    """
    if not request.features:
        raise SteerValidationError("features: at least one feature is required")
    n_layers = int(model.cfg.n_layers)
    d_transcoder = int(model.transcoders.d_transcoder)
    for i, feature in enumerate(request.features):
        problem = _feature_problem(feature, n_layers, d_transcoder, n_prompt_tokens)
        if problem:
            raise SteerValidationError(f"features[{i}]: {problem}")


def steer(model: Any, request: SteerRequest) -> SteerResponse:
    """Run the prompt without and with the request's interventions and report both.

    Per feature, the value set is 0 when ablating, else the feature's activation at
    `token_active_position` on the prompt plus `delta`. It is applied at `steer_position`, or,
    with `steer_generated_tokens`, at every generated token (so it first changes the token after
    the first generated one: the first is predicted from the prompt alone).

    `freeze_attention` holds attention patterns at their unsteered values for the same tokens
    in every forward pass, so effects travel only through the residual stream and MLPs.

    Sampling: temperature 0 is greedy; otherwise tokens are drawn from
    softmax((logits - freq_penalty * count) / temperature), where count is how often each token
    already occurs in the continuation (prompt tokens are not counted; greedy decoding applies
    the penalty too). Both runs use one torch.Generator seed (`seed`, or a fresh random one), so
    a request with a seed is reproducible and the runs differ only by the intervention.
    Generation stops after `n_tokens` or after a stop token (the tokenizer's and the model's
    generation config's end-of-sequence ids), which is kept.

    The model is used as is and left as it was (circuit-tracer's interventions live inside one
    trace or hook context; see `_tensor_inputs` for the one temporary change). Not thread-safe,
    like circuit-tracer: callers serialize access to the model.
    """
    tokenizer = model.tokenizer
    prompt_ids = prompt_token_ids(model, request.prompt)
    n_prompt = len(prompt_ids)
    validate_features(model, request, n_prompt)
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    stop_ids = _stop_token_ids(model)
    with _tensor_inputs(model):
        interventions = _interventions(model, request, prompt_ids)
        default_ids, default_rows = _generate(model, prompt_ids, [], request, seed, stop_ids)
        steered_ids, steered_rows = _generate(
            model, prompt_ids, interventions, request, seed, stop_ids
        )
    all_prompt = prompt_ids.tolist()
    return SteerResponse(
        DEFAULT_GENERATION=request.prompt + _continuation(tokenizer, all_prompt, default_ids),
        STEERED_GENERATION=request.prompt + _continuation(tokenizer, all_prompt, steered_ids),
        DEFAULT_LOGITS_BY_TOKEN=_by_token(
            tokenizer, all_prompt + default_ids, n_prompt, default_rows, request.top_k
        ),
        STEERED_LOGITS_BY_TOKEN=_by_token(
            tokenizer, all_prompt + steered_ids, n_prompt, steered_rows, request.top_k
        ),
    )


# ------------------------------------------------------------------------------ internals
def _feature_problem(
    feature: SteerFeature, n_layers: int, d_transcoder: int, n_prompt: int
) -> str | None:
    if feature.ablate == (feature.delta is not None):
        return "give exactly one of ablate=true or a delta"
    if feature.steer_generated_tokens == (feature.steer_position is not None):
        return "give exactly one of steer_position or steer_generated_tokens=true"
    if not 0 <= feature.layer < n_layers:
        return f"layer {feature.layer} is outside [0, {n_layers})"
    if not 0 <= feature.index < d_transcoder:
        return f"index {feature.index} is outside [0, {d_transcoder})"
    where = f"the prompt's {n_prompt} token positions [0, {n_prompt}) (BOS is position 0)"
    if not 0 <= feature.token_active_position < n_prompt:
        return f"token_active_position {feature.token_active_position} is outside {where}"
    if feature.steer_position is not None and not 0 <= feature.steer_position < n_prompt:
        return f"steer_position {feature.steer_position} is outside {where}"
    return None


def _interventions(
    model: Any, request: SteerRequest, prompt_ids: torch.Tensor
) -> list[tuple[int, int | slice, int, float]]:
    """circuit-tracer (layer, position, feature, value) tuples for the request's features."""
    _, activations = model.get_activations(prompt_ids, sparse=True)
    generated = slice(len(prompt_ids), None)
    out: list[tuple[int, int | slice, int, float]] = []
    for f in request.features:
        if f.ablate:
            value = 0.0
        else:
            active = float(activations[f.layer, f.token_active_position, f.index])
            value = active + float(f.delta or 0.0)
        position = generated if f.steer_generated_tokens else f.steer_position
        assert position is not None  # validate_features guarantees one of the two
        out.append((f.layer, position, f.index, value))
    return out


def _generate(
    model: Any,
    prompt_ids: torch.Tensor,
    interventions: Sequence[tuple[int, int | slice, int, float]],
    request: SteerRequest,
    seed: int,
    stop_ids: set[int],
) -> tuple[list[int], list[torch.Tensor]]:
    """Generated token ids, and the next-token logits after the last prompt token and after
    each generated token (one more row than tokens)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = prompt_ids
    generated: list[int] = []
    rows: list[torch.Tensor] = []
    while True:
        logits, _ = model.feature_intervention(
            tokens,
            interventions,
            freeze_attention=request.freeze_attention,
            return_activations=False,
        )
        rows.append(logits.reshape(-1, logits.shape[-1])[-1].float().cpu())
        if len(generated) == request.n_tokens or (generated and generated[-1] in stop_ids):
            return generated, rows
        token = _pick(rows[-1], generated, request.temperature, request.freq_penalty, generator)
        generated.append(token)
        tokens = torch.cat([tokens, torch.tensor([token], device=tokens.device)])


def _pick(
    logits: torch.Tensor,
    generated: list[int],
    temperature: float,
    freq_penalty: float,
    generator: torch.Generator,
) -> int:
    scores = logits.clone()
    if freq_penalty and generated:
        counts = torch.bincount(torch.tensor(generated), minlength=scores.numel())
        scores -= freq_penalty * counts[: scores.numel()].to(scores.dtype)
    if temperature == 0:
        return int(scores.argmax())
    probs = torch.softmax(scores / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_token_ids(model: Any) -> set[int]:
    ids = {model.tokenizer.eos_token_id}
    hf_model = getattr(model, "_model", None)  # the nnsight backend's Hugging Face model
    config_eos = getattr(getattr(hf_model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        ids.add(config_eos)
    elif isinstance(config_eos, list | tuple):
        ids.update(config_eos)
    ids.discard(None)
    return ids


def _by_token(
    tokenizer: Any, ids: list[int], n_prompt: int, rows: list[torch.Tensor], top_k: int
) -> list[TokenLogits]:
    entries = []
    for position, token_id in enumerate(ids):
        step = position - (n_prompt - 1)
        top = _top_logits(tokenizer, rows[step], top_k) if 0 <= step < len(rows) else []
        entries.append(TokenLogits(token=tokenizer.decode([token_id]), top_logits=top))
    return entries


def _top_logits(tokenizer: Any, logits: torch.Tensor, top_k: int) -> list[TopLogit]:
    # float64: a confident model's top probability (1 - 1e-5) keeps its digits.
    probs, ids = torch.softmax(logits.double(), dim=-1).topk(top_k)
    return [
        TopLogit(token=tokenizer.decode([int(i)]), prob=float(p))
        for p, i in zip(probs, ids, strict=True)
    ]


def _continuation(tokenizer: Any, prompt_ids: list[int], generated: list[int]) -> str:
    """The generated text as it reads after the prompt.

    Decoding in context keeps what per-token decoding can lose (a leading space some decoders
    strip from a sequence's first token, characters split across byte tokens).
    """
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(prompt_ids + generated)
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(generated)


class _IdsAwareTokenizer:
    """Delegates to a tokenizer, except that token-id tensors come back as they are."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(inputs, torch.Tensor):
            return BatchEncoding({"input_ids": inputs.reshape(-1).tolist()})
        return self._tokenizer(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@contextmanager
def _tensor_inputs(model: Any) -> Iterator[None]:
    """Let circuit-tracer's nnsight backend intervene on token-id tensors without freezing.

    Its `_perform_feature_intervention` sizes its buffers with `len(self.tokenizer(inputs))`,
    which fails for tensors unless attention is frozen; text inputs would be re-tokenized
    with the tokenizer's own special tokens (and token_type_ids), not circuit-tracer's BOS
    rule. The tokenizer is wrapped only for the duration of the call and always restored.
    """
    if getattr(model, "backend", None) != "nnsight":
        yield
        return
    original = model.tokenizer
    model.tokenizer = _IdsAwareTokenizer(original)
    try:
        yield
    finally:
        model.tokenizer = original
