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
from schemathesis.checks import positive_data_acceptance

from neuronpedia_graph.api.openapi import build_openapi, render
from neuronpedia_graph.operations import OPERATIONS
from neuronpedia_graph.schemas import parse_request
from tests.conftest import AUTH, REPO, SECRET, LiveServer, start_server

COMMITTED = REPO / "openapi.json"
# Written out, not read from the operations table the document is generated from: what the
# README's error table promises each POST can answer.
DOCUMENTED_STATUSES = {
    "/generate-graph": {200, 400, 401, 403, 413, 422, 502, 503},
    "/forward-pass": {200, 400, 401, 403, 413, 422, 503},
    "/steer": {200, 400, 401, 403, 413, 422, 503},
    "/parse-chat-prompt": {200, 400, 401, 403, 413, 422},
    # docs/jobs.md: queued at once (202), or refused before queueing, or the queue is full (503).
    "/graphs": {202, 400, 401, 403, 413, 422, 503},
    # docs/store.md: re-upload a stored graph (404 unknown id, 410 unreadable store file).
    "/graphs/{job_id}/upload": {200, 400, 401, 403, 404, 410, 413, 422, 502, 503},
}
# The other methods, from docs/jobs.md and docs/store.md, for requests with the secret: a
# fuzzed job id names no job (404); a probe always answers 200.
DOCUMENTED_OTHER = {
    "GET /graphs": {200},
    "GET /graphs/{job_id}": {200, 404},
    "GET /graphs/{job_id}/document": {200, 404, 409, 410},
    "GET /graphs/{job_id}/events": {200, 404},
    "DELETE /graphs/{job_id}": {200, 202, 404, 409},
}
# Generated cases per operation and mode (valid and invalid): 240 per endpoint in all.
FUZZ_EXAMPLES = 120


def test_committed_document_matches_the_code():
    """Regenerate with: python -m neuronpedia_graph.api.openapi > openapi.json"""
    assert json.loads(COMMITTED.read_text()) == json.loads(render())


def test_served_document_is_the_committed_one(client):
    res = client.get("/openapi.json")
    assert res.status_code == 200 and res.get_json() == json.loads(COMMITTED.read_text())


def test_every_operation_status_and_the_auth_header_are_documented():
    doc = build_openapi()
    assert doc["openapi"].startswith("3.1")
    scheme = doc["components"]["securitySchemes"]["secretKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "x-secret-key"}
    assert {path for path, item in doc["paths"].items() if "post" in item} == set(
        DOCUMENTED_STATUSES
    )
    for path, statuses in DOCUMENTED_STATUSES.items():
        post = doc["paths"][path]["post"]
        assert sorted(post["responses"]) == sorted(str(s) for s in statuses)
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
        {"MAX_FEATURE_NODES": "16", "UPLOAD_ALLOWED_HOSTS": "127.0.0.1", "LOG_LEVEL": "WARNING"},
        secret=SECRET,
    ) as server:
        yield server


def fuzz_cases() -> list[tuple[str, schemathesis.GenerationMode]]:
    """Every operation with valid data; POSTs (which take a body) with invalid data too."""
    schema = schemathesis.openapi.from_dict(build_openapi())
    labels = [result.ok().label for result in schema.get_all_operations()]
    return [
        (label, mode)
        for label in labels
        for mode in schemathesis.GenerationMode
        if label.startswith("POST") or mode is schemathesis.GenerationMode.POSITIVE
    ]


@pytest.mark.parametrize(("label", "mode"), fuzz_cases(), ids=lambda v: getattr(v, "value", v))
def test_fuzzed_requests_never_fail_the_server_or_the_contract(fuzz_server, label, mode):
    """Generated requests (valid ones, and invalid ones in the negative mode) for one operation:
    no 5xx, and every reply conforms to the document (status, content type, schema, headers).

    Not checked: that every schema-valid request is accepted. Acceptance depends on the loaded
    model (`model_id` must name it, prompts must fit its token limit), which a static document
    cannot say; those refusals are documented 400s, which the status check does verify.
    """
    schema = schemathesis.openapi.from_dict(build_openapi())
    schema.config.update(base_url=fuzz_server.base)
    operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == label)
    statuses: list[int] = []

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            headers=AUTH, timeout=60, excluded_checks=[positive_data_acceptance]
        )
        statuses.append(response.status_code)

    check()
    # Hypothesis really generated cases (a GET without parameters has only one).
    assert len(statuses) >= (50 if label.startswith("POST") else 1)
    method, path = label.split(" ", 1)
    # What the server really answered is among what the README promises (the document's own
    # list is checked by call_and_validate; this one is written out above).
    expected = DOCUMENTED_STATUSES[path] if method == "POST" else DOCUMENTED_OTHER.get(label, {200})
    assert set(statuses) <= expected
    if mode is schemathesis.GenerationMode.NEGATIVE:
        assert set(statuses) & {400, 422}, "invalid requests were refused as bad input"
