"""The offline demo model: a tiny trained Gemma-2 with per-layer ReLU transcoders.

The artifacts are committed so that anyone (no GPU, no Hugging Face token, no network) gets a
real attribution graph in seconds, and so that every test of the project has a model to run.
Rebuild them with `python -m neuronpedia_graph.demo.build`.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS_DIR: Path = Path(__file__).resolve().parent / "artifacts"
MODEL_DIR: Path = ARTIFACTS_DIR / "model"
TRANSCODER_DIR: Path = ARTIFACTS_DIR / "transcoders"
SCAN = "demo"
