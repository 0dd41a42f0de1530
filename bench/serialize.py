"""Graph JSON + gzip: circuit-tracer's path against ours, on synthetic graphs of realistic size.

Run: `.venv/bin/python -m bench.serialize` (a few minutes, about 5 GiB peak RSS, during
`prune_graph`) or `--quick` (seconds). Both paths run in this process on the same pruned graph.
Memory is the peak resident set size above the level just before the call (the kernel's
high-water mark, reset through /proc/self/clear_refs), so it counts torch, numpy and Python
allocations alike, and includes the returned JSON and gzip bytes. The last line is
machine-readable: `speedup=<ratio of medians> extra_memory_ratio=<ours: peak extra / JSON bytes>`
for the largest graph.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from circuit_tracer.graph import Graph, prune_graph

from bench.memory import PeakRss
from neuronpedia_graph.compression import DEFLATE_BACKEND, gzip_compress
from neuronpedia_graph.graph_json import build_graph_json
from testkit.reference import reference_document
from testkit.synthetic import GraphSpec, make_graph, realistic_metadata

NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98
GZIP_LEVEL = 3


@dataclass
class Timed:
    seconds: list[float] = field(default_factory=list)
    peak_extra_bytes: list[int] = field(default_factory=list)
    json_bytes: int = 0
    gzip_bytes: int = 0
    stages: dict[str, list[float]] = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.seconds)

    def stage_medians(self) -> str:
        return " ".join(f"{k}={statistics.median(v):.2f}s" for k, v in self.stages.items())


def run_reference(graph: Graph, masks: tuple[torch.Tensor, ...], slug: str, timed: Timed) -> None:
    t0 = time.perf_counter()
    document = reference_document(graph, *masks, slug=slug)
    t1 = time.perf_counter()
    text = json.dumps(document).encode()
    t2 = time.perf_counter()
    compressed = gzip.compress(text, compresslevel=GZIP_LEVEL)
    t3 = time.perf_counter()
    timed.json_bytes, timed.gzip_bytes = len(text), len(compressed)
    for name, seconds in (("build+dump", t1 - t0), ("json.dumps", t2 - t1), ("gzip", t3 - t2)):
        timed.stages.setdefault(name, []).append(seconds)


def run_ours(graph: Graph, masks: tuple[torch.Tensor, ...], metadata: dict, timed: Timed) -> None:
    t0 = time.perf_counter()
    text = build_graph_json(graph, *masks, metadata=metadata)
    t1 = time.perf_counter()
    compressed = gzip_compress(text, level=GZIP_LEVEL)
    t2 = time.perf_counter()
    timed.json_bytes, timed.gzip_bytes = len(text), len(compressed)
    for name, seconds in (("build_graph_json", t1 - t0), ("gzip_compress", t2 - t1)):
        timed.stages.setdefault(name, []).append(seconds)


def measure(run: Callable[[Timed], None], reps: int) -> Timed:
    """One warm-up (imports, first-touch pages), then `reps` timed runs with their peak RSS."""
    run(Timed())
    timed = Timed()
    for _ in range(reps):
        with PeakRss() as rss:
            t0 = time.perf_counter()
            run(timed)
            timed.seconds.append(time.perf_counter() - t0)
        timed.peak_extra_bytes.append(rss.extra)
    return timed


def ours_tracemalloc_peak(graph: Graph, masks: tuple[torch.Tensor, ...], metadata: dict) -> int:
    """Python-heap view (numpy included, torch excluded) of ours, as a cross-check of RSS."""
    gc.collect()
    tracemalloc.start()
    try:
        gzip_compress(build_graph_json(graph, *masks, metadata=metadata), level=GZIP_LEVEL)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_graph(name: str, spec: GraphSpec, reps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    graph = make_graph(spec)
    build_s = time.perf_counter() - t0
    with PeakRss() as rss:
        t0 = time.perf_counter()
        masks = tuple(t.cpu() for t in prune_graph(graph, NODE_THRESHOLD, EDGE_THRESHOLD))
        prune_s = time.perf_counter() - t0
    node_mask, edge_mask, _ = masks
    n_nodes = graph.adjacency_matrix.shape[0]
    kept_links = int((edge_mask & node_mask[None, :] & node_mask[:, None]).sum())
    print(
        f"[{name}] N={n_nodes} nodes ({spec.n_features} features, {spec.n_pos} tokens, "
        f"{spec.n_layers} layers), built in {build_s:.1f}s; prune_graph (CPU, unchanged) "
        f"{prune_s:.1f}s, peak extra RSS {rss.extra / 2**30:.2f} GiB; "
        f"kept {int(node_mask.sum())} nodes, {kept_links} links",
        flush=True,
    )
    slug = f"bench-{name}"
    metadata = realistic_metadata(graph, slug=slug, node_threshold=NODE_THRESHOLD)
    reference = measure(lambda t: run_reference(graph, masks, slug, t), reps)
    ours = measure(lambda t: run_ours(graph, masks, metadata, t), reps)
    traced = ours_tracemalloc_peak(graph, masks, metadata)
    print(f"[{name}] reference stages: {reference.stage_medians()}", flush=True)
    print(f"[{name}] ours stages: {ours.stage_medians()}", flush=True)
    return {
        "name": name,
        "prune_s": prune_s,
        "reference": reference,
        "ours": ours,
        "ours_tracemalloc": traced,
        "links": kept_links,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'graph':<8} {'path':<10} {'links':>9} {'median s':>9} {'JSON MB':>9} {'gzip MB':>8} "
        f"{'peak extra MB':>14} {'extra/JSON':>10} {'speedup':>8} {'prune s':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        speedup = f"{r['reference'].median() / r['ours'].median():.1f}x"
        prune = f"{r['prune_s']:.1f}"
        for path in ("reference", "ours"):
            t: Timed = r[path]
            peak = max(t.peak_extra_bytes)
            print(
                f"{r['name']:<8} {path:<10} {r['links']:>9} {t.median():>9.3f} "
                f"{t.json_bytes / 1e6:>9.1f} {t.gzip_bytes / 1e6:>8.1f} {peak / 1e6:>14.1f} "
                f"{peak / t.json_bytes:>10.2f} "
                f"{speedup if path == 'ours' else '':>8} "
                f"{prune if path == 'reference' else '':>8}"
            )
    print(
        "times: median of repetitions, end to end (document + JSON bytes + gzip level 3); "
        "peak extra: max over repetitions of peak RSS above the pre-call level, result bytes "
        "included; ours' tracemalloc peak (Python heap + numpy, no torch): "
        + ", ".join(f"{r['name']} {r['ours_tracemalloc'] / 1e6:.1f} MB" for r in results)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small graphs, a smoke run")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per path")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.quick:
        graphs = [
            ("tiny", GraphSpec(n_pos=8, n_layers=4, n_features=200, density=0.3, tail=1.0)),
            ("small", GraphSpec(n_pos=16, n_layers=6, n_features=1500, density=0.3, tail=1.0)),
        ]
        reps = args.reps or 2
    else:
        graphs = [
            # ~200k links after real pruning at node 0.8 / edge 0.98
            ("medium", GraphSpec(n_features=10_000, density=0.13, tail=1.0)),
            # denser adjacency: ~1.4M links, a ~100 MB JSON, still through real prune_graph
            ("large", GraphSpec(n_features=10_000, density=0.65, tail=1.0, seed=1)),
        ]
        reps = args.reps or 3
    print(
        f"CPU threads: torch {torch.get_num_threads()}, os {os.cpu_count()}; "
        f"{reps} timed repetitions per path after one warm-up; machine shared, timings noisy; "
        f"reference gzip: stdlib gzip.compress, ours: gzip_compress on {DEFLATE_BACKEND}",
        flush=True,
    )
    results = []
    for name, spec in graphs:
        results.append(bench_graph(name, spec, reps))
        gc.collect()
    print_table(results)
    largest = results[-1]
    ours: Timed = largest["ours"]
    speedup = largest["reference"].median() / ours.median()
    memory_ratio = max(ours.peak_extra_bytes) / ours.json_bytes
    print(f"speedup={speedup:.2f} extra_memory_ratio={memory_ratio:.2f}")


if __name__ == "__main__":
    main()
