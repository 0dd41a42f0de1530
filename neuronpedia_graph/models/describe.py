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
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from neuronpedia_graph.settings import Backend

# The settings `describe` takes; its flags are generated from them, as the server's are.
DESCRIBE_FIELDS = ("transcoder_set", "neuronpedia_model_id", "backend")


def build_parser() -> argparse.ArgumentParser:
    from neuronpedia_graph.settings import build_parser as settings_parser

    return settings_parser(
        "neuronpedia-graph describe",
        only=DESCRIBE_FIELDS,
        usage="neuronpedia-graph describe [MODEL] [options]",
        description="Print, as one JSON object, how MODEL would be served (scan, Neuronpedia "
        "id, transcoder set, backend, source URLs). Loads no weights and uses no network.",
    )


class Description(TypedDict):
    """How a model would be served: `describe`'s JSON object."""

    model_id: str
    transcoder_set: str
    transcoder_ref: str | None
    backend: Backend
    scan: str
    neuronpedia_id: str
    source_urls: list[str]
    neuronpedia_source_set: str | None
    accepted_ids: list[str]
    warnings: list[str]


def describe(model_args: Sequence[str]) -> Description:
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

    build_parser().parse_args(list(model_args))  # only describe's flags; --help exits here
    spec = resolve_spec(load_settings(model_args))
    transcoder_ref = (
        str(Path(spec.transcoder_ref).expanduser().resolve())
        if spec.transcoder_is_local
        else spec.transcoder_hub_ref
    )
    return Description(
        model_id=spec.model_id,
        transcoder_set=spec.transcoder_ref,
        transcoder_ref=transcoder_ref,
        backend=spec.backend,
        scan=spec.scan,
        neuronpedia_id=spec.neuronpedia_id,
        source_urls=list(spec.source_urls),
        neuronpedia_source_set=spec.neuronpedia_source_set,
        accepted_ids=sorted(spec.accepted_ids),
        warnings=list(spec.warnings),
    )


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
