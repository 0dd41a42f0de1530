"""`make check-full-size`: the presets at their real architecture size, on this machine's CPU.

TransformerLens hard-codes the architecture of official model names, so its path can only be
exercised with full-size weights. This check, for each run `MODEL:BACKEND`:

1. writes google/gemma-2-2b and/or meta-llama/Llama-3.2-1B at full size with random bfloat16
   weights into a fabricated hub cache (testkit/hubcache/; streamed shard by shard), with
   transcoders at the real d_model and a reduced width (512 features per layer);
2. starts the real server (`python -m neuronpedia_graph MODEL --backend BACKEND`, gunicorn)
   with HF_HUB_OFFLINE=1 and HF_HOME at that cache;
3. generates one graph (a short prompt, max_feature_nodes 200), runs a forward pass and a
   2-token steer, each checked for a 200 and the right scan;
4. reports wall time and peak RSS of the server's process tree for every phase.

Memory safety (the machine is shared): a run starts only when MemAvailable is at least
`--min-free-gb`, runs never overlap, and a watchdog kills the server's process group when its
RSS passes `--rss-limit-gb` (reported as `killed at N GB`). TransformerLens gemma-2-2b is not
run by default: it peaked above 20.5 GB while loading and was OOM-killed on a 24 GiB machine
(`../shared/notes/measured-facts.md`); ask for it with `--runs gemma:transformerlens` on a
bigger machine (or on a GPU box, where DEVICE=cuda keeps the weights off the host).

    .venv/bin/python -m bench.full_size [--runs llama:transformerlens,llama:nnsight,gemma:nnsight]
        [--dtype bfloat16] [--workdir /tmp/np-full-size] [--keep]

The last line is machine-readable key=value.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from testkit.live import (
    LiveServer,
    free_port,
    server_command,
    server_settings,
    start_process,
    wait_until_ready,
)

REPO = Path(__file__).resolve().parents[1]
GIB = 1024**3
PROMPT = "The city of Paris is in"
MODELS = {"gemma": "google/gemma-2-2b", "llama": "meta-llama/Llama-3.2-1B"}
SCANS = {"gemma": "gemma-2-2b", "llama": "llama-3-131k-relu"}
DEFAULT_RUNS = "llama:transformerlens,llama:nnsight,gemma:nnsight"


def mem_available_gb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    return 0.0


class TreeWatch:
    """Samples the RSS of a process and its descendants; kills the group above a limit."""

    def __init__(self, pid: int, limit_gb: float, interval: float = 0.2) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.limit = limit_gb * GIB
        self.interval = interval
        self.phase_peak = 0
        self.killed_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self) -> int:
        import psutil

        total = 0
        try:
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self.rss()
            self.phase_peak = max(self.phase_peak, rss)
            if rss > self.limit and self.killed_at is None:
                self.killed_at = rss / GIB
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._root.pid, 9)

    def start_phase(self) -> None:
        self.phase_peak = self.rss()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Phase:
    name: str
    seconds: float
    peak_gb: float
    ok: bool
    note: str = ""


@dataclass
class Run:
    key: str
    backend: str
    phases: list[Phase] = field(default_factory=list)
    error: str | None = None


def build_cache(
    key: str, hf_home: Path, dtype: str, width: int, min_free: float, small: bool = False
) -> Phase:
    """Write one full-size model (in a child process, so its peak RSS is measured alone)."""
    marker = hf_home / f".built-{key}-{dtype}-{width}-{'small' if small else 'full'}"
    if marker.exists():
        return Phase("build", 0.0, 0.0, True, "reused")
    if mem_available_gb() < min_free:
        raise SystemExit(f"error: only {mem_available_gb():.1f} GB available, need {min_free}")
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.hubcache", str(hf_home), "--pairs", key]
        + ([] if small else ["--full-size"])
        + ["--width", str(width), "--dtype", dtype],
        cwd=REPO,
        start_new_session=True,
    )
    watch = TreeWatch(proc.pid, limit_gb=12)
    rc = proc.wait()
    watch.stop()
    phase = Phase("build", time.perf_counter() - started, watch.phase_peak / GIB, rc == 0)
    if rc == 0:
        marker.touch()
    return phase


def post(base: str, path: str, body: dict, secret: str) -> requests.Response:
    return requests.post(f"{base}{path}", json=body, headers={"x-secret-key": secret}, timeout=3600)


def serve_and_measure(
    key: str, backend: str, hf_home: Path, dtype: str, limit_gb: float, workdir: Path
) -> Run:
    run = Run(key, backend)
    secret = secrets.token_hex(16)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_CACHE")},
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "DTYPE": dtype,
        "MAX_FEATURE_NODES": "1000",
    }
    rundir = workdir / f"server-{key}-{backend}"  # its server.log, spool and (absent) .env
    model_id = MODELS[key]
    started = time.perf_counter()
    with start_process(
        server_command(rundir, model_id, ["--backend", backend]),
        rundir,
        server_settings(rundir, port, secret, env),
        port=port,
        ready=None,
        new_session=True,
        inherit_env=False,
    ) as server:
        watch = TreeWatch(server.proc.pid, limit_gb)
        try:
            return measure_phases(run, server, watch, secret, started)
        finally:
            watch.stop()


def measure_phases(
    run: Run, server: LiveServer, watch: TreeWatch, secret: str, started: float
) -> Run:
    """Wait for the server (or its death) and time the graph, forward pass and steer."""
    key, backend, base, model_id = run.key, run.backend, server.base, MODELS[run.key]
    try:
        wait_until_ready(server, timeout=math.inf)  # the watchdog bounds the wait
    except RuntimeError:
        killed = f"killed at {watch.killed_at:.1f} GB; " if watch.killed_at else ""
        tail = server.log()[-1500:]
        run.error = f"server exited during load ({killed}rc {server.proc.poll()}): {tail}"
        run.phases.append(
            Phase("load", time.perf_counter() - started, watch.phase_peak / GIB, False)
        )
        return run
    model_load = next(
        (
            line.split("load time", 1)[1].strip()
            for line in server.log().splitlines()
            if "load time" in line
        ),
        "?",
    )
    run.phases.append(
        Phase(
            "load",
            time.perf_counter() - started,
            watch.phase_peak / GIB,
            True,
            f"process start to ready; model load {model_load}",
        )
    )
    health = requests.get(f"{base}/health", timeout=10).json()
    requests_to_make = [
        (
            "graph",
            "/generate-graph",
            {
                "prompt": PROMPT,
                "model_id": model_id,
                "slug_identifier": f"full-{key}-{backend}",
                "max_feature_nodes": 200,
                "batch_size": 48,
            },
        ),
        ("forward_pass", "/forward-pass", {"prompt": PROMPT, "model_id": model_id}),
        (
            "steer",
            "/steer",
            {
                "prompt": PROMPT,
                "model_id": model_id,
                "n_tokens": 2,
                "seed": 1,
                "features": [
                    {
                        "layer": 1,
                        "index": 3,
                        "token_active_position": 3,
                        "steer_position": 3,
                        "delta": 10.0,
                    }
                ],
            },
        ),
    ]
    for name, path, body in requests_to_make:
        watch.start_phase()
        t0 = time.perf_counter()
        try:
            res = post(base, path, body, secret)
            ok, note = res.status_code == 200, ("" if res.ok else res.text[:300])
            if ok and name == "graph":
                scan = res.json()["metadata"]["scan"]
                ok, note = scan == SCANS[key], f"scan {scan}, {len(res.content)} bytes"
        except requests.RequestException as exc:
            ok, note = False, f"{type(exc).__name__}"
        run.phases.append(Phase(name, time.perf_counter() - t0, watch.phase_peak / GIB, ok, note))
        if watch.killed_at:
            run.error = f"killed at {watch.killed_at:.1f} GB during {name}"
            break
    if health.get("backend") != backend:
        run.error = f"server reports backend {health.get('backend')}"
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="comma list of MODEL:BACKEND")
    parser.add_argument("--dtype", default="bfloat16", help="server DTYPE (weights are bf16)")
    parser.add_argument("--width", type=int, default=512, help="transcoder features per layer")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/np-full-size"))
    parser.add_argument("--min-free-gb", type=float, default=14.0)
    parser.add_argument("--rss-limit-gb", type=float, default=18.0)
    parser.add_argument("--keep", action="store_true", help="keep the cache for the next run")
    parser.add_argument(
        "--small", action="store_true", help="small shapes (nnsight only): to test this script"
    )
    args = parser.parse_args(argv)

    runs = [tuple(item.split(":", 1)) for item in args.runs.split(",") if item]
    bad = [r for r in runs if len(r) != 2 or r[0] not in MODELS]
    if bad:
        parser.error(f"bad --runs entries {bad}; use MODEL:BACKEND with MODEL in {list(MODELS)}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    hf_home = args.workdir / "hf_home"
    results: list[Run] = []
    builds: dict[str, Phase] = {}
    try:
        for key, backend in runs:
            if key not in builds:
                builds[key] = build_cache(
                    key, hf_home, "bfloat16", args.width, args.min_free_gb, args.small
                )
                print(f"built {key}: {builds[key]}", flush=True)
            available = mem_available_gb()
            if available < args.min_free_gb:
                run = Run(key, backend, error=f"skipped: {available:.1f} GB available")
            else:
                run = serve_and_measure(
                    key, backend, hf_home, args.dtype, args.rss_limit_gb, args.workdir
                )
            results.append(run)
            for phase in run.phases:
                print(f"{key}:{backend} {phase}", flush=True)
            if run.error:
                print(f"{key}:{backend} ERROR {run.error}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(hf_home, ignore_errors=True)

    print()
    print(f"| run | phase | wall s | peak RSS GB | ok | note |  (server DTYPE={args.dtype}, CPU)")
    print("|---|---|---|---|---|---|")
    for key, phase in builds.items():
        print(f"| {key} | build cache | {phase.seconds:.1f} | {phase.peak_gb:.2f} | {phase.ok} | |")
    for run in results:
        for phase in run.phases:
            print(
                f"| {run.key}:{run.backend} | {phase.name} | {phase.seconds:.1f} | "
                f"{phase.peak_gb:.2f} | {phase.ok} | {phase.note} |"
            )
    pairs = []
    for run in results:
        prefix = f"{run.key}_{run.backend}"
        for phase in run.phases:
            pairs.append(f"{prefix}_{phase.name}_s={phase.seconds:.1f}")
            pairs.append(f"{prefix}_{phase.name}_peak_gb={phase.peak_gb:.2f}")
        pairs.append(f"{prefix}_ok={int(run.error is None and all(p.ok for p in run.phases))}")
    print(" ".join(pairs))
    return 0 if all(r.error is None and all(p.ok for p in r.phases) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
