"""Half-open connections against worker designs: the evidence behind `serving/worker.py`.

For each configuration the real server starts on the demo model (loopback only), answers one
warm-up graph, then:
five rounds of: 10 x GET /health and one graph with nobody else connected (baseline), then
64 half-open connections (32 heads without their blank line, 32 authenticated POSTs with half
their body) held while 10 x /health and one graph run. Rounds alternate so that noise from other
processes on the machine hits both sides alike; medians are compared in the same server process.
A /health that does not answer within 10 s marks the server frozen (the rest is skipped).

Configurations: stock gunicorn `gthread` with 4 threads (the old default), with 64 threads
against 64 and against 32 attackers (threads only help while they outnumber the attackers), and
`BufferedThreadWorker` with 4 threads (the product's worker).

Run: `.venv/bin/python -m bench.half_open` (about 4 minutes on 2 cores).
Last line: `buffered_health_p99_ms=<x> buffered_graph_ratio=<y> gthread4_frozen=<0|1> ...`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import requests

from bench.live import HalfOpenSwarm, Server, demo_graph, percentile, started_server

GRAPH = demo_graph("half-open")
HEALTH_TIMEOUT_S = 10.0


def health_ms(server: Server, n: int) -> list[float] | None:
    """n sequential /health latencies in ms, or None as soon as one does not answer."""
    out = []
    for _ in range(n):
        started = time.perf_counter()
        try:
            ok = requests.get(f"{server.base}/health", timeout=HEALTH_TIMEOUT_S).ok
        except requests.RequestException:
            return None
        if not ok:
            return None
        out.append((time.perf_counter() - started) * 1000)
    return out


def graph_ms(server: Server) -> float:
    started = time.perf_counter()
    res = requests.post(
        f"{server.base}/generate-graph",
        json=GRAPH,
        headers={"x-secret-key": server.secret},
        timeout=120,
    )
    res.raise_for_status()
    return (time.perf_counter() - started) * 1000


def measure(worker: str | None, threads: int, attackers: int, rounds: int) -> dict[str, float]:
    """Alternate rounds without and with the swarm, so machine noise hits both sides alike."""
    base_health: list[float] = []
    base_graph: list[float] = []
    health: list[float] = []
    graph: list[float] = []
    with started_server({"THREADS": str(threads)}, worker_class=worker) as server:
        graph_ms(server)  # warm-up: the first attribute() in a process is ~2x slower
        for _ in range(rounds):
            base_health += health_ms(server, 10) or []
            base_graph.append(graph_ms(server))
            swarm = HalfOpenSwarm(server, attackers)
            swarm.open_all()
            try:
                time.sleep(0.5)  # let the server take every connection in
                answered = health_ms(server, 10)
                if answered is None:
                    return {
                        "base_health_p50": statistics.median(base_health),
                        "base_graph_ms": statistics.median(base_graph),
                        "frozen": 1,
                    }
                health += answered
                graph.append(graph_ms(server))
            finally:
                swarm.close_all()
    return {
        "base_health_p50": statistics.median(base_health),
        "base_graph_ms": statistics.median(base_graph),
        "frozen": 0,
        "health_p50": statistics.median(health),
        "health_p99": percentile(health, 0.99),
        "graph_ms": statistics.median(graph),
        "graph_ratio": statistics.median(graph) / statistics.median(base_graph),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attackers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.attackers
    configs = [
        ("gthread4", "gthread", 4, n),
        ("gthread64", "gthread", 64, n),
        ("gthread64_half", "gthread", 64, n // 2),
        ("buffered", None, 4, n),
    ]
    results = {}
    for name, worker, threads, attackers in configs:
        res = measure(worker, threads, attackers, args.rounds)
        results[name] = res
        label = f"{worker or 'BufferedThreadWorker'} threads={threads}"
        if res["frozen"]:
            print(
                f"{label:32} baseline /health p50 {res['base_health_p50']:.1f} ms, graph "
                f"{res['base_graph_ms']:.0f} ms | {attackers} half-open: /health FROZEN "
                f"(no answer in {HEALTH_TIMEOUT_S:.0f} s)",
                flush=True,
            )
        else:
            print(
                f"{label:32} baseline /health p50 {res['base_health_p50']:.1f} ms, graph "
                f"{res['base_graph_ms']:.0f} ms | {attackers} half-open: /health p50 "
                f"{res['health_p50']:.1f} ms p99 {res['health_p99']:.1f} ms, graph "
                f"{res['graph_ms']:.0f} ms (x{res['graph_ratio']:.2f})",
                flush=True,
            )
    buffered = results["buffered"]
    print(
        f"buffered_health_p99_ms={buffered.get('health_p99', -1):.1f} "
        f"buffered_graph_ratio={buffered.get('graph_ratio', -1):.2f} "
        + " ".join(f"{name}_frozen={int(bool(r['frozen']))}" for name, r in results.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
