"""Random-weight models under the real architectures and configs (assumption 7).

See the package docstring for what each repository holds and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from testkit.hubcache.layout import SHARD_BYTES, CacheRepo


# ------------------------------------------------------------------------------------ models
@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    vocab_size: int | None = None  # None: the tokenizer's size (small models)


SMALL = ModelShape(d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=32, d_mlp=128)


GEMMA2_2B = ModelShape(2304, 26, 8, 4, 256, 9216, 256000)


LLAMA32_1B = ModelShape(2048, 16, 32, 8, 64, 8192, 128256)


def _dims(shape: ModelShape, vocab: int) -> dict[str, int]:
    """The config fields that every architecture here names the same way."""
    return {
        "vocab_size": vocab,
        "hidden_size": shape.d_model,
        "intermediate_size": shape.d_mlp,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
    }


def _gemma2_config(shape: ModelShape, vocab: int) -> Any:
    from transformers import Gemma2Config

    return Gemma2Config(
        **_dims(shape, vocab),
        query_pre_attn_scalar=shape.head_dim,
        max_position_embeddings=8192,
        sliding_window=4096,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        architectures=["Gemma2ForCausalLM"],
    )


def _llama_config(shape: ModelShape, vocab: int, bos: int, eos: int) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **_dims(shape, vocab),
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        architectures=["LlamaForCausalLM"],
    )


def _qwen3_config(shape: ModelShape, vocab: int, eos: int) -> Any:
    from transformers import Qwen3Config

    return Qwen3Config(
        **_dims(shape, vocab),
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=eos,
        architectures=["Qwen3ForCausalLM"],
    )


def _gemma3_config(shape: ModelShape, vocab: int) -> Any:
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config={
            **_dims(shape, vocab),
            "query_pre_attn_scalar": shape.head_dim,
            "sliding_window": 1024,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        mm_tokens_per_image=4,
        boi_token_index=255_999 if vocab > 256_000 else vocab - 3,
        eoi_token_index=256_000 if vocab > 256_000 else vocab - 2,
        image_token_index=262_144 if vocab > 262_144 else vocab - 1,
        bos_token_id=2,
        eos_token_id=[1, 106],
        pad_token_id=0,
        architectures=["Gemma3ForConditionalGeneration"],
    )


def _init_value(name: str, shape: torch.Size, gemma: bool, dtype: torch.dtype, gen) -> torch.Tensor:
    if len(shape) == 1 and "norm" in name:
        return torch.full(shape, 0.0 if gemma else 1.0, dtype=dtype)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    return torch.empty(shape, dtype=dtype).normal_(0.0, 0.02, generator=gen)


def write_model(
    repo: CacheRepo, config: Any, dtype: torch.dtype, seed: int, shard_bytes: int = SHARD_BYTES
) -> int:
    """Write config.json, generation_config.json and random safetensors weights, shard by shard.

    Only one shard is ever in memory, so a full-size model is written in a few GB of RAM.

    Returns:
        The number of parameters written.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.device("meta"):
        meta_model = AutoModelForCausalLM.from_config(config)
    params = [(n, p.shape) for n, p in meta_model.named_parameters()]  # tied weights once
    del meta_model
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    size = 0
    for name, shape in params:
        nbytes = int(np.prod(shape)) * itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    gemma = config.model_type.startswith("gemma")
    gen = torch.Generator().manual_seed(seed)
    names = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map: dict[str, str] = {}
    for filename, shard in zip(names, shards, strict=True):
        tensors = {name: _init_value(name, shape, gemma, dtype, gen) for name, shape in shard}
        repo.put_tensors(filename, tensors)
        weight_map.update(dict.fromkeys(tensors, filename))
        del tensors
    if len(shards) > 1:
        total = sum(int(np.prod(s)) * itemsize for _, s in params)
        repo.put_json(
            "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )
    config.dtype = str(dtype).removeprefix("torch.")
    repo.put_text("config.json", config.to_json_string())
    repo.put_text(
        "generation_config.json", GenerationConfig.from_model_config(config).to_json_string()
    )
    return sum(int(np.prod(s)) for _, s in params)
