"""Training of the demo Gemma-2 model and its per-layer ReLU transcoders.

Everything is driven by fixed seeds and fixed step counts (never wall-clock budgets), so a rebuild
on the same machine reproduces the committed artifacts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast
from transformers.models.gemma2.modeling_gemma2 import Gemma2DecoderLayer, Gemma2RMSNorm

from neuronpedia_graph.demo.corpus import Corpus, Probe

# Share of each training batch per corpus family: the facts need more repetitions than their
# share of distinct examples would give them.
FAMILY_WEIGHTS: dict[str, float] = {
    "counting": 0.12,
    "cities": 0.22,
    "addition": 0.27,
    "opposites": 0.10,
    "plurals": 0.14,
    "chat": 0.15,
}
# Each batch runs as this many length buckets, each trimmed to its own longest row.
LENGTH_BUCKETS = 2


@dataclass(frozen=True)
class ModelHyper:
    """Model size and optimiser settings."""

    hidden: int = 64
    intermediate: int = 384
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    max_positions: int = 512
    steps: int = 1000
    batch: int = 128
    lr: float = 4e-3
    warmup: int = 100
    weight_decay: float = 0.1


@dataclass(frozen=True)
class TranscoderHyper:
    """Transcoder width, sparsity penalty and optimiser settings."""

    width: int = 512
    steps: int = 3000
    batch: int = 256
    lr: float = 2e-2
    l1: float = 1e-3
    # Penalty tanh(tanh_scale * a * |d|): close to L0 for large activations, so strong features
    # are not shrunk, which buys much lower FVU per active feature than plain L1.
    tanh_scale: float = 1.0


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch globally (weight init) and return a generator for data sampling.

    This changes process-wide torch state; `build` runs it inside a context that restores it.
    """
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    return torch.Generator().manual_seed(seed)


def make_config(tokenizer: PreTrainedTokenizerFast, hp: ModelHyper) -> Gemma2Config:
    """A Gemma-2 config shrunk to demo size. The sliding window spans the whole context, so
    both layer types see the same causal mask (the training loop relies on it)."""
    return Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hp.hidden,
        intermediate_size=hp.intermediate,
        num_hidden_layers=hp.layers,
        num_attention_heads=hp.heads,
        num_key_value_heads=hp.kv_heads,
        head_dim=hp.head_dim,
        query_pre_attn_scalar=hp.head_dim,
        max_position_embeddings=hp.max_positions,
        sliding_window=hp.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
        attn_implementation="eager",
        architectures=["Gemma2ForCausalLM"],
        torch_dtype="float32",
    )


def encode(tokenizer: PreTrainedTokenizerFast, texts: list[str] | tuple[str, ...]) -> torch.Tensor:
    """Right-padded ids, shape (n, longest), each row starting with exactly one bos (texts
    rendered by the chat template already carry theirs)."""
    bos = tokenizer.bos_token
    texts = [t if t.startswith(bos) else bos + t for t in texts]
    ids: torch.Tensor = tokenizer(
        texts, add_special_tokens=False, padding=True, return_tensors="pt"
    ).input_ids
    return ids


def causal_masks(width: int) -> dict[str, torch.Tensor]:
    """Additive causal masks for both Gemma-2 layer types (the sliding window covers every
    demo sequence). Passing them ready-made skips transformers' per-call mask construction,
    which costs more than the tiny model's own forward pass."""
    mask = torch.full((width, width), torch.finfo(torch.float32).min).triu(1)[None, None]
    return {"full_attention": mask, "sliding_attention": mask}


def lm_loss(model: Gemma2ForCausalLM, ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean next-token loss over real tokens only.

    Padding is on the right, so causal attention never lets a real position see it and no
    attention mask is needed. Rows run in length buckets, each trimmed to its own longest row:
    the few long chat rows would otherwise pad every row of the batch.
    """
    lengths = (ids != pad_id).sum(1)
    order = lengths.argsort(stable=True)
    total = torch.zeros(())
    for chunk in order.chunk(LENGTH_BUCKETS):
        rows = ids[chunk, : int(lengths[chunk].max())]
        logits = model(input_ids=rows, attention_mask=causal_masks(rows.shape[1])).logits[:, :-1]
        targets = rows[:, 1:]
        keep = targets != pad_id
        total = total + F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return total / (lengths - 1).sum()


def _lr_at(step: int, hp: ModelHyper | TranscoderHyper, warmup: int) -> float:
    if step < warmup:
        return hp.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, hp.steps - warmup)
    return hp.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_model(
    corpus: Corpus, tokenizer: PreTrainedTokenizerFast, hp: ModelHyper, seed: int
) -> tuple[Gemma2ForCausalLM, float]:
    """Train the LM from scratch; returns the model (eval mode) and its final training loss."""
    gen = seed_everything(seed)
    model = Gemma2ForCausalLM(make_config(tokenizer, hp))
    model.train()
    families = list(FAMILY_WEIGHTS)
    all_ids = encode(tokenizer, [t for f in families for t in corpus.train[f]])
    encoded, offset = {}, 0
    for f in families:
        encoded[f] = all_ids[offset : offset + len(corpus.train[f])]
        offset += len(corpus.train[f])
    weights = torch.tensor([FAMILY_WEIGHTS[f] for f in families])
    opt = torch.optim.AdamW(
        model.parameters(), lr=hp.lr, betas=(0.9, 0.98), weight_decay=hp.weight_decay
    )
    loss = torch.tensor(float("nan"))
    for step in range(hp.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, hp, hp.warmup)
        counts = torch.bincount(
            torch.multinomial(weights, hp.batch, replacement=True, generator=gen),
            minlength=len(families),
        ).tolist()
        rows: list[torch.Tensor] = []
        for family, count in zip(families, counts, strict=True):
            data = encoded[family]
            pick = torch.randint(len(data), (count,), generator=gen)
            rows.extend(data[pick])
        loss = lm_loss(model, torch.stack(rows), tokenizer.pad_token_id)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    return model, float(loss)


@torch.no_grad()
def next_token_probs(
    model: Gemma2ForCausalLM, tokenizer: PreTrainedTokenizerFast, probes: list[Probe]
) -> list[tuple[Probe, str, float]]:
    """For each probe: the model's top-1 next token (decoded) and p(expected answer)."""
    out = []
    for probe in probes:
        templated = probe.prompt.startswith(tokenizer.bos_token)  # chat prompts carry their bos
        ids = tokenizer(probe.prompt, return_tensors="pt", add_special_tokens=not templated)
        ids = ids.input_ids.to(model.device)
        probs = model(input_ids=ids).logits[0, -1].float().softmax(-1)
        answer_ids = tokenizer(probe.answer, add_special_tokens=False).input_ids
        assert len(answer_ids) == 1, f"answer {probe.answer!r} is not a single token"
        top = tokenizer.decode([int(probs.argmax())])
        out.append((probe, top, float(probs[answer_ids[0]])))
    return out


@torch.no_grad()
def mlp_io(
    model: Gemma2ForCausalLM, ids: torch.Tensor, pad_id: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the transcoder's (input, target) over real tokens, position 0 excluded.

    Input is circuit-tracer's `ln2.hook_normalized` for Gemma-2 under nnsight: the output of
    `pre_feedforward_layernorm._norm`, i.e. the RMS-normalised MLP input before the (1 + w)
    scale. Target is `hook_mlp_out`: the output of `post_feedforward_layernorm`, i.e. what the
    MLP block adds to the residual stream. Position 0 (bos) is zeroed in attribution anyway.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        if not isinstance(layer, Gemma2DecoderLayer):
            raise TypeError(f"layer {i} is a {type(layer).__name__}, not a Gemma2DecoderLayer")
        pre, post = layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm

        def grab_in(
            _module: torch.nn.Module,
            args: tuple[torch.Tensor, ...],
            _out: torch.Tensor,
            key: str = f"in{i}",
            norm: Gemma2RMSNorm = pre,
        ) -> None:
            captured[key] = norm._norm(args[0].float())

        def grab_out(
            _module: torch.nn.Module,
            _args: tuple[torch.Tensor, ...],
            out: torch.Tensor,
            key: str = f"out{i}",
        ) -> None:
            captured[key] = out.float()

        handles.append(pre.register_forward_hook(grab_in))
        handles.append(post.register_forward_hook(grab_out))
    try:
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    keep = ids != pad_id
    keep[:, 0] = False
    n_layers = len(model.model.layers)
    return [(captured[f"in{i}"][keep], captured[f"out{i}"][keep]) for i in range(n_layers)]


def fvu(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of variance unexplained, pooled over all dimensions."""
    resid = (target - pred).pow(2).sum()
    total = (target - target.mean(0)).pow(2).sum()
    return float(resid / total)


def encode_relu(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Feature activations exactly as circuit-tracer computes them for a threshold-less file."""
    return F.relu(F.linear(x, params["W_enc"], params["b_enc"]))


def decode(params: Mapping[str, torch.Tensor], acts: torch.Tensor) -> torch.Tensor:
    return acts @ params["W_dec"] + params["b_dec"]


def train_transcoder(
    x: torch.Tensor, y: torch.Tensor, hp: TranscoderHyper, seed: int
) -> dict[str, torch.Tensor]:
    """Train one ReLU transcoder x -> y with a sparsity penalty weighted by decoder norms.

    Weighting by decoder norm stops the optimiser from dodging the penalty by shrinking
    activations and growing decoder rows. The activation stays a plain ReLU (no threshold is
    saved), which is what circuit-tracer applies to a file without one.
    """
    gen = seed_everything(seed)
    w_dec = F.normalize(torch.randn(hp.width, x.shape[1], generator=gen), dim=1) * 0.1
    params = {
        "W_enc": torch.nn.Parameter(w_dec * x.shape[1] ** 0.5),
        "W_dec": torch.nn.Parameter(w_dec.clone()),
        "b_enc": torch.nn.Parameter(torch.zeros(hp.width)),
        "b_dec": torch.nn.Parameter(y.mean(0).clone()),
    }
    opt = torch.optim.Adam(params.values(), lr=hp.lr)
    y_var = (y - y.mean(0)).pow(2).sum(-1).mean()
    for step in range(hp.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, hp, warmup=min(100, hp.steps // 10 + 1))
        pick = torch.randint(len(x), (min(hp.batch, len(x)),), generator=gen)
        acts = encode_relu(params, x[pick])
        mse = (decode(params, acts) - y[pick]).pow(2).sum(-1).mean() / y_var
        scaled = acts * params["W_dec"].norm(dim=1)
        if hp.tanh_scale:
            scaled = torch.tanh(hp.tanh_scale * scaled)
        loss = mse + hp.l1 * scaled.sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return refit_decoder({k: v.detach() for k, v in params.items()}, x, y)


def refit_decoder(
    params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Least-squares refit of W_dec and b_dec with the encoder frozen.

    The sparsity penalty shrinks activations; with the sparsity pattern fixed, the best decoder for
    those activations is a linear regression, which removes most of that shrinkage error.
    Never-active features keep their decoder rows (the regression cannot see them).
    """
    with torch.no_grad():
        acts = encode_relu(params, x)
        alive = (acts > 0).any(0)
        design = torch.cat([acts[:, alive], torch.ones(len(x), 1)], dim=1)
        # gelsd copes with collinear features (min-norm solution); the build runs on CPU.
        solution = torch.linalg.lstsq(design.double(), y.double(), driver="gelsd").solution.float()
        w_dec = params["W_dec"].clone()
        w_dec[alive] = solution[:-1]
        return {**params, "W_dec": w_dec.contiguous(), "b_dec": solution[-1].contiguous()}
