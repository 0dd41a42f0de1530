"""Worker memory when an upload target answers with a huge body (issue 11, finding 8).

Starts the real server (`python -m neuronpedia_graph demo`, gunicorn), then uploads the same
graph three times: to a target that answers an empty 200 (the baseline), and to targets that
answer 403 and 200 with a `--reply-mb` body. For each, the worker's peak RSS is reset right
before the request (`/proc/PID/clear_refs` = 5, Linux) and read right after (VmHWM), so the
number is the request's own peak above the RSS it started from. Only HTTP is used, so the same
script measures any version of the server (point PYTHONPATH at another checkout to compare).

Run: `.venv/bin/python bench/upload_reply_rss.py [--reply-mb 200]`.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fault_targets import big_reply_target, flaky_target

BODY = {
    "prompt": "The city of Paris is in",
    "model_id": "demo",
    "slug_identifier": "rss",
    "max_feature_nodes": 200,
}


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_growth_mb(pid: int, send) -> tuple[float, int]:
    """(peak RSS above the starting RSS during send(), in MB; the HTTP status)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
    before = _status_kb(pid, "VmRSS")
    status = send()
    return (_status_kb(pid, "VmHWM") - before) / 1024, status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reply-mb", type=int, default=200)
    args = parser.parse_args()
    size = args.reply_mb * 1000 * 1000

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    secret = secrets.token_hex(16)
    workdir = tempfile.mkdtemp(prefix="npg-rss-")
    env = {
        **os.environ,
        "SECRET": secret,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "LOG_LEVEL": "WARNING",
        "SPOOL_DIR": f"{workdir}/spool",
        "UPLOAD_ALLOWED_HOSTS": "127.0.0.1",
        "UPLOAD_RETRIES": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "neuronpedia_graph", "demo", "--env-file", f"{workdir}/.env"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"x-secret-key": secret}
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if requests.get(f"{base}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        (worker,) = psutil.Process(proc.pid).children()

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
        rss_end = _status_kb(worker.pid, "VmRSS") / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=60)

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
