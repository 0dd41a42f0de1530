"""circuit-tracer's own graph document, the reference our serializer must equal."""

from __future__ import annotations

from typing import Any

import torch
from circuit_tracer.graph import Graph
from circuit_tracer.utils.create_graph_files import (
    build_model,
    create_nodes,
    create_used_nodes_and_edges,
)

from testkit.synthetic import SyntheticTokenizer

NODE_THRESHOLD = 0.8


def reference_document(
    graph: Graph,
    node_mask: torch.Tensor,
    edge_mask: torch.Tensor,
    cumulative_scores: torch.Tensor,
    *,
    slug: str,
    node_threshold: float = NODE_THRESHOLD,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """circuit-tracer's own document, as `create_graph_files` builds it (CPU tensors only)."""
    tokenizer = tokenizer or SyntheticTokenizer()
    nodes = create_nodes(graph, node_mask, tokenizer, cumulative_scores)
    used_nodes, used_edges = create_used_nodes_and_edges(graph, nodes, edge_mask)
    model = build_model(graph, used_nodes, used_edges, slug, graph.scan, node_threshold, tokenizer)
    return model.model_dump()
