"""A graph's replacement and completeness scores, from the influence pruning already computed.

circuit-tracer's `compute_graph_scores(graph)` normalizes the whole adjacency into a dense copy
(Â = |A| / rowsum(|A|)) and runs the node-influence power series on it, which is exactly what
`prune_graph`'s first step does. Given that influence x and the row sums, the scores need
only node-sized arithmetic and the error columns of Â:

  - replacement = Σ x[tokens] / (Σ x[tokens] + Σ x[errors]);
  - completeness = Σ_i (1 − Σ_{j∈errors} Â[i, j]) · (x + w)[i] / Σ (x + w), w the logit weights.

Every step is circuit-tracer's own torch call on the same values (the error-column sums are
taken per block of rows, which reduces each row as the full-width call does), so on CPU the
result is `compute_graph_scores`' bit for bit; `tests/test_scores.py` checks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from circuit_tracer.graph import Graph

# circuit-tracer's normalize_matrix denominator clamp.
_CLAMP_MIN = 1e-10
# Cells of the error columns read per step (4 MiB of float32).
_BLOCK_CELLS = 1 << 20


class GraphScores(NamedTuple):
    """circuit-tracer's `compute_graph_scores` of an unpruned graph."""

    replacement: float
    completeness: float


def scores_from_influence(
    graph: Graph, node_influence: torch.Tensor, error_fractions: torch.Tensor
) -> GraphScores:
    """`compute_graph_scores(graph)` from pruning's intermediate results.

    Args:
        graph: the unpruned graph.
        node_influence: `compute_influence(normalize_matrix(A), logit_weights)` of its
            adjacency A (what `neuronpedia_graph.prune` computes first).
        error_fractions: `error_share(A, ...)`, each row's share of |A| from error nodes.

    Returns:
        (replacement, completeness), as Python floats.
    """
    adjacency = graph.adjacency_matrix
    n_logits = len(graph.logit_targets)
    n_tokens = len(graph.input_tokens)
    error_start = len(graph.selected_features)
    error_end = error_start + n_tokens * graph.cfg.n_layers
    token_end = error_end + n_tokens

    logit_weights = torch.zeros(adjacency.shape[0], device=adjacency.device)
    logit_weights[-n_logits:] = graph.logit_probabilities

    token_influence = node_influence[error_end:token_end].sum()
    error_influence = node_influence[error_start:error_end].sum()
    replacement = token_influence / (token_influence + error_influence)

    non_error_fractions = 1 - error_fractions
    output_influence = node_influence + logit_weights
    completeness = (non_error_fractions * output_influence).sum() / output_influence.sum()
    return GraphScores(replacement.item(), completeness.item())


def error_share(
    adjacency: torch.Tensor, row_sums: torch.Tensor, error_start: int, error_end: int
) -> torch.Tensor:
    """Σ_{j∈errors} Â[i, j] for every row i, a block of rows at a time (never N×N).

    Args:
        adjacency: the unpruned adjacency A.
        row_sums: rowsum(|A|), the normalization's denominators before the clamp.
        error_start, error_end: the error nodes' columns.
    """
    n = adjacency.shape[0]
    width = error_end - error_start
    denominators = row_sums.clamp(min=_CLAMP_MIN)
    share = torch.zeros(n, device=adjacency.device)
    if width == 0:
        return share
    step = max(2, _BLOCK_CELLS // width)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        block = adjacency[rows, error_start:error_end].abs()
        block /= denominators[rows, None]
        share[rows] = block.sum(dim=-1)
    return share
