"""The package is grouped by concern, and only the ML core pays for torch at import.

Every module is found by walking the package, so a new module is checked without being listed:
one that must import ML code at module level belongs to the core and is named in ML_CORE.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import neuronpedia_graph
from tests.conftest import REPO

HEAVY = ("torch", "circuit_tracer", "transformers", "nnsight")
# The modules whose job is the model itself; everything else imports ML code lazily, if at all.
ML_CORE = {
    "neuronpedia_graph.attribution_store",
    "neuronpedia_graph.service",
    "neuronpedia_graph.steering",
    "neuronpedia_graph.sampling",
    "neuronpedia_graph.kv_cache",
    "neuronpedia_graph.prune",
    "neuronpedia_graph.graph_json",
    "neuronpedia_graph.scores",
    "neuronpedia_graph.targets",
    "neuronpedia_graph.demo.build",
    "neuronpedia_graph.demo.tokenizer",
    "neuronpedia_graph.demo.train",
}
SUBPACKAGES = ("api", "demo", "models", "prompts", "serving", "upload", "viewer")


def modules() -> list[str]:
    return sorted(
        m.name for m in pkgutil.walk_packages(neuronpedia_graph.__path__, "neuronpedia_graph.")
    )


def heavy_after_importing(names: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return [m for m in out.stdout.strip().split(",") if m]


def test_the_package_is_grouped_by_concern():
    packages = pkgutil.iter_modules(neuronpedia_graph.__path__)
    assert set(SUBPACKAGES) <= {m.name for m in packages if m.ispkg}
    flat_leftovers = {"upload_guard", "upload_queue", "worker", "http_framing", "loading"}
    assert not flat_leftovers & {m.split(".")[1] for m in modules()}


def test_only_the_ml_core_imports_ml_code():
    light = [m for m in modules() if m not in ML_CORE]
    assert len(light) > len(ML_CORE)
    if heavy := heavy_after_importing(light):
        culprits = [m for m in light if heavy_after_importing([m])]
        raise AssertionError(f"{culprits} import {heavy} at module level")


def test_every_operation_names_a_service_method():
    """The table names methods as strings (reading it costs no ML import): each must exist."""
    from neuronpedia_graph.operations import OPERATIONS
    from neuronpedia_graph.service import GraphService

    for op in OPERATIONS:
        for name in (op.method, op.finish, op.reserve):
            if name is not None:
                assert callable(getattr(GraphService, name, None)), f"{op.name}: {name}"


def test_the_table_checker_names_each_missing_method():
    from neuronpedia_graph.operations import OperationTableError, check_service_methods

    class Partial:
        def steer(self) -> None: ...

        attribute_graph = "not callable"

    with pytest.raises(OperationTableError) as info:
        check_service_methods(Partial)
    message = str(info.value)
    for missing in (
        "generate-graph: attribute_graph",
        "generate-graph: deliver_graph",
        "forward-pass: forward_pass",
        "parse-chat-prompt: parse_chat_prompt",
    ):
        assert missing in message
    assert "steer: steer" not in message


def test_a_renamed_service_method_fails_the_service_import():
    """A rename is caught when the service is imported (server start, worker start, any test)."""
    script = (
        "import dataclasses\n"
        "from neuronpedia_graph import operations\n"
        "ops = list(operations.OPERATIONS)\n"
        "ops[2] = dataclasses.replace(ops[2], method='steer_renamed')\n"
        "operations.OPERATIONS = tuple(ops)\n"
        "try:\n"
        "    import neuronpedia_graph.service\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "refused:" in out and "steer: steer_renamed" in out, out
