"""Re-pruning a stored attribution against recomputing the graph, and what the store costs.

Run: `make bench-reprune` (`HF_HUB_OFFLINE=1 .venv/bin/python -m bench.reprune`; a couple of
minutes on 2 CPU cores) or `--quick`.

1. Models: the demo model, and a fabricated small-shape gemma-2 with its GemmaScope
   transcoders (`testkit.hubcache`, written to a temporary HF_HOME). For each, one graph is
   attributed and stored; then, alternately, `--reps` times each: the same graph at new
   thresholds recomputed (`no_cache`, the whole `/generate-graph` work) and re-pruned from the
   store (`GraphService.stored_document`: load, prune, JSON). Medians are compared, and the
   two documents must be equal (except `create_time_ms`).
2. Synthetic: an 11.7k-node stored graph (`testkit.synthetic`, the prune benchmark's medium
   graph: 10k features, 64 tokens, 26 layers): file size, and load, prune and JSON times.

Last line: `reprune_speedup=<demo recompute / re-prune> gemma_reprune_speedup=<same, gemma>
store_bytes_per_node2=<synthetic file bytes / N²> load_s= prune_s= json_s=`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THRESHOLDS = [(0.5, 0.9), (0.9, 0.99)]
PROMPT = "The city of Paris is in"


def without_time(body: bytes) -> dict[str, Any]:
    document = json.loads(body)
    document["metadata"]["info"].pop("create_time_ms")
    return document


def bench_model(name: str, settings: Any, body: dict[str, Any], reps: int) -> float:
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.operations import BY_NAME
    from neuronpedia_graph.service import GraphService, Timings

    service = GraphService(load_model(settings), settings)
    op = BY_NAME["generate-graph"]
    first = service.run(op, {**body, "no_cache": True}, lock_timeout=60)
    graph_id = first.value.graph_id
    assert graph_id is not None, "the graph was not stored"
    size = service.attributions.path(graph_id).stat().st_size
    recompute, reprune = [], []
    for i in range(reps):
        nt, et = THRESHOLDS[i % len(THRESHOLDS)]
        started = time.perf_counter()
        fresh = service.run(
            op,
            {**body, "node_threshold": nt, "edge_threshold": et, "no_cache": True},
            lock_timeout=60,
        )
        recompute.append(time.perf_counter() - started)
        started = time.perf_counter()
        staged = service.stored_document(graph_id, nt, et, Timings())
        reprune.append(time.perf_counter() - started)
        assert without_time(staged.body) == without_time(fresh.value.document), (name, nt, et)
    speedup = statistics.median(recompute) / statistics.median(reprune)
    print(
        f"{name:28s} recompute {statistics.median(recompute) * 1000:8.1f} ms   re-prune "
        f"{statistics.median(reprune) * 1000:7.1f} ms   speedup {speedup:6.1f}x   "
        f"stored {size} bytes (identical documents)",
        flush=True,
    )
    return speedup


def bench_synthetic(root: Path) -> dict[str, float]:
    import torch

    from neuronpedia_graph import graph_json
    from neuronpedia_graph.attribution_store import AttributionStore
    from neuronpedia_graph.prune import prune_and_score
    from testkit.synthetic import GraphSpec, make_graph, realistic_metadata

    spec = GraphSpec(n_features=10_000, density=0.13, tail=1.0)
    graph = make_graph(spec)
    n = graph.adjacency_matrix.shape[0]
    store = AttributionStore(root, 1 << 40)
    packed = store.pack(graph)
    started = time.perf_counter()
    size = store.save("S" * 24, "synthetic", {}, packed)
    save_s = time.perf_counter() - started
    del packed
    started = time.perf_counter()
    loaded = store.load("S" * 24, graph.cfg, graph.scan, torch.device("cpu"))
    load_s = time.perf_counter() - started
    assert torch.equal(loaded.adjacency_matrix, graph.adjacency_matrix)
    del graph
    started = time.perf_counter()
    (node_mask, edge_mask, cumulative), _ = prune_and_score(loaded, 0.8, 0.98)
    prune_s = time.perf_counter() - started
    started = time.perf_counter()
    body = graph_json.build_graph_json(
        loaded, node_mask, edge_mask, cumulative, metadata=realistic_metadata(loaded)
    )
    json_s = time.perf_counter() - started
    per = size / n**2
    print(
        f"synthetic {n} nodes: stored {size / 1e6:.1f} MB ({per:.3f} bytes per node², dense "
        f"float32 is 4), save {save_s:.2f} s, load {load_s:.2f} s, prune {prune_s:.2f} s, "
        f"JSON {json_s:.2f} s ({len(body) / 1e6:.1f} MB)",
        flush=True,
    )
    return {
        "store_bytes_per_node2": per,
        "load_s": load_s,
        "prune_s": prune_s,
        "json_s": json_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="2 reps, demo model only")
    args = parser.parse_args()
    reps = 2 if args.quick else args.reps
    tmp = Path(tempfile.mkdtemp(prefix="bench-reprune-"))
    # Before anything imports huggingface_hub, which reads these once.
    os.environ["HF_HOME"] = str(tmp / "hf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from neuronpedia_graph.settings import Settings
        from neuronpedia_graph.versions import describe_versions

        print(f"# {describe_versions()}", flush=True)

        def settings(model_id: str, **extra: Any) -> Settings:
            return Settings(
                model_id=model_id,
                secret="bench",
                device="cpu",
                spool_dir=tmp / "spool",
                graph_store_dir=tmp / f"store-{model_id.replace('/', '-')}",
                **extra,
            )

        body = {"prompt": PROMPT, "slug_identifier": "bench", "max_feature_nodes": 500}
        demo = bench_model("demo", settings("demo"), {**body, "model_id": "demo"}, reps)
        gemma = 0.0
        if not args.quick:
            from testkit.hubcache import PAIRS, build

            build(tmp / "hf", ["gemma"])
            pair = PAIRS["gemma"]
            gemma = bench_model(
                "small gemma-2 + gemmascope",
                settings(pair.model_id),
                {**body, "model_id": pair.model_id},
                reps,
            )
        synthetic = bench_synthetic(tmp / "synthetic")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"reprune_speedup={demo:.2f} gemma_reprune_speedup={gemma:.2f} "
        + " ".join(f"{k}={v:.4g}" for k, v in synthetic.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
