"""prune_and_score gives circuit-tracer's compute_graph_scores bit for bit, on every route."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from circuit_tracer.graph import Graph, compute_graph_scores
from circuit_tracer.graph import prune_graph as reference_prune

from neuronpedia_graph import prune, scores
from neuronpedia_graph.prune import prune_and_score
from testkit.synthetic import GraphSpec, make_graph

GRAPHS = {
    "small": GraphSpec(n_pos=8, n_layers=4, n_features=150, density=0.3, tail=1.0),
    "mid": GraphSpec(n_pos=16, n_layers=8, n_features=2400, density=0.2, tail=1.0, seed=2),
    "virtual logits": GraphSpec(
        n_pos=12, n_layers=6, n_features=900, n_logits=4, n_virtual_logits=2, density=0.3
    ),
    "one logit": GraphSpec(n_pos=6, n_layers=3, n_features=300, n_logits=1, density=0.4, seed=7),
}


def _same_layer_edges(graph: Graph) -> None:
    """Not in level order: the lean prune falls back to the plain series."""
    layers = graph.active_features[graph.selected_features, 0]
    first, second = (layers == 1).nonzero().flatten()[:2].tolist()
    graph.adjacency_matrix[second, first] = 3.0


def _zero_rows(graph: Graph) -> None:
    graph.adjacency_matrix[:60] = 0


def _no_error_edges(graph: Graph) -> None:
    """Error nodes feed nothing: replacement and completeness are exactly 1."""
    n_features = len(graph.selected_features)
    graph.adjacency_matrix[:, n_features : n_features + graph.n_pos * graph.cfg.n_layers] = 0


CASES: dict[str, Callable[[Graph], None]] = {
    "same-layer edges": _same_layer_edges,
    "zero rows": _zero_rows,
    "no error edges": _no_error_edges,
}


@pytest.fixture(params=["dense", "lean"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    threads = torch.get_num_threads()
    if request.param == "lean":
        monkeypatch.setattr(prune, "_DENSE_BYTES", 0)
    try:
        yield request.param
    finally:
        torch.set_num_threads(threads)


def _assert_library_scores(graph: Graph) -> tuple[float, float]:
    adjacency = graph.adjacency_matrix.clone()
    expected = compute_graph_scores(graph)
    pruned, ours = prune_and_score(graph, 0.8, 0.98)
    assert torch.equal(graph.adjacency_matrix, adjacency), "the graph must not be modified"
    assert tuple(ours) == expected  # bit for bit, not approximately
    reference = reference_prune(graph, 0.8, 0.98)
    assert torch.equal(pruned.node_mask, reference.node_mask)
    assert torch.equal(pruned.edge_mask, reference.edge_mask)
    return ours


@pytest.mark.parametrize("name", list(GRAPHS))
def test_synthetic_graphs(route: str, name: str) -> None:
    replacement, completeness = _assert_library_scores(make_graph(GRAPHS[name]))
    assert 0 < replacement < 1 and 0 < completeness < 1


@pytest.mark.parametrize("case", list(CASES))
def test_edge_cases(route: str, case: str) -> None:
    graph = make_graph(GRAPHS["small"])
    CASES[case](graph)
    replacement, completeness = _assert_library_scores(graph)
    if case == "no error edges":
        assert replacement == 1.0 and completeness == 1.0


def test_error_columns_are_read_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small blocks put many row boundaries inside one graph; the result does not move."""
    graph = make_graph(GRAPHS["mid"])
    expected = compute_graph_scores(graph)
    monkeypatch.setattr(scores, "_BLOCK_CELLS", 1000)
    assert tuple(prune_and_score(graph)[1]) == expected


def test_no_influence_gives_nan_like_the_library() -> None:
    graph = make_graph(GRAPHS["small"])
    graph.logit_probabilities = torch.zeros_like(graph.logit_probabilities)
    expected = compute_graph_scores(graph)
    ours = prune_and_score(graph)[1]
    assert all(math.isnan(x) for x in expected) and all(math.isnan(x) for x in ours)
