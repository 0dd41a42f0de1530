"""neuronpedia_graph.prune gives circuit-tracer's prune_graph result, on every route it takes.

Routes: `default` is the code as shipped (small graphs take the dense route, larger ones the
lean one on one thread); `lean` forces the lean route on any graph, with both implementations
on one thread, where MKL's product order is the same for a block and for the full matrix;
`histogram` is `lean` with the edge cutoff found by histograms instead of the CPU sort (the
route for accelerators and for score sets too big to sort).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from circuit_tracer.graph import Graph, PruneResult
from circuit_tracer.graph import prune_graph as reference_prune

from neuronpedia_graph import prune
from neuronpedia_graph.graph_json import build_graph_json
from neuronpedia_graph.prune import prune_graph
from testkit.synthetic import GraphSpec, make_graph, realistic_metadata

ROUTES = ["default", "lean", "histogram"]
# bench/serialize.py's "small" graph (dense route by default: 10 MB adjacency).
SMALL = GraphSpec(n_pos=16, n_layers=6, n_features=1500, density=0.3, tail=1.0)
# Just above the dense route's size: the lean route under the default thread count.
MID = GraphSpec(n_pos=16, n_layers=8, n_features=2400, density=0.2, tail=1.0, seed=2)
# bench/serialize.py's "medium" graph: 11,738 nodes, the size the speed and memory goals name.
MEDIUM = GraphSpec(n_features=10_000, density=0.13, tail=1.0)
TINY = GraphSpec(n_pos=8, n_layers=4, n_features=200, density=0.3, tail=1.0, seed=5)
THRESHOLDS = [(0.8, 0.98), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0), (0.5, 0.5)]
N_DEMO_PROMPTS = 20


@pytest.fixture(params=ROUTES)
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    threads = torch.get_num_threads()
    if request.param != "default":
        monkeypatch.setattr(prune, "_DENSE_BYTES", 0)
        torch.set_num_threads(1)
    if request.param == "histogram":
        monkeypatch.setattr(prune, "_SORT_BUDGET", 0.0)
    try:
        yield request.param
    finally:
        torch.set_num_threads(threads)


def _both(graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98):
    adjacency = graph.adjacency_matrix.clone()
    reference = reference_prune(graph, node_threshold, edge_threshold)
    ours = prune_graph(graph, node_threshold, edge_threshold)
    assert torch.equal(graph.adjacency_matrix, adjacency), "the graph must not be modified"
    return ours, reference


def _check(
    route: str, graph: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> tuple[PruneResult, PruneResult]:
    """Prune with both and compare.

    The histogram route decides the edge cutoff with the correctly rounded total instead of
    circuit-tracer's float32 cascade sum, so the documented deviations are allowed there:
    the same nodes and a kept edge score mass within 1e-6; or, at an edge threshold of 1.0,
    where circuit-tracer's last fraction lands just under 1.0 (every cell kept, zero scores
    included) or at 1.0 (positive scores only) depending on that sum's last bit, the other of
    the two choices: then the result must equal circuit-tracer's under that choice, node masks
    and scores included (which nodes dangle follows from the choice)."""
    ours, reference = _both(graph, node_threshold, edge_threshold)
    if route == "histogram" and not torch.equal(ours.edge_mask, reference.edge_mask):
        if edge_threshold == 1.0 and bool(ours.edge_mask.all()) != bool(reference.edge_mask.all()):
            reference = _reference_under_the_other_choice(graph, node_threshold)
        else:
            scores = _edge_scores(graph, node_threshold)
            kept_ours = float(scores[ours.edge_mask].double().sum())
            kept_theirs = float(scores[reference.edge_mask].double().sum())
            assert abs(kept_ours - kept_theirs) < 1e-6 * kept_theirs
            ours = ours._replace(edge_mask=reference.edge_mask)
    _assert_same(ours, reference)
    return ours, reference


def _reference_under_the_other_choice(graph: Graph, node_threshold: float) -> PruneResult:
    """circuit-tracer's prune_graph at an edge threshold of 1.0 with the other outcome of its
    float32 total's last bit: every cell kept where it kept positive scores only, and the
    reverse. Its node-sized threshold call is left as it is."""
    import circuit_tracer.graph as ct_graph

    original = ct_graph.find_threshold
    n_cells = graph.adjacency_matrix.numel()

    def other_choice(scores: torch.Tensor, threshold: float) -> torch.Tensor:
        value = original(scores, threshold)
        if scores.numel() != n_cells:
            return value
        assert threshold == 1.0
        if value > 0:  # positive scores only -> every cell
            return torch.zeros_like(value)
        return scores[scores > 0].min()  # every cell -> positive scores only

    ct_graph.find_threshold = other_choice
    try:
        return reference_prune(graph, node_threshold, 1.0)
    finally:
        ct_graph.find_threshold = original


def _edge_scores(graph: Graph, node_threshold: float) -> torch.Tensor:
    """circuit-tracer's N×N edge scores (small graphs only)."""
    from circuit_tracer.graph import compute_edge_influence, compute_node_influence, find_threshold

    adjacency = graph.adjacency_matrix
    weights = torch.zeros(adjacency.shape[0])
    weights[-len(graph.logit_targets) :] = graph.logit_probabilities
    influence = compute_node_influence(adjacency, weights)
    mask = influence >= find_threshold(influence, node_threshold)
    mask[-len(graph.logit_targets) - len(graph.input_tokens) :] = True
    pruned = adjacency.clone()
    pruned[~mask] = 0
    pruned[:, ~mask] = 0
    return compute_edge_influence(pruned, weights)


def _assert_same(ours: PruneResult, reference: PruneResult) -> None:
    assert isinstance(ours, PruneResult)
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        assert mine.device == theirs.device
    assert torch.equal(ours.node_mask, reference.node_mask)
    assert torch.equal(ours.edge_mask, reference.edge_mask)
    torch.testing.assert_close(
        ours.cumulative_scores, reference.cumulative_scores, rtol=0, atol=1e-6, equal_nan=True
    )


@pytest.fixture(scope="module")
def synthetic() -> dict[str, Graph]:
    return {"small": make_graph(SMALL), "mid": make_graph(MID)}


@pytest.mark.parametrize("name", ["small", "mid"])
def test_synthetic_graphs(name: str, route: str, synthetic: dict[str, Graph]) -> None:
    graph = synthetic[name]
    ours, reference = _check(route, graph)
    assert 0 < int(reference.edge_mask.sum()) < graph.adjacency_matrix.count_nonzero()
    # Same masks, same scores: the same document, byte for byte.
    metadata = realistic_metadata(graph)
    assert build_graph_json(graph, *ours, metadata=metadata) == build_graph_json(
        graph, *reference, metadata=metadata
    )


def test_medium_bench_graph() -> None:
    """The shipped route at the size that matters (circuit-tracer needs about 4 GB here)."""
    graph = make_graph(MEDIUM)
    ours, reference = _check("default", graph)
    metadata = realistic_metadata(graph)
    assert build_graph_json(graph, *ours, metadata=metadata) == build_graph_json(
        graph, *reference, metadata=metadata
    )


def test_mid_graph_takes_the_lean_route_and_restores_threads(synthetic: dict[str, Graph]) -> None:
    graph = synthetic["mid"]
    adjacency = graph.adjacency_matrix
    assert adjacency.numel() * adjacency.element_size() > prune._DENSE_BYTES
    levels = prune._node_levels(graph, adjacency.shape[0], adjacency.device)
    assert prune._row_sums(adjacency, None, levels)[1], "synthetic graphs are layered"
    threads = torch.get_num_threads()
    prune_graph(graph)
    assert torch.get_num_threads() == threads


@pytest.fixture(scope="module")
def demo_graphs(demo_loaded) -> list[tuple[str, Graph]]:
    """Attribution graphs of the demo model for prompts from every held-out family."""
    from circuit_tracer import attribute

    from neuronpedia_graph.demo.corpus import build_corpus

    by_family: dict[str, list[str]] = {}
    for probe in build_corpus().heldout:
        by_family.setdefault(probe.family, []).append(probe.prompt)
    prompts = [p for group in zip(*by_family.values(), strict=False) for p in group]
    graphs = []
    for prompt in prompts[:N_DEMO_PROMPTS]:
        graph = attribute(
            prompt,
            demo_loaded.model,
            max_n_logits=10,
            desired_logit_prob=0.95,
            batch_size=64,
            max_feature_nodes=2000,
            verbose=False,
        )
        graphs.append((prompt, graph))
    assert len(graphs) == N_DEMO_PROMPTS
    return graphs


def test_demo_graphs(route: str, demo_graphs: list[tuple[str, Graph]]) -> None:
    for prompt, graph in demo_graphs:
        try:
            _check(route, graph)
        except AssertionError as exc:
            raise AssertionError(f"prompt {prompt!r}: {exc}") from exc


def test_demo_graphs_are_layered(demo_graphs: list[tuple[str, Graph]]) -> None:
    """The lean route's one-pass series relies on circuit-tracer's level order."""
    for _, graph in demo_graphs:
        adjacency = graph.adjacency_matrix
        levels = prune._node_levels(graph, adjacency.shape[0], adjacency.device)
        assert levels is not None
        assert prune._row_sums(adjacency, None, levels)[1]


def test_demo_graph_json_is_byte_identical(demo_graphs: list[tuple[str, Graph]]) -> None:
    for prompt, graph in demo_graphs:
        ours, reference = _both(graph)
        metadata = {"slug": "demo", "prompt": prompt, "info": {"create_time_ms": 1}}
        assert build_graph_json(graph, *ours, metadata=metadata) == build_graph_json(
            graph, *reference, metadata=metadata
        ), prompt


@pytest.fixture
def tiny() -> Graph:
    return make_graph(TINY)


@pytest.mark.parametrize(("node_threshold", "edge_threshold"), THRESHOLDS)
def test_thresholds(route: str, tiny: Graph, node_threshold: float, edge_threshold: float) -> None:
    _check(route, tiny, node_threshold, edge_threshold)


def _equal_weights(graph: Graph) -> None:
    adjacency = graph.adjacency_matrix
    adjacency[adjacency != 0] = 1.0


def _power_of_two_weights(graph: Graph) -> None:
    """Few distinct magnitudes, so that many edge scores tie exactly."""
    adjacency = graph.adjacency_matrix
    exponents = torch.log2(adjacency.abs().clamp(min=1e-30)).round().clamp(-2, 2)
    adjacency.copy_(torch.where(adjacency != 0, torch.sign(adjacency) * 2.0**exponents, 0.0))


def _zero_rows_and_columns(graph: Graph) -> None:
    graph.adjacency_matrix[:60] = 0
    graph.adjacency_matrix[:, 100:130] = 0


def _all_zero(graph: Graph) -> None:
    graph.adjacency_matrix.zero_()


def _zero_logit_probabilities(graph: Graph) -> None:
    graph.logit_probabilities = torch.zeros_like(graph.logit_probabilities)


def _same_layer_edges(graph: Graph) -> None:
    """Edges between features of one layer: still acyclic, but not in level order."""
    layers = graph.active_features[graph.selected_features, 0]
    first, second = (layers == 1).nonzero().flatten()[:2].tolist()
    graph.adjacency_matrix[second, first] = 3.0


def _converging_cycle(graph: Graph) -> None:
    """Two features feeding each other; their other inputs leak influence, so it dies out."""
    graph.adjacency_matrix[5, 150] = 1.0
    graph.adjacency_matrix[150, 5] = 1.0


CASES = {
    "equal weights": _equal_weights,
    "power-of-two weights": _power_of_two_weights,
    "zero rows and columns": _zero_rows_and_columns,
    "all zero": _all_zero,
    "zero logit probabilities": _zero_logit_probabilities,
    "same-layer edges": _same_layer_edges,
    "converging cycle": _converging_cycle,
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(("node_threshold", "edge_threshold"), [(0.8, 0.98), (1.0, 1.0)])
def test_adversarial_graphs(
    route: str, tiny: Graph, case: str, node_threshold: float, edge_threshold: float
) -> None:
    CASES[case](tiny)
    _, reference = _check(route, tiny, node_threshold, edge_threshold)
    if case in ("equal weights", "power-of-two weights"):
        scores = reference.edge_mask.sum()
        assert 0 < scores < tiny.adjacency_matrix.count_nonzero() or edge_threshold == 1.0


@pytest.mark.parametrize("case", ["same-layer edges", "converging cycle"])
def test_unlayered_graphs_take_the_series_route(tiny: Graph, case: str) -> None:
    CASES[case](tiny)
    adjacency = tiny.adjacency_matrix
    levels = prune._node_levels(tiny, adjacency.shape[0], adjacency.device)
    assert not prune._row_sums(adjacency, None, levels)[1]


@pytest.mark.parametrize("dense_bytes", [prune._DENSE_BYTES, 0], ids=["dense", "lean"])
def test_endless_series_raises_like_circuit_tracer(
    tiny: Graph, dense_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed loop that only feeds itself keeps its influence forever: both give up after
    circuit-tracer's 1000 terms, with its message, and the caller's thread count comes back."""
    monkeypatch.setattr(prune, "_DENSE_BYTES", dense_bytes)
    adjacency = tiny.adjacency_matrix
    adjacency[5] = 0
    adjacency[150] = 0
    adjacency[5, 150] = 1.0
    adjacency[150, 5] = 1.0
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError) as theirs:
        reference_prune(tiny)
    with pytest.raises(RuntimeError) as mine:
        prune_graph(tiny)
    assert str(mine.value) == str(theirs.value)
    assert "failed to converge after 1000 iterations" in str(mine.value)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(("node_threshold", "edge_threshold"), [(-0.1, 0.5), (0.5, 1.1)])
def test_thresholds_out_of_range(tiny: Graph, node_threshold: float, edge_threshold: float):
    with pytest.raises(ValueError) as theirs:
        reference_prune(tiny, node_threshold, edge_threshold)
    with pytest.raises(ValueError) as mine:
        prune_graph(tiny, node_threshold, edge_threshold)
    assert str(mine.value) == str(theirs.value)


def test_single_row_sums_match_the_full_matrix() -> None:
    """A (1, n) sum is a full reduction that torch may split across threads for large n."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(3, 70_000, generator=generator).mul(8).exp()
    full = matrix.sum(dim=1)
    for row in range(3):
        assert torch.equal(prune._sum_rows(matrix[row : row + 1]), full[row : row + 1])


def test_chunked_cumulative_fraction_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sort route's crossing equals searchsorted on torch's own cumsum / sum of the N²
    scores, across chunk boundaries and for any threshold."""
    monkeypatch.setattr(prune, "_BLOCK_CELLS", 997)
    generator = torch.Generator().manual_seed(1)
    positives = torch.randn(20_000, generator=generator).mul(3).exp()
    positives = torch.sort(positives, descending=True).values
    scores = torch.cat([positives, torch.zeros(5_000)])
    total = torch.sum(scores)
    fractions = torch.cumsum(scores, dim=0) / total
    for threshold in (0.0, 0.3, 0.8, 0.98, 0.999999, 1.0):
        expected = int(torch.searchsorted(fractions, threshold))
        found = prune._first_reaching(positives, total, threshold)
        assert found == (expected if expected < positives.numel() else None)


@pytest.mark.parametrize("prompt", ["The city of Paris is in", "1 2 3 4 5 6", "3 plus 4 equals"])
def test_the_server_gives_the_same_document_under_either_prune_setting(
    prompt, demo_loaded, demo_settings, caplog
):
    """PRUNE=lean (the default) and PRUNE=circuit-tracer: byte-identical graphs over the API,
    each through the implementation it names (the per-graph log line says which code ran)."""
    from neuronpedia_graph.operations import BY_NAME
    from neuronpedia_graph.service import GraphService
    from tests.conftest import graph_body
    from tests.helpers import without_create_time

    ran_by_setting = {"lean": "neuronpedia_graph.prune", "circuit-tracer": "circuit_tracer.graph"}
    docs = []
    for setting, module in ran_by_setting.items():
        service = GraphService(demo_loaded, demo_settings.model_copy(update={"prune": setting}))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="neuronpedia_graph.service"):
            outcome = service.run(BY_NAME["generate-graph"], graph_body(prompt=prompt))
        assert "prune" in outcome.timings.phases
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("graph ")]
        assert f" prune={module} " in line, line
        docs.append(without_create_time(outcome.value.document))
    assert docs[0] == docs[1]
