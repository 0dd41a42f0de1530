"""The versions of the packages that decide a graph, for the startup banner and the benchmarks.

On a host that mixes its own packages with an offline wheelhouse (docs/air-gapped.md), which
copy was loaded is the first question when something differs; the metadata answers it without
importing anything heavy (torch's CUDA version is read only when torch is already imported).
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import sys

PACKAGES = (
    "torch",
    "circuit-tracer",
    "nnsight",
    "transformer-lens",
    "transformers",
    "huggingface-hub",
    "tokenizers",
    "numpy",
    "flask",
    "werkzeug",
    "gunicorn",
    "pydantic",
)


def runtime_versions() -> dict[str, str]:
    """Package -> version ("-" when not installed), plus python and, if loaded, CUDA."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "-"
    torch = sys.modules.get("torch")
    if torch is not None:
        found["cuda"] = str(getattr(torch.version, "cuda", None) or "-")
    return found


def describe_versions() -> str:
    """One line: `python 3.12.3, torch 2.11.0 (cuda 13.0), transformers 4.57.3, ...`."""
    found = runtime_versions()
    cuda = found.pop("cuda", None)
    parts = []
    for name, version in found.items():
        if name == "torch" and cuda:
            version = f"{version} (cuda {cuda})"
        parts.append(f"{name} {version}")
    return ", ".join(parts)
