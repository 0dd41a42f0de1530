"""What a reload (SIGHUP to the gunicorn master) costs the running server.

Starts the real server (`python -m neuronpedia_graph demo`), measures /health with nothing
happening (the baseline), then sends `--reloads` SIGHUPs, each while a graph is running and
while a client polls /health without pause, and reports:

- health_errors: /health calls that failed or did not answer 200 during the reloads;
- health_p99_ratio: /health p99 latency during the reloads over the idle baseline;
- reload_ms_p50 / max: SIGHUP until the master logs "SIGHUP: done";
- max_workers: most worker processes seen at once (2 would mean two copies of the model);
- rss_ratio: peak resident memory of the whole process tree during the reloads over before;
- graph_ok: graphs that were running during a reload and still answered 200.

Run: `.venv/bin/python -m bench.reload [--reloads 5]`. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import requests

from bench.live import demo_graph, percentile, started_server
from bench.memory import status_kb

DONE = b"SIGHUP: done"


def tree(pid: int) -> list[int]:
    """The process and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_rss_mb(pid: int) -> float:
    total = 0
    for member in tree(pid):
        with contextlib.suppress(OSError, KeyError):
            total += status_kb(member, "VmRSS")
    return total / 1024


def health_latencies(base: str, stop: threading.Event, out: list[float], errors: list[str]):
    while not stop.is_set():
        started = time.perf_counter()
        try:
            res = requests.get(f"{base}/health", timeout=10)
            if res.status_code != 200:
                errors.append(str(res.status_code))
        except requests.RequestException as exc:
            errors.append(type(exc).__name__)
        out.append((time.perf_counter() - started) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--baseline-probes", type=int, default=50)
    args = parser.parse_args()

    with started_server(log_level="INFO") as server:
        assert server.proc is not None and server.log_path is not None
        master = server.proc.pid
        headers = {"x-secret-key": server.secret}
        requests.post(f"{server.base}/generate-graph", json=demo_graph("warm"), headers=headers)

        baseline: list[float] = []
        for _ in range(args.baseline_probes):
            started = time.perf_counter()
            requests.get(f"{server.base}/health", timeout=10)
            baseline.append((time.perf_counter() - started) * 1000)
        rss_before = tree_rss_mb(master)

        stop = threading.Event()
        during: list[float] = []
        errors: list[str] = []
        poller = threading.Thread(
            target=health_latencies, args=(server.base, stop, during, errors), daemon=True
        )
        poller.start()
        reload_ms: list[float] = []
        max_workers = 0
        peak_rss = rss_before
        graph_ok = 0
        for i in range(args.reloads):
            replies: list[int] = []
            graph = threading.Thread(
                target=lambda i=i, replies=replies: replies.append(
                    requests.post(
                        f"{server.base}/generate-graph",
                        json=demo_graph(f"reload-{i}"),
                        headers=headers,
                        timeout=300,
                    ).status_code
                )
            )
            graph.start()
            time.sleep(0.2)  # let the graph start; a benchmark, not a test: no hold needed
            before = server.log_path.read_bytes().count(DONE)
            sent = time.perf_counter()
            os.kill(master, signal.SIGHUP)
            while server.log_path.read_bytes().count(DONE) <= before:
                max_workers = max(max_workers, len(tree(master)) - 1)
                peak_rss = max(peak_rss, tree_rss_mb(master))
                if server.proc.poll() is not None:
                    raise SystemExit(f"the server exited with {server.proc.returncode}")
                time.sleep(0.01)
            reload_ms.append((time.perf_counter() - sent) * 1000)
            graph.join(300)
            graph_ok += replies == [200]
            max_workers = max(max_workers, len(tree(master)) - 1)
            peak_rss = max(peak_rss, tree_rss_mb(master))
        stop.set()
        poller.join(30)
        alive = server.proc.poll() is None

    base_p99 = percentile(baseline, 0.99)
    during_p99 = percentile(during, 0.99)
    print(f"health baseline p99 {base_p99:.1f} ms; during reloads p99 {during_p99:.1f} ms")
    print(f"reload (SIGHUP -> done) p50 {statistics.median(reload_ms):.0f} ms")
    print(f"process tree RSS before {rss_before:.0f} MB, peak during reloads {peak_rss:.0f} MB")
    print(
        f"reloads={args.reloads} alive={int(alive)} health_calls={len(during)} "
        f"health_errors={len(errors)} health_p99_ratio={during_p99 / base_p99:.2f} "
        f"reload_ms_p50={statistics.median(reload_ms):.0f} reload_ms_max={max(reload_ms):.0f} "
        f"max_workers={max_workers} rss_ratio={peak_rss / rss_before:.2f} "
        f"graph_ok={graph_ok}/{args.reloads}"
    )


if __name__ == "__main__":
    main()
