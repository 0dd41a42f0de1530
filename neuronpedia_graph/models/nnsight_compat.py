"""Let nnsight load the multimodal checkpoints that circuit-tracer maps (google/gemma-3-4b-it).

Why: nnsight 0.7's `LanguageModel` refuses any checkpoint whose model type is registered as
image-text-to-text ("it's a multimodal model so LanguageModel(...) can't load it"), before
loading anything. That check is a friendly-error guard for users who meant
`VisionLanguageModel`; circuit-tracer 0.5.0, however, maps `Gemma3ForConditionalGeneration`
explicitly (hooks under `language_model.layers`) and loads it through `LanguageModel` with no
way to pass another `automodel`. nnsight 0.6.x had no such guard, and with it lifted, gemma-3
loads and attributes (tests/test_real_models.py). So the guard is lifted only while such a
model loads, and only for architectures circuit-tracer maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def mapped_multimodal_allowed(backend: str, architecture: str | None) -> Iterator[None]:
    """Within the block, nnsight accepts `architecture` if circuit-tracer maps it.

    Args:
        backend: the circuit-tracer backend; only `nnsight` is affected.
        architecture: the model's `architectures[0]`; None leaves nnsight unchanged.
    """
    if backend != "nnsight" or architecture is None:
        yield
        return
    from circuit_tracer.utils.tl_nnsight_mapping import get_supported_architectures
    from nnsight.modeling.language import LanguageModel

    guard = LanguageModel.__dict__.get("_check_is_text_only")
    if guard is None or architecture not in get_supported_architectures():
        yield
        return

    def _accept(self: LanguageModel, repo_id: str) -> None:
        return None

    LanguageModel._check_is_text_only = _accept
    try:
        yield
    finally:
        LanguageModel._check_is_text_only = guard
