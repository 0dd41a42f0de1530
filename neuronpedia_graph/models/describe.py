"""`neuronpedia-graph describe MODEL`: what a server start would resolve, as one JSON object.

Why: the scan a graph carries is the web app's foreign key for the model, and a wrong one fails
a whole generation after the GPU work is done. `describe` answers "what will this server call
its graphs, and which transcoders will it load?" in milliseconds, with no weights, no GPU, no
network and no SECRET, so deploy scripts and people can check before starting a pod.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuronpedia-graph describe",
        description="Print, as one JSON object, how MODEL would be served (scan, Neuronpedia id, "
        "transcoder set, backend, source URLs). Loads no weights and uses no network.",
    )
    parser.add_argument("model", nargs="?", default=None, help="as for the server (env MODEL_ID)")
    parser.add_argument("--transcoder-set", help="as for the server (env TRANSCODER_SET)")
    parser.add_argument("--neuronpedia-id", help="as for the server (env NEURONPEDIA_MODEL_ID)")
    parser.add_argument("--backend", help="nnsight | transformerlens (env BACKEND)")
    parser.add_argument("--env-file", default=None, help="path of the .env file (default ./.env)")
    return parser


def describe(model_args: Sequence[str]) -> dict[str, Any]:
    """Resolve settings like the server does and report the resulting spec.

    Args:
        model_args: the arguments after `describe`.

    Returns:
        A JSON-ready dict: model_id, transcoder_set, transcoder_ref, backend, scan,
        neuronpedia_id, source_urls, neuronpedia_source_set, accepted_ids, warnings.

    Raises:
        SettingsError, ModelLoadError: the configuration cannot be served.
    """
    from neuronpedia_graph.models.spec import resolve_spec
    from neuronpedia_graph.settings import load_settings

    args = build_parser().parse_args(list(model_args))
    forwarded: list[str] = [args.model] if args.model else []
    for flag, value in (
        ("--transcoder-set", args.transcoder_set),
        ("--neuronpedia-id", args.neuronpedia_id),
        ("--backend", args.backend),
        ("--env-file", args.env_file),
    ):
        if value is not None:
            forwarded += [flag, value]
    spec = resolve_spec(load_settings(forwarded))
    transcoder_ref = (
        str(Path(spec.transcoder_ref).expanduser().resolve())
        if spec.transcoder_is_local
        else spec.transcoder_hub_ref
    )
    return {
        "model_id": spec.model_id,
        "transcoder_set": spec.transcoder_ref,
        "transcoder_ref": transcoder_ref,
        "backend": spec.backend,
        "scan": spec.scan,
        "neuronpedia_id": spec.neuronpedia_id,
        "source_urls": list(spec.source_urls),
        "neuronpedia_source_set": spec.neuronpedia_source_set,
        "accepted_ids": sorted(spec.accepted_ids),
        "warnings": list(spec.warnings),
    }


def main(argv: Sequence[str]) -> int:
    """Print the description of `argv` (the arguments after `describe`); 2 on a bad config."""
    from neuronpedia_graph.models.spec import ModelLoadError
    from neuronpedia_graph.settings import SettingsError

    try:
        result = describe(argv)
    except (SettingsError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0
