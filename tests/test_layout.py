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


# Written out, not derived from the table: every `request_type` the Runpod worker takes (the
# web app sends forward_pass and parse-chat-prompt) and the HTTP route it is the same as.
REQUEST_TYPES = {
    "generate-graph": "/generate-graph",
    "graph": "/generate-graph",
    "forward-pass": "/forward-pass",
    "forward_pass": "/forward-pass",
    "steer": "/steer",
    "parse-chat-prompt": "/parse-chat-prompt",
    "parse_chat_prompt": "/parse-chat-prompt",
}


def test_routes_and_runpod_request_types_come_from_the_operations_table(app):
    from neuronpedia_graph.operations import BY_NAME

    posts = {r.rule for r in app.url_map.iter_rules() if "POST" in r.methods}
    # Plus the job routes (neuronpedia_graph.api.jobs): queue a graph, upload a stored one.
    job_posts = {"/graphs", "/graphs/<job_id>/upload"}
    assert posts == set(REQUEST_TYPES.values()) | job_posts
    assert {name: op.path for name, op in BY_NAME.items()} == REQUEST_TYPES
    # Each route runs its own service method (no two operations share one).
    by_path = {op.path: op.method for op in BY_NAME.values()}
    assert len(set(by_path.values())) == len(by_path) == len(posts - job_posts)
