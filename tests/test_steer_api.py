"""/steer and /parse-chat-prompt through HTTP on the demo model: the researcher's loop.

Find the feature a real graph says drives " France", turn it off and push it up, and check the
model's probabilities move the way the graph predicts.
"""

from __future__ import annotations

import json
import shutil

import orjson
import pytest

from neuronpedia_graph import demo

PARIS = "The city of Paris is in"
ROME = "The city of Rome is in"


STEER_FEATURE = {
    "layer": 0,
    "index": 0,
    "token_active_position": 1,
    "steer_position": 1,
    "delta": 1.0,
}


def steer_body(prompt=PARIS, features=None, **extra):
    feature = {
        "layer": 0,
        "index": 0,
        "token_active_position": 1,
        "steer_position": 1,
        "delta": 1.0,
    }
    body = {
        "model_id": "demo",
        "prompt": prompt,
        "features": [feature] if features is None else features,
        "n_tokens": 3,
    }
    body.update(extra)
    return body


def prob_of(entry: dict, token: str) -> float:
    return next((t["prob"] for t in entry["top_logits"] if t["token"] == token), 0.0)


@pytest.fixture(scope="module")
def france_feature(app) -> tuple[int, int, int]:
    """(layer, index, position) of the feature with the largest direct effect on " France"."""
    res = app.test_client().post(
        "/generate-graph",
        json={"prompt": PARIS, "model_id": "demo", "slug_identifier": "steer-src"},
        headers={"x-secret-key": "test-secret-0123456789"},
    )
    doc = orjson.loads(res.data)
    target = next(n["node_id"] for n in doc["nodes"] if n["is_target_logit"])
    feature_ids = {
        n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"
    }
    best = max(
        (
            link
            for link in doc["links"]
            if link["target"] == target and link["source"] in feature_ids
        ),
        key=lambda link: link["weight"],
    )
    layer, index, pos = map(int, best["source"].split("_"))
    return layer, index, pos


def test_ablating_the_france_feature_lowers_france(client, auth, france_feature):
    layer, index, pos = france_feature
    feature = {
        "layer": layer,
        "index": index,
        "token_active_position": pos,
        "steer_position": pos,
        "ablate": True,
    }
    res = client.post("/steer", json=steer_body(features=[feature]), headers=auth)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    last = 6  # position of " in" (BOS is 0)
    default = prob_of(body["DEFAULT_LOGITS_BY_TOKEN"][last], " France")
    steered = prob_of(body["STEERED_LOGITS_BY_TOKEN"][last], " France")
    assert default > 0.99 and steered < default


def test_boosting_the_france_feature_turns_rome_into_france(client, auth, france_feature):
    layer, index, _ = france_feature
    feature = {
        "layer": layer,
        "index": index,
        "token_active_position": 6,
        "steer_position": 6,
        "delta": 20.0,
    }
    body = client.post("/steer", json=steer_body(ROME, [feature]), headers=auth).get_json()
    default = prob_of(body["DEFAULT_LOGITS_BY_TOKEN"][6], " France")
    steered = prob_of(body["STEERED_LOGITS_BY_TOKEN"][6], " France")
    assert steered > default + 0.5
    assert body["DEFAULT_GENERATION"].startswith(ROME + " Italy")
    assert body["STEERED_GENERATION"].startswith(ROME + " France")


def test_positions_and_greedy_consistency(client, auth):
    body = client.post("/steer", json=steer_body("1 2 3 4", n_tokens=4), headers=auth).get_json()
    entries = body["DEFAULT_LOGITS_BY_TOKEN"]
    n_prompt = 5  # <bos> 1 2 3 4
    assert len(entries) == n_prompt + 4 == len(body["STEERED_LOGITS_BY_TOKEN"])
    assert [e["top_logits"] for e in entries[: n_prompt - 1]] == [[]] * (n_prompt - 1)
    generated = [e["token"] for e in entries[n_prompt:]]
    predicted = [e["top_logits"][0]["token"] for e in entries[n_prompt - 1 : -1]]
    assert predicted == generated
    assert body["DEFAULT_GENERATION"] == "1 2 3 4" + "".join(generated)


def test_same_request_twice_is_identical(client, auth):
    request = steer_body(temperature=0.8, seed=7, n_tokens=5)
    first = client.post("/steer", json=request, headers=auth).get_json()
    assert client.post("/steer", json=request, headers=auth).get_json() == first


@pytest.mark.parametrize(
    ("feature", "needle"),
    [
        ({"ablate": True, "delta": 1.0}, "features[0]: give exactly one of ablate=true or a delta"),
        ({"delta": None}, "features[0]: give exactly one of ablate=true or a delta"),
        ({"steer_generated_tokens": True}, "features[0]: give exactly one of steer_position"),
        ({"steer_position": None}, "features[0]: give exactly one of steer_position"),
        ({"token_active_position": 7}, "features[0]: token_active_position 7 is outside"),
        ({"steer_position": -1}, "features[0]: steer_position -1 is outside"),
        ({"layer": 2}, "features[0]: layer 2 is outside [0, 2)"),
        ({"index": 10**6}, "features[0]: index 1000000 is outside"),
    ],
)
def test_feature_rules_name_the_feature(client, auth, feature, needle):
    good = {"layer": 0, "index": 0, "token_active_position": 1, "steer_position": 1, "delta": 1.0}
    features = [good, {**good, **feature}] if "features[0]" not in needle else [{**good, **feature}]
    res = client.post("/steer", json=steer_body(features=features), headers=auth)
    assert res.status_code == 400, res.get_json()
    expected = needle if len(features) == 1 else needle.replace("features[0]", "features[1]")
    assert expected in res.get_json()["error"]
    assert client.post("/steer", json=steer_body(), headers=auth).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (steer_body(n_tokens=0), 422, "n_tokens"),
        (steer_body(n_tokens=257), 422, "n_tokens"),
        (steer_body(top_k=21), 422, "top_k"),
        (steer_body(temperature=-1), 422, "temperature"),
        (steer_body(model_id="google/gemma-2-2b"), 400, "is not available"),
        (steer_body(messages=[{"role": "user", "content": "hi"}]), 422, "exactly one"),
        ({k: v for k, v in steer_body().items() if k != "prompt"}, 422, "exactly one"),
        (steer_body(prompt=" 1" * 80), 400, "Prompt exceeds token limit"),
    ],
)
def test_steer_request_validation(client, auth, body, status, needle):
    res = client.post("/steer", json=body, headers=auth)
    assert res.status_code == status, res.get_json()
    assert needle in res.get_json()["error"]


def test_steer_busy(client, auth, service):
    with service.lock.hold():
        res = client.post("/steer", json=steer_body(), headers=auth)
    assert res.status_code == 503 and "Retry-After" in res.headers
    assert client.post("/steer", json=steer_body(), headers=auth).status_code == 200


def test_steer_with_chat_messages(client, auth):
    body = steer_body(messages=[{"role": "user", "content": PARIS}])
    del body["prompt"]
    res = client.post("/steer", json=body, headers=auth)
    assert res.status_code == 200, res.get_json()
    assert res.get_json()["DEFAULT_LOGITS_BY_TOKEN"][0]["token"] == "<bos>"


def test_parse_chat_prompt(client, auth):
    rendered = "<start_of_turn>user\nThe city of Paris is in<end_of_turn>\n<start_of_turn>model\n"
    body = client.post(
        "/parse-chat-prompt", json={"prompt": "<bos>" + rendered}, headers=auth
    ).get_json()
    assert body["is_chat"] is True and body["prompt"] == rendered
    assert body["messages"] == [{"role": "user", "content": PARIS}]
    assert 0 in body["unsteerable_positions"] and 4 not in body["unsteerable_positions"]
    plain = client.post("/parse-chat-prompt", json={"prompt": PARIS}, headers=auth).get_json()
    assert plain == {
        "messages": None,
        "is_chat": False,
        "prompt": PARIS,
        "unsteerable_positions": [],
    }
    res = client.post("/parse-chat-prompt", json={"prompt": ""}, headers=auth)
    assert res.status_code == 422


def test_model_without_chat_template_rejects_messages(tmp_path, auth):
    """A user's own model may lack a template: messages get a clear 400, prompts still work."""
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.loading import load_model
    from neuronpedia_graph.service import GraphService
    from neuronpedia_graph.settings import Settings

    model_dir = tmp_path / "model"
    shutil.copytree(demo.MODEL_DIR, model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template")
    config_path.write_text(json.dumps(config))
    settings = Settings(
        model_id=str(model_dir), transcoder_set=str(demo.TRANSCODER_DIR), device="cpu"
    )
    client = create_app(
        GraphService(load_model(settings), settings), auth["x-secret-key"]
    ).test_client()
    messages = [{"role": "user", "content": PARIS}]
    for path, body in (
        ("/forward-pass", {"messages": messages}),
        ("/generate-graph", {"messages": messages, "model_id": "model", "slug_identifier": "x"}),
        ("/steer", {**steer_body(), "model_id": "model", "messages": messages, "prompt": None}),
    ):
        body = {k: v for k, v in body.items() if v is not None}
        res = client.post(path, json=body, headers=auth)
        assert res.status_code == 400, (path, res.get_json())
        assert "has no chat template" in res.get_json()["error"]
    assert client.post("/forward-pass", json={"prompt": PARIS}, headers=auth).status_code == 200


def test_no_features_and_top_k_zero_are_accepted_like_the_original(client, auth):
    res = client.post("/steer", json=steer_body(features=[], top_k=0), headers=auth)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["STEERED_GENERATION"] == body["DEFAULT_GENERATION"]
    assert body["ignored_features"] == []
    assert all(e["top_logits"] == [] for e in body["DEFAULT_LOGITS_BY_TOKEN"])


def test_features_at_the_bos_are_dropped_and_listed(client, auth):
    bos_feature = {
        "layer": 0,
        "index": 0,
        "token_active_position": 0,
        "steer_position": 0,
        "delta": 50.0,
    }
    res = client.post("/steer", json=steer_body(features=[bos_feature]), headers=auth)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["STEERED_GENERATION"] == body["DEFAULT_GENERATION"]
    [ignored] = body["ignored_features"]
    assert ignored["index_in_request"] == 0 and ignored["position"] == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"temperature": 1e-38}, "temperature"),
        ({"temperature": 1e39}, "temperature"),
        ({"freq_penalty": 1e39}, "freq_penalty"),
        ({"freq_penalty": -1e39}, "freq_penalty"),
        ({"features": [{**STEER_FEATURE, "delta": 1e308}]}, "delta"),
        ({"features": [{**STEER_FEATURE, "delta": -1e308}]}, "delta"),
    ],
)
def test_extreme_numbers_are_refused_not_crashed_on(client, auth, extra, field):
    res = client.post("/steer", json=steer_body(**extra), headers=auth)
    assert res.status_code == 422 and field in res.get_json()["error"], res.get_json()
    assert client.post("/steer", json=steer_body(), headers=auth).status_code == 200


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 3}])
def test_largest_allowed_numbers_give_finite_probabilities(client, auth, sampling):
    feature = {**STEER_FEATURE, "delta": 10_000.0}
    body = steer_body(features=[feature], freq_penalty=100.0, **sampling)
    res = client.post("/steer", json=body, headers=auth)
    assert res.status_code == 200, res.get_json()
    for entry in res.get_json()["STEERED_LOGITS_BY_TOKEN"]:
        for top in entry["top_logits"]:
            assert isinstance(top["prob"], float) and 0.0 <= top["prob"] <= 1.0
