"""/health latency while every upload slot hangs on a slow target (issue 11, finding 2).

Starts the real server (`python -m neuronpedia_graph demo`, gunicorn, default THREADS and
UPLOAD_WORKERS), measures /health and /check-busy with nothing running (the baseline), then
starts `--uploads` graph uploads to a target that holds every PUT, keeps a client firing more
uploads (which a fixed server refuses with 503), and measures again. Then the target answers and
each held upload's client must get its 200. Only HTTP is used, so any version of the server can
be measured (point PYTHONPATH at another checkout). A /health that does not answer within
`--timeout` seconds counts as a timeout; after three the run stops measuring.

Run: `.venv/bin/python -m bench.health_during_uploads [--uploads 4] [--probes 40]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import requests

from bench.live import demo_graph, percentile, started_server
from tests.fault_targets import gated_target

BODY = demo_graph("held")


def probe(base: str, count: int, timeout: float) -> tuple[list[float], int]:
    """Latencies (ms) of alternating /health and /check-busy calls, and how many timed out."""
    latencies: list[float] = []
    timeouts = 0
    for i in range(count):
        path = "/health" if i % 2 == 0 else "/check-busy"
        started = time.perf_counter()
        try:
            requests.get(f"{base}{path}", timeout=timeout).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        except requests.RequestException:
            timeouts += 1
            if timeouts >= 3:
                break
    return latencies, timeouts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uploads", type=int, default=4, help="uploads held at the target")
    parser.add_argument("--probes", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()

    statuses: dict[int | str, int] = {}
    held_ok = 0
    settings = {"UPLOAD_ALLOWED_HOSTS": "127.0.0.1", "UPLOAD_READ_TIMEOUT": "600"}
    with started_server(settings, pythonpath=None) as server:
        base = server.base
        headers = {"x-secret-key": server.secret}
        requests.post(f"{base}/generate-graph", json=BODY, headers=headers, timeout=300)  # warm
        idle, idle_timeouts = probe(base, args.probes, args.timeout)

        with gated_target() as target:
            held: list[requests.Response] = []

            def upload(record: list) -> None:
                body = {**BODY, "signed_url": target.url}
                try:
                    record.append(
                        requests.post(
                            f"{base}/generate-graph", json=body, headers=headers, timeout=900
                        )
                    )
                except requests.RequestException as exc:
                    record.append(exc)

            threads = []
            for _ in range(args.uploads):
                thread = threading.Thread(target=upload, args=(held,), daemon=True)
                thread.start()
                threads.append(thread)
                if not target.wait_for_arrival(300):
                    raise RuntimeError("an upload never reached the target")

            stop = threading.Event()
            extra: list = []

            def keep_uploading() -> None:
                while not stop.is_set():
                    upload(extra)

            pressure = threading.Thread(target=keep_uploading, daemon=True)
            pressure.start()
            loaded, loaded_timeouts = probe(base, args.probes, args.timeout)
            stop.set()
            target.release(200)
            for thread in threads:
                thread.join(120)
            pressure.join(120)
        for res in held:
            held_ok += int(getattr(res, "status_code", None) == 200)
        for res in extra:
            key = getattr(res, "status_code", type(res).__name__)
            statuses[key] = statuses.get(key, 0) + 1

    print(f"{args.uploads} uploads held at the target; more uploads fired meanwhile: {statuses}")
    print(f"held uploads answered 200 after the target answered: {held_ok}/{args.uploads}")
    for name, values, timeouts in (
        ("idle", idle, idle_timeouts),
        ("held", loaded, loaded_timeouts),
    ):
        print(
            f"  {name:5} /health+/check-busy: n={len(values)} p50={percentile(values, 0.5):.1f} ms "
            f"p99={percentile(values, 0.99):.1f} ms max={max(values, default=float('nan')):.1f} ms "
            f"timeouts(>{args.timeout:g}s)={timeouts}"
        )
    ratio = statistics.median(loaded) / statistics.median(idle) if loaded and idle else float("nan")
    print(
        f"held_p99_ms={percentile(loaded, 0.99):.1f} idle_p99_ms={percentile(idle, 0.99):.1f} "
        f"p50_ratio={ratio:.2f} timeouts={loaded_timeouts} held_ok={held_ok}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
