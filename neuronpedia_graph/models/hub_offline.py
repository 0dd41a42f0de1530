"""Resolve a Hub transcoder set from the local Hugging Face cache before circuit-tracer sees it.

Why: circuit-tracer 0.5.0 downloads the `hf://` files a set's config.yaml lists with
`download_hf_uris`, which first asks the Hub about every repository ("pre-flight"
`repo_info`), even when every file is already cached. With HF_HUB_OFFLINE=1 that call raises
`OfflineModeIsEnabled`, so the gemma preset (whose config.yaml lists 26 GemmaScope `.npz`
files) could not start on an air-gapped box or during a Hub outage, warm cache or not.

Here the config and each listed file are looked up in the cache first
(`huggingface_hub.try_to_load_from_cache`); only files that are missing go through
circuit-tracer's downloader (network, pre-flight and all). The resolved config then goes to
circuit-tracer's own `load_transcoders`, so which loader runs (GemmaScope `.npz`, GemmaScope 2,
cross-layer, plain safetensors) is still circuit-tracer's decision. Sets whose config lists no
files (`layer_*.safetensors` or cross-layer transcoders in the repository itself) are fetched by
circuit-tracer with `snapshot_download`, which already falls back to the cache offline.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

from neuronpedia_graph.json_types import JSONObject

if TYPE_CHECKING:
    import torch

    from neuronpedia_graph.models.protocols import Transcoders


class HubFilesMissing(RuntimeError):
    """Offline mode is on and some files the set needs are not in the cache."""


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids network access (as huggingface_hub reads it).

    HF_HUB_OFFLINE is the Hub library's own switch, not one of our settings, so it is read
    from the environment (here only), at the moment of asking, like the library does.
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached from this machine, or None when it can (or may).

    One name lookup and one TCP connect, with no retries: huggingface_hub itself retries a
    failed request with backoff (about 20 s and a warning per try before its first clear
    error), which is how a start with no network used to look. Behind a proxy the direct
    connect proves nothing, so the check is skipped there.

    Args:
        timeout: seconds for the TCP connect.
    """
    if any(os.environ.get(name) for name in _PROXY_VARS):
        return None
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = endpoint.hostname or ""
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"{host}: name not resolved ({exc.strerror})"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"


def go_offline() -> None:
    """Turn on the Hub's offline mode for this process and the ones it starts.

    huggingface_hub and transformers read HF_HUB_OFFLINE when they are imported, so this must
    run before either is (the CLI's pre-flight check runs first).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"


def cached_path(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """The cached file's local path, or None when it is not in the cache. Never uses the network.

    Args:
        repo_id: `org/name` of a model repository.
        filename: path inside the repository.
        revision: branch, tag or commit; None means `main`.
    """
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, revision=revision)
    return path if isinstance(path, str) else None


def fetch(repo_id: str, filename: str, revision: str | None = None) -> str:
    """A file's local path: from the cache when there, otherwise downloaded (network)."""
    path = cached_path(repo_id, filename, revision)
    if path is not None:
        return path
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, revision=revision)


def resolve_hf_uris(paths: list[str]) -> list[str]:
    """Replace every `hf://` entry by its local path: cached ones directly, the rest downloaded.

    Args:
        paths: a config.yaml `transcoders` list (hf:// URIs and/or local paths).

    Returns:
        The same list with local paths only, in the same order.

    Raises:
        HubFilesMissing: offline mode is on and some files are not cached.
    """
    from circuit_tracer.utils.hf_utils import parse_hf_uri

    local: dict[str, str] = {}
    missing: list[str] = []
    for path in paths:
        if not str(path).startswith("hf://") or path in local:
            continue
        uri = parse_hf_uri(path)
        found = cached_path(uri.repo_id, uri.file_path or "", uri.revision)
        if found is None:
            missing.append(path)
        else:
            local[path] = found
    if missing:
        if hub_offline():
            raise HubFilesMissing(
                f"{len(missing)} of {len(paths)} transcoder files are not in the Hugging Face "
                f"cache and HF_HUB_OFFLINE=1 forbids downloading them (first: {missing[0]})"
            )
        from circuit_tracer.utils.hf_utils import download_hf_uris

        local.update(download_hf_uris(missing))
    return [local.get(path, path) for path in paths]


def read_hub_config(hub_ref: str) -> JSONObject:
    """Read a Hub set's config.yaml (cache first) and label it as circuit-tracer does.

    Args:
        hub_ref: `org/repo[/subfolder][@revision]` (short names already expanded).

    Returns:
        The config with `repo_id`, `revision`, `subfolder` and `scan` set the way
        circuit-tracer's `load_transcoder_from_hub` sets them (its loaders key on `repo_id`).
    """
    from circuit_tracer.utils.hf_utils import HfUri

    uri = HfUri.from_str(hub_ref)
    filename = f"{uri.file_path}/config.yaml" if uri.file_path else "config.yaml"
    with open(fetch(uri.repo_id, filename, uri.revision)) as fh:
        config = yaml.safe_load(fh) or {}
    config["repo_id"] = uri.repo_id
    config["revision"] = uri.revision
    config["subfolder"] = uri.file_path
    where = uri.repo_id if uri.file_path is None else f"{uri.repo_id}//{uri.file_path}"
    config["scan"] = f"{where}@{uri.revision}" if uri.revision else where
    return config


def resolve_hub_config(hub_ref: str) -> JSONObject:
    """`read_hub_config` with every listed `hf://` file replaced by its local path."""
    config = read_hub_config(hub_ref)
    if isinstance(config.get("transcoders"), list):
        config["transcoders"] = resolve_hf_uris([str(p) for p in config["transcoders"]])
    return config


def load_hub_transcoders(
    transcoder_ref: str,
    hub_ref: str,
    device: torch.device,
    dtype: torch.dtype,
    lazy_encoder: bool,
    lazy_decoder: bool,
) -> Transcoders:
    """Load a Hub transcoder set, touching the network only for files the cache lacks.

    Args:
        transcoder_ref: TRANSCODER_SET as given (circuit-tracer's own transcoder cache is keyed
            on it, so a set saved there with `save_transcoders_to_cache` is used first, as
            circuit-tracer would).
        hub_ref: the expanded Hub reference.
        device, dtype, lazy_encoder, lazy_decoder: passed to circuit-tracer's loaders.

    Returns:
        A circuit-tracer TranscoderSet or CrossLayerTranscoder.
    """
    from circuit_tracer.utils.caching import is_cached, load_transcoders_from_cache
    from circuit_tracer.utils.hf_utils import load_transcoders

    from neuronpedia_graph.models.protocols import as_transcoders

    for key in dict.fromkeys((transcoder_ref, hub_ref)):
        if is_cached(key):
            transcoders, _ = load_transcoders_from_cache(
                key,
                device=device,
                dtype=dtype,
                lazy_encoder=lazy_encoder,
                lazy_decoder=lazy_decoder,
            )
            return as_transcoders(transcoders)
    config = resolve_hub_config(hub_ref)
    return as_transcoders(load_transcoders(config, device, dtype, lazy_encoder, lazy_decoder))
