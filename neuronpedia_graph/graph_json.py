"""Neuronpedia graph JSON straight from a pruned circuit-tracer graph, fast and memory-bounded.

circuit-tracer's own path (`create_nodes`, `create_used_nodes_and_edges`, `build_model`, then
`model_dump` and `json.dumps`) builds a pydantic object per node and a dict per link and holds
several full copies of a document that reaches 100 MB+, which costs seconds of CPU after the GPU
work. Here the masks are read on the tensors' own device, only the kept nodes and links
travel to the CPU, and links are written as byte fragments into one buffer sized up front, so
the peak extra memory stays close to the size of the JSON itself.

The document is the one circuit-tracer builds (same nodes and links, same order, same values
after parsing), including its quirks: error node ids start with "0_", feature ids are Cantor
pairings, embedding and logit nodes stay even when unconnected, and "connected" is decided by
node id, so an error node shares the fate of a layer-0 feature whose id collides with it.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import orjson
import torch

from neuronpedia_graph.json_types import JSONObject, JSONValue

if TYPE_CHECKING:
    from circuit_tracer.graph import Graph

    from neuronpedia_graph.models.spec import ModelSpec
    from neuronpedia_graph.schemas import GraphRequest, ResolvedTargets
    from neuronpedia_graph.scores import GraphScores

# circuit-tracer's build_model defaults: nothing pinned, no supernodes, nothing clicked.
_QPARAMS = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
# Cells of the N×N edge mask read per step: bounds device/host temporaries (2 MiB of bools).
_MASK_CELLS_PER_STEP = 1 << 21
# Links formatted per step: bytes.join keeps an 80-byte buffer record per fragment (3 per link),
# so this bounds the transient lists to a few MB whatever the graph size.
_LINKS_PER_STEP = 1 << 13
_EMBEDDING = "embedding"
_LOGIT = "logit"
_GENERATOR = {
    "name": "neuronpedia-graph (circuit-tracer)",
    "url": "https://github.com/safety-research/circuit-tracer",
}


def graph_metadata(
    request: GraphRequest,
    spec: ModelSpec,
    *,
    prompt: str,
    tokens: list[str],
    generator_version: str,
    create_time_ms: int,
    scores: GraphScores,
    targets: list[str] | JSONObject | None = None,
) -> JSONObject:
    """The document's "metadata" object, as the web app reads it.

    Args:
        request: the validated graph request (settings are echoed back).
        spec: the loaded model; its `scan` is the Neuronpedia model id the web app files the
            graph under, so it must be that id, never a transcoder repository path.
        prompt: the prompt as circuit-tracer decodes the input ids (BOS text included), which
            is what the original server wrote.
        tokens: each input token decoded on its own, BOS first.
        generator_version: the circuit-tracer version.
        create_time_ms: creation time, milliseconds since the epoch.
        scores: the unpruned graph's scores, written as "scores". Never as the web app's
            `replacement_score` / `completeness_score`: where those are absent it computes its
            own on the pruned graph, a different quantity, and shows that.
        targets: `targets_metadata`'s record, written as "attribution_targets" when given.

    Returns:
        The metadata mapping.
    """
    metadata: JSONObject = {
        "slug": request.slug_identifier,
        "scan": spec.scan,
        "transcoder_list": [],
        "prompt_tokens": tokens,
        "prompt": prompt,
        "node_threshold": request.node_threshold,
        "schema_version": 1,
        "info": {
            "creator_name": request.user_id or "Anonymous (CT)",
            "creator_url": "https://neuronpedia.org",
            "source_urls": list(spec.source_urls),
            "transcoder_set": spec.transcoder_ref if not spec.transcoder_is_local else "local",
            "generator": {**_GENERATOR, "version": generator_version},
            "create_time_ms": create_time_ms,
        },
        "generation_settings": {
            "max_n_logits": request.max_n_logits,
            "desired_logit_prob": request.desired_logit_prob,
            "batch_size": request.batch_size,
            "max_feature_nodes": request.max_feature_nodes,
        },
        "pruning_settings": {
            "node_threshold": request.node_threshold,
            "edge_threshold": request.edge_threshold,
        },
    }
    if spec.neuronpedia_source_set:
        metadata["feature_details"] = {"neuronpedia_source_set": spec.neuronpedia_source_set}
    if targets is not None:
        metadata["attribution_targets"] = targets
    metadata["scores"] = {"replacement": scores.replacement, "completeness": scores.completeness}
    return metadata


def targets_metadata(
    targets: ResolvedTargets | None, graph: Graph
) -> list[str] | JSONObject | None:
    """How the document records the request's attribution targets (None: the salient logits).

    Token targets: the list of strings, as requested. A contrast: the request's
    `{"contrast": [a, b]}` plus its logit node's `label` ("a−b") and `node_id`, so a viewer
    can name that node for what it is. Either can be sent back as `attribution_targets`
    (unknown keys are ignored) to get the same targets again.
    """
    if targets is None:
        return None
    if not targets.contrast:
        return list(targets.tokens)
    _, vocab_idx = graph.logit_targets[0]
    return {
        "contrast": list(targets.tokens),
        "label": targets.label,
        "node_id": f"{graph.cfg.n_layers + 1}_{vocab_idx}_{graph.n_pos - 1}",
    }


def count_links(edge_mask: torch.Tensor, node_mask: torch.Tensor) -> int:
    """How many links the document will hold: kept edges between kept nodes.

    Counted before serializing, on the masks' device, so an oversized graph is refused
    before any memory is spent on its JSON.
    """
    kept = node_mask.nonzero().flatten().to(edge_mask.device)
    rows_per_step = max(1, _MASK_CELLS_PER_STEP // max(1, edge_mask.shape[1]))
    total = 0
    for start in range(0, kept.numel(), rows_per_step):
        block = edge_mask.index_select(0, kept[start : start + rows_per_step])
        total += int(block.index_select(1, kept).sum())
    return total


# A link takes at least this many bytes ('{"source":"0_0_0","target":"0_0_1","weight":0.1},').
_MIN_LINK_BYTES = 48


def min_json_bytes(n_links: int) -> int:
    """A lower bound on the document's size, known before it is written.

    Used to refuse a graph that cannot fit a byte limit without spending memory on it; one that
    passes is measured exactly once written.
    """
    return _MIN_LINK_BYTES * n_links


def build_graph_json(
    graph: Graph,
    node_mask: torch.Tensor,
    edge_mask: torch.Tensor,
    cumulative_scores: torch.Tensor,
    *,
    metadata: Mapping[str, JSONValue],
) -> bytes:
    """Neuronpedia graph document as UTF-8 JSON bytes: {"metadata": metadata (inserted as given),
    "qParams": circuit-tracer's defaults, "nodes": [...], "links": [...]}.

    The masks and scores are `prune_graph`'s outputs and may live on any device, as may the
    graph's tensors; nothing is copied to the CPU beyond the kept nodes and links.
    """
    kept = node_mask.nonzero().flatten()
    kept_cpu = kept.cpu().numpy()
    nodes, node_ids = _kept_nodes(graph, kept, kept_cpu, cumulative_scores)
    targets, sources, weights = _kept_links(graph.adjacency_matrix, edge_mask, kept, kept_cpu)

    connected = np.zeros(len(node_ids), dtype=bool)
    connected[sources] = True
    connected[targets] = True
    connected_ids = {node_ids[i] for i in np.flatnonzero(connected).tolist()}
    used_nodes = [
        node
        for node in nodes
        if node["node_id"] in connected_ids or node["feature_type"] in (_EMBEDDING, _LOGIT)
    ]

    head = b"".join(
        (
            b'{"metadata":',
            orjson.dumps(dict(metadata), option=orjson.OPT_SERIALIZE_NUMPY),
            b',"qParams":',
            orjson.dumps(_QPARAMS),
            b',"nodes":',
            orjson.dumps(used_nodes),
            b',"links":[',
        )
    )
    del nodes, used_nodes
    links = _LinkWriter(node_ids, sources, targets)
    # One buffer sized for the whole document up front: growing it step by step would copy it
    # (glibc keeps mid-sized blocks on the heap) and leave the old copies resident. bytes(n) is
    # calloc'ed, so the slack beyond the real size is never touched and costs no memory.
    out = io.BytesIO(bytes(len(head) + links.max_size(len(weights)) + len(b"}]}")))
    out.write(head)
    del head
    links.write(out, weights)
    out.write(b"}]}" if len(weights) else b"]}")
    out.truncate(out.tell())
    # BytesIO hands back its own buffer, shrunk in place, when nothing else references it.
    return out.getvalue()


def _kept_nodes(
    graph: Graph, kept: torch.Tensor, kept_cpu: np.ndarray, cumulative_scores: torch.Tensor
) -> tuple[list[JSONObject], list[str]]:
    """Node dicts (circuit-tracer's field order) and ids, for every index in `kept` (ascending;
    `kept_cpu` is the same on the CPU)."""
    n_features = len(graph.selected_features)
    n_pos = graph.n_pos
    n_layers = graph.cfg.n_layers
    error_end = n_features + n_pos * n_layers
    token_end = error_end + len(graph.input_tokens)

    influence = cumulative_scores[kept.to(cumulative_scores.device)].cpu().tolist()
    f_end, e_end, t_end = np.searchsorted(kept_cpu, [n_features, error_end, token_end]).tolist()

    feature_idx = kept[:f_end]
    selected = graph.selected_features[feature_idx.to(graph.selected_features.device)]
    layer_pos_feat = graph.active_features[selected.to(graph.active_features.device)].cpu()
    activation = graph.activation_values[selected.to(graph.activation_values.device)].cpu()

    nodes: list[JSONObject] = []
    for (layer, pos, feat), infl, act in zip(
        layer_pos_feat.tolist(), influence[:f_end], activation.tolist(), strict=True
    ):
        nodes.append(
            _node(
                f"{layer}_{feat}_{pos}",
                (layer + feat) * (layer + feat + 1) // 2 + feat,
                str(layer),
                pos,
                "cross layer transcoder",
                f"{layer}_{feat}-0",
                influence=infl,
                activation=act,
            )
        )
    for idx, infl in zip(kept_cpu[f_end:e_end].tolist(), influence[f_end:e_end], strict=True):
        layer, pos = divmod(idx - n_features, n_pos)
        nodes.append(
            _node(
                f"0_{layer}_{pos}",
                -1,
                str(layer),
                pos,
                "mlp reconstruction error",
                f"{layer}_{pos}-0",
                influence=infl,
            )
        )
    tokens = graph.input_tokens.cpu().tolist()
    for idx, infl in zip(kept_cpu[e_end:t_end].tolist(), influence[e_end:t_end], strict=True):
        pos = idx - error_end
        vocab = tokens[pos]
        nodes.append(
            _node(f"E_{vocab}_{pos}", pos, "E", pos, _EMBEDDING, f"E_{vocab}-{pos}", influence=infl)
        )
    probabilities = graph.logit_probabilities.cpu().tolist()
    logit_layer = str(n_layers + 1)
    last_pos = n_pos - 1
    for idx in kept_cpu[t_end:].tolist():
        rank = idx - token_end
        token, vocab_idx = graph.logit_targets[rank]
        prob = probabilities[rank]
        nodes.append(
            _node(
                f"{logit_layer}_{vocab_idx}_{last_pos}",
                int(vocab_idx),
                logit_layer,
                last_pos,
                _LOGIT,
                f"L_{vocab_idx}-{last_pos}",
                token_prob=prob,
                is_target_logit=rank == 0,
                clerp=f'Output "{token}" (p={prob:.3f})',
            )
        )
    return nodes, [node["node_id"] for node in nodes]


def _node(
    node_id: str,
    feature: int,
    layer: str,
    ctx_idx: int,
    feature_type: str,
    js_node_id: str,
    *,
    token_prob: float = 0.0,
    is_target_logit: bool = False,
    clerp: str = "",
    influence: float | None = None,
    activation: float | None = None,
) -> JSONObject:
    """One node with every field of circuit-tracer's `Node`, in its declaration order."""
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": ctx_idx,
        "feature_type": feature_type,
        "token_prob": token_prob,
        "is_target_logit": is_target_logit,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js_node_id,
        "clerp": clerp,
        "influence": influence,
        "activation": activation,
    }


def _kept_links(
    adjacency: torch.Tensor, edge_mask: torch.Tensor, kept: torch.Tensor, kept_cpu: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Links between kept nodes in row-major (target, source) order, as positions in `kept`
    (int32) plus weights (float32, or float64 when the adjacency is float64).

    Only the kept rows and columns of the mask are read (the pruned mask may still mark edges
    of dropped nodes), a bounded block of rows at a time.
    """
    if edge_mask.device.type == "cpu":
        targets, sources = _kept_edges_numpy(edge_mask.numpy(), kept_cpu)
    else:
        targets, sources = _kept_edges_on_device(edge_mask, kept.to(edge_mask.device))
    rows, cols = kept_cpu[targets], kept_cpu[sources]
    adjacency = adjacency.detach()
    if adjacency.device.type == "cpu" and adjacency.dtype in (torch.float32, torch.float64):
        weights = adjacency.numpy()[rows, cols]
    else:  # on an accelerator, or a dtype numpy lacks (bfloat16): gather there, widen exactly
        wide = torch.float64 if adjacency.dtype == torch.float64 else torch.float32
        index = (
            torch.from_numpy(rows).to(adjacency.device),
            torch.from_numpy(cols).to(adjacency.device),
        )
        weights = adjacency[index].to(wide).cpu().numpy()
    return targets, sources, weights


def _kept_edges_numpy(edge_mask: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CPU masks go through numpy: single-threaded, it is several times faster than torch's
    indexing on a busy machine, where torch's intra-op threads wait on each other."""
    rows_per_step = max(1, _MASK_CELLS_PER_STEP // max(1, edge_mask.shape[1]))
    targets, sources = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)]
    for start in range(0, kept.size, rows_per_step):
        block = edge_mask.take(kept[start : start + rows_per_step], axis=0).take(kept, axis=1)
        target, source = block.nonzero()
        targets.append((target + start).astype(np.int32))
        sources.append(source.astype(np.int32))
    return np.concatenate(targets), np.concatenate(sources)


def _kept_edges_on_device(
    edge_mask: torch.Tensor, kept: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Masks on an accelerator are reduced there; only the kept edges' positions travel."""
    rows_per_step = max(1, _MASK_CELLS_PER_STEP // max(1, edge_mask.shape[1]))
    targets, sources = [np.zeros(0, dtype=np.int32)], [np.zeros(0, dtype=np.int32)]
    for start in range(0, kept.numel(), rows_per_step):
        rows = kept[start : start + rows_per_step]
        block = edge_mask.index_select(0, rows).index_select(1, kept)
        target, source = block.nonzero(as_tuple=True)
        targets.append((target + start).to(torch.int32).cpu().numpy())
        sources.append(source.to(torch.int32).cpu().numpy())
    return np.concatenate(targets), np.concatenate(sources)


class _LinkWriter:
    """Writes `{"source":..,"target":..,"weight":..}` objects as joined byte fragments.

    A link is three fragments: `},{"source":"<id>","target":"` for its source (the "}," closes
    the previous link and is cut from the first), `<id>","weight":` for its target, and its
    weight as orjson formats a float64, which is exactly Python's float() of the stored value.
    Fragments are gathered per node with numpy object indexing and joined in bounded steps, so
    no Python code runs per link. Node ids are digits, letters and "_", which need no escaping.
    """

    # Longest shortest-round-trip float64: "-2.2250738585072014e-308" is 24 characters.
    _MAX_NUMBER = 32

    def __init__(self, node_ids: list[str], sources: np.ndarray, targets: np.ndarray) -> None:
        ids = [node_id.encode() for node_id in node_ids]
        self._source_part = np.array(
            [b'},{"source":"' + node_id + b'","target":"' for node_id in ids] or [b""],
            dtype=object,
        )
        self._target_part = np.array(
            [node_id + b'","weight":' for node_id in ids] or [b""], dtype=object
        )
        self._sources = sources
        self._targets = targets

    def max_size(self, n_links: int) -> int:
        """Bytes the links take at most (first link's "}," included)."""
        lengths = np.fromiter(map(len, self._source_part), dtype=np.int64)
        size = int(np.bincount(self._sources, minlength=lengths.size) @ lengths)
        lengths = np.fromiter(map(len, self._target_part), dtype=np.int64)
        size += int(np.bincount(self._targets, minlength=lengths.size) @ lengths)
        return size + self._MAX_NUMBER * n_links

    def write(self, out: io.BytesIO, weights: np.ndarray) -> None:
        for start in range(0, len(weights), _LINKS_PER_STEP):
            step = slice(start, start + _LINKS_PER_STEP)
            chunk = weights[step].astype(np.float64)
            numbers = orjson.dumps(chunk, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
            fragments = np.empty(3 * len(chunk), dtype=object)
            fragments[0::3] = self._source_part[self._sources[step]]
            fragments[1::3] = self._target_part[self._targets[step]]
            fragments[2::3] = numbers
            text = b"".join(fragments.tolist())
            out.write(memoryview(text)[2:] if start == 0 else text)
