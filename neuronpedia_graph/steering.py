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
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from transformers import BatchEncoding

from neuronpedia_graph.schemas import (
    IgnoredFeature,
    SteerFeature,
    SteerRequest,
    SteerResponse,
    TokenLogits,
    TopLogit,
)

Intervention = tuple[int, int | slice, int, float]


def steer(model: Any, request: SteerRequest) -> SteerResponse:
    """Run the prompt without and with the request's interventions and report both.

    The request must have been validated with the server's `RequestContext` (so its features
    fit the model and the prompt); this function trusts it and does not check again.

    Per feature, the value set is 0 when ablating, else the feature's activation at
    `token_active_position` on the prompt plus `delta`. It is applied at `steer_position`, or,
    with `steer_generated_tokens`, at every generated token (so it first changes the token after
    the first generated one: the first is predicted from the prompt alone). Features whose
    `steer_position` holds a BOS are not applied, as in the original Neuronpedia server, and are
    listed in `ignored_features` instead (see `drop_unsteerable`).

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
    stop_ids = _stop_token_ids(model)
    with _tensor_inputs(model):
        interventions = _interventions(model, applied, prompt_ids)
        default_ids, default_rows = _generate(model, prompt_ids, [], request, seed, stop_ids)
        steered_ids, steered_rows = (
            _generate(model, prompt_ids, interventions, request, seed, stop_ids)
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
    model: Any, features: Sequence[SteerFeature], prompt_ids: torch.Tensor
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


def _generate(
    model: Any,
    prompt_ids: torch.Tensor,
    interventions: Sequence[Intervention],
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
    # float64, and non-finite logits made finite: nothing NaN or infinite is ever sampled from.
    scores = torch.nan_to_num(logits.double(), nan=-torch.inf).clamp(min=-1e30, max=1e30)
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
    if top_k == 0:
        return []
    finite = torch.nan_to_num(logits.double(), nan=-torch.inf).clamp(min=-1e30, max=1e30)
    probs, ids = torch.softmax(finite, dim=-1).topk(min(top_k, finite.numel()))
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
