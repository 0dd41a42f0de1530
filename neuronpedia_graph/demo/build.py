"""Rebuild the offline demo model and transcoders: `python -m neuronpedia_graph.demo.build`.

The outputs are committed, so users get a real attribution graph without downloads, a GPU or a
Hugging Face token. `--scale 0.05` shrinks every step count for a quick smoke rebuild.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch
import yaml
from safetensors.torch import save_file

from neuronpedia_graph.demo import ARTIFACTS_DIR, SCAN
from neuronpedia_graph.demo.corpus import END_OF_TURN, Corpus, Probe, build_corpus
from neuronpedia_graph.demo.tokenizer import build_tokenizer
from neuronpedia_graph.demo.train import (
    ModelHyper,
    TranscoderHyper,
    encode,
    encode_relu,
    fvu,
    mlp_io,
    next_token_probs,
    train_model,
    train_transcoder,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SEED = 0
GRAPH_PROMPT = "The city of Paris is in"
GRAPH_ANSWER = " France"


@contextmanager
def _reproducible() -> Iterator[None]:
    """One intra-op thread, deterministic algorithms and a private RNG, all restored on exit
    (the build can run inside a larger process, such as a test session).

    One thread also makes it faster: on a shared 2-core machine two threads spin against other
    work and run ~5x slower, and one thread keeps float reductions in a fixed order.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _scaled(steps: int, scale: float) -> int:
    return max(1, round(steps * scale))


def chat_probes(tokenizer: PreTrainedTokenizerFast, probes: tuple[Probe, ...]) -> list[Probe]:
    """The held-out probes asked as a chat turn (rendered with the tokenizer's template)."""
    out = []
    for p in probes:
        messages = [{"role": "user", "content": p.prompt}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out.append(Probe("chat:" + p.family, str(prompt), p.answer))
    return out


def family_quality(results: list[tuple[Probe, str, float]]) -> dict[str, dict[str, float]]:
    """Per family: top-1 accuracy, the lowest p(expected) and the number of probes."""
    groups: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for probe, top, p in results:
        groups[probe.family].append((top == probe.answer, p))
    return {
        fam: {
            "accuracy": sum(ok for ok, _ in rows) / len(rows),
            "min_p": min(p for _, p in rows),
            "n": len(rows),
        }
        for fam, rows in groups.items()
    }


def transcoder_stats(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, float]:
    """FVU and active features per token (mean and max, over non-zero positions only)."""
    with torch.no_grad():
        acts = encode_relu(params, x)
        recon = acts @ params["W_dec"] + params["b_dec"]
        l0 = (acts > 0).sum(-1).float()
    return {"fvu": fvu(recon, y), "l0_mean": float(l0.mean()), "l0_max": float(l0.max())}


def _all_train(corpus: Corpus) -> list[str]:
    return [t for texts in corpus.train.values() for t in texts]


def transcoder_texts(corpus: Corpus, tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """The texts the transcoders are fit on (chat renderings already start with bos).

    That is the whole demo corpus, held-out probes included: the transcoders describe what the
    model does on the prompts the demo is for, and the probes measure the model, not them.
    """
    plain = sorted({*_all_train(corpus), *(p.prompt + p.answer for p in corpus.heldout)})
    chat = [p.prompt + p.answer for p in chat_probes(tokenizer, corpus.heldout)]
    return plain + chat


def probe_token_ids(corpus: Corpus, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Ids of every completed probe, plain and as a chat turn: where FVU and L0 are reported."""
    texts = [p.prompt + p.answer for p in corpus.heldout]
    texts += [p.prompt + p.answer for p in chat_probes(tokenizer, corpus.heldout)]
    return encode(tokenizer, texts)


def write_transcoders(out: Path, layers: list[dict[str, torch.Tensor]]) -> Path:
    """Write layer_{i}.safetensors and a circuit-tracer config.yaml with RELATIVE file names,
    so the committed directory can live anywhere (loaders resolve against the yaml's folder)."""
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, params in enumerate(layers):
        name = f"layer_{i}.safetensors"
        save_file({k: v.float().contiguous() for k, v in params.items()}, str(out / name))
        names.append(name)
    config = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "ln2.hook_normalized",
        "feature_output_hook": "hook_mlp_out",
        "scan": SCAN,
        "transcoders": names,
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out / "config.yaml"


class GraphCheck(TypedDict):
    """The attribution check of a fresh build."""

    top_logit: str
    replacement_score: float
    completeness_score: float
    active_features: int
    attribution_s: float


class _Summary(TypedDict):
    out: str
    scale: float
    params: int
    vocab: int
    model_steps: int
    final_loss: float
    model_train_s: float
    transcoder_train_s: float
    heldout: dict[str, dict[str, float]]
    chat_heldout: dict[str, dict[str, float]]
    transcoders: list[dict[str, float]]
    transcoder_width: int
    artifact_bytes: int
    build_s: float


class BuildSummary(_Summary, total=False):
    """What a build trained, measured and wrote (`graph` only with the graph check)."""

    graph: GraphCheck


def check_graph(model_dir: Path, transcoder_dir: Path) -> GraphCheck:
    """Load the artifacts the way the service does (circuit-tracer, nnsight backend, offline)
    and attribute the canonical prompt. Everything is loaded from local directories, so no
    network is needed (run with HF_HUB_OFFLINE=1 to make sure)."""
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores
    from circuit_tracer.utils.hf_utils import load_transcoders

    from neuronpedia_graph.models.spec import local_transcoder_config

    device, dtype = torch.device("cpu"), torch.float32
    transcoders = load_transcoders(local_transcoder_config(transcoder_dir), device, dtype)
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(model_dir), transcoders, backend="nnsight", device=device, dtype=dtype
    )
    start = time.perf_counter()
    graph = attribute(
        GRAPH_PROMPT,
        model,
        max_n_logits=10,
        desired_logit_prob=0.95,
        batch_size=64,
        max_feature_nodes=1024,
        verbose=False,
    )
    seconds = time.perf_counter() - start
    replacement, completeness = compute_graph_scores(graph)
    return GraphCheck(
        top_logit=graph.logit_targets[0].token_str,
        replacement_score=replacement,
        completeness_score=completeness,
        active_features=int(graph.active_features.shape[0]),
        attribution_s=seconds,
    )


def build(
    out: Path = ARTIFACTS_DIR, scale: float = 1.0, seed: int = SEED, graph_check: bool = True
) -> BuildSummary:
    """Train and write everything under `out` (model/ and transcoders/); returns the summary."""
    started = time.perf_counter()
    model_dir, tc_dir = out / "model", out / "transcoders"
    corpus = build_corpus()
    tokenizer = build_tokenizer(corpus.all_texts())
    base = ModelHyper()
    model_hp = replace(
        base, steps=_scaled(base.steps, scale), warmup=_scaled(base.warmup, min(scale, 1.0))
    )
    tc_base = TranscoderHyper()
    tc_hp = replace(tc_base, steps=_scaled(tc_base.steps, scale))

    with _reproducible():
        t0 = time.perf_counter()
        model, final_loss = train_model(corpus, tokenizer, model_hp, seed)
        model_s = time.perf_counter() - t0
        plain = family_quality(next_token_probs(model, tokenizer, list(corpus.heldout)))
        chat = family_quality(
            next_token_probs(model, tokenizer, chat_probes(tokenizer, corpus.heldout))
        )

        t0 = time.perf_counter()
        pad = tokenizer.pad_token_id
        train_io = mlp_io(model, encode(tokenizer, transcoder_texts(corpus, tokenizer)), pad)
        eval_io = mlp_io(model, probe_token_ids(corpus, tokenizer), pad)
        layers, layer_stats = [], []
        for i, ((x, y), (ex, ey)) in enumerate(zip(train_io, eval_io, strict=True)):
            params = train_transcoder(x, y, tc_hp, seed + 1 + i)
            layers.append(params)
            layer_stats.append(transcoder_stats(params, ex, ey))
        tc_s = time.perf_counter() - t0

    model_dir.mkdir(parents=True, exist_ok=True)
    # Generation (e.g. a chat reply) should stop at the end of the model's turn, as with Gemma.
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    assert model.generation_config is not None
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end_of_turn]
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir, save_jinja_files=False)
    write_transcoders(tc_dir, layers)

    graph = check_graph(model_dir, tc_dir) if graph_check else None
    summary = BuildSummary(
        out=str(out),
        scale=scale,
        params=sum(p.numel() for p in model.parameters()),
        vocab=len(tokenizer),
        model_steps=model_hp.steps,
        final_loss=final_loss,
        model_train_s=model_s,
        transcoder_train_s=tc_s,
        heldout=plain,
        chat_heldout=chat,
        transcoders=layer_stats,
        transcoder_width=tc_hp.width,
        artifact_bytes=sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        build_s=time.perf_counter() - started,
    )
    if graph is not None:
        summary["graph"] = graph
    return summary


def format_summary(s: BuildSummary) -> str:
    lines = [
        f"demo build -> {s['out']} (scale {s['scale']})",
        f"  model: {s['params']:,} params, vocab {s['vocab']}, {s['model_steps']} steps, "
        f"final loss {s['final_loss']:.3f}, trained in {s['model_train_s']:.1f}s",
        "  held-out next token (plain prompts):",
    ]
    for fam, q in s["heldout"].items():
        lines.append(f"    {fam:<10} acc {q['accuracy']:.2f}  min p {q['min_p']:.3f}  (n={q['n']})")
    lines.append("  held-out next token (same prompts as chat turns, informative only):")
    for fam, q in s["chat_heldout"].items():
        lines.append(f"    {fam:<15} acc {q['accuracy']:.2f}  min p {q['min_p']:.3f}")
    lines.append(
        f"  transcoders: width {s['transcoder_width']}, trained in {s['transcoder_train_s']:.1f}s"
        " (on all probe tokens, plain + chat, position 0 excluded; in-sample):"
    )
    for i, t in enumerate(s["transcoders"]):
        lines.append(
            f"    layer {i}: FVU {t['fvu']:.4f}  active/token mean {t['l0_mean']:.1f} "
            f"max {t['l0_max']:.0f}"
        )
    if "graph" in s:
        g = s["graph"]
        verdict = "ok" if g["top_logit"] == GRAPH_ANSWER else f"expected {GRAPH_ANSWER!r}"
        lines.append(
            f"  graph '{GRAPH_PROMPT}': top logit {g['top_logit']!r} ({verdict}), replacement "
            f"{g['replacement_score']:.3f}, completeness {g['completeness_score']:.3f}, "
            f"{g['active_features']} active features, attribution {g['attribution_s']:.1f}s"
        )
    lines.append(
        f"  artifacts: {s['artifact_bytes'] / 1e6:.2f} MB; total build {s['build_s']:.1f}s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ARTIFACTS_DIR, help="output directory")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every step count (0.05: smoke build)"
    )
    parser.add_argument(
        "--no-graph-check", action="store_true", help="skip the circuit-tracer attribution check"
    )
    args = parser.parse_args(argv)
    summary = build(args.out, args.scale, graph_check=not args.no_graph_check)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
