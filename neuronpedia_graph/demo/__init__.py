"""The offline demo model: a tiny trained Gemma-2 with per-layer ReLU transcoders.

The artifacts are committed so that anyone (no GPU, no Hugging Face token, no network) gets a
real attribution graph in seconds, and so that every test of the project has a model to run.
Rebuild them with `python -m neuronpedia_graph.demo.build`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARTIFACTS_DIR: Path = Path(__file__).resolve().parent / "artifacts"
MODEL_DIR: Path = ARTIFACTS_DIR / "model"
TRANSCODER_DIR: Path = ARTIFACTS_DIR / "transcoders"
SCAN = "demo"


def transcoder_config(transcoder_dir: Path = TRANSCODER_DIR) -> dict[str, Any]:
    """The transcoder set's config.yaml with its file names resolved to absolute paths.

    The committed config lists relative names (the directory must be relocatable), while
    circuit-tracer's `load_transcoders` opens them as given, i.e. relative to the process's
    working directory.
    """
    import yaml

    directory = Path(transcoder_dir).resolve()
    config: dict[str, Any] = yaml.safe_load((directory / "config.yaml").read_text())
    config["transcoders"] = [str(directory / name) for name in config["transcoders"]]
    return config
