"""Worker memory when an upload target answers with a huge body (issue 11, finding 8).

Starts the real server (`python -m neuronpedia_graph demo`, gunicorn), then uploads the same
graph three times: to a target that answers an empty 200 (the baseline), and to targets that
answer 403 and 200 with a `--reply-mb` body. For each, the worker's peak RSS is reset right
before the request (`/proc/PID/clear_refs` = 5, Linux) and read right after (VmHWM), so the
number is the request's own peak above the RSS it started from. Only HTTP is used, so the same
script measures any version of the server (point PYTHONPATH at another checkout to compare).

Run: `.venv/bin/python -m bench.upload_reply_rss [--reply-mb 200]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import psutil
import requests

from bench.live import demo_graph, started_server
from bench.memory import status_kb
from tests.fault_targets import big_reply_target, flaky_target

BODY = demo_graph("rss")


def peak_growth_mb(pid: int, send) -> tuple[float, int]:
    """(peak RSS above the starting RSS during send(), in MB; the HTTP status)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
    before = status_kb(pid, "VmRSS")
    status = send()
    return (status_kb(pid, "VmHWM") - before) / 1024, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reply-mb", type=int, default=200)
    args = parser.parse_args()
    size = args.reply_mb * 1000 * 1000

    settings = {"UPLOAD_ALLOWED_HOSTS": "127.0.0.1", "UPLOAD_RETRIES": "0"}
    with started_server(settings, pythonpath=None) as server:
        base = server.base
        headers = {"x-secret-key": server.secret}
        (worker,) = psutil.Process(server.proc.pid).children()

        def upload(url: str) -> int:
            body = {**BODY, "signed_url": url}
            return requests.post(
                f"{base}/generate-graph", json=body, headers=headers, timeout=600
            ).status_code

        with flaky_target(fail_times=0) as target:
            for _ in range(2):  # warm-up: first graph, first upload
                upload(target.url)
            normal, normal_status = peak_growth_mb(worker.pid, lambda: upload(target.url))
        results = {}
        for status in (403, 200):
            with big_reply_target(size, status) as target:
                results[status] = peak_growth_mb(worker.pid, lambda t=target: upload(t.url))
        rss_end = status_kb(worker.pid, "VmRSS") / 1024

    print(f"worker peak RSS growth per upload request (reply body {args.reply_mb} MB):")
    print(f"  {'empty 200 reply':24} {normal:7.1f} MB  (HTTP {normal_status})")
    for status, (growth, code) in results.items():
        label = f"{status} + {args.reply_mb} MB reply"
        print(f"  {label:24} {growth:7.1f} MB  (HTTP {code})")
    print(
        f"reply_mb={args.reply_mb} baseline_growth_mb={normal:.1f} "
        f"huge403_growth_mb={results[403][0]:.1f} huge200_growth_mb={results[200][0]:.1f} "
        f"worker_rss_end_mb={rss_end:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
