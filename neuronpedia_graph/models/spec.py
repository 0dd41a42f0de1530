"""What to load, resolved from settings without loading weights: the model spec and its checks.

`resolve_spec` maps MODEL_ID, TRANSCODER_SET and BACKEND to concrete load targets using the
preset tables; `preflight` checks, before any weights are read, that the model and transcoder
files are there or can be fetched, so an offline machine, a missing token or a gated
repository fails in seconds with a one-line reason. Hub access is checked up front (one small
file per repository), and an unreachable Hub switches to the cache alone. Imports no torch:
`describe` uses this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from neuronpedia_graph.json_types import JSONObject
from neuronpedia_graph.models.presets import (
    MODELS,
    derived_neuronpedia_id,
    find_preset,
    find_transcoder_set,
    hub_ref_for,
)
from neuronpedia_graph.settings import Backend, Settings

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model or transcoder set cannot be loaded; the message is one line for the user."""


@dataclass(frozen=True)
class ModelSpec:
    """What to load, resolved from settings without touching the network or the weights.

    `transcoder_ref` is TRANSCODER_SET as given (`gemma`, a Hub reference or a local path);
    `scan` is the graph's `metadata.scan`, i.e. the model's Neuronpedia id.
    """

    model_id: str
    model_path: str
    model_is_local: bool
    transcoder_ref: str
    transcoder_is_local: bool
    scan: str
    neuronpedia_id: str
    backend: Backend
    source_urls: tuple[str, ...] = ()
    neuronpedia_source_set: str | None = None
    accepted_ids: frozenset[str] = field(default_factory=frozenset)
    warnings: tuple[str, ...] = ()

    @property
    def transcoder_hub_ref(self) -> str | None:
        """circuit-tracer's Hub reference for the transcoders (None for a local directory)."""
        return None if self.transcoder_is_local else hub_ref_for(self.transcoder_ref)


def _is_local(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or Path(ref).expanduser().is_dir()


def _hub_source_urls(transcoder_ref: str) -> tuple[str, ...]:
    """Source URL of a Hub set the tables do not know: its repository (and subfolder) page."""
    return (f"https://huggingface.co/{hub_ref_for(transcoder_ref).split('@', 1)[0]}",)


def _labels(
    model_id: str, transcoder_ref: str, transcoder_is_local: bool
) -> tuple[tuple[str, ...], str | None, list[str]]:
    """source_urls, neuronpedia_source_set and warnings for a model + transcoder set pair."""
    if transcoder_is_local:
        return (), None, []
    info = find_transcoder_set(transcoder_ref)
    if info is None:
        return _hub_source_urls(transcoder_ref), None, []
    if info.model_id != model_id:
        warning = (
            f"transcoder set '{info.name}' was made for {info.model_id}, not {model_id}; "
            "graphs will not link to its Neuronpedia feature dashboards"
        )
        return info.source_urls, None, [warning]
    return info.source_urls, info.neuronpedia_source_set, []


def resolve_spec(settings: Settings) -> ModelSpec:
    """Map the configured model (and optional transcoder set) to concrete load targets.

    Args:
        settings: MODEL_ID, TRANSCODER_SET, BACKEND and NEURONPEDIA_MODEL_ID are read.

    Returns:
        The spec; nothing is loaded and the network is not used (a local transcoder directory's
        config.yaml is read).

    Raises:
        ModelLoadError: no transcoder set is known or given, or the backend cannot load the model.
    """
    from neuronpedia_graph import demo

    requested = settings.model_id
    override = settings.neuronpedia_model_id
    preset = find_preset(requested)
    if preset is not None and preset.model_id == "demo":
        transcoder_ref = settings.transcoder_set or str(demo.TRANSCODER_DIR)
        if _is_local(transcoder_ref):
            read_local_config(Path(transcoder_ref).expanduser())
        return ModelSpec(
            model_id="demo",
            model_path=str(demo.MODEL_DIR),
            model_is_local=True,
            transcoder_ref=transcoder_ref,
            transcoder_is_local=_is_local(transcoder_ref),
            scan=override or preset.scan,
            neuronpedia_id=override or preset.neuronpedia_id,
            backend=settings.backend or preset.backend,
            accepted_ids=frozenset({*preset.accepted_ids, *([override] if override else [])}),
        )
    if preset is not None:
        transcoder_ref = settings.transcoder_set or preset.transcoder_set
        transcoder_is_local = _is_local(transcoder_ref)
        if transcoder_is_local:
            read_local_config(Path(transcoder_ref).expanduser())
        source_urls, source_set, warnings = _labels(
            preset.model_id, transcoder_ref, transcoder_is_local
        )
        return ModelSpec(
            model_id=preset.model_id,
            model_path=preset.model_id,
            model_is_local=False,
            transcoder_ref=transcoder_ref,
            transcoder_is_local=transcoder_is_local,
            scan=override or preset.scan,
            neuronpedia_id=override or preset.neuronpedia_id,
            backend=settings.backend or preset.backend,
            source_urls=source_urls,
            neuronpedia_source_set=source_set,
            accepted_ids=frozenset({*preset.accepted_ids, *([override] if override else [])}),
            warnings=tuple(warnings),
        )

    model_is_local = _is_local(requested)
    model_path = str(Path(requested).expanduser().resolve()) if model_is_local else requested
    transcoder_ref = settings.transcoder_set or ""
    if not transcoder_ref and model_is_local and (Path(model_path) / "transcoders").is_dir():
        transcoder_ref = str(Path(model_path) / "transcoders")
    if not transcoder_ref:
        raise ModelLoadError(
            f"No transcoder set is known for model '{requested}': pass --transcoder-set "
            "(or TRANSCODER_SET) with a Hugging Face repo, an hf:// URI or a local directory "
            "holding config.yaml. Known models: " + ", ".join(sorted(MODELS))
        )
    backend = settings.backend or "nnsight"
    if model_is_local and backend == "transformerlens":
        raise ModelLoadError(
            f"Local model directory '{requested}' needs --backend nnsight: TransformerLens only "
            "loads official model names"
        )
    transcoder_is_local = _is_local(transcoder_ref)
    if transcoder_is_local:
        read_local_config(Path(transcoder_ref).expanduser())
    name = Path(model_path).name if model_is_local else requested
    source_urls, source_set, warnings = _labels(requested, transcoder_ref, transcoder_is_local)
    neuronpedia_id = override or derived_neuronpedia_id(name)
    if override is None:
        warnings.insert(
            0,
            f"'{requested}' has no known Neuronpedia model id; graphs will carry scan "
            f"'{neuronpedia_id}'. Set NEURONPEDIA_MODEL_ID (or --neuronpedia-id) to the id "
            "the web app uses for this model",
        )
    return ModelSpec(
        model_id=requested,
        model_path=model_path,
        model_is_local=model_is_local,
        transcoder_ref=transcoder_ref,
        transcoder_is_local=transcoder_is_local,
        scan=neuronpedia_id,
        neuronpedia_id=neuronpedia_id,
        backend=backend,
        source_urls=source_urls,
        neuronpedia_source_set=source_set,
        accepted_ids=frozenset({requested, name, model_path, neuronpedia_id}),
        warnings=tuple(warnings),
    )


def read_local_config(directory: Path) -> JSONObject:
    if not directory.is_dir():
        raise ModelLoadError(f"Transcoder directory '{directory}' does not exist")
    config_path = directory / "config.yaml"
    if not config_path.is_file():
        raise ModelLoadError(
            f"Transcoder directory '{directory}' has no config.yaml (circuit-tracer format: "
            "model_kind, feature_input_hook, feature_output_hook, scan, transcoders)"
        )
    with config_path.open() as fh:
        config = yaml.safe_load(fh) or {}
    missing = [
        k for k in ("model_kind", "feature_input_hook", "feature_output_hook") if k not in config
    ]
    if missing:
        raise ModelLoadError(f"{config_path} is missing {', '.join(missing)}")
    return config


def token_note() -> str:
    from huggingface_hub import get_token

    return "HF_TOKEN is set" if get_token() else "HF_TOKEN is not set"


def explain_hub_error(repo_id: str, exc: BaseException) -> str:
    """One line that says which repository failed, why, and whether a token was available."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    from neuronpedia_graph.models import hub_offline

    token = token_note()
    offline = hub_offline.hub_offline()
    if isinstance(exc, GatedRepoError):
        return (
            f"'{repo_id}' is a gated Hugging Face repository and access was refused ({token}): "
            f"request access at https://huggingface.co/{repo_id} and set HF_TOKEN in .env"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return f"'{repo_id}' was not found on the Hugging Face Hub, or it is private ({token})"
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)) and offline:
        why = (
            f"the Hugging Face Hub is unreachable ({_unreachable})"
            if _unreachable
            else "Hugging Face Hub offline mode is on (HF_HUB_OFFLINE=1)"
        )
        return f"Cannot download '{repo_id}': {why} and it is not in the local cache ({token})"
    return (
        f"Cannot reach the Hugging Face Hub to download '{repo_id}' "
        f"({type(exc).__name__}; {token}); check the network or pre-download it"
    )


def _hub_probe(repo_id: str, filename: str, subfolder: str | None, revision: str | None) -> None:
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, filename, subfolder=subfolder, revision=revision)
    except Exception as exc:
        raise ModelLoadError(explain_hub_error(repo_id, exc)) from exc


# Why the Hub was found unreachable at start (offline mode was then turned on), for messages.
_unreachable: str | None = None


def preflight(spec: ModelSpec) -> None:
    """Fail fast on everything that can be checked without loading weights.

    For a Hub transcoder set this reads its config.yaml (cache first) and, in offline mode,
    checks that every file it lists is cached, so a cold cache fails before gunicorn starts.
    When the model or the set comes from the Hub and the Hub cannot be reached at all, offline
    mode is turned on first: a warm cache then starts with no network, and a cold one fails at
    once with one line instead of a minute of retries.
    """
    global _unreachable
    from neuronpedia_graph.models import hub_offline

    _unreachable = None
    needs_hub = not (spec.model_is_local and spec.transcoder_is_local)
    if needs_hub and not hub_offline.hub_offline():
        _unreachable = hub_offline.hub_unreachable()
        if _unreachable:
            hub_offline.go_offline()
    _check_files(spec)  # a cold cache fails here, with one line that gives the reason
    if _unreachable:
        logger.warning(
            "the Hugging Face Hub is unreachable (%s): using the local cache only", _unreachable
        )


def _check_files(spec: ModelSpec) -> None:
    """The model's config and the transcoder set's files are there, or can be fetched."""
    from neuronpedia_graph.models import hub_offline

    if spec.model_is_local:
        if not (Path(spec.model_path) / "config.json").is_file():
            raise ModelLoadError(f"Model directory '{spec.model_path}' has no config.json")
    else:
        _hub_probe(spec.model_path, "config.json", None, None)
    if spec.transcoder_is_local:
        local_transcoder_config(Path(spec.transcoder_ref).expanduser())
        return
    from circuit_tracer.utils.caching import is_cached

    hub_ref = spec.transcoder_hub_ref or spec.transcoder_ref
    if is_cached(spec.transcoder_ref) or is_cached(hub_ref):
        return
    from circuit_tracer.utils.hf_utils import HfUri

    repo_id = HfUri.from_str(hub_ref).repo_id
    try:
        config = hub_offline.read_hub_config(hub_ref)
    except Exception as exc:
        raise ModelLoadError(explain_hub_error(repo_id, exc)) from exc
    listed = config.get("transcoders")
    if hub_offline.hub_offline() and isinstance(listed, list):
        try:
            hub_offline.resolve_hf_uris([str(p) for p in listed])
        except hub_offline.HubFilesMissing as exc:
            raise ModelLoadError(f"Transcoder set '{spec.transcoder_ref}': {exc}") from None


def local_transcoder_config(directory: Path) -> JSONObject:
    """A local transcoder set's config.yaml, checked, with its files as paths that exist.

    The form circuit-tracer's `load_transcoders` takes: it opens the listed files as given, i.e.
    relative to the process's working directory, not to the set's directory.
    """
    return resolve_transcoder_files(directory, read_local_config(directory))


def resolve_transcoder_files(directory: Path, config: JSONObject) -> JSONObject:
    """Make relative transcoder paths absolute and check the files are there.

    Relative paths make a transcoder directory relocatable (the demo ships this way).
    """
    paths = config.get("transcoders")
    if paths is None:
        return config
    config["transcoders"] = [
        p if str(p).startswith("hf://") or Path(p).is_absolute() else str(directory / p)
        for p in paths
    ]
    absent = [
        p for p in config["transcoders"] if not p.startswith("hf://") and not Path(p).is_file()
    ]
    if absent:
        raise ModelLoadError(f"Transcoder file(s) missing: {', '.join(absent)}")
    return config
