"""HTTP contract through Flask's test client: auth, validation, errors, busy, graph output.

Every error test is followed by a request that must succeed, because the old server could be
left "busy" forever by a validation error.
"""

from __future__ import annotations

import gc
import gzip
import os
import threading

import jsonschema
import orjson
import pytest

from tests.conftest import AUTH, graph_body
from tests.helpers import assert_still_serving

PROMPT = "The city of Paris is in"


# ----------------------------------------------------------------------------- auth
@pytest.mark.parametrize(
    "path", ["/generate-graph", "/forward-pass", "/steer", "/parse-chat-prompt"]
)
def test_every_post_requires_the_secret(client, path):
    res = client.post(path, json={})
    assert res.status_code == 401 and res.get_json()["error"] == "x-secret-key header missing"
    res = client.post(path, json={}, headers={"x-secret-key": "wrong"})
    assert res.status_code == 403 and res.get_json()["error"] == "Invalid x-secret-key"


def test_get_endpoints_need_no_secret_and_reveal_none(client, auth):
    for path in ("/health", "/check-busy", "/metrics"):
        res = client.get(path)
        assert res.status_code == 200
        assert auth["x-secret-key"].encode() not in res.data
    health = client.get("/health").get_json()
    assert health["model_id"] == "demo" and health["scan"] == "demo" and health["busy"] is False
    assert health["device"] == "cpu" and health["dtype"] == "float32"
    assert health["circuit_tracer_version"] == "0.5.0" and health["uptime_seconds"] >= 0


# ----------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (graph_body(batch_size=0), 422, "batch_size"),
        (graph_body(batch_size=2000), 422, "batch_size"),
        (graph_body(batch_size="48"), 422, "batch_size"),
        (graph_body(max_n_logits=51), 422, "max_n_logits"),
        (graph_body(desired_logit_prob=0), 422, "desired_logit_prob"),
        (graph_body(desired_logit_prob=1.5), 422, "desired_logit_prob"),
        (graph_body(node_threshold=-0.1), 422, "node_threshold"),
        (graph_body(edge_threshold=2), 422, "edge_threshold"),
        (graph_body(max_feature_nodes=0), 422, "max_feature_nodes"),
        (graph_body(max_feature_nodes=10**6), 422, "max_feature_nodes"),
        (graph_body(slug_identifier="bad slug!"), 422, "slug_identifier"),
        (graph_body(slug_identifier="x" * 1025), 422, "slug_identifier"),
        (graph_body(compress="yes"), 422, "compress"),
        (graph_body(signed_url="ftp://host/x"), 422, "signed_url"),
        (graph_body(prompt=""), 422, "prompt"),
        (graph_body(prompt="x" * 10_001), 422, "prompt"),
        (graph_body(prompt=None), 422, "exactly one of 'prompt' or 'messages'"),
        (graph_body(messages=[{"role": "user", "content": "hi"}]), 422, "exactly one"),
        ({k: v for k, v in graph_body().items() if k != "slug_identifier"}, 422, "slug_identifier"),
        ({k: v for k, v in graph_body().items() if k != "model_id"}, 422, "model_id"),
        (
            graph_body(model_id="google/gemma-2-2b"),
            400,
            "Model 'google/gemma-2-2b' is not available. Only 'demo' is currently loaded.",
        ),
        (graph_body(prompt=" 1" * 80), 400, "Prompt exceeds token limit (80 > 64"),
        (graph_body(prompt="<bos>"), 400, "Prompt produced no tokens"),
    ],
)
def test_graph_request_validation(client, auth, body, status, needle):
    res = client.post("/generate-graph", json=body, headers=auth)
    assert res.status_code == status, res.get_json()
    assert needle in res.get_json()["error"]
    assert_still_serving(client, auth)


@pytest.mark.parametrize(
    ("data", "needle"),
    [(b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"), (b"", "not valid JSON")],
)
def test_bad_json(client, auth, data, needle):
    res = client.post(
        "/generate-graph", data=data, headers={**auth, "Content-Type": "application/json"}
    )
    assert res.status_code == 400 and needle in res.get_json()["error"]
    assert_still_serving(client, auth)


def test_token_limit_counts_content_tokens_like_the_original(client, auth):
    """TOKEN_LIMIT (64 here) counts the prompt's own tokens; the BOS is not counted."""
    res = client.post("/generate-graph", json=graph_body(prompt=" 1" * 65), headers=auth)
    assert res.status_code == 400 and res.get_json()["token_count"] == 65
    assert "not counting the BOS token" in res.get_json()["error"]
    res = client.post(
        "/generate-graph", json=graph_body(prompt=" 1" * 64, max_feature_nodes=20), headers=auth
    )
    assert res.status_code == 200, res.get_json()


def test_forward_pass_has_its_own_token_limit(client, auth, service):
    """The web app counts tokens with /forward-pass, so TOKEN_LIMIT does not apply there."""
    res = client.post("/forward-pass", json={"prompt": " 1" * 200}, headers=auth)
    assert res.status_code == 200, res.get_json()
    assert len(res.get_json()["input_tokens"]) == 201
    limit = service.settings.forward_pass_token_limit
    res = client.post("/forward-pass", json={"prompt": " 1" * (limit + 1)}, headers=auth)
    assert res.status_code == 400 and res.get_json()["token_limit"] == limit
    assert_still_serving(client, auth)


def test_unknown_routes_and_methods_are_json(client, auth):
    res = client.get("/nope")
    assert res.status_code == 404 and res.get_json()["error"] == "Not found"
    res = client.get("/generate-graph")
    assert res.status_code == 405 and "error" in res.get_json()


def test_oversized_body_is_rejected(client, auth):
    res = client.post(
        "/generate-graph",
        data=b"x" * (2 << 20),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert res.status_code == 413 and "too large" in res.get_json()["error"]
    assert_still_serving(client, auth)


def test_request_id_is_echoed_or_generated(client, auth):
    res = client.get("/health", headers={"x-request-id": "abc-123"})
    assert res.headers["X-Request-Id"] == "abc-123"
    generated = client.get("/health", headers={"x-request-id": "bad id with spaces"})
    assert generated.headers["X-Request-Id"] not in ("", "bad id with spaces")
    err = client.post("/forward-pass", json={}, headers={**auth, "x-request-id": "r-1"})
    assert err.get_json()["request_id"] == "r-1"


# ------------------------------------------------------------------------------ busy
def test_busy_model_gives_503_with_retry_after(client, auth, service):
    with service.lock.hold():
        assert client.get("/check-busy").get_json() == {"busy": True}
        for path, body in (
            ("/generate-graph", graph_body()),
            ("/forward-pass", {"prompt": PROMPT}),
        ):
            res = client.post(path, json=body, headers=auth)
            assert res.status_code == 503
            assert res.get_json()["error"] == "Server busy, please try again later."
            assert int(res.headers["Retry-After"]) > 0
    assert client.get("/check-busy").get_json() == {"busy": False}
    assert_still_serving(client, auth)


def test_validation_errors_are_reported_even_while_busy(client, auth, service):
    with service.lock.hold():
        res = client.post("/generate-graph", json=graph_body(batch_size=0), headers=auth)
    assert res.status_code == 422


# ---------------------------------------------------------------------------- graphs
@pytest.fixture(scope="module")
def paris_graph(app):
    res = app.test_client().post(
        "/generate-graph",
        json=graph_body(user_id="tester"),
        headers=AUTH,
    )
    assert res.status_code == 200, res.get_json()
    return res


def test_graph_document(paris_graph, graph_schema):
    assert paris_graph.mimetype == "application/json"
    doc = orjson.loads(paris_graph.data)
    jsonschema.validate(doc, graph_schema)
    meta = doc["metadata"]
    assert meta["slug"] == "paris-test" and meta["scan"] == "demo"
    assert meta["prompt"] == "<bos>" + PROMPT  # circuit-tracer's decode, as the original wrote
    assert meta["prompt_tokens"][1:] == ["The", " city", " of", " Paris", " is", " in"]
    assert meta["info"]["creator_name"] == "tester"
    assert meta["info"]["generator"]["version"] == "0.5.0"
    assert meta["generation_settings"] == {
        "max_n_logits": 10,
        "desired_logit_prob": 0.95,
        "batch_size": 48,
        "max_feature_nodes": 200,
    }
    assert meta["pruning_settings"] == {"node_threshold": 0.8, "edge_threshold": 0.98}
    logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    top = next(n for n in logits if n["is_target_logit"])
    assert '" France"' in top["clerp"]
    assert doc["links"] and all(
        {"source", "target", "weight"} <= set(link) for link in doc["links"]
    )


def test_graph_server_timing_lists_phases(paris_graph):
    timing = paris_graph.headers["Server-Timing"]
    for phase in ("tokenize", "attribute", "prune", "build_json"):
        assert f"{phase};dur=" in timing


def test_graph_honours_accept_encoding_gzip(client, auth):
    res = client.post(
        "/generate-graph", json=graph_body(), headers={**auth, "Accept-Encoding": "gzip"}
    )
    assert res.status_code == 200 and res.headers["Content-Encoding"] == "gzip"
    doc = orjson.loads(gzip.decompress(res.data))
    assert doc["metadata"]["slug"] == "paris-test"


def test_graph_from_chat_messages(client, auth):
    body = graph_body(
        prompt=None, messages=[{"role": "user", "content": "The city of Paris is in"}]
    )
    del body["prompt"]
    res = client.post("/generate-graph", json=body, headers=auth)
    assert res.status_code == 200, res.get_json()
    assert "<start_of_turn>" in orjson.loads(res.data)["metadata"]["prompt"]


def test_generic_model_ids_accepted(client, auth):
    res = client.post(
        "/forward-pass", json={"prompt": PROMPT, "model_id": "google/gemma-2-2b"}, headers=auth
    )
    assert res.status_code == 400 and "not available" in res.get_json()["error"]


# ----------------------------------------------------------------------- forward pass
def test_forward_pass(client, auth):
    res = client.post("/forward-pass", json={"prompt": PROMPT, "max_n_logits": 3}, headers=auth)
    assert res.status_code == 200
    body = res.get_json()
    assert body["prompt"] == PROMPT
    assert body["input_tokens"][1:] == ["The", " city", " of", " Paris", " is", " in"]
    top = body["salient_logits"][0]
    assert top["token"] == " France" and top["probability"] > 0.9
    assert 1 <= body["total_salient_tokens"] == len(body["salient_logits"]) <= 3
    assert body["cumulative_probability"] == pytest.approx(
        sum(s["probability"] for s in body["salient_logits"])
    )


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompt": PROMPT, "max_n_logits": 0}, "max_n_logits"),
        ({"prompt": PROMPT, "desired_logit_prob": "high"}, "desired_logit_prob"),
        ({"prompt": 7}, "prompt"),
        ({}, "exactly one"),
    ],
)
def test_forward_pass_validation(client, auth, body, needle):
    res = client.post("/forward-pass", json=body, headers=auth)
    assert res.status_code == 422 and needle in res.get_json()["error"]


def test_concurrent_requests_one_runs_one_is_refused(app, auth, hold):
    """Threads share one model; the second must be refused, not run concurrently."""
    results: list[int] = []

    def fire() -> None:
        res = app.test_client().post("/generate-graph", json=graph_body(), headers=auth)
        results.append(res.status_code)

    with hold.hold("generate-graph") as held:
        first = threading.Thread(target=fire)
        first.start()
        held.wait()
        fire()  # while the first holds the model
    first.join(timeout=300)
    assert results == [503, 200]
    assert_still_serving(app.test_client(), auth)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_repeated_graphs_and_failures_do_not_leak_memory(client, auth):
    """Resident memory settles after warm-up; successes and failures alike give memory back."""

    def round_trip():
        assert client.post("/generate-graph", json=graph_body(), headers=auth).status_code == 200
        res = client.post("/generate-graph", json=graph_body(prompt=" 1" * 80), headers=auth)
        assert res.status_code == 400

    for _ in range(4):
        round_trip()
    settled = _rss_mib()
    for _ in range(12):
        round_trip()
    # A generous guard against gross leaks only (noise on a loaded machine is tens of MiB);
    # the exact check is the census of circuit-tracer Graph objects below.
    assert _rss_mib() - settled < 200
    # Without a gc pass: reference counting alone must have freed every attribution graph.
    from circuit_tracer.graph import Graph

    assert not [o for o in gc.get_objects() if type(o) is Graph]


# ------------------------------------------------------- attribution targets and scores
CONTRAST = [" France", " Italy"]


def library_graph(model, targets):
    """The bare library's graph and document for graph_body()'s prompt and parameters."""
    import json

    from circuit_tracer import attribute
    from circuit_tracer.graph import prune_graph

    from testkit.reference import reference_document

    body = graph_body()
    graph = attribute(
        body["prompt"],
        model,
        attribution_targets=targets,
        batch_size=48,
        max_feature_nodes=body["max_feature_nodes"],
        verbose=False,
    )
    masks = prune_graph(graph, 0.8, 0.98)
    doc = reference_document(graph, *masks, slug=body["slug_identifier"], tokenizer=model.tokenizer)
    return graph, json.loads(json.dumps(doc))


def assert_same_nodes_and_links(ours: dict, reference: dict) -> None:
    assert [n["node_id"] for n in ours["nodes"]] == [n["node_id"] for n in reference["nodes"]]
    assert ours["nodes"] == reference["nodes"]
    assert ours["links"] == reference["links"]


def post_graph(client, auth, **fields):
    res = client.post("/generate-graph", json=graph_body(**fields), headers=auth)
    assert res.status_code == 200, res.get_json()
    return orjson.loads(res.data)


def test_token_targets_give_the_library_graph(client, auth, service, graph_schema):
    from circuit_tracer.graph import compute_graph_scores

    targets = [" Italy", " France", " Spain"]
    doc = post_graph(client, auth, attribution_targets=targets)
    graph, reference = library_graph(service.loaded.model, targets)
    assert_same_nodes_and_links(doc, reference)
    logits = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert [n["clerp"].split('"')[1] for n in logits] == targets  # in the order asked
    jsonschema.validate(doc, graph_schema)
    assert doc["metadata"]["attribution_targets"] == targets
    replacement, completeness = compute_graph_scores(graph)
    assert doc["metadata"]["scores"] == {"replacement": replacement, "completeness": completeness}


def test_contrast_target_gives_the_library_graph_for_the_logit_difference(
    client, auth, service, graph_schema
):
    from circuit_tracer.attribution.targets import CustomTarget
    from circuit_tracer.graph import compute_graph_scores

    model = service.loaded.model
    doc = post_graph(client, auth, attribution_targets={"contrast": CONTRAST})
    a, b = (model.tokenizer.encode(t, add_special_tokens=False)[0] for t in CONTRAST)
    # nnsight's unembedding is (d_vocab, d_model): a token's direction is its row.
    assert model.unembed_proj.shape[0] == model.cfg.d_vocab
    vec = (model.unembed_proj[a] - model.unembed_proj[b]).detach()
    graph, reference = library_graph(model, [CustomTarget(" France\u2212 Italy", 1.0, vec)])
    assert_same_nodes_and_links(doc, reference)
    jsonschema.validate(doc, graph_schema)

    (logit,) = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    meta = doc["metadata"]
    assert meta["attribution_targets"] == {
        "contrast": CONTRAST,
        "label": " France\u2212 Italy",
        "node_id": logit["node_id"],
    }
    assert logit["clerp"] == 'Output " France\u2212 Italy" (p=1.000)'
    replacement, completeness = compute_graph_scores(graph)
    assert meta["scores"] == {"replacement": replacement, "completeness": completeness}


def test_contrast_target_value_is_the_logit_difference(service):
    """The target's value (its direction · the final residual that attribution linearizes
    at) equals logit(a) − logit(b) of the model's own logits. The demo model, a Gemma 2, caps
    its logits (cap · tanh(x / cap)); attribution works before the cap, so the model's
    logits are uncapped to compare."""
    import torch
    from nnsight import save

    from neuronpedia_graph.schemas import ResolvedTargets
    from neuronpedia_graph.targets import library_targets

    model = service.loaded.model
    ids = tuple(model.tokenizer.encode(t, add_special_tokens=False)[0] for t in CONTRAST)
    resolved = ResolvedTargets(tokens=tuple(CONTRAST), ids=ids, contrast=True)
    (target,) = library_targets(resolved, model.unembed_proj, model.cfg.d_vocab)
    with torch.no_grad(), model.trace(model.ensure_tokenized(PROMPT)):
        hidden = save(model.pre_logit_location.output.last_hidden_state)
        logits = save(model.output.logits)
    value = float(target.vec @ hidden[0, -1])
    cap = model.config.final_logit_softcapping
    uncapped = cap * torch.atanh(logits[0, -1].double() / cap)
    assert value == pytest.approx(float(uncapped[ids[0]] - uncapped[ids[1]]), rel=1e-5)
    assert value > 5  # " France" is far above " Italy" after "Paris"

    # The TransformerLens layout, (d_model, d_vocab), gives the same direction.
    transposed = model.unembed_proj.T.contiguous()
    (same,) = library_targets(resolved, transposed, model.cfg.d_vocab)
    assert torch.equal(same.vec, target.vec)


@pytest.mark.parametrize(
    ("targets", "needle", "tokens"),
    [
        ([" France", " New York"], "attribution_targets[1]: ' New York' is not exactly one", None),
        ({"contrast": [" France", "Parisian"]}, "attribution_targets.contrast[1]", ["<unk>"]),
        ([" France", " France"], "is the same token as attribution_targets[0]", None),
        ({"contrast": [" Italy", " Italy"]}, "is the same token", None),
    ],
)
def test_targets_that_are_not_one_distinct_token_are_refused(client, auth, targets, needle, tokens):
    res = client.post("/generate-graph", json=graph_body(attribution_targets=targets), headers=auth)
    assert res.status_code == 400, res.get_json()
    body = res.get_json()
    assert needle in body["error"]
    if tokens is not None:
        assert body["tokens"] == tokens and "unknown token" in body["error"]
    assert_still_serving(client, auth)


def test_multi_token_target_names_what_it_tokenizes_to(client, auth, service):
    # Two known words: what they tokenize to is named, text and ids.
    res = client.post(
        "/generate-graph", json=graph_body(attribution_targets=[" Paris is"]), headers=auth
    )
    assert res.status_code == 400
    body = res.get_json()
    tokenizer = service.loaded.tokenizer
    assert body["tokens"] == [" Paris", " is"] and body["target"] == " Paris is"
    assert body["token_ids"] == tokenizer.encode(" Paris is", add_special_tokens=False)
    assert "it tokenizes to 2 tokens [' Paris', ' is']" in body["error"]
    assert_still_serving(client, auth)


@pytest.mark.parametrize(
    "targets",
    ["France", [], [""], ["x"] * 51, {"contrast": [" France"]}, {"contrast": " France"}, [7]],
)
def test_malformed_targets_are_422(client, auth, targets):
    res = client.post("/generate-graph", json=graph_body(attribution_targets=targets), headers=auth)
    assert res.status_code == 422, res.get_json()
    assert "attribution_targets" in res.get_json()["error"]
    assert_still_serving(client, auth)


def test_scores_without_targets_are_the_library_scores_and_logged(client, auth, service, caplog):
    from circuit_tracer.graph import compute_graph_scores

    with caplog.at_level("INFO", logger="neuronpedia_graph.service"):
        doc = post_graph(client, auth)
    graph, reference = library_graph(service.loaded.model, None)
    assert_same_nodes_and_links(doc, reference)
    meta = doc["metadata"]
    replacement, completeness = compute_graph_scores(graph)
    assert meta["scores"] == {"replacement": replacement, "completeness": completeness}
    assert 0 < completeness <= 1 and 0 < replacement <= 1
    # The web app computes its own (pruned-graph) scores where these are absent.
    assert "replacement_score" not in meta and "completeness_score" not in meta
    assert "attribution_targets" not in meta
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("graph slug=")]
    assert f"replacement_score={replacement:.6g} completeness_score={completeness:.6g}" in line


def test_both_prune_settings_give_the_same_document(service, demo_settings, auth):
    """PRUNE=circuit-tracer scores with the library's own compute_graph_scores; the lean
    default derives them from its influence: the documents are the same."""
    from neuronpedia_graph.operations import BY_NAME
    from neuronpedia_graph.service import GraphService

    reference = GraphService(
        service.loaded, demo_settings.model_copy(update={"prune": "circuit-tracer"})
    )
    body = graph_body(attribution_targets={"contrast": CONTRAST})
    docs = [
        orjson.loads(s.run(BY_NAME["graph"], body).value.document) for s in (service, reference)
    ]
    for doc in docs:
        doc["metadata"]["info"].pop("create_time_ms")
    assert docs[0] == docs[1]
