"""Steering: continue a prompt with and without interventions on transcoder features.

Researchers test a circuit by turning a graph's features off or pushing them up and comparing
the continuations and next-token distributions, so both runs share everything (tokens, seed,
sampling settings, code path) except the intervention.

Position convention (shared with attribution, `chat.prompt_positions`): positions index the
token ids circuit-tracer's `ensure_tokenized` produces for `chat.canonical_prompt(prompt)`, so
position 0 is the BOS and a graph node's `ctx_idx` is a valid `token_active_position` /
`steer_position`. A leading "<bos>" in the prompt text does not shift positions.

Generation calls circuit-tracer's `feature_intervention` once per step under a key/value cache
(`kv_cache.KVCache`): the prompt, then one new token at a time, on both backends. Sampling is
`sampling.next_token`, the original server's rule. circuit-tracer 0.5.0's
`feature_intervention_generate` is not used: on nnsight it fails when a run stops early at an
end-of-sequence token and, given text, on tokenizers that return `token_type_ids`; and it
leaves sampling to each backend's own `generate`, which differ. The rules, and where we
deliberately differ from the original server, are in docs/steering.md.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import torch
from transformers import BatchEncoding

from neuronpedia_graph.kv_cache import KVCache
from neuronpedia_graph.models.protocols import (
    Intervention,
    ReplacementModelLike,
    Tokenizer,
    as_nnsight,
)
from neuronpedia_graph.sampling import new_generator, next_token
from neuronpedia_graph.schemas import (
    IgnoredFeature,
    SteerFeature,
    SteerRequest,
    SteerResponse,
    TokenLogits,
    TopLogit,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class GenerationSettings(Protocol):
    """What generation reads from a request (a `SteerRequest` is one)."""

    n_tokens: int
    temperature: float
    freq_penalty: float
    freeze_attention: bool


def steer(model: ReplacementModelLike, request: SteerRequest) -> SteerResponse:
    """Run the prompt without and with the request's interventions and report both.

    The request must have been validated with the server's `RequestContext` (so its features
    fit the model and the prompt); this function trusts it and does not check again.

    Per feature, the value set is 0 when ablating, else the feature's activation at
    `token_active_position` on the prompt plus `delta`. It is applied at `steer_position`, or,
    with `steer_generated_tokens`, at every generated token (so it first changes the token after
    the first generated one: the first is predicted from the prompt alone). Features whose
    `steer_position` holds a BOS are not applied, as in the original Neuronpedia server, and are
    listed in `ignored_features` instead (see `drop_unsteerable`).

    `freeze_attention` holds attention patterns at their unsteered values while the prompt is
    read, so the first generated token is predicted with effects travelling only through the
    residual stream and MLPs; later tokens attend freely, to the prompt as it was read (the
    original server's behaviour: circuit-tracer freezes only the first step of a cached run).

    Sampling (`sampling.next_token`, the original server's rule): temperature 0 takes the
    argmax of the raw logits and ignores `freq_penalty`; otherwise the logits are divided by
    the temperature, then a positive `freq_penalty` times each token's count in the whole
    sequence so far (prompt included) is subtracted, and one token is drawn. Both runs use one
    seed (`seed`, or a fresh random one), so a request with a seed is reproducible and the runs
    differ only by the intervention. Generation stops after `n_tokens` or after the
    tokenizer's end-of-sequence token, which is kept.

    The model is used as is and left as it was (circuit-tracer's interventions live inside one
    trace or hook context; `_tensor_inputs` and `KVCache.attached` make the only temporary
    changes, undone on exit). Not thread-safe,
    like circuit-tracer: callers serialize access to the model.

    Args:
        model: the circuit-tracer ReplacementModel.
        request: a steer request validated with the server's context.

    Returns:
        Both runs, token by token, and the features that were not applied.
    """
    tokenizer = model.tokenizer
    encoded = request.encoded
    # Already canonical (BOS first), so this only moves the ids to the model's device.
    prompt_ids = model.ensure_tokenized(list(encoded.ids))
    n_prompt = len(prompt_ids)
    applied, ignored = drop_unsteerable(request.features, encoded.unsteerable)
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    with _tensor_inputs(model):
        interventions = _interventions(model, applied, prompt_ids)
        default_ids, default_rows = generate(model, prompt_ids, [], request, seed)
        steered_ids, steered_rows = (
            generate(model, prompt_ids, interventions, request, seed)
            if interventions
            else (default_ids, default_rows)
        )
    shown = request.prompt if request.prompt is not None else encoded.text
    return SteerResponse(
        DEFAULT_GENERATION=shown + _continuation(tokenizer, encoded.ids, default_ids),
        STEERED_GENERATION=shown + _continuation(tokenizer, encoded.ids, steered_ids),
        DEFAULT_LOGITS_BY_TOKEN=_by_token(
            tokenizer, encoded.ids + default_ids, n_prompt, default_rows, request.top_k
        ),
        STEERED_LOGITS_BY_TOKEN=_by_token(
            tokenizer, encoded.ids + steered_ids, n_prompt, steered_rows, request.top_k
        ),
        ignored_features=ignored,
    )


# ------------------------------------------------------------------------------ internals
def drop_unsteerable(
    features: Sequence[SteerFeature], unsteerable: Collection[int]
) -> tuple[list[SteerFeature], list[IgnoredFeature]]:
    """Split features into those to apply and those steered at an unsteerable position.

    As the original server does, only `steer_position` decides: a feature steering generated
    tokens is always applied, and so is one that merely reads its activation at a BOS.

    Args:
        features: the request's features, already validated.
        unsteerable: positions that must not be steered (`chat.unsteerable_positions`).

    Returns:
        (features to apply, features ignored with their reason), each in request order.
    """
    kept: list[SteerFeature] = []
    ignored: list[IgnoredFeature] = []
    for i, feature in enumerate(features):
        if feature.steer_position in unsteerable:
            reason = (
                f"steer_position {feature.steer_position} holds a BOS token, which is never "
                f"steered (unsteerable positions: {sorted(unsteerable)})"
            )
            ignored.append(IgnoredFeature(request_index=i, feature=feature, reason=reason))
        else:
            kept.append(feature)
    return kept, ignored


def _interventions(
    model: ReplacementModelLike, features: Sequence[SteerFeature], prompt_ids: torch.Tensor
) -> list[Intervention]:
    """circuit-tracer (layer, position, feature, value) tuples for the features to apply."""
    if not features:
        return []
    _, activations = model.get_activations(prompt_ids, sparse=True)
    generated = slice(len(prompt_ids), None)
    out: list[Intervention] = []
    for f in features:
        if f.ablate:
            value = 0.0
        else:
            active = float(activations[f.layer, f.token_active_position, f.index])
            value = active + float(f.delta or 0.0)
        position = generated if f.steer_generated_tokens else f.steer_position
        assert position is not None  # validation guarantees one of the two
        out.append((f.layer, position, f.index, value))
    return out


def generate(
    model: ReplacementModelLike,
    prompt_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    request: GenerationSettings,
    seed: int,
) -> tuple[list[int], list[torch.Tensor]]:
    """Generated token ids, and the next-token logits (float32, on the CPU) after the last
    prompt token and after each generated token (one more row than tokens).

    One `feature_intervention` pass per step through a key/value cache (`KVCache`): the prompt
    first, then each new token alone, so the cost is linear in the continuation.
    """
    with _tensor_inputs(model):
        return _cached_loop(model, prompt_ids, interventions, request, seed)


def _cached_loop(
    model: ReplacementModelLike,
    prompt_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    request: GenerationSettings,
    seed: int,
) -> tuple[list[int], list[torch.Tensor]]:
    generator = new_generator(seed, prompt_ids.device)
    eos = model.tokenizer.eos_token_id
    cache = KVCache(model)
    sequence = prompt_ids
    chunk = prompt_ids
    generated: list[int] = []
    rows: list[torch.Tensor] = []
    while True:
        start = cache.length
        with cache.attached():
            logits, _ = model.feature_intervention(
                chunk,
                chunk_interventions(interventions, start, start + len(chunk)),
                # Frozen only while the prompt is read: later tokens attend freely to it.
                freeze_attention=request.freeze_attention and start == 0,
                return_activations=False,
            )
        cache.advance()
        last = logits.reshape(-1, logits.shape[-1])[-1]
        rows.append(last.float().cpu())
        if len(generated) == request.n_tokens or (generated and generated[-1] == eos):
            return generated, rows
        token = next_token(last, sequence, request.temperature, request.freq_penalty, generator)
        generated.append(token)
        chunk = torch.tensor([token], device=prompt_ids.device)
        sequence = torch.cat([sequence, chunk])


def chunk_interventions(
    interventions: Sequence[Intervention], start: int, end: int
) -> list[Intervention]:
    """The interventions that fall on the tokens [start, end) of the sequence, with positions
    counted from `start` (the coordinates of one cached step).

    A fixed position applies in the step that feeds its token; its effect on later tokens
    travels through the cache. A generated-tokens intervention (`slice(n_prompt, None)`)
    applies to every token at or after its start that the step feeds.
    """
    out: list[Intervention] = []
    for layer, position, index, value in interventions:
        if isinstance(position, slice):
            if end > position.start:
                out.append((layer, slice(max(position.start - start, 0), None), index, value))
        elif start <= position < end:
            out.append((layer, position - start, index, value))
    return out


def _by_token(
    tokenizer: Tokenizer, ids: list[int], n_prompt: int, rows: list[torch.Tensor], top_k: int
) -> list[TokenLogits]:
    entries = []
    for position, token_id in enumerate(ids):
        step = position - (n_prompt - 1)
        top = _top_logits(tokenizer, rows[step], top_k) if 0 <= step < len(rows) else []
        entries.append(TokenLogits(token=tokenizer.decode([token_id]), top_logits=top))
    return entries


def _top_logits(tokenizer: Tokenizer, logits: torch.Tensor, top_k: int) -> list[TopLogit]:
    # float64: a confident model's top probability (1 - 1e-5) keeps its digits.
    if top_k == 0:
        return []
    finite = torch.nan_to_num(logits.double(), nan=-torch.inf).clamp(min=-1e30, max=1e30)
    probs, ids = torch.softmax(finite, dim=-1).topk(min(top_k, finite.numel()))
    return [
        TopLogit(token=tokenizer.decode([int(i)]), prob=float(p))
        for p, i in zip(probs, ids, strict=True)
    ]


def _continuation(tokenizer: Tokenizer, prompt_ids: list[int], generated: list[int]) -> str:
    """The generated text as it reads after the prompt.

    Decoding in context keeps what per-token decoding can lose (a leading space some decoders
    strip from a sequence's first token, characters split across byte tokens).
    """
    head = tokenizer.decode(prompt_ids)
    full = tokenizer.decode(prompt_ids + generated)
    return str(full[len(head) :] if full.startswith(head) else tokenizer.decode(generated))


class _IdsAwareTokenizer:
    """Delegates to a tokenizer, except that token-id tensors come back as they are."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer

    def __call__(
        self,
        inputs: str | list[str] | torch.Tensor,
        # Any: passed on unchanged; nnsight may use any of the tokenizer's many call options.
        *args: Any,
        **kwargs: Any,  # Any: as above
    ) -> BatchEncoding:
        if isinstance(inputs, torch.Tensor):
            return BatchEncoding({"input_ids": inputs.reshape(-1).tolist()})
        encoded: BatchEncoding = self._tokenizer(inputs, *args, **kwargs)
        return encoded

    def __getattr__(self, name: str) -> object:
        return getattr(self._tokenizer, name)


@contextmanager
def _tensor_inputs(model: ReplacementModelLike) -> Iterator[None]:
    """Let circuit-tracer's nnsight backend intervene on token-id tensors without freezing.

    Its `_perform_feature_intervention` sizes its buffers with `len(self.tokenizer(inputs))`,
    which fails for tensors unless attention is frozen; text inputs would be re-tokenized
    with the tokenizer's own special tokens (and token_type_ids), not circuit-tracer's BOS
    rule. The tokenizer is wrapped only for the duration of the call and always restored.
    """
    nnsight_model = as_nnsight(model)  # the Protocol's tokenizer is read-only
    if nnsight_model is None:
        yield
        return
    original = nnsight_model.tokenizer
    nnsight_model.tokenizer = _IdsAwareTokenizer(original)
    try:
        yield
    finally:
        nnsight_model.tokenizer = original
