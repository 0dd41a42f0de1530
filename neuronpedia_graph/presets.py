"""Known models and the transcoders, scan and Neuronpedia ids that go with them.

The scan is what Neuronpedia uses as the model id of a graph, so it must match the web app's
naming, not circuit-tracer's repository names.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelPreset:
    model_id: str
    transcoder_set: str
    scan: str
    neuronpedia_id: str
    source_urls: tuple[str, ...]
    backend: str = "transformerlens"
    # Other ids the web app or older clients send for this model.
    aliases: tuple[str, ...] = field(default_factory=tuple)
    neuronpedia_source_set: str | None = None


PRESETS: dict[str, ModelPreset] = {
    preset.model_id: preset
    for preset in (
        ModelPreset(
            model_id="google/gemma-2-2b",
            transcoder_set="gemma",
            scan="gemma-2-2b",
            neuronpedia_id="gemma-2-2b",
            source_urls=(
                "https://huggingface.co/google/gemma-scope-2b-pt-transcoders",
                "https://huggingface.co/mwhanna/gemma-scope-transcoders",
            ),
            neuronpedia_source_set="gemmascope-transcoder-16k",
        ),
        ModelPreset(
            model_id="meta-llama/Llama-3.2-1B",
            transcoder_set="llama",
            scan="llama-3-131k-relu",
            neuronpedia_id="llama3.2-1b",
            source_urls=("https://huggingface.co/mntss/transcoder-Llama-3.2-1B",),
            # The original Neuronpedia graph server accepted this id for Llama-3.2-1B.
            aliases=("llama3.1-8b",),
        ),
        ModelPreset(
            model_id="demo",
            transcoder_set="demo",
            scan="demo",
            neuronpedia_id="demo",
            source_urls=(),
            backend="nnsight",
        ),
    )
}


def find_preset(model_id: str) -> ModelPreset | None:
    """Look a model up by HF id, Neuronpedia id or alias (case-sensitive, like the Hub)."""
    if model_id in PRESETS:
        return PRESETS[model_id]
    for preset in PRESETS.values():
        if model_id == preset.neuronpedia_id or model_id in preset.aliases:
            return preset
    return None
