"""Load the ReplacementModel the server uses: a preset, any Hub model, a local dir, or the demo.

Hub transcoder sets are resolved from the local cache first (`hub_offline`), so a warm cache
starts with no network at all. torch is imported lazily, inside the functions.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from neuronpedia_graph.models.spec import (
    ModelLoadError,
    ModelSpec,
    local_transcoder_config,
    preflight,
    resolve_spec,
    token_note,
)
from neuronpedia_graph.settings import Settings

if TYPE_CHECKING:
    import torch

    from neuronpedia_graph.models.protocols import ReplacementModelLike, Tokenizer, Transcoders


@dataclass
class LoadedModel:
    """A loaded replacement model plus the facts every request needs about it."""

    model: ReplacementModelLike
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    d_transcoder: int
    load_seconds: float

    @property
    def tokenizer(self) -> Tokenizer:
        return self.model.tokenizer


def circuit_tracer_version() -> str:
    return version("circuit-tracer")


def resolve_device(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"DEVICE={name} was requested but CUDA is not available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """bfloat16 halves GPU memory at no cost in quality; on CPU it is ~2.6x slower, so float32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load_local_transcoders(
    directory: Path, settings: Settings, device: torch.device, dtype: torch.dtype
) -> Transcoders:
    from circuit_tracer.utils.hf_utils import load_transcoders

    from neuronpedia_graph.models.protocols import as_transcoders

    config = local_transcoder_config(directory)
    config.setdefault("scan", directory.name)
    return as_transcoders(
        load_transcoders(config, device, dtype, settings.lazy_encoder, settings.lazy_decoder)
    )


def load_model(settings: Settings, spec: ModelSpec | None = None) -> LoadedModel:
    """Load the configured model once; raises ModelLoadError with a one-line reason."""
    import torch

    spec = spec or resolve_spec(settings)
    if settings.hf_token is not None:
        os.environ.setdefault("HF_TOKEN", settings.hf_token.get_secret_value())
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    preflight(spec)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    started = time.perf_counter()

    from circuit_tracer import ReplacementModel

    from neuronpedia_graph.models import hub_offline
    from neuronpedia_graph.models.nnsight_compat import mapped_multimodal_allowed
    from neuronpedia_graph.models.protocols import transcoder_width

    try:
        if spec.transcoder_is_local:
            transcoders = _load_local_transcoders(
                Path(spec.transcoder_ref).expanduser(), settings, device, dtype
            )
        else:
            transcoders = hub_offline.load_hub_transcoders(
                spec.transcoder_ref,
                spec.transcoder_hub_ref or spec.transcoder_ref,
                device=device,
                dtype=dtype,
                lazy_encoder=settings.lazy_encoder,
                lazy_decoder=settings.lazy_decoder,
            )
        with mapped_multimodal_allowed(spec.backend, _model_architecture(spec)):
            model = ReplacementModel.from_pretrained_and_transcoders(
                spec.model_path, transcoders, backend=spec.backend, device=device, dtype=dtype
            )
    except ModelLoadError:
        raise
    except hub_offline.HubFilesMissing as exc:
        raise ModelLoadError(f"Transcoder set '{spec.transcoder_ref}': {exc}") from None
    except Exception as exc:
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        if isinstance(exc, (HfHubHTTPError, LocalEntryNotFoundError, OSError)):
            raise ModelLoadError(
                f"Loading '{spec.model_id}' with transcoders '{spec.transcoder_ref}' failed: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                f"({token_note()})"
            ) from exc
        raise
    return LoadedModel(
        model=model,
        spec=spec,
        device=device,
        dtype=dtype,
        n_layers=int(model.cfg.n_layers),
        d_transcoder=transcoder_width(transcoders),
        load_seconds=time.perf_counter() - started,
    )


def _model_architecture(spec: ModelSpec) -> str | None:
    """`architectures[0]` of the model's config.json (local or cached), None if unreadable."""
    import json

    from neuronpedia_graph.models import hub_offline

    if spec.model_is_local:
        path: str | None = str(Path(spec.model_path) / "config.json")
    else:
        path = hub_offline.cached_path(spec.model_path, "config.json")
    try:
        with open(path or "", encoding="utf-8") as fh:
            architectures = json.load(fh).get("architectures") or [None]
    except (OSError, ValueError):
        return None
    first = architectures[0]
    return first if isinstance(first, str) else None
