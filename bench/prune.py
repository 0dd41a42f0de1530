"""Prune: neuronpedia_graph.prune against circuit-tracer's prune_graph, time, memory, max size.

Run: `make bench-prune` (`.venv/bin/python -m bench.prune`; under 10 minutes here, with child
processes of up to 20 GiB at the end) or `--quick` (a couple of minutes, 2 GiB search).

1. Time: both prune the same graphs (testkit/synthetic.py: small, medium and large) in this
   process, alternately, after one warm-up each; the median of the runs is reported (`--reps`,
   five times as many for the small graph), and the results are compared (node and edge masks
   equal, cumulative scores within 1e-6).
2. Memory: each implementation prunes each graph once more in a fresh child process, which
   reports its peak resident set size above the level just before the call (the kernel's
   high-water mark, reset through /proc/self/clear_refs).
3. Largest graph within `--limit-gib`: graphs of growing token counts (the large graph's
   shape, features growing with the tokens) are built and pruned in a child process whose
   resident size is watched every few milliseconds; a size fails when its child is killed
   above the limit or its own high-water mark ends above it. The first size tried is the one
   a memory model predicts (fitted to two probe runs measured the same way, at 5.9k and 11.7k
   nodes), then the search steps away by about 2% of the tokens, doubling, until a passing
   and a failing size bracket the limit, and bisects them to within 2%. It runs only while
   the machine has the limit plus 1 GiB available, and starts no trial that would end after
   `--budget-s`; when it cannot run it prints the model's sizes and the command for later.

Children are forked from a server process that imported torch and circuit-tracer once, so
they share nothing with this process's threads or heap and start in a fraction of a second.
Adjacency pages are made resident before measuring, as in a real graph (numpy would leave the
pages of all-zero rows unmapped, which flatters both implementations).

The last line is machine-readable: `speedup=<median circuit-tracer / median ours, medium graph>
memory_ratio=<ours / circuit-tracer peak extra, medium graph> identical=<all graphs agree>
max_nodes_ours=<n> max_nodes_theirs=<n>`.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from bench.memory import PeakRss, in_child, settle, status_kb
from testkit.synthetic import GraphSpec, make_graph

NODE_THRESHOLD = 0.8
EDGE_THRESHOLD = 0.98
GIB = 1 << 30
GRAPHS = {
    "small": GraphSpec(n_pos=16, n_layers=6, n_features=1500, density=0.3, tail=1.0),
    "medium": GraphSpec(n_features=10_000, density=0.13, tail=1.0),
    "large": GraphSpec(n_features=10_000, density=0.65, tail=1.0, seed=1),
}
# The memory search scales the large graph (the denser one) with the tokens.
SEARCH_SPEC = GRAPHS["large"]
FEATURES_PER_TOKEN = SEARCH_SPEC.n_features / SEARCH_SPEC.n_pos
QUICK_GRAPHS = {
    "small": GRAPHS["small"],
    # the search family at 16 tokens (2,942 nodes): large enough for the lean route
    "quick": replace(SEARCH_SPEC, n_pos=16, n_features=round(FEATURES_PER_TOKEN * 16)),
}
IMPLEMENTATIONS = ("circuit-tracer", "ours")
# Children fork from a server that imported these once (a fresh import costs seconds here).
PRELOAD = ["torch", "numpy", "circuit_tracer.graph", "neuronpedia_graph.prune", "testkit.synthetic"]


def prune_with(implementation: str, graph: Any) -> tuple[torch.Tensor, ...]:
    if implementation == "ours":
        from neuronpedia_graph.prune import prune_graph
    else:
        from circuit_tracer.graph import prune_graph
    return tuple(prune_graph(graph, NODE_THRESHOLD, EDGE_THRESHOLD))


def resident_graph(spec: GraphSpec) -> Any:
    """make_graph's graph with every adjacency page resident, as in a real graph (attribution
    writes the whole matrix); numpy leaves the all-zero pages of its calloc'ed matrix unmapped,
    which would flatter both implementations' memory."""
    graph = make_graph(spec)
    graph.adjacency_matrix.mul_(1.0)
    return graph


def child_context() -> Any:
    """Fresh processes (nothing inherited from this one's threads or heap), started quickly."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def spec_for_tokens(n_pos: int) -> GraphSpec:
    return replace(SEARCH_SPEC, n_pos=n_pos, n_features=round(FEATURES_PER_TOKEN * n_pos))


def node_count(spec: GraphSpec) -> int:
    return spec.n_features + spec.n_layers * spec.n_pos + spec.n_pos + spec.n_logits


# ---------------------------------------------------------------- 1. time, same process
@dataclass
class Timing:
    seconds: dict[str, list[float]] = field(default_factory=dict)
    identical: bool = False
    n_nodes: int = 0
    kept_nodes: int = 0
    kept_edges: int = 0

    def median(self, implementation: str) -> float:
        return statistics.median(self.seconds[implementation])


def same_result(ours: tuple[torch.Tensor, ...], theirs: tuple[torch.Tensor, ...]) -> bool:
    return (
        torch.equal(ours[0], theirs[0])
        and torch.equal(ours[1], theirs[1])
        and bool(torch.allclose(ours[2], theirs[2], rtol=0, atol=1e-6, equal_nan=True))
    )


def time_graph(name: str, spec: GraphSpec, reps: int) -> Timing:
    graph = resident_graph(spec)
    timing = Timing(seconds={i: [] for i in IMPLEMENTATIONS}, n_nodes=node_count(spec))
    results = {}
    for implementation in IMPLEMENTATIONS:  # warm-up: imports, first-touch pages
        results[implementation] = prune_with(implementation, graph)
    for _ in range(reps):
        for implementation in IMPLEMENTATIONS:
            settle()
            start = time.perf_counter()
            results[implementation] = prune_with(implementation, graph)
            timing.seconds[implementation].append(time.perf_counter() - start)
    theirs = results["circuit-tracer"]
    timing.identical = same_result(results["ours"], theirs)
    timing.kept_nodes = int(theirs[0].sum())
    timing.kept_edges = int((theirs[1] & theirs[0][:, None] & theirs[0][None, :]).sum())
    print(
        f"[{name}] N={timing.n_nodes}: circuit-tracer {timing.median('circuit-tracer'):.2f}s, "
        f"ours {timing.median('ours'):.2f}s (medians of {reps}); identical={timing.identical}",
        flush=True,
    )
    return timing


# ---------------------------------------------------------------- 2. memory, child process
def _peak_child(spec: GraphSpec, implementation: str) -> tuple[int, int]:
    graph = resident_graph(spec)
    prune_with(implementation, make_graph(replace(spec, n_pos=2, n_features=4)))  # imports
    with PeakRss() as rss:
        prune_with(implementation, graph)
    return rss.extra, rss.start


def peak_extra(spec: GraphSpec, implementation: str) -> tuple[int, int]:
    """(peak resident bytes above the level before the call, that level), in a fresh child."""
    return in_child(child_context(), _peak_child, spec, implementation)


# ---------------------------------------------------------------- 3. largest graph within a limit
@dataclass
class Trial:
    n_pos: int
    n_nodes: int
    passed: bool
    peak: int
    seconds: float
    note: str = ""


def _limit_child(spec: GraphSpec, implementation: str, connection: Any) -> None:
    graph = resident_graph(spec)
    prune_with(implementation, graph)
    connection.send(status_kb("self", "VmHWM") * 1024)


def run_limited(implementation: str, n_pos: int, limit: int) -> Trial:
    """Build and prune in a child; kill it as soon as its resident size passes `limit`."""
    spec = spec_for_tokens(n_pos)
    context = child_context()
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_limit_child, args=(spec, implementation, send))
    start = time.perf_counter()
    child.start()
    send.close()
    watched = {"peak": 0, "killed": False}

    def watch() -> None:
        while child.is_alive():
            try:
                rss = status_kb(child.pid, "VmRSS") * 1024
            except (OSError, KeyError):
                return
            watched["peak"] = max(watched["peak"], rss)
            if rss > limit:
                watched["killed"] = True
                child.kill()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    peak = None
    with contextlib.suppress(EOFError):  # the child died without reporting
        peak = receive.recv()
    child.join()
    watcher.join()
    seconds = time.perf_counter() - start
    if watched["killed"]:
        return Trial(n_pos, node_count(spec), False, watched["peak"], seconds, "killed at limit")
    if peak is None:
        return Trial(n_pos, node_count(spec), False, watched["peak"], seconds, "child died")
    return Trial(n_pos, node_count(spec), peak <= limit, peak, seconds)


def predicted_tokens(per_cell: float, base: float, limit: int) -> int:
    """Tokens of the largest graph the memory model (base + per_cell * N²) fits in `limit`."""
    return tokens_for_nodes(math.sqrt(max(limit - base, 0) / per_cell))


def search(
    implementation: str,
    start: int,
    limit: int,
    deadline: float,
    seconds_per_cell: float,
    base: float,
) -> list[Trial]:
    """Largest passing size, from `start` tokens. After a pass, aim just under the size where
    that trial's peak, scaled with N² above `base`, would reach the limit (or 2% further once
    that close); after a fail, step down 2% (doubling); once a pass and a fail bracket the
    limit, bisect until they are within 2% of the tokens. A trial starts only if the machine
    has the limit plus 1 GiB available and, judged by the last pass, it ends before
    `deadline`."""
    passed, failed = 0, math.inf
    n_pos, down = start, max(1, round(start * 0.02))
    trials: list[Trial] = []
    while True:
        expected = seconds_per_cell * node_count(spec_for_tokens(n_pos)) ** 2
        if time.monotonic() + expected > deadline:
            print(f"  {implementation}: the next trial would end after the time budget")
            return trials
        if available_bytes() < limit + GIB:
            print(f"  {implementation}: less than the limit + 1 GiB available now; stopped")
            return trials
        trial = run_limited(implementation, n_pos, limit)
        trials.append(trial)
        report(implementation, trial)
        if trial.passed:  # killed trials end early: only passes tell the duration
            seconds_per_cell = trial.seconds / trial.n_nodes**2
            passed = max(passed, n_pos)
        else:
            failed = min(failed, n_pos)
        close = max(1, round(passed * 0.02))
        if failed - passed <= close:
            return trials
        if failed < math.inf and passed:
            n_pos = (passed + int(failed)) // 2
        elif failed < math.inf:
            n_pos, down = max(2, int(failed) - down), down * 2
        else:
            scale = math.sqrt(max(limit - base, 1) / max(trial.peak - base, 1))
            aim = tokens_for_nodes(0.99 * trial.n_nodes * scale)
            n_pos = aim if aim >= passed + close else passed + close


def tokens_for_nodes(n_nodes: float) -> int:
    """Tokens of the largest search graph with at most `n_nodes` nodes."""
    per_token = FEATURES_PER_TOKEN + SEARCH_SPEC.n_layers + 1  # features, errors, the token
    n_pos = max(2, int((n_nodes - SEARCH_SPEC.n_logits) / per_token))
    while n_pos > 2 and node_count(spec_for_tokens(n_pos)) > n_nodes:
        n_pos -= 1
    return n_pos


def report(implementation: str, trial: Trial) -> None:
    verdict = "pass" if trial.passed else f"FAIL ({trial.note or 'peak above limit'})"
    print(
        f"  {implementation:<14} tokens={trial.n_pos:<4} N={trial.n_nodes:<6} "
        f"peak RSS {trial.peak / GIB:5.2f} GiB  {trial.seconds:5.0f}s  {verdict}",
        flush=True,
    )


def largest_passing(trials: list[Trial]) -> int:
    passing = [t.n_nodes for t in trials if t.passed]
    return max(passing) if passing else 0


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small graphs, 2 GiB search")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per implementation")
    parser.add_argument("--limit-gib", type=float, default=None, help="memory search limit")
    parser.add_argument("--budget-s", type=float, default=570, help="stop searching after")
    args = parser.parse_args(argv)
    began = time.monotonic()
    graphs = QUICK_GRAPHS if args.quick else GRAPHS
    limit_gib = args.limit_gib or (2.0 if args.quick else 20.0)
    limit = int(limit_gib * GIB)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"thresholds node {NODE_THRESHOLD} edge {EDGE_THRESHOLD}",
        flush=True,
    )

    # Small graphs take milliseconds: more runs for a stable median.
    timings = {
        name: time_graph(name, spec, args.reps * (1 if node_count(spec) > 5000 else 5))
        for name, spec in graphs.items()
    }
    peaks = {}
    for name, spec in graphs.items():
        for implementation in IMPLEMENTATIONS:
            peaks[name, implementation] = peak_extra(spec, implementation)
            settle()

    header = (
        f"{'graph':<7} {'N':>6} {'kept nodes':>10} {'kept edges':>10} {'implementation':<15}"
        f"{'median s':>9} {'peak extra MiB':>15} {'x adjacency':>12} {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    for name in graphs:
        timing = timings[name]
        adjacency = timing.n_nodes**2 * 4
        for implementation in IMPLEMENTATIONS:
            extra = peaks[name, implementation][0]
            speedup = timing.median("circuit-tracer") / timing.median(implementation)
            print(
                f"{name:<7} {timing.n_nodes:>6} {timing.kept_nodes:>10} {timing.kept_edges:>10} "
                f"{implementation:<15}{timing.median(implementation):>9.2f} "
                f"{extra / 2**20:>15.0f} {extra / adjacency:>12.2f} "
                f"{(f'{speedup:.1f}x' if implementation == 'ours' else ''):>8}"
            )
    reference = "medium" if "medium" in graphs else list(graphs)[-1]
    timing = timings[reference]
    speedup = timing.median("circuit-tracer") / timing.median("ours")
    memory_ratio = peaks[reference, "ours"][0] / peaks[reference, "circuit-tracer"][0]
    identical = all(t.identical for t in timings.values())

    # Memory model per implementation, total = a + b·N², from two probe runs measured like
    # the search's trials (a child's whole high-water mark, graph building included).
    probe_tokens = (16, 32) if args.quick else (32, 64)
    predicted, seconds_per_cell, bases = {}, {}, {}
    for implementation in IMPLEMENTATIONS:
        low, high = (run_limited(implementation, t, 1 << 62) for t in probe_tokens)
        seconds_per_cell[implementation] = high.seconds / high.n_nodes**2
        per_cell = (high.peak - low.peak) / (high.n_nodes**2 - low.n_nodes**2)
        base = high.peak - per_cell * high.n_nodes**2
        bases[implementation] = base
        predicted[implementation] = predicted_tokens(per_cell, base, limit)
        print(
            f"memory model {implementation}: {base / GIB:.2f} GiB + {per_cell:.2f} B x N^2 "
            f"(probes N={low.n_nodes}: {low.peak / GIB:.2f} GiB, "
            f"N={high.n_nodes}: {high.peak / GIB:.2f} GiB)",
            flush=True,
        )
    predicted_nodes = {i: node_count(spec_for_tokens(t)) for i, t in predicted.items()}
    print(
        f"memory model at {limit_gib:g} GiB predicts: "
        + ", ".join(f"{i} {t} tokens, N={predicted_nodes[i]}" for i, t in predicted.items()),
        flush=True,
    )

    max_nodes = dict(predicted_nodes)
    available = available_bytes()
    if available < limit + GIB:
        print(
            f"largest-graph search skipped: {available / GIB:.1f} GiB available, it needs "
            f"{limit_gib + 1:g}; the max_nodes below are the model's prediction. Run later: "
            f"{sys.executable} -m bench.prune --limit-gib {limit_gib:g}"
        )
    else:
        print(f"largest graph within {limit_gib:g} GiB (tokens step ~2%):", flush=True)
        # Each gets a share of the time left in proportion to its expected trial length.
        expected = {i: seconds_per_cell[i] * predicted_nodes[i] ** 2 for i in IMPLEMENTATIONS}
        end = began + args.budget_s
        order = list(reversed(IMPLEMENTATIONS))  # ours first: its trials are longer
        for position, implementation in enumerate(order):
            share = expected[implementation] / sum(expected[i] for i in order[position:])
            deadline = time.monotonic() + share * (end - time.monotonic())
            trials = search(
                implementation,
                predicted[implementation],
                limit,
                deadline,
                seconds_per_cell[implementation],
                bases[implementation],
            )
            if any(t.passed for t in trials):
                max_nodes[implementation] = largest_passing(trials)
            if not any(t.passed for t in trials) or all(t.passed for t in trials):
                kind = "largest pass" if any(t.passed for t in trials) else "model's prediction"
                print(f"  {implementation}: no pass/fail bracket; max_nodes is the {kind}")
    print(f"total {time.monotonic() - began:.0f}s")
    print(
        f"speedup={speedup:.2f} memory_ratio={memory_ratio:.3f} "
        f"identical={str(identical).lower()} max_nodes_ours={max_nodes['ours']} "
        f"max_nodes_theirs={max_nodes['circuit-tracer']}"
    )


if __name__ == "__main__":
    main()
