"""The model and transcoder-set pairs, and `build`, which writes a whole cache.

See the package docstring for what each repository holds and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from testkit.hubcache.layout import CacheRepo
from testkit.hubcache.models import (
    GEMMA2_2B,
    LLAMA32_1B,
    SMALL,
    ModelShape,
    _gemma2_config,
    _gemma3_config,
    _llama_config,
    _qwen3_config,
    write_model,
)
from testkit.hubcache.tokenizers import (
    QWEN_CHAT_TEMPLATE,
    RESERVED,
    _save_tokenizer,
    bpe_tokenizer,
    gemma_tokenizer,
)
from testkit.hubcache.transcoders import (
    write_clt,
    write_gemmascope,
    write_gemmascope2,
    write_llama_transcoders,
    write_qwen_transcoders,
)


# ------------------------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class Pair:
    """A model + transcoder set, as a server is started with them."""

    key: str
    model_id: str
    transcoder_set: str | None  # None: the model's default set
    scan: str
    has_chat_template: bool
    chat_prompt_prefix: str = ""  # what a plain prompt needs (gemma-3-it: the user turn)


PAIRS: dict[str, Pair] = {
    p.key: p
    for p in (
        Pair("gemma", "google/gemma-2-2b", None, "gemma-2-2b", True),
        Pair("llama", "meta-llama/Llama-3.2-1B", None, "llama-3-131k-relu", False),
        Pair("clt", "google/gemma-2-2b", "mntss/clt-gemma-2-2b-2.5M", "gemma-2-2b", True),
        Pair("qwen", "Qwen/Qwen3-4B", None, "qwen3-4b", True),
        Pair(
            "gemma3",
            "google/gemma-3-4b-it",
            None,
            "gemma-3-4b-it",
            True,
            chat_prompt_prefix="<start_of_turn>user\n",
        ),
    )
}


def _gemma2_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "google/gemma-2-2b")
    tokenizer = gemma_tokenizer(
        {
            0: "<pad>",
            1: "<eos>",
            2: "<bos>",
            3: "<unk>",
            106: "<start_of_turn>",
            107: "<end_of_turn>",
        }
    )
    _save_tokenizer(repo, tokenizer)
    write_model(repo, _gemma2_config(shape, shape.vocab_size or len(tokenizer)), dtype, seed)


def _llama_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "meta-llama/Llama-3.2-1B")
    specials = [
        RESERVED,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    tokenizer = bpe_tokenizer(specials, 420, "<|begin_of_text|>", "<|end_of_text|>", None, None)
    _save_tokenizer(repo, tokenizer)
    config = _llama_config(
        shape, shape.vocab_size or len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    write_model(repo, config, dtype, seed)


def _qwen3_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "Qwen/Qwen3-4B")
    specials = [RESERVED, "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tokenizer = bpe_tokenizer(
        specials, 420, None, "<|im_end|>", "<|endoftext|>", QWEN_CHAT_TEMPLATE
    )
    _save_tokenizer(repo, tokenizer)
    config = _qwen3_config(shape, shape.vocab_size or len(tokenizer), tokenizer.eos_token_id)
    write_model(repo, config, dtype, seed)


def _gemma3_model(hf_home: Path, shape: ModelShape, dtype: torch.dtype, seed: int) -> None:
    repo = CacheRepo(hf_home, "google/gemma-3-4b-it")
    fixed = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>", 105: "<start_of_turn>"}
    fixed |= {106: "<end_of_turn>", 107: "\n", 2364: "user"}
    tokenizer = gemma_tokenizer(fixed)
    _save_tokenizer(repo, tokenizer)
    write_model(repo, _gemma3_config(shape, shape.vocab_size or len(tokenizer)), dtype, seed)


def build(
    hf_home: Path | str,
    pairs: Iterable[str] = tuple(PAIRS),
    *,
    full_size: bool = False,
    width: int = 64,
    target_l0: float = 8.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, Pair]:
    """Write the models and transcoder sets of `pairs` into the hub cache under `hf_home`.

    Args:
        hf_home: the directory to use as HF_HOME (created if missing).
        pairs: keys of PAIRS.
        full_size: the real architectures (gemma and llama only; for TransformerLens).
        width: transcoder features per layer.
        target_l0: expected active features per token and layer on a unit-RMS input.
        dtype: dtype of the model weights (transcoders are float32, like the published ones).
        seed: all random values derive from it.

    Returns:
        The pairs written, by key.
    """
    hf_home = Path(hf_home)
    keys = list(dict.fromkeys(pairs))
    unknown = [k for k in keys if k not in PAIRS]
    if unknown:
        raise ValueError(f"unknown pairs {unknown}; choose from {sorted(PAIRS)}")
    if full_size and set(keys) - {"gemma", "llama", "clt"}:
        raise ValueError("full size is available for gemma-2-2b (gemma, clt) and llama only")
    tc = dict(width=width, seed=seed + 1, target_l0=target_l0)
    gemma_shape = GEMMA2_2B if full_size else SMALL
    done: set[str] = set()
    for key in keys:
        if key in ("gemma", "clt") and "gemma2" not in done:
            _gemma2_model(hf_home, gemma_shape, dtype, seed)
            done.add("gemma2")
        if key == "gemma":
            write_gemmascope(hf_home, gemma_shape.n_layers, gemma_shape.d_model, **tc)
        elif key == "clt":
            write_clt(hf_home, gemma_shape.n_layers, gemma_shape.d_model, **tc)
        elif key == "llama":
            shape = LLAMA32_1B if full_size else SMALL
            _llama_model(hf_home, shape, dtype, seed)
            write_llama_transcoders(hf_home, shape.n_layers, shape.d_model, **tc)
        elif key == "qwen":
            _qwen3_model(hf_home, SMALL, dtype, seed)
            write_qwen_transcoders(hf_home, SMALL.n_layers, SMALL.d_model, **tc)
        elif key == "gemma3":
            _gemma3_model(hf_home, SMALL, dtype, seed)
            write_gemmascope2(hf_home, SMALL.n_layers, SMALL.d_model, **tc)
    return {k: PAIRS[k] for k in keys}
