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
from tests.conftest import AUTH, STEER_FEATURE, steer_body
from tests.helpers import strongest_feature_into_target

PARIS = "The city of Paris is in"
ROME = "The city of Rome is in"


def prob_of(entry: dict, token: str) -> float:
    return next((t["prob"] for t in entry["top_logits"] if t["token"] == token), 0.0)


@pytest.fixture(scope="module")
def france_feature(app) -> tuple[int, int, int]:
    """(layer, index, position) of the feature with the largest direct effect on " France"."""
    res = app.test_client().post(
        "/generate-graph",
        json={"prompt": PARIS, "model_id": "demo", "slug_identifier": "steer-src"},
        headers=AUTH,
    )
    return strongest_feature_into_target(orjson.loads(res.data))


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
        (steer_body(prompt=" 1" * 2049), 400, "Prompt exceeds token limit (2049 > 2048"),
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


CHAT = "<start_of_turn>user\nThe city of Paris is in<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.parametrize(
    ("prompt", "reply"),
    [
        (
            "<bos>" + CHAT,
            {
                "messages": [
                    {"role": "user", "content": PARIS},
                    {"role": "assistant", "content": ""},
                ],
                "is_chat": True,
                "prompt": CHAT,
                "unsteerable_positions": [0],
            },
        ),
        (
            PARIS,
            {"messages": None, "is_chat": False, "prompt": PARIS, "unsteerable_positions": [0]},
        ),
        ("", {"messages": None, "is_chat": False, "prompt": "", "unsteerable_positions": [0]}),
        (
            "<bos><bos>" + PARIS,
            {
                "messages": None,
                "is_chat": False,
                "prompt": "<bos>" + PARIS,
                "unsteerable_positions": [0, 1],
            },
        ),
    ],
    ids=["chat", "plain", "empty", "double-bos"],
)
def test_parse_chat_prompt_answers_as_the_original(client, auth, prompt, reply):
    # The web app's exact body: it sends request_type to plain hosts too.
    body = {"prompt": prompt, "request_type": "parse-chat-prompt"}
    res = client.post("/parse-chat-prompt", json=body, headers=auth)
    assert res.status_code == 200, res.get_json()
    assert res.get_json() == reply


def test_parse_chat_prompt_does_not_wait_for_the_model(client, auth, service):
    with service.lock.hold():
        res = client.post("/parse-chat-prompt", json={"prompt": PARIS}, headers=auth)
    assert res.status_code == 200 and res.get_json()["unsteerable_positions"] == [0]


@pytest.mark.parametrize(
    ("body", "needle"),
    [({}, "prompt"), ({"prompt": None}, "prompt"), ({"prompt": "x" * 10_001}, "prompt")],
)
def test_parse_chat_prompt_rejects_a_missing_or_oversized_prompt(client, auth, body, needle):
    res = client.post("/parse-chat-prompt", json=body, headers=auth)
    assert res.status_code == 422 and needle in res.get_json()["error"]
    assert (
        client.post("/parse-chat-prompt", json={"prompt": PARIS}, headers=auth).status_code == 200
    )


def test_steer_lists_features_it_ignores_at_the_bos(client, auth):
    applied = {"layer": 0, "index": 0, "token_active_position": 1, "steer_position": 1}
    at_bos = {**applied, "steer_position": 0}
    features = [{**applied, "delta": 1.0}, {**at_bos, "delta": 500.0}]

    body = client.post("/steer", json=steer_body(features=features), headers=auth).get_json()

    assert body["ignored_features"] == [
        {
            "request_index": 1,
            "feature": {
                **at_bos,
                "steer_generated_tokens": False,
                "delta": 500.0,
                "ablate": False,
            },
            "reason": body["ignored_features"][0]["reason"],
        }
    ]
    assert "steer_position 0 holds a BOS token" in body["ignored_features"][0]["reason"]
    alone = client.post("/steer", json=steer_body(features=features[:1]), headers=auth).get_json()
    assert alone["ignored_features"] == []
    del body["ignored_features"], alone["ignored_features"]
    assert body == alone


def test_steer_positions_of_a_chat_count_its_one_bos(client, auth):
    # Rendered server-side from messages, the chat's <bos> text is position 0 and unsteerable;
    # its first turn marker (position 1) is steered.
    features = [
        {"layer": 0, "index": 0, "token_active_position": 1, "steer_position": p, "delta": 500.0}
        for p in (0, 1)
    ]
    body = steer_body(features=features, messages=[{"role": "user", "content": PARIS}])
    del body["prompt"]
    reply = client.post("/steer", json=body, headers=auth).get_json()
    tokens = [e["token"] for e in reply["DEFAULT_LOGITS_BY_TOKEN"]]
    assert tokens[:2] == ["<bos>", "<start_of_turn>"] and tokens.count("<bos>") == 1
    assert [i["request_index"] for i in reply["ignored_features"]] == [0]
    assert reply["STEERED_LOGITS_BY_TOKEN"] != reply["DEFAULT_LOGITS_BY_TOKEN"]


@pytest.mark.parametrize(
    ("messages", "rendered"),
    [
        ([{"role": "user", "content": PARIS}], "<bos><start_of_turn>user\n" + PARIS),
        (
            [{"role": "user", "content": PARIS}, {"role": "assistant", "content": " "}],
            "<bos>" + CHAT,
        ),
    ],
    ids=["open-user-turn", "blank-assistant-turn"],
)
def test_forward_pass_renders_messages_as_the_original(client, auth, messages, rendered):
    res = client.post("/forward-pass", json={"messages": messages}, headers=auth)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["prompt"] == rendered
    assert body["input_tokens"][:2] == ["<bos>", "<start_of_turn>"]
    assert body["input_tokens"].count("<bos>") == 1


STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
)


@pytest.mark.parametrize(
    ("template", "messages", "needle"),
    [
        (None, [{"role": "user", "content": PARIS}], "has no chat template"),
        (STRICT_TEMPLATE, [{"role": "system", "content": PARIS}], "System role not supported"),
    ],
    ids=["no-template", "template-refuses"],
)
def test_messages_the_model_cannot_render_get_a_400(tmp_path, auth, template, messages, needle):
    """A user's own model may lack a template, or refuse a turn: messages get a clear 400."""
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.models.loading import load_model
    from neuronpedia_graph.service import GraphService
    from neuronpedia_graph.settings import Settings

    model_dir = tmp_path / "model"
    shutil.copytree(demo.MODEL_DIR, model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template")
    if template is not None:
        config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    settings = Settings(
        model_id=str(model_dir), transcoder_set=str(demo.TRANSCODER_DIR), device="cpu"
    )
    client = create_app(
        GraphService(load_model(settings), settings), auth["x-secret-key"]
    ).test_client()
    for path, body in (
        ("/forward-pass", {"messages": messages}),
        ("/generate-graph", {"messages": messages, "model_id": "model", "slug_identifier": "x"}),
        ("/steer", {**steer_body(), "model_id": "model", "messages": messages, "prompt": None}),
    ):
        body = {k: v for k, v in body.items() if v is not None}
        res = client.post(path, json=body, headers=auth)
        assert res.status_code == 400, (path, res.get_json())
        assert needle in res.get_json()["error"]
    assert client.post("/forward-pass", json={"prompt": PARIS}, headers=auth).status_code == 200


def test_no_features_and_top_k_zero_are_accepted_like_the_original(client, auth):
    res = client.post("/steer", json=steer_body(features=[], top_k=0), headers=auth)
    assert res.status_code == 200, res.get_json()
    body = res.get_json()
    assert body["STEERED_GENERATION"] == body["DEFAULT_GENERATION"]
    assert body["ignored_features"] == []
    assert all(e["top_logits"] == [] for e in body["DEFAULT_LOGITS_BY_TOKEN"])


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
