"""Known models and transcoder sets: THE place to add one.

Why two tables: the web app stores a graph's `metadata.scan` as the graph's *model* id (a foreign
key into its models table, and part of the graph URL), so the scan must be the model's
Neuronpedia id whatever transcoders were used. The transcoder set only decides the graph's
`source_urls` and which Neuronpedia feature dashboards (`neuronpedia_source_set`) its nodes link
to. The original graph server (apps/graph in hijohnnylin/neuronpedia) keeps the same two tables;
the model ids, Neuronpedia ids and source URLs below are its values, except where a comment says.

To add a model: one `ModelPreset` line in `MODELS`. To add a transcoder set: one
`TranscoderSetInfo` in `TRANSCODER_SETS`. `neuronpedia-graph describe MODEL` prints what a start
would resolve, without loading anything.

Every preset defaults to the nnsight backend: it maps the weights once instead of converting
a second copy, so it loads faster and in far less memory (docs/decisions/backend-choice.md has
the measurements). BACKEND=transformerlens still selects TransformerLens for the official names
it knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from neuronpedia_graph.settings import Backend


@dataclass(frozen=True)
class TranscoderSetInfo:
    """A transcoder set circuit-tracer can load, and how graphs made with it are labelled.

    Attributes:
        name: what users pass as TRANSCODER_SET (`gemma`, or a Hub reference).
        hub_ref: circuit-tracer's Hub reference (`org/repo[/subfolder][@revision]`).
        model_id: the HF model the set was trained on.
        source_urls: `metadata.info.source_urls` of every graph made with this set.
        neuronpedia_source_set: the Neuronpedia source set holding its feature dashboards.
    """

    name: str
    hub_ref: str
    model_id: str
    source_urls: tuple[str, ...]
    neuronpedia_source_set: str | None = None


@dataclass(frozen=True)
class ModelPreset:
    """A model the server knows: its Neuronpedia id, default transcoders and backend.

    Attributes:
        model_id: the Hugging Face id (what the web app sends as `model_id`).
        neuronpedia_id: the model's id on Neuronpedia.
        transcoder_set: name of the default set in `TRANSCODER_SETS`.
        backend: default circuit-tracer backend (see the module docstring for the evidence).
        scan_override: `metadata.scan` when it is not `neuronpedia_id` (kept for old graphs).
        aliases: other ids clients send for this model; all are accepted as `model_id`.
    """

    model_id: str
    neuronpedia_id: str
    transcoder_set: str
    backend: Backend = "nnsight"
    scan_override: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def scan(self) -> str:
        return self.scan_override or self.neuronpedia_id

    @property
    def accepted_ids(self) -> frozenset[str]:
        return frozenset({self.model_id, self.neuronpedia_id, self.scan, *self.aliases})


TRANSCODER_SETS: dict[str, TranscoderSetInfo] = {
    info.name: info
    for info in (
        TranscoderSetInfo(
            name="gemma",
            hub_ref="mwhanna/gemma-scope-transcoders",
            model_id="google/gemma-2-2b",
            source_urls=(
                "https://neuronpedia.org/gemma-2-2b/gemmascope-transcoder-16k",
                "https://huggingface.co/google/gemma-scope-2b-pt-transcoders",
            ),
            neuronpedia_source_set="gemmascope-transcoder-16k",
        ),
        TranscoderSetInfo(
            # The original lists no source URLs for this set (a graph upload with it fails
            # there with a KeyError); the repository is the honest source.
            name="llama",
            hub_ref="mntss/transcoder-Llama-3.2-1B",
            model_id="meta-llama/Llama-3.2-1B",
            source_urls=("https://huggingface.co/mntss/transcoder-Llama-3.2-1B",),
        ),
        TranscoderSetInfo(
            name="mntss/clt-gemma-2-2b-2.5M",
            hub_ref="mntss/clt-gemma-2-2b-2.5M",
            model_id="google/gemma-2-2b",
            source_urls=(
                "https://neuronpedia.org/gemma-2-2b/clt-hp",
                "https://huggingface.co/mntss/clt-gemma-2-2b-2.5M",
            ),
            neuronpedia_source_set="clt-hp",
        ),
        TranscoderSetInfo(
            name="mwhanna/qwen3-4b-transcoders",
            hub_ref="mwhanna/qwen3-4b-transcoders",
            model_id="Qwen/Qwen3-4B",
            source_urls=(
                "https://neuronpedia.org/qwen3-4b/transcoder-hp",
                "https://huggingface.co/mwhanna/qwen3-4b-transcoders",
            ),
            neuronpedia_source_set="transcoder-hp",
        ),
        TranscoderSetInfo(
            name="mwhanna/gemma-scope-2-4b-it/transcoder_all/width_262k_l0_small_affine",
            hub_ref="mwhanna/gemma-scope-2-4b-it/transcoder_all/width_262k_l0_small_affine",
            model_id="google/gemma-3-4b-it",
            source_urls=(
                "https://neuronpedia.org/gemma-3-4b-it/gemmascope-transcoder-262k",
                "https://huggingface.co/mwhanna/gemma-scope-2-4b-it/transcoder_all/width_262k_l0_small_affine",
                "https://huggingface.co/google/gemma-scope-2-4b-it/transcoder_all",
            ),
            neuronpedia_source_set="gemmascope-transcoder-262k",
        ),
    )
}

MODELS: dict[str, ModelPreset] = {
    preset.model_id: preset
    for preset in (
        ModelPreset(
            model_id="google/gemma-2-2b",
            neuronpedia_id="gemma-2-2b",
            transcoder_set="gemma",
        ),
        ModelPreset(
            # The seed server's scan is kept so existing graphs keep their model id; the
            # original server sent `llama3.1-8b`, so that id is accepted too.
            model_id="meta-llama/Llama-3.2-1B",
            neuronpedia_id="llama-3.2-1b",
            transcoder_set="llama",
            scan_override="llama-3-131k-relu",
            aliases=("llama3.1-8b", "llama3.2-1b"),
        ),
        ModelPreset(
            model_id="Qwen/Qwen3-4B",
            neuronpedia_id="qwen3-4b",
            transcoder_set="mwhanna/qwen3-4b-transcoders",
        ),
        ModelPreset(
            model_id="google/gemma-3-4b-it",
            neuronpedia_id="gemma-3-4b-it",
            transcoder_set="mwhanna/gemma-scope-2-4b-it/transcoder_all/width_262k_l0_small_affine",
        ),
        ModelPreset(model_id="demo", neuronpedia_id="demo", transcoder_set="demo"),
    )
}


def find_preset(model_id: str) -> ModelPreset | None:
    """Look a model up by HF id, Neuronpedia id, scan or alias (case-sensitive, like the Hub).

    Args:
        model_id: any id a client or the command line may use for the model.

    Returns:
        The preset, or None for a model the tables do not know.
    """
    if model_id in MODELS:
        return MODELS[model_id]
    for preset in MODELS.values():
        if model_id in preset.accepted_ids:
            return preset
    return None


def find_transcoder_set(ref: str) -> TranscoderSetInfo | None:
    """Look a transcoder set up by its short name or its Hub reference (`hf://` optional).

    Args:
        ref: TRANSCODER_SET as given.

    Returns:
        The set's entry, or None for a set the table does not know (a local directory, or any
        other Hub reference).
    """
    if ref in TRANSCODER_SETS:
        return TRANSCODER_SETS[ref]
    bare = ref.removeprefix("hf://").rstrip("/")
    for info in TRANSCODER_SETS.values():
        if bare in (info.name, info.hub_ref):
            return info
    return None


def hub_ref_for(ref: str) -> str:
    """circuit-tracer's Hub reference for TRANSCODER_SET `ref` (short names expanded)."""
    info = find_transcoder_set(ref)
    return info.hub_ref if info is not None else ref.removeprefix("hf://")


def derived_neuronpedia_id(model_id: str) -> str:
    """A best guess at an unknown model's Neuronpedia id: the lower-cased repository name.

    Neuronpedia ids are lower-case repository names (`Qwen/Qwen3-4B` -> `qwen3-4b`). This is a
    guess, so a server using it says so in its banner; NEURONPEDIA_MODEL_ID makes it explicit.
    """
    return model_id.rstrip("/").rsplit("/", 1)[-1].lower()
