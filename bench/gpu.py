"""GPU benchmark: gemma-2-2b at full size, server path vs bare library, unattended, one run.

For each backend (default nnsight and transformerlens) this:

1. writes google/gemma-2-2b at full size (random bfloat16 weights) and the `gemma` GemmaScope
   transcoders at full width (16 384 features per layer, JumpReLU, npz) into a fabricated hub
   cache (tests/hubcache.py), once;
2. bare library, in this process: loads the model (our loader, since circuit-tracer's own
   `from_pretrained` cannot start offline), then for max_feature_nodes 1500, 5000 and 10000
   times `attribute` + `prune_graph` + graph JSON serialization on a 64-token prompt with
   batch_size 48 (two warm-up graphs per path, then per size one untimed and `--repeats`
   timed runs; medians), and the peak GPU memory;
3. server path: frees the GPU, starts the real server (`python -m neuronpedia_graph
   google/gemma-2-2b --backend B`, gunicorn, HF_HUB_OFFLINE=1) and times the same graphs as
   POST /generate-graph (whole HTTP round trip, body received), with the peak GPU memory the
   device reports (nvidia-smi, sampled) while it runs;
4. prints a table and the server/bare ratio per size (goal <= 1.05).

Random transcoders: features are set to fire about `--target-l0` times per token and layer, but
random encoders spread activity evenly and the replacement explains nothing, so far more nodes
compete for the budget than with trained transcoders: timings are a WORST CASE.

    .venv/bin/python bench/gpu.py                      # on the GPU box (about 10-15 min)
    .venv/bin/python bench/gpu.py --tiny               # CPU smoke test (small shapes, ~2 min)

The last line is machine-readable key=value.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
MODEL = "google/gemma-2-2b"
WARMUP = 2  # untimed graphs per path before any timing
PARAMS = {
    "max_n_logits": 10,
    "desired_logit_prob": 0.95,
    "batch_size": 48,
    "node_threshold": 0.8,
    "edge_threshold": 0.98,
}


class GpuMemoryPoll:
    """Peak device memory in use (MiB, all processes) from nvidia-smi; None without it."""

    def __init__(self, interval: float = 0.25) -> None:
        self.available = shutil.which("nvidia-smi") is not None
        self.interval = interval
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if self.available:
            self._thread.start()

    def _sample(self) -> int:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return max((int(x) for x in out.split() if x.strip().isdigit()), default=0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak_mib = max(self.peak_mib, self._sample())
            except (OSError, subprocess.SubprocessError):
                return

    def reset(self) -> None:
        self.peak_mib = self._sample() if self.available else 0

    def stop(self) -> float | None:
        self._stop.set()
        if self.available:
            self._thread.join()
            return self.peak_mib / 1024
        return None


def make_prompt(hf_home: Path, n_tokens: int) -> str:
    """A prompt of exactly n_tokens positions (BOS included) for the fabricated tokenizer."""
    from transformers import AutoTokenizer

    from testkit.hubcache import CORPUS

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    text = " ".join(CORPUS * 10)
    ids = tokenizer(text, add_special_tokens=False).input_ids[: n_tokens - 1]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == n_tokens - 1
    return prompt


def bare_library(
    backend: str, device: str, prompt: str, sizes: list[int], repeats: int
) -> dict[str, float]:
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    from neuronpedia_graph.graph_json import build_graph_json
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.settings import Settings

    cuda = device.startswith("cuda")
    started = time.perf_counter()
    loaded = load_model(Settings(model_id=MODEL, device=device, backend=backend))
    out: dict[str, float] = {"load_s": time.perf_counter() - started}
    ids = loaded.model.ensure_tokenized(prompt)
    for _ in range(WARMUP):  # the first graphs in a process are slow (lazy init, caches)
        attribute(ids, loaded.model, batch_size=PARAMS["batch_size"], max_feature_nodes=min(sizes))
    for size in sizes:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(repeats + 1):  # the first attribute() in a process is a warm-up
            t0 = time.perf_counter()
            graph = attribute(
                ids,
                loaded.model,
                max_n_logits=PARAMS["max_n_logits"],
                desired_logit_prob=PARAMS["desired_logit_prob"],
                batch_size=PARAMS["batch_size"],
                max_feature_nodes=size,
                verbose=False,
            )
            graph.to(loaded.device)
            masks = prune_graph(graph, PARAMS["node_threshold"], PARAMS["edge_threshold"])
            body = build_graph_json(graph, *masks, metadata={"slug": "bench", "scan": "x"})
            if cuda:
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
            del graph, masks
            if cuda:
                torch.cuda.empty_cache()
        out[f"graph_s_{size}"] = statistics.median(times)
        out[f"json_bytes_{size}"] = float(len(body))
        if cuda:
            out[f"peak_alloc_gb_{size}"] = torch.cuda.max_memory_allocated() / 1024**3
    del loaded
    if cuda:
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    return out


def post_graph(base: str, secret: str, body: dict) -> Any:
    """POST /generate-graph with the secret; the caller checks the status."""
    import requests

    return requests.post(
        f"{base}/generate-graph", json=body, headers={"x-secret-key": secret}, timeout=3600
    )


def server_path(
    backend: str, device: str, prompt: str, sizes: list[int], repeats: int, workdir: Path
) -> dict[str, float]:
    from testkit.live import free_port, server_command, server_settings, start_process

    secret = secrets.token_hex(16)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "HF_TOKEN"},
        "DEVICE": device,
        "MAX_FEATURE_NODES": str(max(sizes)),
        "TOKEN_LIMIT": "256",
    }
    rundir = workdir / f"server-{backend}"  # its server.log, spool and (absent) .env
    poll = GpuMemoryPoll()
    poll.reset()
    started = time.perf_counter()
    out: dict[str, float] = {}
    try:
        with start_process(
            server_command(rundir, MODEL, ["--backend", backend]),
            rundir,
            server_settings(rundir, port, secret, env),
            port=port,
            timeout=math.inf,
            new_session=True,
            inherit_env=False,
        ) as server:
            out["load_s"] = time.perf_counter() - started
            for i in range(WARMUP):
                warm = {"prompt": prompt, "model_id": MODEL, "slug_identifier": f"warm-{i}"}
                warm |= {"batch_size": PARAMS["batch_size"], "max_feature_nodes": min(sizes)}
                post_graph(server.base, secret, warm).raise_for_status()
            for size in sizes:
                times = []
                for i in range(repeats + 1):
                    body = {
                        "prompt": prompt,
                        "model_id": MODEL,
                        "slug_identifier": f"gpu-{size}-{i}",
                        "max_feature_nodes": size,
                        **PARAMS,
                    }
                    t0 = time.perf_counter()
                    res = post_graph(server.base, secret, body)
                    elapsed = time.perf_counter() - t0
                    if res.status_code != 200:
                        raise RuntimeError(f"graph {size}: {res.status_code} {res.text[:500]}")
                    if i:
                        times.append(elapsed)
                out[f"graph_s_{size}"] = statistics.median(times)
                out[f"json_bytes_{size}"] = float(len(res.content))
    finally:
        peak = poll.stop()
        if peak is not None:
            out["device_peak_gb"] = peak
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU: a smoke test")
    parser.add_argument("--backends", default=None, help="default nnsight,transformerlens")
    parser.add_argument("--sizes", default=None, help="max_feature_nodes list (1500,5000,10000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed graphs per size (2)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--width", type=int, default=None, help="features per layer (16384)")
    parser.add_argument("--target-l0", type=float, default=64.0)
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/np-gpu-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the fabricated cache")
    args = parser.parse_args(argv)

    tiny = args.tiny
    backends = (args.backends or ("nnsight" if tiny else "nnsight,transformerlens")).split(",")
    sizes = [int(s) for s in (args.sizes or ("20,40" if tiny else "1500,5000,10000")).split(",")]
    repeats = args.repeats or (1 if tiny else 2)
    device = args.device or ("cpu" if tiny else "cuda")
    width = args.width or (64 if tiny else 16384)
    if tiny and "transformerlens" in backends:
        parser.error("--tiny uses small shapes, which only the nnsight backend can load")

    # Before huggingface_hub is imported: it reads HF_HOME and HF_HUB_OFFLINE once.
    workdir = args.workdir
    hf_home = workdir / ("hf_home_tiny" if tiny else "hf_home")
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.pop("HF_HUB_CACHE", None)

    import torch

    from testkit.hubcache import build

    marker = hf_home / f".built-{width}-{args.target_l0}"
    t0 = time.perf_counter()
    if not marker.exists():
        build(
            hf_home,
            ["gemma"],
            full_size=not tiny,
            width=width,
            target_l0=args.target_l0,
            dtype=torch.bfloat16,
        )
        marker.touch()
    build_s = time.perf_counter() - t0
    prompt = make_prompt(hf_home, args.prompt_tokens)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"device={device} gpu={gpu} build_s={build_s:.1f} prompt_tokens={args.prompt_tokens}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for backend in backends:
            print(f"[{backend}] bare library ...", flush=True)
            bare = bare_library(backend, device, prompt, sizes, repeats)
            print(f"[{backend}] server ...", flush=True)
            server = server_path(backend, device, prompt, sizes, repeats, workdir)
            results[backend] = {"bare": bare, "server": server}
    finally:
        if not args.keep:
            shutil.rmtree(hf_home, ignore_errors=True)

    print()
    print("| backend | path | load s | " + " | ".join(f"graph s @{s}" for s in sizes) + " |")
    print("|---|---|---|" + "---|" * len(sizes))
    pairs = [f"device={device}", f"gpu={gpu.replace(' ', '_')}", f"width={width}"]
    for backend, paths in results.items():
        for path, values in paths.items():
            cells = " | ".join(f"{values[f'graph_s_{s}']:.2f}" for s in sizes)
            print(f"| {backend} | {path} | {values['load_s']:.1f} | {cells} |")
            pairs.append(f"{backend}_{path}_load_s={values['load_s']:.1f}")
        for s in sizes:
            bare_s, server_s = paths["bare"][f"graph_s_{s}"], paths["server"][f"graph_s_{s}"]
            pairs.append(f"{backend}_bare_s_{s}={bare_s:.3f}")
            pairs.append(f"{backend}_server_s_{s}={server_s:.3f}")
            pairs.append(f"{backend}_ratio_{s}={server_s / bare_s:.3f}")
            if f"peak_alloc_gb_{s}" in paths["bare"]:
                pairs.append(
                    f"{backend}_bare_peak_alloc_gb_{s}={paths['bare'][f'peak_alloc_gb_{s}']:.2f}"
                )
        if "device_peak_gb" in paths["server"]:
            pairs.append(f"{backend}_server_device_peak_gb={paths['server']['device_peak_gb']:.2f}")
    print("random transcoders: a worst case (more active features than trained ones)")
    print(" ".join(pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
