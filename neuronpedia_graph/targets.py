"""Validated attribution targets as circuit-tracer's `attribute(..., attribution_targets=...)`.

Token targets go to circuit-tracer as the strings themselves: it tokenizes them exactly as
validation did (`ModelPrompts.tokenize`), so the graph is the library's own for those strings.

A contrast (logit(a) − logit(b)) is a `CustomTarget`, which is only a record: its direction is
built here. `AttributionTargets` gives a token target the unembedding row (nnsight,
`(d_vocab, d_model)`) or column (TransformerLens, `(d_model, d_vocab)`) of its token, minus
the mean over the vocabulary, telling the two layouts apart by which axis has the logits'
width. The contrast's direction is a's vector minus b's under the same rule; the mean cancels,
so it is unembed(a) − unembed(b), and its dot product with the final residual is
logit(a) − logit(b) before any final-logit softcap (which circuit-tracer's linearization
leaves out for every target). Its weight (`prob`) is 1: as the only target, its weight only
scales every influence, which pruning and the graph scores normalize away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from circuit_tracer.attribution.targets import CustomTarget

if TYPE_CHECKING:
    from neuronpedia_graph.schemas import ResolvedTargets

# The contrast target's weight in the influence computation (see the module docstring).
CONTRAST_WEIGHT = 1.0


def library_targets(
    targets: ResolvedTargets | None, unembed_proj: torch.Tensor, d_vocab: int
) -> list[str] | list[CustomTarget] | None:
    """The `attribution_targets` argument for circuit-tracer's `attribute`.

    Args:
        targets: the request's validated targets; None for the salient logits.
        unembed_proj: the replacement model's `unembed_proj`.
        d_vocab: the width of the model's logits (its vocabulary axis).
    """
    if targets is None:
        return None
    if not targets.contrast:
        return list(targets.tokens)
    a, b = targets.ids
    vec = unembed_direction(unembed_proj, d_vocab, a) - unembed_direction(unembed_proj, d_vocab, b)
    return [CustomTarget(token_str=targets.label, prob=CONTRAST_WEIGHT, vec=vec)]


def unembed_direction(unembed_proj: torch.Tensor, d_vocab: int, token_id: int) -> torch.Tensor:
    """Token `token_id`'s unembedding vector (d_model,), oriented as `AttributionTargets`
    orients the matrix: vocabulary first when the first axis has the logits' width."""
    if unembed_proj.shape[0] == d_vocab:
        return unembed_proj[token_id].detach().clone()
    return unembed_proj[:, token_id].detach().clone()
