"""circuit-tracer's `prune_graph`, the same result, without its N×N temporaries.

Why: circuit-tracer 0.5.0 prunes a graph of N nodes with dense N×N tensors: a clone of the
adjacency, two normalized copies, the edge scores, their full sort (values and int64 indices),
the cumulative sum and its quotient; about 7 adjacency-sized buffers beyond the adjacency at
peak. That, not the attribution, is what runs out of memory first on long prompts
(circuit-tracer issue #92: OOM in that sort on an 80 GB H100 at about 63k nodes). Here the
extra memory is the returned bool edge mask (a quarter of the adjacency's float32 bytes) plus
working blocks of a few MiB; no step sorts or stores the N² scores.

What circuit-tracer computes, and so what this module reproduces:
  1. Â = |A| / rowsum(|A|) (rows are targets, columns sources), w = logit probabilities;
     node influence x = w·Â + w·Â² + …, a power series run until a term is exactly zero.
  2. node mask: x >= the value at which the descending cumulative share of x reaches
     `node_threshold`; token and logit nodes always kept.
  3. The same series on A with the dropped nodes' rows and columns zeroed gives the pruned
     influence p (plus w); edge score (i, j) = Â'[i, j] · p[i].
  4. edge mask: score >= the value at which the descending cumulative share of all N² scores
     reaches `edge_threshold`.
  5. Feature/error nodes without outgoing and feature nodes without incoming kept edges are
     dropped until none is left; cumulative influence shares per node.

How, and why the result is circuit-tracer's bit for bit (on CPU; tests check it there):
  - Row sums are taken over whole rows, as torch reduces each row of the full matrix, and Â's
    entries are the same float32 divisions, made block by block of columns.
  - The series (`_influence_by_levels`): circuit-tracer's graphs are layered (tokens, layer 0
    … layer L-1, logits) and a node's row only holds lower-level sources, so term k+1 of a
    level's columns needs only the higher levels' term k. Levels are processed from the top,
    each block of Â's columns is built once, and each term is one `vector @ block` product.
    MKL sums each output column over all N rows in a fixed order on one thread, which is also
    the order of circuit-tracer's product on a large matrix, and blocks cut on 16-column
    boundaries keep each column's treatment: every term, and their float32 sum in
    circuit-tracer's order, is the same (see `_Lean` for the thread count). The layering is
    checked on the way; a graph without it falls back to the plain series, block by block.
    Graphs up to 16 MiB of adjacency take the dense route instead: circuit-tracer's own
    products on its thread count (MKL may split a small product's rows between threads, which
    only the full-width call reproduces); the memory at stake there is a few MiB.
  - The edge threshold (`_edge_cutoff`): along the descending sort circuit-tracer's cumulative
    fraction only grows and zeros add nothing, so it returns the largest score u for which the
    prefix ending with u's tie group passes. A first pass histograms the positive scores by
    their top 16 bits (value ranges: non-negative floats order like their bit patterns). On
    CPU the positive scores are then sorted at the start of a private anonymous map of N²
    floats whose other pages are never written and read as zeros without becoming resident,
    so circuit-tracer's very calls, torch.sum over the sorted N² scores (a float32 cascade
    whose last bit depends on its summation tree and thread split) and torch.cumsum (a double
    accumulator rounded per element), run on the very values it would have. Where that sort
    would not fit (more than 40% of all cells positive) or off CPU, a second histogram in the
    one bin where the fraction crosses the threshold counts every exact value there, and the
    crossing is decided from exact prefix sums and the correctly rounded total. That differs
    from circuit-tracer only where its float32 total's rounding moves the crossing: the kept
    score mass then differs by the scores within that rounding of the threshold plus at most
    one tie group; at an edge threshold of 1.0, circuit-tracer's last fraction lands just
    under 1.0 (every cell of the mask kept, zero scores included) or at 1.0 (positive scores
    only) depending on that last bit, so there the two can differ by that choice.
  - Node-sized steps (node threshold, cumulative scores) are circuit-tracer's torch calls.
  - Dropping dangling nodes counts each node's kept edges once and updates the counts with
    the dropped nodes' rows and columns, instead of rescanning the N×N mask every round.
On CUDA the same code runs on the device: cuBLAS, reductions and scans there sum in other
orders than circuit-tracer's full-matrix calls, so results agree up to float32 rounding.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from circuit_tracer.graph import Graph, PruneResult

    from neuronpedia_graph.scores import GraphScores

# Graphs whose adjacency is at most this big take circuit-tracer's dense route (see _Lean).
_DENSE_BYTES = 16 << 20
# Matrix cells per working block (4 MiB of float32): small next to any adjacency worth pruning
# lean, large enough that per-call overhead stays small.
_BLOCK_CELLS = 1 << 20
# On an accelerator blocks only bound memory (no cache to fit, and each call costs a launch):
# this fraction of the adjacency, at least the CPU size.
_DEVICE_BLOCK_FRACTION = 1 / 64
# Column blocks of Â: bounds on multiples of _ALIGN (see `_aligned_blocks`), as wide as fits
# _COLUMN_BLOCK_BYTES (a core's L2 cache, where the block is read once per series term).
_ALIGN = 16
_COLUMN_BLOCK_BYTES = 2 << 20
# circuit-tracer's compute_influence iteration cap and normalize_matrix's denominator clamp.
_MAX_ITER = 1000
_CLAMP_MIN = 1e-10
# Positive float32 scores binned by their top 16 bits (sign 0, 8 exponent, 7 mantissa bits).
_HIGH_SHIFT = 16
_N_HIGH = 1 << 15
_N_LOW = 1 << 16
_MANTISSA = 0x7FFFFF
_HIDDEN_BIT = 0x800000
# Every float32 is an integer multiple of 2**-149: exact sums are Python ints in that unit.
_UNIT_EXP = 149
# The CPU sort of the positive scores may take this fraction of the adjacency's bytes: it runs
# before the edge mask (a quarter) exists, and numpy sorts in place.
_SORT_BUDGET = 0.4


def prune_graph(
    graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """Prune `graph` exactly like `circuit_tracer.graph.prune_graph`, in far less memory.

    Args:
        graph: a circuit-tracer Graph; the work runs on its adjacency matrix's device.
        node_threshold: keep the nodes that carry this fraction of the total logit influence.
        edge_threshold: keep the edges that carry this fraction of the total edge influence.

    Returns:
        circuit-tracer's `PruneResult(node_mask, edge_mask, cumulative_scores)`: the bool node
        mask (N), the bool edge mask (N×N, rows are targets), and each node's cumulative share
        of the influence (float32, N), on the adjacency matrix's device.

    Raises:
        ValueError: a threshold outside [0, 1] (circuit-tracer's check and message).
        RuntimeError: the influence series does not end (a cyclic graph), as circuit-tracer.
    """
    _check_thresholds(node_threshold, edge_threshold)
    return _prune(graph, node_threshold, edge_threshold).result


def prune_and_score(
    graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> tuple[PruneResult, GraphScores]:
    """`prune_graph`, plus circuit-tracer's `compute_graph_scores` of the unpruned graph.

    The scores need the unpruned graph's node influence, which pruning computes first anyway,
    so they cost one more pass over the error columns instead of `compute_graph_scores`' dense
    normalized copy of the adjacency and its second influence series (see
    `neuronpedia_graph.scores`).

    Raises:
        ValueError, RuntimeError: as `prune_graph`.
    """
    _check_thresholds(node_threshold, edge_threshold)
    pruned = _prune(graph, node_threshold, edge_threshold)
    return pruned.result, _scores(graph, pruned)


def _scores(graph: Graph, pruned: _Pruned) -> GraphScores:
    """The unpruned graph's scores from what `_prune` computed on the way. The pass over the
    error columns runs on one thread, as the other block passes (see `_Lean`); the node-sized
    steps are circuit-tracer's calls on the caller's threads."""
    from neuronpedia_graph.scores import error_share, scores_from_influence

    adjacency = graph.adjacency_matrix
    error_start = len(graph.selected_features)
    error_end = error_start + len(graph.input_tokens) * graph.cfg.n_layers
    with _Lean(adjacency.device, dense=False):
        row_sums = pruned.row_sums
        if row_sums is None:  # the dense route normalized the matrix itself
            row_sums, _ = _row_sums(adjacency, None, None)
        share = error_share(adjacency, row_sums, error_start, error_end)
    return scores_from_influence(graph, pruned.node_influence, share)


def _check_thresholds(node_threshold: float, edge_threshold: float) -> None:
    if node_threshold > 1.0 or node_threshold < 0.0:
        raise ValueError("node_threshold must be between 0.0 and 1.0")
    if edge_threshold > 1.0 or edge_threshold < 0.0:
        raise ValueError("edge_threshold must be between 0.0 and 1.0")


class _Pruned(NamedTuple):
    """The prune result and what it computed on the unpruned graph on the way."""

    result: PruneResult
    node_influence: torch.Tensor
    row_sums: torch.Tensor | None  # rowsum(|A|); None where the dense route skipped them


def _prune(graph: Graph, node_threshold: float, edge_threshold: float) -> _Pruned:
    """prune_graph after its argument checks: circuit-tracer's steps 1-5 (module docstring)."""
    from circuit_tracer.graph import PruneResult

    adjacency = graph.adjacency_matrix
    n = adjacency.shape[0]
    n_tokens = len(graph.input_tokens)
    n_logits = len(graph.logit_targets)
    n_features = len(graph.selected_features)
    device = adjacency.device
    # Small graphs: circuit-tracer's full-width products, on the caller's threads (see _Lean).
    lean = _Lean(device, dense=n * n * adjacency.element_size() <= _DENSE_BYTES)

    logit_weights = torch.zeros(n, device=device)
    logit_weights[-n_logits:] = graph.logit_probabilities
    with lean:
        level_runs = None
        row_sums = None  # the dense route normalizes the whole matrix itself
        if not lean.dense:
            levels = _node_levels(graph, n, device)
            row_sums, layered = _row_sums(adjacency, None, levels)
            level_runs = _level_runs(levels) if layered else None
        node_influence = _influence(adjacency, row_sums, logit_weights, lean, level_runs, None)
    full_row_sums = row_sums
    node_mask = node_influence >= _find_threshold(node_influence, node_threshold)
    node_mask[-n_logits - n_tokens :] = True

    with lean:
        row_sums, _ = _row_sums(adjacency, node_mask, None)
        pruned_influence = _influence(
            adjacency, row_sums, logit_weights, lean, level_runs, node_mask
        )
        pruned_influence += logit_weights
        scores = _EdgeScores(adjacency, node_mask, row_sums, pruned_influence)
        del row_sums
    cutoff = _edge_cutoff(scores, edge_threshold, lean)
    with lean:
        edge_mask, out_count, in_count = scores.mask(cutoff)
        needs_out = torch.zeros(n, dtype=torch.bool, device=device)
        needs_out[: -n_logits - n_tokens] = True
        needs_in = torch.zeros(n, dtype=torch.bool, device=device)
        needs_in[:n_features] = True
        _drop_dangling(edge_mask, node_mask, out_count, in_count, needs_out, needs_in)

    sorted_scores, sorted_indices = torch.sort(node_influence, descending=True)
    cumulative_scores = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
    final_scores = torch.zeros_like(node_influence)
    final_scores[sorted_indices] = cumulative_scores
    return _Pruned(PruneResult(node_mask, edge_mask, final_scores), node_influence, full_row_sums)


def _find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The value at which the descending cumulative share first reaches `threshold`, by
    circuit-tracer's own torch calls: used on node-sized vectors only."""
    sorted_scores = torch.sort(scores, descending=True).values
    cumulative = torch.cumsum(sorted_scores, dim=0) / torch.sum(sorted_scores)
    index = int(torch.searchsorted(cumulative, threshold).item())
    return sorted_scores[min(index, len(cumulative) - 1)]


class _Lean:
    """Where the block-wise passes run: on one CPU thread, for circuit-tracer's bits and speed.

    MKL sums each output of `vector @ matrix` over the rows in one fixed order on one thread,
    and circuit-tracer's product on a large matrix (from about a thousand columns on two
    threads) gets that same order; on a narrow block of columns several threads split the rows
    instead, which changes the last bits. So the lean passes run on one thread (switching costs
    about a millisecond whenever work runs in between, too much per block, and the other
    passes work on blocks of a few MiB, where intra-op threads gain little and, on a busy
    machine, lose much to waiting for each other). The steps that are circuit-tracer's own
    torch calls (node thresholds, sums and sorts whose order can follow the thread count) run
    outside, on the caller's threads, as there.

    Small graphs (`dense`) skip all that: circuit-tracer's full-width products on its own
    thread count, since on a small matrix MKL may split the rows between threads itself; the
    memory saving would be a few MiB. Off CPU nothing changes threads."""

    def __init__(self, device: torch.device, dense: bool) -> None:
        self.dense = dense
        self.active = device.type == "cpu" and not dense
        self.threads = 0

    def __enter__(self) -> _Lean:
        if self.active:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.set_num_threads(self.threads)


def _node_levels(graph: Graph, n: int, device: torch.device) -> torch.Tensor | None:
    """Each node's level (tokens -1, features and errors their layer, logits n_layers), or
    None when the node count does not match circuit-tracer's layout."""
    n_layers = int(graph.cfg.n_layers)
    n_pos = int(graph.n_pos)
    n_tokens = len(graph.input_tokens)
    n_logits = len(graph.logit_targets)
    n_features = len(graph.selected_features)
    if n != n_features + n_layers * n_pos + n_tokens + n_logits:
        return None
    selected = graph.selected_features.to(graph.active_features.device)
    feature_layers = graph.active_features[selected, 0].to(device=device, dtype=torch.long)
    return torch.cat(
        [
            feature_layers,
            torch.arange(n_layers, device=device).repeat_interleave(n_pos),
            torch.full((n_tokens,), -1, device=device),
            torch.full((n_logits,), n_layers, device=device),
        ]
    )


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Maximal ranges [start, stop) of consecutive values in sorted `indices`."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def _level_runs(levels: torch.Tensor | None) -> list[list[tuple[int, int]]]:
    """Each level's node ranges, highest level first (a layer's features are contiguous in
    circuit-tracer's node order, so a level is a couple of ranges)."""
    assert levels is not None
    values = levels.cpu()
    return [
        _runs((values == level).nonzero().flatten().tolist())
        for level in torch.unique(values).flip(0).tolist()
    ]


def _block_cells(adjacency: torch.Tensor) -> int:
    """Matrix cells per working block on the adjacency's device."""
    if adjacency.device.type == "cpu":
        return _BLOCK_CELLS
    return max(_BLOCK_CELLS, int(adjacency.numel() * _DEVICE_BLOCK_FRACTION))


def _block_rows(adjacency: torch.Tensor, width: int) -> int:
    """Rows per working block of this width; at least 2 (see `_sum_rows`)."""
    return max(2, _block_cells(adjacency) // max(width, 1))


def _sum_rows(block: torch.Tensor) -> torch.Tensor:
    """Row sums, bit-identical to the same rows' sums inside the full matrix.

    torch sums each row of a many-row matrix on its own, but turns a (1, n) sum into a full
    reduction that it splits across threads when n is large, in another order."""
    if block.shape[0] == 1:
        return block.repeat(2, 1).sum(dim=1)[:1]
    return block.sum(dim=1)


def _row_sums(
    adjacency: torch.Tensor, keep: torch.Tensor | None, levels: torch.Tensor | None
) -> tuple[torch.Tensor, bool]:
    """Row sums of |M|, M the adjacency with the rows and columns outside `keep` zeroed (all
    kept for None): bit for bit circuit-tracer's normalize_matrix denominators. With `levels`,
    also whether every row's nonzeros lie at strictly lower levels than the row."""
    n = adjacency.shape[0]
    device = adjacency.device
    sums = torch.zeros(n, device=device)
    step = _block_rows(adjacency, n)
    buffer = torch.empty(step * n, device=device)
    rows = keep.nonzero().flatten() if keep is not None else torch.arange(n, device=device)
    if levels is None:
        groups: list[tuple[int | None, torch.Tensor]] = [(None, rows)]
    else:
        order = torch.sort(levels[rows], stable=True).indices
        rows = rows[order]
        values, counts = torch.unique_consecutive(levels[rows], return_counts=True)
        groups = list(zip(values.tolist(), torch.split(rows, counts.tolist()), strict=True))
    drop = None if keep is None else ~keep
    layered = levels is not None
    for level, group in groups:
        at_or_above = (
            None if level is None or levels is None else (levels >= level).to(adjacency.dtype)
        )
        for chunk in torch.split(group, step):
            block = buffer[: chunk.numel() * n].view(chunk.numel(), n)
            torch.index_select(adjacency, 0, chunk, out=block)
            if drop is not None:
                block.masked_fill_(drop, 0)
            block.abs_()
            sums[chunk] = _sum_rows(block)
            if at_or_above is not None and layered:
                layered = not bool((block @ at_or_above).any())
    return sums, layered


def _aligned_blocks(start: int, stop: int, adjacency: torch.Tensor) -> Iterator[tuple[int, int]]:
    """Column blocks covering [start, stop), cut on multiples of _ALIGN (the last at n).

    MKL's product kernel treats columns in aligned groups (16 floats with AVX-512) and the
    trailing columns apart; blocks cut on those boundaries give every column the same
    treatment, hence the same bits, as in the full-width product."""
    n = adjacency.shape[0]
    width = _block_columns(adjacency)
    for a in range(start - start % _ALIGN, stop, width):
        yield a, min(a + width, n)


def _block_columns(adjacency: torch.Tensor) -> int:
    """Columns per block of Â: a multiple of _ALIGN, at least _ALIGN."""
    n = max(adjacency.shape[0], 1)
    budget = _COLUMN_BLOCK_BYTES
    if adjacency.device.type != "cpu":
        budget = max(budget, _block_cells(adjacency) * 4)
    return max(_ALIGN, budget // (4 * n) // _ALIGN * _ALIGN)


class _Normalized:
    """Column blocks of circuit-tracer's normalize_matrix(M) over all N rows, bit for bit;
    the rows outside `keep` read as zero (their denominator is infinite)."""

    def __init__(
        self, adjacency: torch.Tensor, row_sums: torch.Tensor, keep: torch.Tensor | None
    ) -> None:
        self.adjacency = adjacency
        denominators = row_sums.clamp(min=_CLAMP_MIN)
        if keep is not None:
            denominators.masked_fill_(~keep, float("inf"))
        self.denominators = denominators[:, None]
        n = adjacency.shape[0]
        self.buffer = torch.empty(n * _block_columns(adjacency), device=adjacency.device)

    def block(self, a: int, b: int) -> torch.Tensor:
        n = self.adjacency.shape[0]
        out = self.buffer[: n * (b - a)].view(n, b - a)
        torch.abs(self.adjacency[:, a:b], out=out)
        return out.div_(self.denominators)


def _influence(
    adjacency: torch.Tensor,
    row_sums: torch.Tensor | None,
    logit_weights: torch.Tensor,
    lean: _Lean,
    level_runs: list[list[tuple[int, int]]] | None,
    keep: torch.Tensor | None,
) -> torch.Tensor:
    """circuit-tracer's `compute_influence(normalize_matrix(M), logit_weights)`, bit for bit,
    without materializing the normalized matrix unless the graph is small (M as in
    `_row_sums`)."""
    if lean.dense or row_sums is None:  # lean is inactive then: the caller's threads
        return _influence_dense(adjacency, logit_weights, keep)
    normalized = _Normalized(adjacency, row_sums, keep)
    if level_runs is not None:
        return _influence_by_levels(normalized, logit_weights, level_runs, keep)
    return _influence_by_series(normalized, logit_weights, keep)


def _influence_dense(
    adjacency: torch.Tensor, logit_weights: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    """The series on the materialized normalized matrix, circuit-tracer's calls as they are."""
    matrix = adjacency.abs()
    if keep is not None:
        matrix[~keep] = 0
        matrix[:, ~keep] = 0
    matrix = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=_CLAMP_MIN)
    return _series(lambda vector: vector @ matrix, logit_weights)


def _series(
    times_normalized: Callable[[torch.Tensor], torch.Tensor], logit_weights: torch.Tensor
) -> torch.Tensor:
    """w·Â + w·Â² + … until a term is exactly zero, summed in circuit-tracer's order."""
    current = times_normalized(logit_weights)
    influence = current.clone()
    iterations = 0
    while current.any():
        if iterations >= _MAX_ITER:
            raise RuntimeError(
                f"Influence computation failed to converge after {iterations} iterations"
            )
        current = times_normalized(current)
        influence += current
        iterations += 1
    return influence


def _influence_by_levels(
    normalized: _Normalized,
    logit_weights: torch.Tensor,
    level_runs: list[list[tuple[int, int]]],
    keep: torch.Tensor | None,
) -> torch.Tensor:
    """The series term by term, level by level from the top, each column block built once.

    Term k+1 of a column is term k (an N-vector) times that column of Â; its nonzero rows are
    at higher levels, whose terms are all known by then. Rows not yet done hold zeros where the
    column is zero, and zero products leave MKL's sums unchanged, so each product equals
    circuit-tracer's, and the terms are summed in its order."""
    n = logit_weights.shape[0]
    device = logit_weights.device
    terms = [logit_weights.clone()]
    deepest = 0  # the last term that is nonzero on any finished node
    influence = torch.zeros(n, device=device)
    for runs in level_runs:
        level_deepest = -1
        for start, stop in runs:
            wanted = None if keep is None else keep[start:stop]
            if wanted is not None and not bool(wanted.any()):
                continue
            for a, b in _aligned_blocks(start, stop, normalized.adjacency):
                lo, hi = max(a, start), min(b, stop)
                block = normalized.block(a, b)
                for k in range(deepest + 1):
                    if k + 1 == len(terms):
                        terms.append(torch.zeros(n, device=device))
                    terms[k + 1][lo:hi] = (terms[k] @ block)[lo - a : hi - a]
            if wanted is not None:
                for term in terms[1:]:
                    term[start:stop].masked_fill_(~wanted, 0)
            if len(terms) > 1:
                stacked = torch.stack([term[start:stop] for term in terms[1:]])
                nonzero = stacked.any(dim=1).nonzero()
                if nonzero.numel():
                    level_deepest = max(level_deepest, int(nonzero[-1]) + 1)
                total = stacked[0].clone()
                for term in stacked[1:]:
                    total += term
                influence[start:stop] = total
        deepest = max(deepest, level_deepest)
    return influence


def _influence_by_series(
    normalized: _Normalized, logit_weights: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    """circuit-tracer's power series as it is, each product built block by block: one pass
    over the matrix per term (slower, just as lean), for graphs not in the level order."""
    n = logit_weights.shape[0]
    device = logit_weights.device
    drop = None if keep is None else ~keep

    def times_normalized(vector: torch.Tensor) -> torch.Tensor:
        out = torch.empty(n, device=device)
        for a, b in _aligned_blocks(0, n, normalized.adjacency):
            out[a:b] = vector @ normalized.block(a, b)
        if drop is not None:
            out.masked_fill_(drop, 0)
        return out

    return _series(times_normalized, logit_weights)


class _EdgeScores:
    """circuit-tracer's edge scores, Â'[i, j] · p[i], recomputed (same bits every time) block by
    block over the kept rows and columns; every other score is exactly zero."""

    def __init__(
        self,
        adjacency: torch.Tensor,
        node_mask: torch.Tensor,
        row_sums: torch.Tensor,
        influence: torch.Tensor,
    ) -> None:
        self.adjacency = adjacency
        self.kept = node_mask.nonzero().flatten()
        self.denominators = row_sums.clamp(min=_CLAMP_MIN)
        self.influence = influence
        self.n = adjacency.shape[0]
        self.step = _block_rows(adjacency, self.n)
        device = adjacency.device
        self.rows_buffer = torch.empty(self.step * self.n, device=device)
        self.buffer = torch.empty(self.step * self.kept.numel(), device=device)

    def blocks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(row indices, their scores at the kept columns), in a reused buffer."""
        n, width = self.n, self.kept.numel()
        for rows in torch.split(self.kept, self.step):
            count = rows.numel()
            full = self.rows_buffer[: count * n].view(count, n)
            torch.index_select(self.adjacency, 0, rows, out=full)
            block = self.buffer[: count * width].view(count, width)
            torch.index_select(full, 1, self.kept, out=block)
            block.abs_()
            block.div_(self.denominators[rows, None])
            block.mul_(self.influence[rows, None])
            yield rows, block

    def positive_bits(self) -> Iterator[torch.Tensor]:
        """Bit patterns (int32, ordered like the values) of the positive scores, per block."""
        for _, block in self.blocks():
            yield block[block > 0].view(torch.int32)

    def mask(self, cutoff: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`scores >= cutoff` as an N×N bool matrix (all True for None: a cutoff at or below
        zero), with each column's and each row's number of True entries."""
        n = self.n
        device = self.adjacency.device
        if cutoff is None:
            ones = torch.full((n,), n, dtype=torch.int64, device=device)
            return torch.ones((n, n), dtype=torch.bool, device=device), ones, ones.clone()
        edge_mask = torch.zeros((n, n), dtype=torch.bool, device=device)
        out_count = torch.zeros(n, dtype=torch.int64, device=device)
        in_count = torch.zeros(n, dtype=torch.int64, device=device)
        kept_out = torch.zeros(self.kept.numel(), dtype=torch.int64, device=device)
        row_buffer = torch.zeros((self.step, n), dtype=torch.bool, device=device)
        for rows, block in self.blocks():
            passed = block >= cutoff
            kept_out += passed.sum(dim=0)
            in_count[rows] = passed.sum(dim=1)
            full = row_buffer[: rows.numel()]
            full.index_copy_(1, self.kept, passed)
            edge_mask.index_copy_(0, rows, full)
        out_count[self.kept] = kept_out
        return edge_mask, out_count, in_count


def _edge_cutoff(scores: _EdgeScores, threshold: float, lean: _Lean) -> torch.Tensor | None:
    """The value circuit-tracer's find_threshold returns on the flattened N² edge scores, or
    None when that value is zero or the smallest score (either way every edge passes)."""
    with lean:
        histogram = _Histogram(scores)
    if not histogram.bins:
        return None
    n_cells = scores.n * scores.n
    device = scores.adjacency.device
    fits = histogram.count * 4 <= _SORT_BUDGET * n_cells * scores.adjacency.element_size()
    if device.type == "cpu" and fits:
        return _cutoff_by_sort(scores, threshold, histogram.count, n_cells, lean)
    with lean:
        return _cutoff_by_histogram(scores, threshold, histogram)


class _Histogram:
    """Count and exact sum of the positive scores per top-16-bit bin (one value range each;
    the values in a bin share an exponent, so integer significand sums are exact)."""

    def __init__(self, scores: _EdgeScores) -> None:
        device = scores.adjacency.device
        counts = torch.zeros(_N_HIGH, dtype=torch.int64, device=device)
        significands = torch.zeros(_N_HIGH, dtype=torch.int64, device=device)
        for bits in scores.positive_bits():
            high = bits >> _HIGH_SHIFT
            counts += torch.bincount(high, minlength=_N_HIGH)
            # float64 sums of fewer than 2**29 integers below 2**24 are exact.
            weights = _significands(bits).double()
            significands += torch.bincount(high, weights=weights, minlength=_N_HIGH).long()
        self.count = int(counts.sum())
        # Bins holding scores, highest first, and the exact sum of each (units of 2**-149).
        self.bins = torch.flip(counts.nonzero().flatten(), [0]).tolist()
        by_bin = significands.tolist()
        self.sums = [by_bin[b] << _unit_shift(b << _HIGH_SHIFT) for b in self.bins]


def _significands(bits: torch.Tensor) -> torch.Tensor:
    """Integer significands: a float32 is significand * 2**(max(exponent field, 1) - 150)."""
    return (bits & _MANTISSA) | ((bits >= _HIDDEN_BIT).int() << 23)


def _unit_shift(bits: int) -> int:
    """log2 of a float32's significand unit (for these bits) in units of 2**-149."""
    return max(bits >> 23, 1) - 1


def _cutoff_by_sort(
    scores: _EdgeScores, threshold: float, count: int, n_cells: int, lean: _Lean
) -> torch.Tensor | None:
    """circuit-tracer's find_threshold run on its own input: the positive scores sorted
    descending at the start of N² floats whose other pages are never written, so they read
    as zeros (the kernel's shared zero page, not resident, not copied)."""
    memory = mmap.mmap(-1, n_cells * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        flat = torch.frombuffer(memory, dtype=torch.float32)
        prefix = flat[:count]
        offset = 0
        with lean:
            for bits in scores.positive_bits():
                prefix[offset : offset + bits.numel()] = bits.view(torch.float32).neg()
                offset += bits.numel()
        sorted_prefix = prefix.numpy()
        sorted_prefix.sort()  # ascending negatives: in place, descending scores once negated
        np.negative(sorted_prefix, out=sorted_prefix)
        total = torch.sum(flat)
        index = _first_reaching(prefix, total, threshold)
        cutoff = None if index is None else prefix[index].clone()
        del flat, prefix, sorted_prefix
    finally:
        memory.close()
    return cutoff


def _first_reaching(prefix: torch.Tensor, total: torch.Tensor, threshold: float) -> int | None:
    """First index where cumsum(prefix) / total >= threshold, with torch's float32 cumsum
    (double accumulator, each prefix rounded to float32) carried across chunks, and the
    comparison torch.searchsorted makes (against float32(threshold))."""
    limit = torch.tensor(threshold, dtype=torch.float32)
    carry = torch.zeros(1, dtype=torch.float64)
    for start in range(0, prefix.numel(), _BLOCK_CELLS):
        chunk = prefix[start : start + _BLOCK_CELLS]
        running = torch.cumsum(torch.cat([carry, chunk.double()]), dim=0)
        carry = running[-1:]
        fractions = running[1:].float() / total
        reached = (fractions >= limit).nonzero()
        if reached.numel():
            return start + int(reached[0])
    return None


def _cutoff_by_histogram(
    scores: _EdgeScores, threshold: float, histogram: _Histogram
) -> torch.Tensor | None:
    """The crossing found from exact prefix sums: the bin where the fraction crosses the
    threshold, then, from a count per exact value inside it, the value."""
    prefixes = list(accumulate(histogram.sums))
    reaches = _Reaches(prefixes[-1], threshold)
    found = _first_passing(prefixes, reaches)
    if found is None:
        return None
    high = histogram.bins[found]
    above = prefixes[found - 1] if found else 0

    device = scores.adjacency.device
    counts = torch.zeros(_N_LOW, dtype=torch.int64, device=device)
    for bits in scores.positive_bits():
        counts += torch.bincount(
            bits[(bits >> _HIGH_SHIFT) == high] & (_N_LOW - 1), minlength=_N_LOW
        )
    lows = torch.flip(counts.nonzero().flatten(), [0]).tolist()
    by_low = counts.tolist()
    sums = []
    for low in lows:
        bits = (high << _HIGH_SHIFT) | low
        significand = (bits & _MANTISSA) | (_HIDDEN_BIT if bits >= _HIDDEN_BIT else 0)
        sums.append((by_low[low] * significand) << _unit_shift(bits))
    found = _first_passing([above + p for p in accumulate(sums)], reaches)
    assert found is not None, "the bin's own prefix reaches the threshold"
    value = (high << _HIGH_SHIFT) | lows[found]
    return torch.tensor([value], dtype=torch.int32, device=device).view(torch.float32)[0]


class _Reaches:
    """Whether an exact prefix sum (an int, units of 2**-149) reaches the threshold with
    circuit-tracer's roundings: prefix to float64 (its cumsum accumulates in double), then to
    float32, divided in float32 by the float32 total, compared with float32(threshold)."""

    def __init__(self, total: int, threshold: float) -> None:
        self.total = _to_float32(total)
        self.threshold = np.float32(threshold)

    def __call__(self, prefix: int) -> bool:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return bool(_to_float32(prefix) / self.total >= self.threshold)


def _to_float32(exact: int) -> np.float32:
    with np.errstate(over="ignore"):
        return np.float32(exact / (1 << _UNIT_EXP))


def _first_passing(prefixes: list[int], reaches: _Reaches) -> int | None:
    """Index of the first prefix that reaches the threshold (monotone in the prefix)."""
    lo, hi = 0, len(prefixes)
    while lo < hi:
        mid = (lo + hi) // 2
        if reaches(prefixes[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo if lo < len(prefixes) else None


def _drop_dangling(
    edge_mask: torch.Tensor,
    node_mask: torch.Tensor,
    out_count: torch.Tensor,
    in_count: torch.Tensor,
    needs_out: torch.Tensor,
    needs_in: torch.Tensor,
) -> None:
    """circuit-tracer's iterative removal of feature/error nodes without outgoing edges and
    feature nodes without incoming ones, in place, with edge counts instead of N×N scans.

    As there, the first round reads the thresholded mask as it is; each later round reads it
    restricted to the nodes alive at the round's start, whose counts follow by subtracting the
    removed nodes' rows and columns; and only if a round ran are the removed nodes' rows and
    columns cleared from the mask. Only kept nodes can have edges: others score zero, below any
    positive cutoff, and a cutoff at zero keeps every edge and so removes no node."""
    kept = node_mask.clone()
    old = node_mask.clone()
    node_mask &= (out_count > 0) | ~needs_out
    node_mask &= (in_count > 0) | ~needs_in
    if torch.equal(node_mask, old):
        return
    while True:
        removed = (old & ~node_mask).nonzero().flatten()
        if removed.numel() == 0:
            break
        alive = node_mask.nonzero().flatten()
        out_count[alive] -= edge_mask[removed[:, None], alive].sum(dim=0)
        in_count[alive] -= edge_mask[alive[:, None], removed].sum(dim=1)
        old.copy_(node_mask)
        node_mask &= (out_count > 0) | ~needs_out
        node_mask &= (in_count > 0) | ~needs_in
    dropped = (kept & ~node_mask).nonzero().flatten()
    alive = node_mask.nonzero().flatten()
    edge_mask.index_fill_(0, dropped, False)
    edge_mask[alive[:, None], dropped] = False
