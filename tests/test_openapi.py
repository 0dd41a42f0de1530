"""The OpenAPI contract: served, committed without drift, and fuzzed against the real server.

The fuzzing half runs schemathesis against a real gunicorn server on the demo model: every
operation gets generated requests (valid and invalid), and every reply must be a non-5xx that
conforms to the document (status, content type, body schema, headers).
"""

from __future__ import annotations

import json

import hypothesis
import pytest
import schemathesis
from schemathesis.pytest import from_fixture

from neuronpedia_graph.api.openapi import build_openapi, render
from neuronpedia_graph.operations import OPERATIONS
from neuronpedia_graph.schemas import parse_request
from tests.conftest import REPO, SECRET, LiveServer, start_server

COMMITTED = REPO / "openapi.json"
# Generated cases per operation and phase; with the examples and coverage phases this gives
# well over 200 requests per endpoint.
FUZZ_EXAMPLES = 120


def test_committed_document_matches_the_code():
    """Regenerate with: python -m neuronpedia_graph.api.openapi > openapi.json"""
    assert json.loads(COMMITTED.read_text()) == json.loads(render())


def test_served_document_is_the_generated_one(client):
    res = client.get("/openapi.json")
    assert res.status_code == 200 and res.get_json() == build_openapi()


def test_every_operation_status_and_the_auth_header_are_documented():
    doc = build_openapi()
    assert doc["openapi"].startswith("3.1")
    scheme = doc["components"]["securitySchemes"]["secretKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "x-secret-key"}
    for op in OPERATIONS:
        post = doc["paths"][op.path]["post"]
        assert sorted(post["responses"]) == sorted(str(s) for s in op.statuses)
        assert post["security"] == [{"secretKey": []}]
        assert post["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    for path in ("/health", "/check-busy", "/metrics", "/openapi.json"):
        assert "get" in doc["paths"][path]


def test_examples_are_valid_requests():
    doc = build_openapi()
    for op in OPERATIONS:
        example = doc["paths"][op.path]["post"]["requestBody"]["content"]["application/json"]
        parse_request(op.request, example["example"])


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> LiveServer:
    """A real server with a small feature cap, so generated graph requests stay quick."""
    with start_server(
        tmp_path_factory.mktemp("fuzz"),
        {"MAX_FEATURE_NODES": "16", "UPLOAD_ALLOWED_HOSTS": "127.0.0.1"},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    schema = schemathesis.openapi.from_dict(build_openapi())
    schema.config.update(base_url=fuzz_server.base)
    return schema


schema = from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=True,
)
def test_fuzzed_requests_never_fail_the_server_or_the_contract(case, fuzz_server):
    case.call_and_validate(headers={"x-secret-key": SECRET}, timeout=60)
