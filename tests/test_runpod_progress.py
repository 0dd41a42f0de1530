"""The Runpod worker reports a graph's phases through the SDK's progress_update, throttled.

The worker runs in a subprocess with the SDK's webhook variable pointing at a capture server
here, so the real SDK code path (its thread and HTTP POST per update) is what is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import REPO, graph_body

SCRIPT = """
import json, sys
from neuronpedia_graph import runpod_worker
from neuronpedia_graph.models.loading import load_model
from neuronpedia_graph.service import GraphService
from neuronpedia_graph.settings import Settings

# As on a worker (runpod_worker.loader): no stored attributions, so every job attributes.
settings = Settings(
    model_id="demo", secret="x", device="cpu", spool_dir=sys.argv[1], graph_store_bytes=0
)
handler = runpod_worker.make_handler(
    GraphService(load_model(settings), settings), send_progress=runpod_worker.sdk_progress_update
)
output = handler({"id": "job-progress-1", "input": json.loads(sys.argv[2])})
print("RESULT", json.dumps({"nodes": len(output.get("nodes", [])), "error": output.get("error")}))
"""


@pytest.fixture
def capture() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Capture(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "body": json.loads(body)})
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Capture) as server:  # closes its socket
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}", received
        finally:
            server.shutdown()


def test_a_graph_job_reports_its_phases_through_the_sdk_throttled_and_in_order(capture, tmp_path):
    base, received = capture
    env = {
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done?id=$ID",
        "RUNPOD_POD_ID": "test-pod",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path / "spool"),
            json.dumps(graph_body(batch_size=8)),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["error"] is None and result["nodes"] > 0
    updates = [r["body"] for r in received]
    assert all(r["path"].startswith("/job-done?id=job-progress-1") for r in received)
    assert all(u["status"] == "IN_PROGRESS" for u in updates)
    outputs = [u["output"] for u in updates]
    progress = [o["progress"] for o in outputs]
    assert progress == sorted(progress) and all(0 <= p < 1 for p in progress), outputs
    order = ["activations", "forward_pass", "logit_batches", "feature_batches", "prune"]
    order.append("build_json")
    phases = list(dict.fromkeys(o["phase"] for o in outputs))
    # In order; phases may be skipped when updates pile up behind a slow POST (the latest
    # state is sent, never an older one).
    assert phases[0] == "activations" and len(phases) >= 2, outputs
    assert [order.index(p) for p in phases] == sorted(order.index(p) for p in phases)
    # Throttled: the demo graph has 16 feature batches at batch_size 8; unthrottled, each
    # would be an update (and a thread and a POST).
    assert len(outputs) < 16, outputs
