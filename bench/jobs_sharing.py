"""How synchronous graphs share the model with graph jobs: 503s and latency, before and with jobs.

One real server (the demo model under gunicorn), three phases in one run:
- alone: one web-app client sends N synchronous /generate-graph calls back to back (latency
  baseline);
- today: two such clients at once, as two web-app users would be without jobs: each 503 is
  counted and the call repeated at once until it succeeds;
- with jobs: one client sends N synchronous graphs while a submitter keeps the job queue full
  (JOB_QUEUE_SIZE jobs waiting, refilled as they finish). Counted: the client's 503s (the design
  says none: a synchronous graph waits for a running job), its latency, and the jobs finished
  meanwhile (the queue is not starved either).

Run: `make bench-jobs` or `.venv/bin/python -m bench.jobs_sharing [--graphs 10]`.
Last line: `sync_503_today= sync_503_with_jobs= sync_p50_ms_alone= sync_p50_ms_with_jobs=
jobs_done_with_sync=`.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

BODY = {
    "prompt": "The city of Paris is in",
    "model_id": "demo",
    "slug_identifier": "bench",
    "max_feature_nodes": 200,
}
QUEUE = 4


def sync_client(base: str, headers: dict, n: int) -> tuple[list[float], int]:
    """N graphs back to back; returns (latency ms of each success, 503s seen)."""
    latencies, busy = [], 0
    for _ in range(n):
        while True:
            started = time.perf_counter()
            res = requests.post(f"{base}/generate-graph", json=BODY, headers=headers, timeout=600)
            if res.status_code == 503:
                busy += 1
                continue
            res.raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            break
    return latencies, busy


def main() -> int:
    from testkit.live import start_server

    parser = argparse.ArgumentParser()
    parser.add_argument("--graphs", type=int, default=10)
    args = parser.parse_args()
    secret = secrets.token_hex(16)
    headers = {"x-secret-key": secret}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_server(
            Path(tmp),
            {"JOB_QUEUE_SIZE": str(QUEUE), "GRAPH_STORE_DIR": str(Path(tmp) / "store")},
            secret=secret,
        ) as server,
    ):
        base = server.base
        sync_client(base, headers, 2)  # warm-up
        alone, _ = sync_client(base, headers, args.graphs)

        results: list[tuple[list[float], int]] = []
        clients = [
            threading.Thread(target=lambda: results.append(sync_client(base, headers, args.graphs)))
            for _ in range(2)
        ]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        busy_today = sum(b for _, b in results)

        stop = threading.Event()
        submitted: list[str] = []

        def keep_queue_full() -> None:
            while not stop.is_set():
                res = requests.post(f"{base}/graphs", json=BODY, headers=headers, timeout=60)
                if res.status_code == 202:
                    submitted.append(res.json()["id"])
                    continue
                # Full: wait for the oldest unfinished job to change, on its event stream.
                pending = submitted[-QUEUE - 1 :]
                with requests.get(
                    f"{base}/graphs/{pending[0]}/events", headers=headers, stream=True, timeout=600
                ) as stream:
                    for line in stream.iter_lines():
                        if stop.is_set() or b'"status":"done"' in line:
                            break

        filler = threading.Thread(target=keep_queue_full, daemon=True)
        filler.start()
        while len(submitted) < QUEUE:
            time.sleep(0.05)  # a benchmark, not a test: let the queue fill
        started = time.time()
        with_jobs, busy_jobs = sync_client(base, headers, args.graphs)
        stop.set()
        listing = requests.get(f"{base}/graphs?limit=100", headers=headers, timeout=30).json()
        done_during = sum(
            1
            for j in listing["jobs"]
            if j["status"] == "done" and j["finished_at"] and j["finished_at"] >= started
        )
        for job in listing["jobs"]:
            if job["status"] in ("queued", "running"):
                requests.delete(f"{base}/graphs/{job['id']}", headers=headers, timeout=30)

    p50_alone = statistics.median(alone)
    p50_jobs = statistics.median(with_jobs)
    print(f"alone: {args.graphs} graphs, p50 {p50_alone:.0f} ms")
    print(f"today (2 clients): {busy_today} x 503 for {2 * args.graphs} graphs")
    print(
        f"with a full job queue: {busy_jobs} x 503, p50 {p50_jobs:.0f} ms "
        f"(x{p50_jobs / p50_alone:.2f} alone), max {max(with_jobs):.0f} ms; "
        f"{done_during} jobs finished meanwhile"
    )
    print(
        f"sync_503_today={busy_today} sync_503_with_jobs={busy_jobs} "
        f"sync_p50_ms_alone={p50_alone:.0f} sync_p50_ms_with_jobs={p50_jobs:.0f} "
        f"jobs_done_with_sync={done_during}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
