"""The typed boundary to circuit-tracer's replacement model and the Hugging Face tokenizer.

circuit-tracer 0.5.0's `ReplacementModel` is a factory: a loaded model is an instance of one of
two backend classes (`NNSightReplacementModel`, a subclass of nnsight's untyped
`LanguageModel`, or `TransformerLensReplacementModel`, a `HookedTransformer`) that share no
declared type. These Protocols name exactly the members our code uses, so mypy checks every
use against one description instead of letting `Any` through, and
tests/test_model_protocols.py checks that both backend classes (and a real tokenizer) have
them, with signatures that accept the calls we make.

Backend-specific internals (the key/value cache reaches into each backend's own modules, and
steering swaps the nnsight model's tokenizer) are not in the Protocol: `as_nnsight`,
`as_transformerlens` and `backend_model` narrow a model to its real class, imported lazily, for
the few places that need it. Nothing heavy is imported at runtime here.

Why the backend classes are not also checked against the Protocol by mypy: nnsight ships no
types, so to mypy `NNSightReplacementModel` derives from `Any` and conforms to any Protocol
(such a check passes vacuously); and `TransformerLensReplacementModel` fails it for reasons of
its stubs, not its behaviour (torch types a bare `@torch.no_grad` decorator as returning a
`no_grad` object rather than the function, and `HookedTransformer.tokenizer` is declared
Optional). The runtime test checks both classes instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    import torch
    from circuit_tracer.replacement_model.replacement_model_nnsight import (
        NNSightReplacementModel,
    )
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

#: The backends circuit-tracer 0.5.0 offers (its `replacement_model.Backend`).
Backend: TypeAlias = Literal["nnsight", "transformerlens"]

#: One of circuit-tracer's (layer, position, feature index, value) interventions, as we build
#: them (circuit-tracer's own alias also admits tensors in every slot).
Intervention: TypeAlias = tuple[int, int | slice, int, float]

#: The backend classes themselves, for the calls circuit-tracer annotates with them
#: (`attribute`) and for backend-specific internals.
BackendModel: TypeAlias = "NNSightReplacementModel | TransformerLensReplacementModel"


#: A loaded transcoder set, as circuit-tracer's loaders return it.
Transcoders: TypeAlias = "TranscoderSet | CrossLayerTranscoder"


class Tokenizer(Protocol):
    """The members of a Hugging Face tokenizer that our code uses.

    Special-token ids and strings are None when the tokenizer has no such token. Text is
    always encoded with `add_special_tokens=False`: circuit-tracer adds its own BOS.
    """

    @property
    def bos_token(self) -> str | None: ...
    @property
    def bos_token_id(self) -> int | None: ...
    @property
    def eos_token_id(self) -> int | None: ...
    @property
    def pad_token_id(self) -> int | None: ...
    @property
    def unk_token(self) -> str | None: ...
    @property
    def unk_token_id(self) -> int | None: ...
    @property
    def all_special_ids(self) -> list[int]: ...
    @property
    def all_special_tokens(self) -> list[str]: ...
    @property
    def chat_template(self) -> str | dict[str, str] | None: ...
    @property
    def name_or_path(self) -> str: ...

    def __len__(self) -> int: ...
    def get_vocab(self) -> dict[str, int]: ...
    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...
    def decode(self, token_ids: list[int]) -> str: ...

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        *,
        tokenize: bool = ...,
        add_generation_prompt: bool = ...,
        continue_final_message: bool = ...,
    ) -> object:
        """Renders a conversation; with `tokenize=False` a string (its declared return type
        is a union over every mode, so callers convert with `str`)."""
        ...


class ModelConfig(Protocol):
    """The model facts we read from a replacement model's config (`cfg`, `model_config`):
    TransformerLens's `HookedTransformerConfig` or circuit-tracer's `UnifiedConfig`."""

    @property
    def n_layers(self) -> int: ...
    @property
    def d_vocab(self) -> int: ...
    @property
    def model_name(self) -> str: ...


class AttributionContext(Protocol):
    """What `jobs.progress` reads and wraps on the context `setup_attribution` returns (each
    backend has its own `AttributionContext` class)."""

    @property
    def activation_matrix(self) -> torch.Tensor:
        """The prompt's active features, a sparse (layer, position, feature) tensor."""
        ...

    # An attribute, not a method: progress tracking replaces it on the instance.
    compute_batch: Callable[..., torch.Tensor]


class ReplacementModelLike(Protocol):
    """The part of circuit-tracer 0.5.0's replacement model our code uses, on either backend.

    Tokens: `ensure_tokenized` gives the 1-D ids circuit-tracer runs (its BOS first).
    Features: `get_activations` gives (logits, activations); `feature_intervention` runs a
    forward pass with (layer, position, feature, value) interventions. Attribution:
    `setup_attribution` and `run_forward_pass` are what `attribute()` calls (progress tracking
    wraps them). Graphs stored and rebuilt need `model_config`, `scan` and `unembed_proj`.
    """

    @property
    def backend(self) -> Backend: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def cfg(self) -> ModelConfig: ...
    @property
    def model_config(self) -> ModelConfig: ...
    @property
    def scan(self) -> str | list[str] | None: ...
    @property
    def unembed_proj(self) -> torch.Tensor:
        """The unembedding matrix (d_model, d_vocab)."""
        ...

    def ensure_tokenized(self, prompt: str | torch.Tensor | list[int]) -> torch.Tensor: ...

    def get_activations(
        self, inputs: str | torch.Tensor, sparse: bool = ...
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def feature_intervention(
        self,
        inputs: str | torch.Tensor,
        interventions: Sequence[Intervention],
        *,
        freeze_attention: bool = ...,
        return_activations: bool = ...,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def setup_attribution(self, inputs: str | torch.Tensor) -> AttributionContext: ...

    def run_forward_pass(
        self, input_ids: torch.Tensor, batch_size: int, ctx: AttributionContext
    ) -> None: ...


def backend_model(model: ReplacementModelLike) -> BackendModel:
    """`model` as the backend class it is, for calls typed with those classes (`attribute`).

    Raises:
        TypeError: `model` is not an instance of its backend's class.
    """
    # Not `or`: an nnsight model's truth value is its module's length, which it may lack.
    instance: BackendModel | None = as_nnsight(model)
    if instance is None:
        instance = as_transformerlens(model)
    if instance is None:
        raise TypeError(
            f"{type(model).__name__} is not circuit-tracer's {model.backend} replacement model"
        )
    return instance


# The two narrowings below test an `object`: nnsight's class derives from an untyped (Any) base,
# so to mypy any class might be a subclass of it, and narrowing a Protocol- or union-typed value
# would keep that possibility (or call the TransformerLens branch unreachable).
def as_nnsight(model: ReplacementModelLike) -> NNSightReplacementModel | None:
    """`model` as circuit-tracer's nnsight backend class, or None for the other backend.

    The class is imported only for an nnsight model (so never TransformerLens's module here).
    """
    if model.backend != "nnsight":
        return None
    from circuit_tracer.replacement_model.replacement_model_nnsight import (
        NNSightReplacementModel,
    )

    instance: object = model
    return instance if isinstance(instance, NNSightReplacementModel) else None


def as_transformerlens(model: ReplacementModelLike) -> TransformerLensReplacementModel | None:
    """`model` as circuit-tracer's TransformerLens backend class, or None for the other backend.

    The class is imported only for a TransformerLens model.
    """
    if model.backend != "transformerlens":
        return None
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )

    instance: object = model
    return instance if isinstance(instance, TransformerLensReplacementModel) else None


def as_transcoders(loaded: object) -> Transcoders:
    """What one of circuit-tracer's (unannotated) transcoder loaders returned, checked.

    Raises:
        TypeError: it is neither a `TranscoderSet` nor a `CrossLayerTranscoder`.
    """
    from circuit_tracer.transcoder import TranscoderSet
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    if isinstance(loaded, (TranscoderSet, CrossLayerTranscoder)):
        return loaded
    raise TypeError(f"circuit-tracer loaded a {type(loaded).__name__}, not a transcoder set")


def transcoder_width(transcoders: Transcoders) -> int:
    """Features per layer. circuit-tracer stores a plain int, but `TranscoderSet` copies it
    from an `nn.ModuleList` entry, which torch's typing says is a tensor or a module."""
    width = transcoders.d_transcoder
    if not isinstance(width, int):
        raise TypeError(f"d_transcoder is a {type(width).__name__}, not an int")
    return width


__all__ = [
    "AttributionContext",
    "Backend",
    "BackendModel",
    "Intervention",
    "ModelConfig",
    "ReplacementModelLike",
    "Tokenizer",
    "Transcoders",
    "as_nnsight",
    "as_transcoders",
    "as_transformerlens",
    "backend_model",
    "transcoder_width",
]
