"""Synthetic circuit-tracer graphs of realistic shape, built without a model.

Serialization cost depends only on tensor shapes and on how many nodes and links survive pruning,
so a graph with the real node layout (features, errors, tokens, logits) and a causally valid
adjacency (sources in lower layers at earlier or equal positions) exercises the same code paths as
one from `circuit_tracer.attribute`, in seconds instead of GPU-hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import Graph
from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

# Rows per block when filling N×N matrices, so temporaries stay a few hundred MB at N≈20k.
_ROW_BLOCK = 1024


@dataclass(frozen=True)
class GraphSpec:
    """Shape and weight distribution of a synthetic graph.

    `density` is the fraction of causally allowed (source, target) pairs with a nonzero weight;
    `tail` is the sigma of the log-normal weight magnitudes: heavier tails concentrate influence
    on fewer edges, so pruning keeps fewer links.
    """

    n_pos: int = 64
    n_layers: int = 26
    n_features: int = 10_000
    n_active: int | None = None  # default: 2 × n_features
    d_transcoder: int = 16_384
    d_vocab: int = 256_000
    n_logits: int = 10
    n_virtual_logits: int = 0  # targets whose vocab index is virtual (>= d_vocab)
    density: float = 0.05
    tail: float = 2.0
    seed: int = 0


def _active_features(spec: GraphSpec, rng: np.random.Generator) -> torch.Tensor:
    """Unique (layer, pos, feature_idx) triples, as circuit-tracer's sparse activations give."""
    n_active = spec.n_active or 2 * spec.n_features
    per_layer = spec.n_pos * spec.d_transcoder
    capacity = spec.n_layers * per_layer
    if n_active > capacity:
        raise ValueError(f"{n_active} active features do not fit in {capacity} slots")
    flat = np.sort(rng.choice(capacity, size=n_active, replace=False))
    layer, rest = np.divmod(flat, per_layer)
    pos, feat = np.divmod(rest, spec.d_transcoder)
    return torch.from_numpy(np.stack([layer, pos, feat], axis=1).astype(np.int64))


def _logit_targets(spec: GraphSpec, rng: np.random.Generator) -> list[LogitTarget]:
    """Top-k style targets, then virtual ones; labels carry quotes, newlines and non-ASCII so
    that JSON escaping of the logit clerp is exercised."""
    n_real = spec.n_logits - spec.n_virtual_logits
    vocab = rng.choice(spec.d_vocab, size=n_real, replace=False).tolist()
    targets = [
        LogitTarget(token_str=f" tok{v}" if i % 3 else f' "q{v}"\n é', vocab_idx=v)
        for i, v in enumerate(vocab)
    ]
    targets += [
        LogitTarget(token_str=f'logit("a{i}")-logit("b{i}")', vocab_idx=spec.d_vocab + n_real + i)
        for i in range(spec.n_virtual_logits)
    ]
    return targets


def _node_layers_and_positions(
    spec: GraphSpec, selected_features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Layer and position of every node in circuit-tracer's order (features, errors, tokens,
    logits); tokens sit below layer 0 and logits above the last layer."""
    layer = np.concatenate(
        [
            selected_features[:, 0],
            np.repeat(np.arange(spec.n_layers), spec.n_pos),
            np.full(spec.n_pos, -1),
            np.full(spec.n_logits, spec.n_layers),
        ]
    )
    pos = np.concatenate(
        [
            selected_features[:, 1],
            np.tile(np.arange(spec.n_pos), spec.n_layers),
            np.arange(spec.n_pos),
            np.full(spec.n_logits, spec.n_pos - 1),
        ]
    )
    return layer, pos


def _adjacency(
    spec: GraphSpec, layer: np.ndarray, pos: np.ndarray, rng: np.random.Generator
) -> torch.Tensor:
    """Rows are targets, columns sources. Only features and logits receive; features, errors
    and tokens send; a source must sit in a lower layer at an earlier or equal position, which
    makes the matrix nilpotent like a real attribution graph's."""
    n = layer.size
    receives = np.zeros(n, dtype=bool)
    receives[: spec.n_features] = True
    receives[n - spec.n_logits :] = True
    sends = np.ones(n, dtype=bool)
    sends[n - spec.n_logits :] = False
    adjacency = np.zeros((n, n), dtype=np.float32)
    for r0 in range(0, n, _ROW_BLOCK):
        r1 = min(r0 + _ROW_BLOCK, n)
        nonzero = (
            receives[r0:r1, None]
            & sends[None, :]
            & (layer[None, :] < layer[r0:r1, None])
            & (pos[None, :] <= pos[r0:r1, None])
        )
        nonzero &= rng.random((r1 - r0, n), dtype=np.float32) < spec.density
        count = int(nonzero.sum())
        magnitude = np.exp(spec.tail * rng.standard_normal(count, dtype=np.float32))
        adjacency[r0:r1][nonzero] = magnitude * rng.choice(np.float32([-1, 1]), size=count)
    return torch.from_numpy(adjacency)


def make_graph(spec: GraphSpec) -> Graph:
    """A circuit-tracer Graph (CPU tensors) with the node layout and dtypes `attribute` makes."""
    rng = np.random.default_rng(spec.seed)
    active_features = _active_features(spec, rng)
    n_active = active_features.shape[0]
    selected = np.sort(rng.choice(n_active, size=spec.n_features, replace=False))
    layer, pos = _node_layers_and_positions(spec, active_features.numpy()[selected])
    probs = np.sort(rng.random(spec.n_logits))[::-1]
    input_tokens = rng.integers(0, spec.d_vocab, size=spec.n_pos)
    input_tokens[0] = 2  # BOS, as circuit-tracer prepends
    cfg = UnifiedConfig(
        n_layers=spec.n_layers,
        d_model=64,
        d_head=16,
        n_heads=4,
        d_mlp=256,
        d_vocab=spec.d_vocab,
        tokenizer_name="synthetic",
        model_name="synthetic",
        original_architecture="Gemma2ForCausalLM",
    )
    return Graph(
        input_string=" ".join(f"w{t}" for t in input_tokens.tolist()),
        input_tokens=torch.from_numpy(input_tokens.astype(np.int64)),
        active_features=active_features,
        adjacency_matrix=_adjacency(spec, layer, pos, rng),
        cfg=cfg,
        selected_features=torch.from_numpy(selected.astype(np.int64)),
        activation_values=torch.from_numpy(rng.random(n_active, dtype=np.float32) * 20),
        logit_targets=_logit_targets(spec, rng),
        logit_probabilities=torch.from_numpy((probs / probs.sum() * 0.95).astype(np.float32)),
        scan="synthetic-scan",
        vocab_size=spec.d_vocab,
    )


class SyntheticTokenizer:
    """Stands in for the Hugging Face tokenizer that circuit-tracer's `build_model` asks for the
    prompt tokens: one word per id, matching `make_graph`'s input string."""

    def decode(self, token_id: Any) -> str:
        return f"w{int(token_id)}"


def realistic_metadata(
    graph: Graph, *, slug: str = "synthetic-graph", node_threshold: float = 0.8
) -> dict[str, Any]:
    """Metadata shaped like the service's: circuit-tracer's `Metadata` fields plus info,
    generation and pruning settings."""
    tokenizer = SyntheticTokenizer()
    return {
        "slug": slug,
        "scan": str(graph.scan),
        "transcoder_list": [],
        "prompt_tokens": [tokenizer.decode(t) for t in graph.input_tokens.tolist()],
        "prompt": graph.input_string,
        "node_threshold": node_threshold,
        "schema_version": 1,
        "info": {
            "description": "synthetic graph for tests and benchmarks",
            "creator_name": "bench",
            "creator_url": "https://example.invalid/bench",
            "source_urls": ["https://example.invalid/transcoders"],
            "generator": {
                "name": "neuronpedia-graph",
                "version": "0.1.0",
                "url": "https://example.invalid/neuronpedia-graph",
            },
            "create_time_ms": 1_700_000_000_000,
        },
        "generation_settings": {
            "max_n_logits": len(graph.logit_targets),
            "desired_logit_prob": 0.95,
            "batch_size": 256,
            "max_feature_nodes": len(graph.selected_features),
        },
        "pruning_settings": {"node_threshold": node_threshold, "edge_threshold": 0.98},
    }
