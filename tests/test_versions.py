"""The versions line of the server banner and the benchmarks."""

from __future__ import annotations

import importlib.metadata as md

from neuronpedia_graph import versions


def test_versions_are_those_installed_and_missing_ones_show_a_dash(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(versions, "PACKAGES", ("transformers", "no-such-package"))
    found = versions.runtime_versions()
    assert found["transformers"] == md.version("transformers")
    assert found["no-such-package"] == "-"
    assert found["cuda"] == str(torch.version.cuda or "-")
    line = versions.describe_versions()
    assert f"transformers {md.version('transformers')}" in line
    assert "no-such-package -" in line and line.startswith("python ")
