"""build_graph_json gives circuit-tracer's document; gzip_compress gives standard gzip."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from circuit_tracer.graph import Graph, prune_graph

from neuronpedia_graph import graph_json
from neuronpedia_graph.compression import gzip_compress
from neuronpedia_graph.graph_json import build_graph_json
from testkit.reference import reference_document
from testkit.synthetic import GraphSpec, make_graph, realistic_metadata

REPO = Path(__file__).resolve().parents[1]

Masks = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
SMALL = GraphSpec(n_pos=8, n_layers=4, n_features=150, density=0.3, tail=1.0)
MEDIUM = GraphSpec(n_pos=32, n_layers=12, n_features=2500, density=0.2, tail=1.0, seed=3)


def _pruned(spec: GraphSpec) -> tuple[Graph, Masks]:
    graph = make_graph(spec)
    return graph, tuple(prune_graph(graph, 0.8, 0.98))


@pytest.fixture(scope="module")
def small() -> tuple[Graph, Masks]:
    return _pruned(SMALL)


@pytest.fixture(scope="module")
def medium() -> tuple[Graph, Masks]:
    return _pruned(MEDIUM)


def _ours(graph: Graph, masks: Masks, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    metadata = metadata or realistic_metadata(graph)
    return orjson.loads(build_graph_json(graph, *masks, metadata=metadata))


def _reference(graph: Graph, masks: Masks) -> dict[str, Any]:
    # A JSON round trip turns the pydantic dump into what a reader of circuit-tracer's file sees.
    return json.loads(json.dumps(reference_document(graph, *masks, slug="synthetic-graph")))


def _assert_same_graph(ours: dict[str, Any], reference: dict[str, Any]) -> None:
    assert ours["qParams"] == reference["qParams"]
    assert [n["node_id"] for n in ours["nodes"]] == [n["node_id"] for n in reference["nodes"]]
    assert ours["nodes"] == reference["nodes"]
    assert len(ours["links"]) == len(reference["links"])
    assert ours["links"] == reference["links"]


@pytest.mark.parametrize("graph_fixture", ["small", "medium"])
def test_same_document_as_circuit_tracer(graph_fixture: str, request: pytest.FixtureRequest):
    graph, masks = request.getfixturevalue(graph_fixture)
    metadata = realistic_metadata(graph)
    ours = _ours(graph, masks, metadata)
    reference = _reference(graph, masks)

    _assert_same_graph(ours, reference)
    assert ours["metadata"] == metadata
    # The caller's metadata carries every field circuit-tracer's Metadata has, with its values.
    assert {k: metadata[k] for k in reference["metadata"]} == reference["metadata"]
    assert len(ours["links"]) > (1000 if graph_fixture == "medium" else 50)
    kinds = {n["feature_type"] for n in ours["nodes"]}
    assert kinds == {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}


def test_step_boundaries_do_not_change_the_document(
    medium: tuple[Graph, Masks], monkeypatch: pytest.MonkeyPatch
):
    # The mask is read and the links are formatted in bounded steps; small steps put many
    # boundaries inside one graph (several mask blocks, hundreds of link steps).
    graph, masks = medium
    expected = build_graph_json(graph, *masks, metadata=realistic_metadata(graph))
    monkeypatch.setattr(graph_json, "_MASK_CELLS_PER_STEP", 50_000)
    monkeypatch.setattr(graph_json, "_LINKS_PER_STEP", 97)
    assert build_graph_json(graph, *masks, metadata=realistic_metadata(graph)) == expected
    assert len(orjson.loads(expected)["links"]) > 10 * 97


def test_no_feature_survives_and_edges_of_dropped_nodes_are_ignored(
    small: tuple[Graph, Masks],
):
    graph, (node_mask, edge_mask, scores) = small
    node_mask = node_mask.clone()
    node_mask[: len(graph.selected_features)] = False  # edge_mask still marks their edges
    masks = (node_mask, edge_mask, scores)

    ours = _ours(graph, masks)
    _assert_same_graph(ours, _reference(graph, masks))
    assert not any(n["feature_type"] == "cross layer transcoder" for n in ours["nodes"])
    ids = {n["node_id"] for n in ours["nodes"]}
    assert all(link["source"] in ids and link["target"] in ids for link in ours["links"])


def test_nothing_but_tokens_and_logits(small: tuple[Graph, Masks]):
    graph, (node_mask, edge_mask, scores) = small
    n_inner = len(graph.selected_features) + graph.n_pos * graph.cfg.n_layers
    node_mask = node_mask.clone()
    node_mask[:n_inner] = False
    masks = (node_mask, edge_mask, scores)

    ours = _ours(graph, masks)
    _assert_same_graph(ours, _reference(graph, masks))
    assert {n["feature_type"] for n in ours["nodes"]} == {"embedding", "logit"}
    assert len(ours["nodes"]) == graph.n_pos + len(graph.logit_targets)


def test_one_token_prompt():
    graph, masks = _pruned(
        GraphSpec(n_pos=1, n_layers=3, n_features=40, n_logits=3, density=0.5, tail=1.0)
    )
    ours = _ours(graph, masks)
    _assert_same_graph(ours, _reference(graph, masks))
    assert sum(n["feature_type"] == "embedding" for n in ours["nodes"]) == 1


def test_virtual_logit_targets_outside_the_vocabulary():
    spec = GraphSpec(
        n_pos=6, n_layers=3, n_features=120, n_logits=5, n_virtual_logits=3, density=0.3
    )
    graph, masks = _pruned(spec)
    ours = _ours(graph, masks)
    _assert_same_graph(ours, _reference(graph, masks))

    logits = [n for n in ours["nodes"] if n["feature_type"] == "logit"]
    virtual = [n for n in logits if n["feature"] >= spec.d_vocab]
    assert len(virtual) == 3
    assert all(n["clerp"].startswith('Output "logit("a') for n in virtual)
    assert [n["is_target_logit"] for n in logits] == [True] + [False] * 4


def test_error_node_kept_through_a_colliding_feature_id():
    # circuit-tracer names error nodes "0_{layer}_{pos}", which is also the id of the layer-0
    # feature {layer} at {pos}; it keeps a node when its *id* has a link. With 4 feature
    # indices and 4 layers, such pairs are common.
    graph, (node_mask, edge_mask, scores) = _pruned(
        GraphSpec(n_pos=4, n_layers=4, n_features=48, n_active=64, d_transcoder=4, density=0.6)
    )
    n_features = len(graph.selected_features)
    linked = (edge_mask & node_mask[None, :]).any(0) | (edge_mask & node_mask[:, None]).any(1)
    collisions = [
        (feat, pos)
        for i, (f_layer, pos, feat) in enumerate(
            graph.active_features[graph.selected_features].tolist()
        )
        if f_layer == 0 and feat < graph.cfg.n_layers and node_mask[i] and linked[i]
    ]
    assert collisions, "the synthetic graph should have a linked colliding layer-0 feature"
    layer, pos = collisions[0]
    error = n_features + layer * graph.n_pos + pos
    node_mask, edge_mask = node_mask.clone(), edge_mask.clone()
    node_mask[error] = True
    edge_mask[error, :] = False
    edge_mask[:, error] = False  # the error node itself has no link left
    masks = (node_mask, edge_mask, scores)

    ours = _ours(graph, masks)
    reference = _reference(graph, masks)
    _assert_same_graph(ours, reference)
    errors = [n for n in ours["nodes"] if n["feature_type"] == "mlp reconstruction error"]
    assert f"{layer}_{pos}-0" in {n["jsNodeId"] for n in errors}


def test_float64_scores_and_adjacency_keep_their_precision(small: tuple[Graph, Masks]):
    _, (node_mask, edge_mask, scores) = small
    wide = make_graph(SMALL)
    wide.adjacency_matrix = wide.adjacency_matrix.double()
    ours = _ours(wide, (node_mask, edge_mask, scores.double()))
    reference = _reference(wide, (node_mask, edge_mask, scores.double()))
    _assert_same_graph(ours, reference)


def test_accelerator_code_paths_agree_with_the_cpu_ones(medium: tuple[Graph, Masks]):
    # The mask reduction and weight gather used for CUDA tensors are plain torch, so they run on
    # CPU tensors too: they must find the same links as the numpy path used for CPU masks.
    _, (node_mask, edge_mask, scores) = medium
    kept = node_mask.nonzero().flatten()
    on_device = graph_json._kept_edges_on_device(edge_mask, kept)
    on_cpu = graph_json._kept_edges_numpy(edge_mask.numpy(), kept.numpy())
    assert len(on_cpu[0]) > 1000
    for device_side, cpu_side in zip(on_device, on_cpu, strict=True):
        np.testing.assert_array_equal(device_side, cpu_side)

    half = make_graph(MEDIUM)
    half.adjacency_matrix = half.adjacency_matrix.to(torch.bfloat16)  # numpy has no bfloat16
    widened = make_graph(MEDIUM)
    widened.adjacency_matrix = half.adjacency_matrix.float()
    masks = (node_mask, edge_mask, scores)
    assert _ours(half, masks) == _ours(widened, masks)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_give_the_cpu_document(medium: tuple[Graph, Masks]):
    graph, masks = medium
    expected = _ours(graph, masks)
    gpu_graph = make_graph(MEDIUM)
    gpu_graph.to("cuda")
    gpu_graph.input_tokens = gpu_graph.input_tokens.cuda()
    gpu_graph.selected_features = gpu_graph.selected_features.cuda()
    gpu_graph.activation_values = gpu_graph.activation_values.cuda()
    assert _ours(gpu_graph, tuple(t.cuda() for t in masks)) == expected


def test_document_validates_against_the_web_app_schema(
    medium: tuple[Graph, Masks], graph_schema: dict
):
    import jsonschema

    graph, masks = medium
    schema = graph_schema
    document = _ours(graph, masks)
    jsonschema.Draft7Validator(schema).validate(document)
    broken = dict(document, links=[{"source": "x", "target": "y"}])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


@pytest.mark.parametrize("size", [0, 1, 70_000, 3_000_017])
def test_gzip_round_trip_single_member(size: int):
    rng = np.random.default_rng(size)
    text = b'{"source":"1_2_3","weight":0.5},' * (size // 64)
    data = bytearray(text + rng.integers(0, 256, size - len(text), dtype=np.uint8).tobytes())

    compressed = gzip_compress(memoryview(data), level=3)

    assert compressed[:3] == b"\x1f\x8b\x08"
    assert gzip.decompress(compressed) == data
    reader = zlib.decompressobj(wbits=31)  # one gzip member, nothing after it
    assert reader.decompress(compressed) == data
    assert reader.eof and not reader.unused_data


def test_gzip_is_read_by_the_gzip_tool(tmp_path: Path):
    tool = shutil.which("gzip")
    if tool is None:
        pytest.skip("no gzip executable on this machine")
    data = b"".join(b"%d," % i for i in range(600_000))  # > 1 MiB: the threaded writer
    path = tmp_path / "graph.json.gz"
    path.write_bytes(gzip_compress(data))
    assert subprocess.run([tool, "-t", str(path)], check=False).returncode == 0
    assert subprocess.run([tool, "-dc", str(path)], capture_output=True).stdout == data


def test_gzip_compresses_json_and_honours_the_level():
    data = orjson.dumps(
        [{"source": f"{i % 26}_{i}_{i % 64}", "weight": i / 7} for i in range(50_000)]
    )
    fast = gzip_compress(data, level=1)
    best = gzip_compress(data, level=9)
    assert len(best) < len(fast) < len(data) / 3
    for level in (0, 10):
        with pytest.raises(ValueError):
            gzip_compress(data, level=level)


def test_benchmark_quick_run_prints_the_machine_readable_line():
    result = subprocess.run(
        [sys.executable, "-m", "bench.serialize", "--quick", "--reps", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.strip().splitlines()[-1]
    fields = dict(part.split("=") for part in last.split())
    assert set(fields) == {"speedup", "extra_memory_ratio"}
    assert float(fields["speedup"]) > 0 and float(fields["extra_memory_ratio"]) > 0


def _metadata_for(graph: Graph, targets: Any) -> dict[str, Any]:
    from neuronpedia_graph.models.spec import ModelSpec
    from neuronpedia_graph.schemas import GraphRequest
    from neuronpedia_graph.scores import GraphScores

    spec = ModelSpec(
        model_id="demo",
        model_path="/models/demo",
        model_is_local=True,
        transcoder_ref="/models/demo/transcoders",
        transcoder_is_local=True,
        scan="demo",
        neuronpedia_id="demo",
        backend="nnsight",
    )
    request = GraphRequest.model_validate(
        {"prompt": "p", "model_id": "demo", "slug_identifier": "s"}
    )
    return graph_json.graph_metadata(
        request,
        spec,
        prompt=graph.input_string,
        tokens=[f"w{t}" for t in graph.input_tokens.tolist()],
        generator_version="0.5.0",
        create_time_ms=1,
        scores=GraphScores(0.25, 0.75),
        targets=graph_json.targets_metadata(targets, graph),
    )


def test_metadata_records_contrast_targets_and_scores(graph_schema: dict):
    """A contrast is one virtual logit target; the metadata names its node for viewers, and
    the scores go under "scores", never the web app's replacement_score/completeness_score."""
    import jsonschema

    from neuronpedia_graph.schemas import ResolvedTargets

    spec = GraphSpec(n_pos=6, n_layers=3, n_features=120, n_logits=1, n_virtual_logits=1)
    graph, masks = _pruned(spec)
    contrast = ResolvedTargets(tokens=(" a", " b"), ids=(5, 9), contrast=True)
    metadata = _metadata_for(graph, contrast)
    document = _ours(graph, masks, metadata)
    jsonschema.Draft7Validator(graph_schema).validate(document)

    (logit,) = [n for n in document["nodes"] if n["feature_type"] == "logit"]
    assert logit["feature"] >= spec.d_vocab
    meta = document["metadata"]
    assert meta["attribution_targets"] == {
        "contrast": [" a", " b"],
        "label": " a\u2212 b",
        "node_id": logit["node_id"],
    }
    assert meta["scores"] == {"replacement": 0.25, "completeness": 0.75}
    assert "replacement_score" not in meta and "completeness_score" not in meta


def test_metadata_records_token_targets_as_asked(small: tuple[Graph, Masks]):
    from neuronpedia_graph.schemas import ResolvedTargets

    graph, _ = small
    tokens = ResolvedTargets(tokens=(" x", " y"), ids=(3, 4), contrast=False)
    assert _metadata_for(graph, tokens)["attribution_targets"] == [" x", " y"]
    assert "attribution_targets" not in _metadata_for(graph, None)
