"""The shape the code promises: light wire models, one operations table behind both front ends."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_wire_models_and_the_operations_table_import_no_ml_code():
    """Clients, the OpenAPI generator and `describe` must not pay for torch at import."""
    code = (
        "import sys\n"
        "import neuronpedia_graph.schemas, neuronpedia_graph.operations\n"
        "import neuronpedia_graph.api.openapi, neuronpedia_graph.settings\n"
        "heavy = [m for m in ('torch', 'circuit_tracer', 'transformers', 'nnsight') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_routes_and_runpod_request_types_come_from_the_operations_table(app):
    from neuronpedia_graph.operations import BY_NAME, OPERATIONS

    posts = {r.rule for r in app.url_map.iter_rules() if "POST" in r.methods}
    # Plus the job queue, which queues the generate-graph operation (neuronpedia_graph.jobs).
    assert posts == {op.path for op in OPERATIONS} | {"/graphs"}
    for op in OPERATIONS:
        assert BY_NAME[op.name] is op
        assert all(BY_NAME[alias] is op for alias in op.runpod_aliases)
    # The web app's names for the worker (it sends forward_pass and parse-chat-prompt).
    assert {"graph", "forward-pass", "forward_pass", "steer", "parse-chat-prompt"} <= set(BY_NAME)
