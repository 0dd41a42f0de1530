"""Graph scores: circuit-tracer's compute_graph_scores against ours, derived from the prune.

Run: `make bench-scores` (`.venv/bin/python bench/scores.py`; about two minutes here, with
child processes of a few GiB) or `--quick` (seconds, a 2.9k-node graph).

Every graph document carries `metadata.scores`, circuit-tracer's `compute_graph_scores` of the
unpruned graph. That function normalizes the whole adjacency into a dense copy and runs the
node-influence series on it, which the prune has just done; `neuronpedia_graph.prune.
prune_and_score` derives the scores from the prune's own influence instead. This measures, on
the prune benchmark's medium graph (testkit/synthetic.py, 11,738 nodes):

1. Time, in this process, alternately after one warm-up each, medians of `--reps`:
   compute_graph_scores alone (what scoring would add to a prune with the library call), our
   prune alone, and our prune with the scores (the difference is what scoring costs us).
2. Peak memory, each in a fresh child process: the resident high-water mark above the level
   before the call (see bench/prune.py), for the same three calls.
3. Equality: our scores against compute_graph_scores, exactly.

The last line is machine-readable: `n_nodes=<N> library_s=<compute_graph_scores, median s>
library_peak_mib=<its peak extra MiB> ours_extra_s=<prune_and_score - prune_graph, s>
ours_extra_peak_mib=<prune_and_score - prune_graph peak extra, MiB> identical=<true|false>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `bench` and the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.prune import (
    GRAPHS,
    QUICK_GRAPHS,
    child_context,
    node_count,
    proc_status_bytes,
    resident_graph,
    settle,
)
from testkit.synthetic import GraphSpec, make_graph

NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98
MIB = 1 << 20
CALLS = ("library scores", "our prune", "our prune + scores")


def call(name: str, graph: Any) -> tuple[float, float] | None:
    """Run one of CALLS; the scores where it computes them."""
    if name == "library scores":
        from circuit_tracer.graph import compute_graph_scores

        return compute_graph_scores(graph)
    from neuronpedia_graph.prune import prune_and_score, prune_graph

    if name == "our prune":
        prune_graph(graph, NODE_THRESHOLD, EDGE_THRESHOLD)
        return None
    return tuple(prune_and_score(graph, NODE_THRESHOLD, EDGE_THRESHOLD)[1])


def _peak_child(spec: GraphSpec, name: str, connection: Any) -> None:
    graph = resident_graph(spec)
    call(name, make_graph(replace(spec, n_pos=2, n_features=4)))  # imports, first calls
    settle()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = proc_status_bytes("VmRSS")
    call(name, graph)
    connection.send(proc_status_bytes("VmHWM") - before)


def peak_extra(spec: GraphSpec, name: str) -> int:
    """Peak resident bytes above the level before the call, in a fresh child process."""
    context = child_context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_peak_child, args=(spec, name, send))
    child.start()
    send.close()
    peak = receive.recv()
    child.join()
    return peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2.9k-node graph")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per call")
    args = parser.parse_args(argv)
    spec = QUICK_GRAPHS["quick"] if args.quick else GRAPHS["medium"]
    n_nodes = node_count(spec)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; N={n_nodes}", flush=True)

    graph = resident_graph(spec)
    results = {name: call(name, graph) for name in CALLS}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in CALLS}
    for _ in range(args.reps):
        for name in CALLS:
            settle()
            start = time.perf_counter()
            results[name] = call(name, graph)
            seconds[name].append(time.perf_counter() - start)
    identical = results["our prune + scores"] == results["library scores"]
    del graph
    settle()
    peaks = {name: peak_extra(spec, name) for name in CALLS}

    adjacency = n_nodes * n_nodes * 4
    print(f"{'call':<20} {'median s':>9} {'peak extra MiB':>15} {'x adjacency':>12}")
    for name in CALLS:
        median = statistics.median(seconds[name])
        print(
            f"{name:<20} {median:>9.2f} {peaks[name] / MIB:>15.0f} {peaks[name] / adjacency:>12.2f}"
        )
    library_s = statistics.median(seconds["library scores"])
    ours_s = statistics.median(seconds["our prune + scores"]) - statistics.median(
        seconds["our prune"]
    )
    ours_peak = peaks["our prune + scores"] - peaks["our prune"]
    print(
        f"scores: library {results['library scores']}, ours {results['our prune + scores']}; "
        f"scoring adds {ours_s:.2f}s and {ours_peak / MIB:.0f} MiB to our prune, against "
        f"{library_s:.2f}s and {peaks['library scores'] / MIB:.0f} MiB for the library call"
    )
    print(
        f"n_nodes={n_nodes} library_s={library_s:.3f} "
        f"library_peak_mib={peaks['library scores'] / MIB:.0f} ours_extra_s={ours_s:.3f} "
        f"ours_extra_peak_mib={ours_peak / MIB:.0f} identical={str(identical).lower()}"
    )


if __name__ == "__main__":
    main()
