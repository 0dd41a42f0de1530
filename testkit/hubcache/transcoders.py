"""Transcoder sets in the layouts circuit-tracer's loaders read (assumptions 1-6).

See the package docstring for what each repository holds and why.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testkit.hubcache.layout import CacheRepo


# ------------------------------------------------------------------------------ transcoders
def _threshold(width: int, target_l0: float) -> float:
    """Pre-activation cut so ~target_l0 of `width` N(0, 1) pre-activations exceed it."""
    return statistics.NormalDist().inv_cdf(1.0 - min(target_l0 / width, 0.5))


def _plt_tensors(
    d_model: int, width: int, gen, target_l0: float, skip: bool, jumprelu: bool
) -> dict[str, torch.Tensor]:
    cut = _threshold(width, target_l0)
    tensors = {
        "W_enc": torch.randn(width, d_model, generator=gen) / d_model**0.5,
        "W_dec": torch.randn(width, d_model, generator=gen) * 0.02,
        "b_enc": torch.zeros(width) if jumprelu else torch.full((width,), -cut),
        "b_dec": torch.zeros(d_model),
    }
    if jumprelu:
        tensors["activation_function.threshold"] = torch.full((width,), cut)
    if skip:
        tensors["W_skip"] = torch.randn(d_model, d_model, generator=gen) * 0.01
    return tensors


def _config_yaml(
    model_kind: str,
    input_hook: str,
    output_hook: str,
    scan: str,
    transcoders: list[str] | None = None,
) -> dict[str, Any]:
    """A transcoder config.yaml as circuit-tracer reads it; no `transcoders`: file discovery."""
    config: dict[str, Any] = {
        "model_kind": model_kind,
        "feature_input_hook": input_hook,
        "feature_output_hook": output_hook,
        "scan": scan,
    }
    if transcoders is not None:
        config["transcoders"] = transcoders
    return config


def write_gemmascope(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """`gemma` = mwhanna/gemma-scope-transcoders -> google/gemma-scope-2b-pt-transcoders npz."""
    params = CacheRepo(hf_home, "google/gemma-scope-2b-pt-transcoders")
    gen = torch.Generator().manual_seed(seed)
    uris = []
    for layer in range(n_layers):
        path = f"layer_{layer}/width_16k/average_l0_{40 + (layer * 37) % 60}/params.npz"
        t = _plt_tensors(d_model, width, gen, target_l0, skip=False, jumprelu=True)
        arrays = {
            "W_enc": t["W_enc"].T.contiguous().numpy(),
            "W_dec": t["W_dec"].numpy(),
            "b_enc": t["b_enc"].numpy(),
            "b_dec": t["b_dec"].numpy(),
            "threshold": t["activation_function.threshold"].numpy(),
        }
        params.put(path, lambda p, a=arrays: _savez(p, a))
        uris.append(f"hf://google/gemma-scope-2b-pt-transcoders/{path}")
    CacheRepo(hf_home, "mwhanna/gemma-scope-transcoders").put_yaml(
        "config.yaml",
        _config_yaml("transcoder_set", "ln2.hook_normalized", "hook_mlp_out", "gemma-2-2b", uris),
    )


def _savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def _write_layer_files(
    hf_home: Path,
    repo_id: str,
    n_layers: int,
    d_model: int,
    width: int,
    seed: int,
    target_l0: float,
    *,
    jumprelu: bool,
    scan: str,
    list_files: bool,
) -> None:
    """A per-layer transcoder set in the repository itself: `layer_{i}.safetensors` files.

    Args:
        list_files: name the files in config.yaml as hf:// URIs; False leaves circuit-tracer
            to discover them (`layer_*`), so both of its paths are exercised.
    """
    repo = CacheRepo(hf_home, repo_id)
    gen = torch.Generator().manual_seed(seed)
    names = [f"layer_{layer}.safetensors" for layer in range(n_layers)]
    for name in names:
        repo.put_tensors(
            name, _plt_tensors(d_model, width, gen, target_l0, skip=True, jumprelu=jumprelu)
        )
    uris = [f"hf://{repo_id}/{name}" for name in names] if list_files else None
    repo.put_yaml(
        "config.yaml", _config_yaml("transcoder_set", "mlp.hook_in", "mlp.hook_out", scan, uris)
    )


def write_llama_transcoders(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """`llama` = mntss/transcoder-Llama-3.2-1B: layer_{i}.safetensors found by discovery."""
    _write_layer_files(
        hf_home,
        "mntss/transcoder-Llama-3.2-1B",
        n_layers,
        d_model,
        width,
        seed,
        target_l0,
        jumprelu=False,
        scan="llama-3-131k-relu",
        list_files=False,
    )


def write_qwen_transcoders(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """mwhanna/qwen3-4b-transcoders: layer files listed as hf:// URIs of the same repository."""
    _write_layer_files(
        hf_home,
        "mwhanna/qwen3-4b-transcoders",
        n_layers,
        d_model,
        width,
        seed,
        target_l0,
        jumprelu=True,
        scan="qwen3-4b",
        list_files=True,
    )


def write_clt(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """mntss/clt-gemma-2-2b-2.5M: a cross-layer transcoder in the repository itself."""
    repo = CacheRepo(hf_home, "mntss/clt-gemma-2-2b-2.5M")
    gen = torch.Generator().manual_seed(seed)
    cut = _threshold(width, target_l0)
    for layer in range(n_layers):
        repo.put_tensors(
            f"W_enc_{layer}.safetensors",
            {
                f"W_enc_{layer}": torch.randn(width, d_model, generator=gen) / d_model**0.5,
                f"b_enc_{layer}": torch.zeros(width),
                f"b_dec_{layer}": torch.zeros(d_model),
                f"threshold_{layer}": torch.full((width,), cut),
            },
        )
        repo.put_tensors(
            f"W_dec_{layer}.safetensors",
            {f"W_dec_{layer}": torch.randn(width, n_layers - layer, d_model, generator=gen) * 0.02},
        )
    repo.put_yaml(
        "config.yaml",
        _config_yaml("cross_layer_transcoder", "hook_resid_mid", "hook_mlp_out", "gemma-2-2b-clt"),
    )


GEMMA3_SUBFOLDER = "transcoder_all/width_262k_l0_small_affine"


def write_gemmascope2(
    hf_home: Path, n_layers: int, d_model: int, width: int, seed: int, target_l0: float
) -> None:
    """The gemma-scope-2-4b-it set: mwhanna config.yaml -> google params.safetensors files."""
    params = CacheRepo(hf_home, "google/gemma-scope-2-4b-it")
    gen = torch.Generator().manual_seed(seed)
    uris = []
    for layer in range(n_layers):
        path = f"transcoder_all/layer_{layer}_width_262k_l0_small_affine/params.safetensors"
        t = _plt_tensors(d_model, width, gen, target_l0, skip=True, jumprelu=True)
        params.put_tensors(
            path,
            {
                "w_enc": t["W_enc"].T.contiguous(),
                "w_dec": t["W_dec"],
                "b_enc": t["b_enc"],
                "b_dec": t["b_dec"],
                "threshold": t["activation_function.threshold"],
                "affine_skip_connection": t["W_skip"].T.contiguous(),
            },
        )
        uris.append(f"hf://google/gemma-scope-2-4b-it/{path}")
    CacheRepo(hf_home, "mwhanna/gemma-scope-2-4b-it").put_yaml(
        f"{GEMMA3_SUBFOLDER}/config.yaml",
        _config_yaml("transcoder_set", "mlp.hook_in", "hook_mlp_out", "gemma-3-4b-it", uris),
    )
