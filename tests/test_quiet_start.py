"""A start and a stop that say each thing once: no doubled log lines, one charset on /metrics."""

from __future__ import annotations

import subprocess
import sys

LIBRARY_WARNING = """
import logging
from neuronpedia_graph.logging_setup import configure_logging

configure_logging("INFO")
# What transformers and huggingface_hub do: a handler of their own, and propagation to the root.
library = logging.getLogger("somelib")
library.addHandler(logging.StreamHandler())
logging.getLogger("somelib.sub").warning("library says this once")
logging.getLogger("neuronpedia_graph.x").warning("we say this once")
"""


def test_a_library_warning_is_printed_once():
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_WARNING], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("library says this once") == 1, result.stderr
    assert result.stderr.count("we say this once") == 1, result.stderr
    assert "[-] neuronpedia_graph.x: we say this once" in result.stderr


def test_metrics_has_one_charset(api):
    content_type = api.get("/metrics").headers["Content-Type"]
    assert content_type.count("charset") == 1, content_type
