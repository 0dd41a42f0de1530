"""Graph scores: circuit-tracer's compute_graph_scores against ours, derived from the prune.

Run: `make bench-scores` (`.venv/bin/python -m bench.scores`; about two minutes here, with
child processes of a few GiB) or `--quick` (seconds, a 2.9k-node graph).

Every graph document carries `metadata.scores`, circuit-tracer's `compute_graph_scores` of the
unpruned graph. That function normalizes the whole adjacency into a dense copy and runs the
node-influence series on it, which the prune has just done; `neuronpedia_graph.prune.
prune_and_score` derives the scores from the prune's own influence instead. This measures, on
the prune benchmark's medium graph (testkit/synthetic.py, 11,738 nodes):

1. Time, in this process, alternately after one warm-up each, medians of `--reps`:
   compute_graph_scores (what scoring costs with the library call), our scoring step alone
   (given what our prune computed; what scoring adds to every graph), and our prune itself,
   for scale.
2. Peak memory, each in a fresh child process: the resident high-water mark above the level
   before the call (see bench/prune.py); for our scoring step, the level after the prune.
3. Equality: our scores against compute_graph_scores, exactly.

The last line is machine-readable: `n_nodes=<N> library_s=<compute_graph_scores, median s>
library_peak_mib=<its peak extra MiB> ours_s=<our scoring step, median s>
ours_peak_mib=<its peak extra MiB> prune_s=<our prune, median s> identical=<true|false>`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from bench.memory import PeakRss, in_child, settle
from bench.prune import (
    GRAPHS,
    QUICK_GRAPHS,
    child_context,
    node_count,
    resident_graph,
)
from testkit.synthetic import GraphSpec, make_graph

NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98
MIB = 1 << 20
CALLS = ("library scores", "our scores", "our prune")


def call(name: str, graph: Any, pruned: Any = None) -> tuple[float, float] | None:
    """Run one of CALLS (our scores from `pruned`, our prune's intermediates); the scores
    where it computes them."""
    from neuronpedia_graph import prune

    if name == "library scores":
        from circuit_tracer.graph import compute_graph_scores

        return compute_graph_scores(graph)
    if name == "our scores":
        return tuple(prune._scores(graph, pruned))
    prune._prune(graph, NODE_THRESHOLD, EDGE_THRESHOLD)
    return None


def intermediates(graph: Any) -> Any:
    from neuronpedia_graph import prune

    return prune._prune(graph, NODE_THRESHOLD, EDGE_THRESHOLD)


def _peak_child(spec: GraphSpec, name: str) -> int:
    graph = resident_graph(spec)
    warm = make_graph(replace(spec, n_pos=2, n_features=4))
    call(name, warm, intermediates(warm))  # imports, first calls
    pruned = intermediates(graph) if name == "our scores" else None
    with PeakRss() as rss:
        call(name, graph, pruned)
    return rss.extra


def peak_extra(spec: GraphSpec, name: str) -> int:
    """Peak resident bytes above the level before the call, in a fresh child process."""
    return in_child(child_context(), _peak_child, spec, name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2.9k-node graph")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per call")
    args = parser.parse_args(argv)
    spec = QUICK_GRAPHS["quick"] if args.quick else GRAPHS["medium"]
    n_nodes = node_count(spec)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N={n_nodes}", flush=True)

    graph = resident_graph(spec)
    pruned = intermediates(graph)
    results = {name: call(name, graph, pruned) for name in CALLS}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in CALLS}
    for _ in range(args.reps):
        for name in CALLS:
            settle()
            start = time.perf_counter()
            results[name] = call(name, graph, pruned)
            seconds[name].append(time.perf_counter() - start)
    identical = results["our scores"] == results["library scores"]
    del graph, pruned
    settle()
    peaks = {name: peak_extra(spec, name) for name in CALLS}

    adjacency = n_nodes * n_nodes * 4
    medians = {name: statistics.median(seconds[name]) for name in CALLS}
    print(f"{'call':<16} {'median s':>9} {'peak extra MiB':>15} {'x adjacency':>12}")
    for name in CALLS:
        print(
            f"{name:<16} {medians[name]:>9.3f} {peaks[name] / MIB:>15.0f} "
            f"{peaks[name] / adjacency:>12.3f}"
        )
    print(
        f"scores: library {results['library scores']}, ours {results['our scores']}; "
        f"identical={identical}"
    )
    print(
        f"n_nodes={n_nodes} library_s={medians['library scores']:.3f} "
        f"library_peak_mib={peaks['library scores'] / MIB:.0f} "
        f"ours_s={medians['our scores']:.3f} ours_peak_mib={peaks['our scores'] / MIB:.0f} "
        f"prune_s={medians['our prune']:.3f} identical={str(identical).lower()}"
    )


if __name__ == "__main__":
    main()
