"""Demo graph latency: the HTTP server end to end against the bare library path, in one run.

The bare path is what a notebook user would run in-process: circuit-tracer `attribute` +
`prune_graph` + our `build_graph_json`. The server path is a POST /generate-graph to the real
gunicorn server (`python -m neuronpedia_graph demo`) on this machine, including HTTP, JSON
validation, the model lock and the response body. Both use the same prompt and parameters;
the server runs in its own process, so the two never compete for the model. Medians are
printed with their ratio (the overhead the service adds).

Run: `.venv/bin/python -m bench.e2e_latency [--repeats 7]`.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

PROMPT = "The city of Paris is in"
PARAMS = {
    "max_n_logits": 10,
    "desired_logit_prob": 0.95,
    "batch_size": 48,
    "max_feature_nodes": 500,
}


def bare_path(repeats: int) -> list[float]:
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    from neuronpedia_graph.graph_json import build_graph_json
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.settings import Settings

    loaded = load_model(Settings(model_id="demo", device="cpu"))
    times = []
    for i in range(repeats + 1):  # the first attribute() in a process is a warm-up
        started = time.perf_counter()
        ids = loaded.model.ensure_tokenized(PROMPT)
        graph = attribute(ids, loaded.model, **PARAMS, verbose=False)
        node_mask, edge_mask, scores = prune_graph(graph, 0.8, 0.98)
        build_graph_json(graph, node_mask, edge_mask, scores, metadata={"slug": "bench"})
        if i:
            times.append(time.perf_counter() - started)
    return times


def server_path(repeats: int) -> list[float]:
    from testkit.live import start_server

    secret = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="npg-bench-"))
    env = {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"}
    with start_server(workdir, env, secret=secret) as server:
        body = {"prompt": PROMPT, "model_id": "demo", "slug_identifier": "bench", **PARAMS}
        times = []
        with requests.Session() as session:
            for i in range(repeats + 1):
                started = time.perf_counter()
                res = session.post(
                    server.url("/generate-graph"),
                    json=body,
                    headers={"x-secret-key": secret},
                    timeout=300,
                )
                res.raise_for_status()
                if i:
                    times.append(time.perf_counter() - started)
        return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    bare = bare_path(args.repeats)
    served = server_path(args.repeats)
    b, s = statistics.median(bare), statistics.median(served)
    print(f"prompt {PROMPT!r}, {PARAMS}, {args.repeats} timed runs each after one warm-up")
    print(
        f"bare library (attribute + prune + build_graph_json): median {b * 1000:.0f} ms "
        f"(min {min(bare) * 1000:.0f}, max {max(bare) * 1000:.0f})"
    )
    print(
        f"HTTP POST /generate-graph (gunicorn, demo):          median {s * 1000:.0f} ms "
        f"(min {min(served) * 1000:.0f}, max {max(served) * 1000:.0f})"
    )
    print(f"server_over_bare={s / b:.3f} overhead_ms={(s - b) * 1000:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
