"""`make bench-steer`: /steer generation, a full recompute per token against the key/value cache.

Both paths generate the same continuation in this process, on a fabricated
meta-llama/Llama-3.2-1B hub cache (testkit/hubcache/; small shapes by default, the demo
model's 512-token context being too short) through the nnsight backend:

- old: circuit-tracer's `feature_intervention` over the whole sequence for every new token
  (what /steer did before), with the same sampling rule;
- new: `neuronpedia_graph.steering.generate` (the prompt once, then one token per step through
  a key/value cache).

The steered run has one intervention of each kind (a fixed position, generated tokens, an
ablation). The same runs go through TransformerLens on a fabricated small Qwen/Qwen3-4B
(TransformerLens reads that architecture's config from the cache; it hard-codes Llama's). For
prompts of 32 and 1,024 tokens and 8, 64 and 256 new tokens it reports both
times, the speedup, the new path's milliseconds per token between 8 and 64 and between 64 and
256 new tokens (flat when the cost per token does not grow with the continuation), and whether
the tokens are identical and the largest logit difference. A seeded sampled run (temperature 1,
frequency penalty 0.5) checks that the random stream agrees too. Times are CPU seconds of this
process with one torch thread (`--threads`): the machine this runs on is shared, and wall time
there mostly measures other processes (its ratio is shown too). `--dtypes bfloat16` adds the
same comparison in bfloat16, where the two paths may round differently: token agreement and
the largest logit difference up to the first disagreement.

`--full-size` also runs Llama-3.2-1B at its real size (random bfloat16 weights, 2.5 GB written,
about 9 GB of RAM for TransformerLens, float32 compute) through both backends, each in a child
process, at `--full-prompt` + `--full-new` tokens (1,024 + 64): meant for a GPU box or a patient
CPU (the full recompute alone is about 65 passes over a 1,024-token prompt); off by default.

    .venv/bin/python -m bench.steer [--prompts 32,1024] [--new 8,64,256] [--dtypes float32]
        [--full-size] [--hf-home DIR]

The last line is machine-readable: `speedup_1024x64=<old/new> max_logit_diff=<float32, all
runs> tokens_identical=<float32, all runs> ...`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_ID = "meta-llama/Llama-3.2-1B"
TL_MODEL_ID = "Qwen/Qwen3-4B"


@dataclass(frozen=True)
class Sampling:
    n_tokens: int
    temperature: float = 0.0
    freq_penalty: float = 0.0
    freeze_attention: bool = False


@dataclass
class Run:
    tokens: list[int]
    rows: list[Any]
    seconds: float  # CPU seconds of this process (one torch thread: the work done)
    wall: float


def recompute(model: Any, prompt_ids: Any, interventions: list, sampling: Sampling, seed: int):
    """The old path: the whole sequence through `feature_intervention` for every token."""
    import torch

    from neuronpedia_graph.sampling import new_generator, next_token
    from neuronpedia_graph.steering import _tensor_inputs

    generator = new_generator(seed, prompt_ids.device)
    eos = model.tokenizer.eos_token_id
    sequence = prompt_ids
    generated: list[int] = []
    rows = []
    with _tensor_inputs(model):
        while True:
            logits, _ = model.feature_intervention(
                sequence, interventions, freeze_attention=False, return_activations=False
            )
            last = logits.reshape(-1, logits.shape[-1])[-1]
            rows.append(last.float().cpu())
            if len(generated) == sampling.n_tokens or (generated and generated[-1] == eos):
                return generated, rows
            token = next_token(
                last, sequence, sampling.temperature, sampling.freq_penalty, generator
            )
            generated.append(token)
            sequence = torch.cat([sequence, torch.tensor([token], device=sequence.device)])


def timed(fn, *args) -> Run:
    cpu, wall = time.process_time(), time.perf_counter()
    tokens, rows = fn(*args)
    return Run(tokens, rows, time.process_time() - cpu, time.perf_counter() - wall)


def compare(old: Run, new: Run) -> tuple[int, int, float]:
    """(tokens agreeing before the first difference, tokens, largest logit difference over
    the rows both runs computed for the same prefix)."""
    agree = 0
    for a, b in zip(old.tokens, new.tokens, strict=False):
        if a != b:
            break
        agree += 1
    n_rows = min(agree + 1, len(old.rows), len(new.rows))
    pairs = zip(old.rows[:n_rows], new.rows[:n_rows], strict=True)
    diff = max(float((a - b).abs().max()) for a, b in pairs)
    return agree, max(len(old.tokens), len(new.tokens)), diff


def load(backend: str, dtype: str, model_id: str = MODEL_ID) -> Any:
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.settings import Settings

    settings = Settings(model_id=model_id, device="cpu", backend=backend, dtype=dtype)
    return load_model(settings).model


def prompt_of(model: Any, n: int, seed: int) -> Any:
    """A BOS and n - 1 random ordinary tokens."""
    import torch

    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(vocab), (n - 1,), generator=generator).tolist()
    return model.ensure_tokenized([tokenizer.bos_token_id] + [vocab[i] for i in picks])


def interventions_for(model: Any, n_prompt: int) -> list:
    last = n_prompt - 1
    top = model.cfg.n_layers - 1
    return [(0, last, 3, 8.0), (top, slice(n_prompt, None), 7, 4.0), (top, last // 2, 11, 0.0)]


def bench_model(
    label: str, model: Any, prompts: list[int], news: list[int], out: list[str]
) -> dict[str, float]:
    from neuronpedia_graph.steering import generate

    results: dict[str, float] = {}
    # Warm up both paths once (first-call costs are not what is measured).
    warm = prompt_of(model, 16, 0)
    recompute(model, warm, interventions_for(model, 16), Sampling(2), 0)
    generate(model, warm, interventions_for(model, 16), Sampling(2), 0)
    worst = 0.0
    identical = True
    for n_prompt in prompts:
        ids = prompt_of(model, n_prompt, n_prompt)
        interventions = interventions_for(model, n_prompt)
        per_token: dict[int, float] = {}
        for n_new in news:
            sampling = Sampling(n_new)
            old = timed(recompute, model, ids, interventions, sampling, 0)
            new = timed(generate, model, ids, interventions, sampling, 0)
            agree, total, diff = compare(old, new)
            per_token[n_new] = new.seconds
            worst = max(worst, diff)
            identical &= agree == total and old.tokens == new.tokens
            results[f"speedup_{n_prompt}x{n_new}"] = old.seconds / new.seconds
            out.append(
                f"{label:30s} {n_prompt:6d} {n_new:4d} {len(new.tokens):4d} "
                f"{old.seconds:8.2f} {new.seconds:8.2f} {old.seconds / new.seconds:7.1f}x "
                f"{old.wall / new.wall:7.1f}x {agree:4d}/{total:<4d} {diff:10.2e}"
            )
            print(out[-1], flush=True)
        steps = sorted(per_token)
        for a, b in itertools.pairwise(steps):
            ms = 1000 * (per_token[b] - per_token[a]) / (b - a)
            out.append(f"{label:30s} {n_prompt:6d} new path, tokens {a}->{b}: {ms:.2f} ms/token")
            print(out[-1], flush=True)
    # A sampled run: the same seed must give the same draws on both paths.
    ids = prompt_of(model, prompts[0], 1)
    interventions = interventions_for(model, prompts[0])
    sampled = Sampling(32, temperature=1.0, freq_penalty=0.5)
    old = timed(recompute, model, ids, interventions, sampled, 7)
    new = timed(generate, model, ids, interventions, sampled, 7)
    agree, total, diff = compare(old, new)
    worst = max(worst, diff)
    identical &= old.tokens == new.tokens
    out.append(
        f"{label:24s} sampled (T=1, penalty 0.5, seed 7): {agree}/{total} tokens agree, "
        f"max logit diff {diff:.2e}"
    )
    print(out[-1], flush=True)
    results["max_logit_diff"] = worst
    results["tokens_identical"] = float(identical)
    return results


def check_pairs(keys: list[str], n_new: int) -> int:
    """Cached against recomputed generation on the fabricated pairs (nnsight, float32): one
    line per pair, `pair=<key> tokens_identical=<0|1> max_logit_diff=<float>`."""
    from neuronpedia_graph.prompts.encoding import ModelPrompts
    from neuronpedia_graph.steering import generate
    from testkit.hubcache import PAIRS

    for key in keys:
        pair = PAIRS[key]
        from neuronpedia_graph.models.loading import load_model
        from neuronpedia_graph.settings import Settings

        settings = Settings(
            model_id=pair.model_id,
            transcoder_set=pair.transcoder_set,
            device="cpu",
            backend="nnsight",
            dtype="float32",
        )
        model = load_model(settings).model
        text = pair.chat_prompt_prefix + "The city of Paris is in France . The city of Rome is"
        ids = model.ensure_tokenized(ModelPrompts(model).encode(text).ids)
        interventions = interventions_for(model, len(ids))
        worst, identical = 0.0, True
        for sampling, seed in [(Sampling(n_new), 0), (Sampling(n_new, 1.0, 0.5), 3)]:
            old = timed(recompute, model, ids, interventions, sampling, seed)
            new = timed(generate, model, ids, interventions, sampling, seed)
            worst = max(worst, compare(old, new)[2])
            identical &= old.tokens == new.tokens
        print(f"pair={key} tokens_identical={int(identical)} max_logit_diff={worst:.3g}")
        del model
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="32,1024", help="prompt lengths in tokens")
    parser.add_argument("--new", default="8,64,256", help="new-token counts")
    parser.add_argument("--dtypes", default="float32", help="float32 and/or bfloat16")
    parser.add_argument("--full-size", action="store_true", help="add Llama-3.2-1B, both backends")
    parser.add_argument("--full-prompt", type=int, default=1024, help="full-size prompt tokens")
    parser.add_argument("--full-new", type=int, default=64, help="full-size new tokens")
    parser.add_argument("--hf-home", type=Path, default=None, help="reuse or keep this cache")
    parser.add_argument(
        "--no-transformerlens",
        dest="transformerlens",
        action="store_false",
        help="skip the TransformerLens run (a small Qwen3-4B)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see docstring)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # full-size backend
    parser.add_argument(
        "--check",
        default=None,
        help="only compare cached and recomputed tokens on these fabricated pairs (nnsight)",
    )
    args = parser.parse_args(argv)
    prompts = [int(x) for x in args.prompts.split(",")]
    news = [int(x) for x in args.new.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]

    hf_home = args.hf_home or Path(tempfile.mkdtemp(prefix="bench-steer-"))
    # Before anything imports huggingface_hub, which reads these once.
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from testkit.hubcache import build

    torch.set_num_threads(args.threads)
    if args.check:
        keys = [k.strip() for k in args.check.split(",") if k.strip()]
        if args.hf_home is None or not (hf_home / "hub").exists():
            build(hf_home, keys, dtype=torch.float32)
        try:
            return check_pairs(keys, news[0])
        finally:
            if args.hf_home is None:
                shutil.rmtree(hf_home, ignore_errors=True)
    if args.child:
        model = load(args.child, "float32")
        results = bench_model(f"Llama-3.2-1B {args.child}", model, prompts[:1], news[:1], [])
        print(" ".join(f"{k}={v:.3g}" for k, v in results.items()))
        return 0

    out = [
        f"{'run':30s} {'prompt':>6s} {'new':>4s} {'gen':>4s} {'old cpu':>8s} {'new cpu':>8s} "
        f"{'speedup':>8s} {'(wall)':>8s} {'tokens':>9s} {'max |dlogit|':>10s}"
    ]
    print(out[0], flush=True)
    summary: dict[str, float] = {}
    try:
        started = time.perf_counter()
        build(hf_home, ["llama", "qwen"], dtype=torch.float32)
        print(f"# fabricated small Llama cache in {time.perf_counter() - started:.1f} s")
        for dtype in dtypes:
            model = load("nnsight", dtype)
            results = bench_model(f"small llama nnsight {dtype}", model, prompts, news, out)
            if dtype == "float32":
                summary = results
            else:
                summary[f"{dtype}_max_logit_diff"] = results["max_logit_diff"]
                summary[f"{dtype}_tokens_identical"] = results["tokens_identical"]
            del model
        if args.transformerlens:
            # TransformerLens hard-codes Llama-3.2-1B's size but reads Qwen3's config from the
            # cache, so a small Qwen3-4B exercises its path here.
            model = load("transformerlens", "float32", TL_MODEL_ID)
            results = bench_model("small qwen3 transformerlens", model, prompts, news, out)
            summary["transformerlens_speedup_1024x64"] = results.get("speedup_1024x64", 0.0)
            worst = max(summary.get("max_logit_diff", 0.0), results["max_logit_diff"])
            summary["max_logit_diff"] = worst
            summary["tokens_identical"] = min(
                summary.get("tokens_identical", 1.0), results["tokens_identical"]
            )
            del model
        if args.full_size:
            # A child per backend: HF_HOME is read once per process, and the memory is freed.
            full_home = hf_home / "full"
            build(full_home, ["llama"], full_size=True, width=512, dtype=torch.bfloat16)
            for backend in ("nnsight", "transformerlens"):
                command = [sys.executable, "-m", "bench.steer", "--child", backend]
                command += ["--hf-home", str(full_home), "--threads", str(args.threads)]
                command += ["--prompts", str(args.full_prompt), "--new", str(args.full_new)]
                child = subprocess.run(
                    command,
                    env={**os.environ, "HF_HOME": str(full_home)},
                    capture_output=True,
                    text=True,
                    check=False,
                )
                lines = [ln for ln in child.stdout.splitlines() if ln.strip()]
                out.extend(ln for ln in lines[:-1] if ln.startswith("Llama-3.2-1B"))
                if child.returncode != 0 or not lines:
                    out.append(f"Llama-3.2-1B {backend}: failed: {child.stderr[-500:]}")
                    continue
                child_fields = dict(kv.split("=") for kv in lines[-1].split())
                size = f"{args.full_prompt}x{args.full_new}"
                summary[f"full_{backend}_speedup_{size}"] = float(child_fields[f"speedup_{size}"])
                summary[f"full_{backend}_max_logit_diff"] = float(child_fields["max_logit_diff"])
    finally:
        if args.hf_home is None:
            shutil.rmtree(hf_home, ignore_errors=True)

    print()
    print("\n".join(out))
    key = "speedup_1024x64"
    fields = {key: summary.get(key, float("nan")), **{k: v for k, v in summary.items() if k != key}}
    first = ["speedup_1024x64", "max_logit_diff"]
    ordered = first + [k for k in fields if k not in first and not k.startswith("speedup_")]
    ordered += [k for k in fields if k.startswith("speedup_") and k not in first]
    print(" ".join(f"{k}={fields.get(k, float('nan')):.3g}" for k in ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
