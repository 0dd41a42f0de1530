"""GPU benchmark: gemma-2-2b at full size, server path vs bare library, within a time budget.

Everything happens within `--budget-s` seconds (default 420), measured from the start:

1. a child process writes google/gemma-2-2b at full size (random bfloat16 weights) and the
   `gemma` GemmaScope transcoders at full width (16 384 features per layer, JumpReLU, npz)
   into a fabricated hub cache (testkit/hubcache/);
2. per backend (nnsight, then transformerlens), the bare library in a child process: our
   loader, two warm-up graphs, then per size one untimed and `--repeats` timed runs of
   `attribute` + `prune_graph` + graph JSON on a 64-token prompt (batch_size 48); medians and
   the peak GPU memory allocated;
3. the server path for the same sizes: the real server (`python -m neuronpedia_graph
   google/gemma-2-2b --backend B`, gunicorn, HF_HUB_OFFLINE=1), POST /generate-graph timed
   over the whole HTTP round trip, with the device's peak memory (nvidia-smi, sampled).

Sizes (max_feature_nodes 1500, 5000, 10000) and backends are chosen as it goes: the next one
runs only if the time measured so far predicts that it, and the matching server-path run, end
before the budget (graph time is taken to grow as size^1.5 from the largest size measured).
What does not fit is reported as skipped, with the prediction; a child that overruns is killed
at the deadline. The table (table.md) and every figure (gpu.json) go to `--out`.

Random transcoders: features are set to fire about `--target-l0` times per token and layer, but
random encoders spread activity evenly and the replacement explains nothing, so far more nodes
compete for the budget than with trained transcoders: timings are a WORST CASE.

    python -m bench.gpu --out gpu-results            # on the GPU host (7 minutes at most)
    python -m bench.gpu --tiny --out /tmp/gpu-tiny   # CPU smoke test (small shapes, ~20 s)

(from the repository root, as every benchmark: `bench` and `testkit` import from there).

The last line is machine-readable key=value.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODEL = "google/gemma-2-2b"
WARMUP = 2  # untimed graphs per path before any timing
RESERVE_S = 15.0  # kept back for stopping a server and writing the results
GROWTH = 1.5  # predicted graph time ~ size**GROWTH from the largest size measured
SERVER_FACTOR = 1.3  # server graph and load predicted from the bare ones (HTTP, JSON, a fork)
PARAMS = {
    "max_n_logits": 10,
    "desired_logit_prob": 0.95,
    "batch_size": 48,
    "node_threshold": 0.8,
    "edge_threshold": 0.98,
}
TAG = "@@bench "  # marks a child's result lines on its stdout


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

    def stop(self) -> float | None:
        self._stop.set()
        if self.available:
            self._thread.join()
            return self.peak_mib / 1024
        return None


# ----- child processes (they import torch; the parent never does) -----


def emit(obj: dict) -> None:
    print(TAG + json.dumps(obj), flush=True)


def child_build(args: argparse.Namespace) -> None:
    """Write the fabricated cache (once per width and L0) and the prompt."""
    import torch
    from transformers import AutoTokenizer

    from testkit.hubcache import CORPUS, build

    hf_home = Path(os.environ["HF_HOME"])
    marker = hf_home / f".built-{args.width}-{args.target_l0}"
    t0 = time.perf_counter()
    if not marker.exists():
        build(
            hf_home,
            ["gemma"],
            full_size=not args.tiny,
            width=args.width,
            target_l0=args.target_l0,
            dtype=torch.bfloat16,
        )
        marker.touch()
    build_s = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    ids = tokenizer(" ".join(CORPUS * 10), add_special_tokens=False).input_ids
    prompt = tokenizer.decode(ids[: args.prompt_tokens - 1])  # BOS makes it n tokens
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) == args.prompt_tokens - 1
    cuda = torch.cuda.is_available()
    emit(
        {
            "build_s": build_s,
            "prompt": prompt,
            "gpu": torch.cuda.get_device_name(0) if cuda else "none",
            "cuda": torch.version.cuda or "-",
        }
    )


def child_bare(args: argparse.Namespace, backend: str, prompt: str) -> None:
    """Bare library: load, warm up, then time the sizes the parent sends on stdin."""
    import torch
    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    from neuronpedia_graph.graph_json import build_graph_json
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.settings import Settings

    cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    loaded = load_model(Settings(model_id=MODEL, device=args.device, backend=backend))
    load_s = time.perf_counter() - started
    ids = loaded.model.ensure_tokenized(prompt)
    t0 = time.perf_counter()
    for _ in range(WARMUP):  # the first graphs in a process are slow (lazy init, caches)
        attribute(ids, loaded.model, batch_size=PARAMS["batch_size"], max_feature_nodes=args.first)
    emit({"load_s": load_s, "warmup_s": (time.perf_counter() - t0) / WARMUP})
    for line in sys.stdin:
        size = int(line)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(args.repeats + 1):  # one untimed run per size
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
            elapsed = time.perf_counter() - t0
            if i:
                times.append(elapsed)
            del graph, masks
            if cuda:
                torch.cuda.empty_cache()
        result: dict[str, Any] = {"size": size, "times": times, "json_bytes": len(body)}
        if cuda:
            result["peak_alloc_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        emit(result)


# ----- the parent: plans against the budget -----


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.seconds = seconds
        self.deadline = self.start + seconds - RESERVE_S

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


class Child:
    """A child phase of this script whose tagged stdout lines are read with a deadline."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log.open("w")
        # Same working directory and environment as this process: `bench` imports as it did here.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.gpu", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[dict | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(TAG):
                self.lines.put(json.loads(line[len(TAG) :]))
        self.lines.put(None)

    def result(self, timeout: float) -> dict:
        """The next result line; TimeoutError past `timeout`, RuntimeError if it died."""
        try:
            got = self.lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise TimeoutError from None
        if got is None:
            self.proc.wait()
            raise RuntimeError(f"exited with {self.proc.returncode} (log: {self.log.name})")
        return got

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def close(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            if not kill and self.proc.stdin is not None:
                self.proc.stdin.close()  # a bare child ends at end of input
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    kill = True
            if kill or self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def predict(measured: dict[int, float], size: int, fallback: float) -> float:
    """Median graph time at `size` from the largest measured size (or the warm-up's)."""
    below = [s for s in measured if s <= size]
    if not below:
        return fallback
    ref = max(below)
    return measured[ref] * (size / ref) ** GROWTH


def run_bare(
    args: argparse.Namespace, backend: str, prompt: str, budget: Budget, report: dict
) -> dict[str, Any]:
    """Load once, then each size that, with its server-path twin, fits the budget."""
    out: dict[str, Any] = {"graphs": {}}
    child = Child(
        ["--_child", "bare", "--_backend", backend, *args._passthrough],
        args.out / f"bare-{backend}.log",
    )
    child.send(json.dumps(prompt))
    try:
        first = child.result(budget.left())
        out |= {"load_s": first["load_s"], "warmup_s": first["warmup_s"]}
        measured: dict[int, float] = {}
        server_load = report.get("server_load_s") or SERVER_FACTOR * first["load_s"] + 5
        server_warm = WARMUP * SERVER_FACTOR * first["warmup_s"]
        planned = 0.0  # predicted server-path graph time for the sizes already run
        runs = args.repeats + 1
        for i, size in enumerate(args.sizes):
            bare_s = predict(measured, size, first["warmup_s"] * (size / args.first) ** GROWTH)
            need = runs * bare_s + server_load + server_warm + planned
            need += runs * SERVER_FACTOR * bare_s
            if need > budget.left():
                for rest in args.sizes[i:]:
                    report["skipped"].append(
                        {
                            "backend": backend,
                            "path": "both",
                            "size": rest,
                            "reason": f"predicted {need:.0f} s with its server run, "
                            f"{budget.left():.0f} s left",
                        }
                    )
                break
            child.send(str(size))
            got = child.result(budget.left())
            median = statistics.median(got["times"])
            measured[size] = median
            planned += runs * SERVER_FACTOR * median
            out["graphs"][str(size)] = got | {"median_s": median}
        child.close()
    except TimeoutError:
        child.close(kill=True)
        out["killed_at_deadline"] = True
        report["skipped"].append({"backend": backend, "path": "bare", "reason": "deadline"})
    except RuntimeError as exc:
        child.close(kill=True)
        out["error"] = str(exc)
    return out


def run_server(
    args: argparse.Namespace, backend: str, prompt: str, sizes: list[int], bare: dict, budget
) -> dict[str, Any]:
    import requests

    from testkit.live import (
        free_port,
        health_ready,
        launch,
        server_command,
        server_settings,
        wait_until_ready,
    )

    secret = secrets.token_hex(16)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "HF_TOKEN"},
        "DEVICE": args.device,
        "MAX_FEATURE_NODES": str(max(sizes)),
        "TOKEN_LIMIT": "256",
    }
    rundir = args.workdir / f"server-{backend}"  # its server.log, spool and (absent) .env
    out: dict[str, Any] = {"graphs": {}}
    poll = GpuMemoryPoll()
    started = time.perf_counter()
    server = launch(
        server_command(rundir, MODEL, ["--backend", backend]),
        rundir,
        server_settings(rundir, port, secret, env),
        port=port,
        new_session=True,
        inherit_env=False,
    )

    def post(body: dict) -> requests.Response:
        res = requests.post(
            f"{server.base}/generate-graph",
            json=body,
            headers={"x-secret-key": secret},
            timeout=max(budget.left(), 1),
        )
        if res.status_code != 200:
            raise RuntimeError(f"graph: {res.status_code} {res.text[:300]}")
        return res

    try:
        wait_until_ready(server, health_ready, max(budget.left(), 1))
        out["load_s"] = time.perf_counter() - started
        for i in range(WARMUP):
            post({"prompt": prompt, "model_id": MODEL, "slug_identifier": f"warm-{i}"} | {
                "batch_size": PARAMS["batch_size"], "max_feature_nodes": args.first})  # fmt: skip
        for size in sizes:
            bare_s = bare["graphs"][str(size)]["median_s"]
            need = (args.repeats + 1) * SERVER_FACTOR * bare_s
            if need > budget.left():
                out.setdefault("skipped", []).append(size)
                continue
            times = []
            for i in range(args.repeats + 1):
                body = {"prompt": prompt, "model_id": MODEL, "slug_identifier": f"gpu-{size}-{i}"}
                t0 = time.perf_counter()
                res = post(body | {"max_feature_nodes": size, **PARAMS})
                if i:
                    times.append(time.perf_counter() - t0)
            out["graphs"][str(size)] = {
                "times": times,
                "median_s": statistics.median(times),
                "json_bytes": len(res.content),
            }
    except (TimeoutError, requests.Timeout):
        out["killed_at_deadline"] = True
    except RuntimeError as exc:
        out["error"] = str(exc)
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)  # nothing it started may outlive it
        server.proc.wait()
        peak = poll.stop()
        if peak is not None:
            out["device_peak_gb"] = peak
    return out


def write_results(args: argparse.Namespace, report: dict, budget: Budget) -> str:
    """table.md and gpu.json under --out; returns the key=value line."""
    report["elapsed_s"] = budget.elapsed()
    sizes = args.sizes
    rows = [
        "| backend | path | load s | " + " | ".join(f"graph s @{s}" for s in sizes) + " |",
        "|---|---|---|" + "---|" * len(sizes),
    ]
    pairs = [
        f"device={args.device}",
        f"gpu={report.get('gpu', 'none').replace(' ', '_')}",
        f"width={args.width}",
        f"budget_s={args.budget_s:.0f}",
        f"build_s={report.get('build_s', math.nan):.1f}",
    ]
    for backend, paths in report["backends"].items():
        for path, values in paths.items():
            cells = " | ".join(
                f"{values['graphs'][str(s)]['median_s']:.2f}" if str(s) in values["graphs"] else "-"
                for s in sizes
            )
            load = values.get("load_s")
            rows.append(
                f"| {backend} | {path} | {'-' if load is None else f'{load:.1f}'} | {cells} |"
            )
            if load is not None:
                pairs.append(f"{backend}_{path}_load_s={load:.1f}")
        bare, server = paths.get("bare", {}), paths.get("server", {})
        for s in sizes:
            b, v = bare.get("graphs", {}).get(str(s)), server.get("graphs", {}).get(str(s))
            if b:
                pairs.append(f"{backend}_bare_s_{s}={b['median_s']:.3f}")
                if "peak_alloc_gb" in b:
                    pairs.append(f"{backend}_bare_peak_alloc_gb_{s}={b['peak_alloc_gb']:.2f}")
            if v:
                pairs.append(f"{backend}_server_s_{s}={v['median_s']:.3f}")
            if b and v:
                pairs.append(f"{backend}_ratio_{s}={v['median_s'] / b['median_s']:.3f}")
        if "device_peak_gb" in server:
            pairs.append(f"{backend}_server_device_peak_gb={server['device_peak_gb']:.2f}")
    skipped = report["skipped"]
    lines = [*rows, ""]
    lines += [f"skipped: {json.dumps(s)}" for s in skipped] or ["skipped: none"]
    lines.append("random transcoders: a worst case (more active features than trained ones)")
    table = "\n".join(lines)
    pairs += [f"skipped={len(skipped)}", f"elapsed_s={budget.elapsed():.1f}"]
    line = " ".join(pairs)
    report["summary"] = line
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "gpu.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU: a smoke test")
    parser.add_argument("--budget-s", type=float, default=420.0, help="all of it, in seconds")
    parser.add_argument("--out", type=Path, default=None, help="table.md and gpu.json go here")
    parser.add_argument("--backends", default=None, help="default nnsight,transformerlens")
    parser.add_argument("--sizes", default=None, help="max_feature_nodes list (1500,5000,10000)")
    parser.add_argument("--repeats", type=int, default=None, help="timed graphs per size (2)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--width", type=int, default=None, help="features per layer (16384)")
    parser.add_argument("--target-l0", type=float, default=64.0)
    parser.add_argument("--device", default=None, help="default cuda (cpu with --tiny)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/np-gpu-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the fabricated cache")
    parser.add_argument("--_child", choices=["build", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--_backend", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    tiny = args.tiny
    backends = (args.backends or ("nnsight" if tiny else "nnsight,transformerlens")).split(",")
    args.sizes = sorted(
        int(s) for s in (args.sizes or ("20,40" if tiny else "1500,5000,10000")).split(",")
    )
    args.first = args.sizes[0]
    args.repeats = args.repeats or (1 if tiny else 2)
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.width = args.width or (64 if tiny else 16384)
    if tiny and "transformerlens" in backends:
        parser.error("--tiny uses small shapes, which only the nnsight backend can load")
    args.workdir = args.workdir.resolve()
    args.out = (args.out or args.workdir / "results").resolve()
    hf_home = args.workdir / ("hf_home_tiny" if tiny else "hf_home")

    # Children read HF_HOME and HF_HUB_OFFLINE when huggingface_hub is first imported.
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.environ.pop("HF_HUB_CACHE", None)
    if args._child == "build":
        child_build(args)
        return 0
    if args._child == "bare":
        child_bare(args, args._backend, json.loads(sys.stdin.readline()))
        return 0

    budget = Budget(args.budget_s)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    args._passthrough = [
        *(["--tiny"] if tiny else []),
        *("--sizes", ",".join(map(str, args.sizes)), "--repeats", str(args.repeats)),
        *("--device", args.device, "--width", str(args.width), "--workdir", str(args.workdir)),
        *("--target-l0", str(args.target_l0), "--prompt-tokens", str(args.prompt_tokens)),
    ]
    from neuronpedia_graph.versions import describe_versions

    report: dict[str, Any] = {
        "config": {
            "budget_s": args.budget_s,
            "backends": backends,
            "sizes": args.sizes,
            "repeats": args.repeats,
            "device": args.device,
            "width": args.width,
            "target_l0": args.target_l0,
            "prompt_tokens": args.prompt_tokens,
            "params": PARAMS,
        },
        "versions": describe_versions(),
        "backends": {},
        "skipped": [],
    }
    print(f"versions: {report['versions']}", flush=True)
    try:
        build = Child(["--_child", "build", *args._passthrough], args.out / "build.log")
        try:
            report |= build.result(budget.left())
        finally:
            build.close(kill=build.proc.poll() is None and budget.left() <= 0)
        print(
            f"device={args.device} gpu={report['gpu']} cuda={report['cuda']} "
            f"build_s={report['build_s']:.1f} budget_s={args.budget_s:.0f}",
            flush=True,
        )
        for backend in backends:
            known = report["backends"]
            if known:  # a further backend needs its two loads, warm-ups and the first size
                prev = next(iter(known.values()))
                need = sum(p.get("load_s", 0) for p in prev.values()) * 1.2
                need += 2 * (WARMUP + args.repeats + 1) * prev["bare"].get("warmup_s", 0)
                if need > budget.left():
                    report["skipped"].append(
                        {
                            "backend": backend,
                            "path": "both",
                            "reason": f"predicted {need:.0f} s, {budget.left():.0f} s left",
                        }
                    )
                    continue
            print(f"[{backend}] bare library ...", flush=True)
            bare = run_bare(args, backend, report["prompt"], budget, report)
            known[backend] = {"bare": bare}
            sizes = [int(s) for s in bare["graphs"]]
            if not sizes:
                continue
            print(f"[{backend}] server ...", flush=True)
            server = run_server(args, backend, report["prompt"], sizes, bare, budget)
            known[backend]["server"] = server
            report.setdefault("server_load_s", server.get("load_s"))
            for size in server.pop("skipped", []):
                report["skipped"].append(
                    {"backend": backend, "path": "server", "size": size, "reason": "budget"}
                )
    except (TimeoutError, RuntimeError) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(f"stopped: {report['error']}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(hf_home, ignore_errors=True)
    line = write_results(args, report, budget)
    print(line)
    return 1 if "error" in report else 0


if __name__ == "__main__":
    sys.exit(main())
