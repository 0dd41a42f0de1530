"""Steering on the demo model: interventions found from real graphs, positions, determinism."""

from __future__ import annotations

import orjson
import pytest
import torch
from pydantic import ValidationError

from neuronpedia_graph.errors import InvalidRequest
from neuronpedia_graph.prompts.chat import ChatMessage, render_chat
from neuronpedia_graph.prompts.encoding import ModelPrompts
from neuronpedia_graph.schemas import (
    IgnoredFeature,
    RequestContext,
    SteerFeature,
    SteerRequest,
    SteerResponse,
    TokenLogits,
    parse_request,
)
from neuronpedia_graph.steering import drop_unsteerable, steer

PARIS = "The city of Paris is in"
ROME = "The city of Rome is in"
COUNT_TO_6 = "1 2 3 4 5 6"
COUNT_TO_3 = "1 2 3"
VALID = {"layer": 0, "index": 0, "token_active_position": 1, "steer_position": 1, "delta": 1.0}


@pytest.fixture(scope="module")
def model(demo_loaded):
    """The demo model and transcoders, as the server loads them (once per session)."""
    CONTEXT.append(context_for(demo_loaded.model))
    return demo_loaded.model


# steer() trusts requests validated with the server's context; `request` builds them so.
CONTEXT: list[RequestContext] = []


def context_for(model) -> RequestContext:
    return RequestContext(
        prompts=ModelPrompts(model),
        model_id="demo",
        model_ids=frozenset({"demo"}),
        token_limit=64,
        forward_pass_token_limit=2048,
        max_feature_nodes=10_000,
        n_layers=int(model.cfg.n_layers),
        d_transcoder=int(model.transcoders.d_transcoder),
    )


def top_direct_feature(service, prompt: str) -> tuple[int, int, int]:
    """(layer, position, index) of the feature with the largest direct effect on the top
    logit of `prompt`'s graph, as the server builds it."""
    from neuronpedia_graph.operations import BY_NAME
    from tests.conftest import graph_body
    from tests.helpers import strongest_feature_into_target

    outcome = service.run(BY_NAME["generate-graph"], graph_body(prompt=prompt))
    layer, index, position = strongest_feature_into_target(orjson.loads(outcome.value.document))
    return layer, position, index


@pytest.fixture(scope="module")
def france_feature(service) -> tuple[int, int, int]:
    return top_direct_feature(service, PARIS)


@pytest.fixture(scope="module")
def say_7_feature(service) -> tuple[int, int, int]:
    return top_direct_feature(service, COUNT_TO_6)


def request(prompt: str = PARIS, **fields) -> SteerRequest:
    features = fields.pop("features", None) or [VALID]
    body = {"model_id": "demo", "prompt": prompt, "features": features, "n_tokens": 3, **fields}
    return parse_request(SteerRequest, body, CONTEXT[-1])


def steer_at(feature: tuple[int, int, int], position: int, **fields) -> dict:
    """The feature read and steered at `position` (the graph's own position by default)."""
    layer, _, index = feature
    return {
        "layer": layer,
        "index": index,
        "token_active_position": position,
        "steer_position": position,
        **fields,
    }


def last_position(model, prompt: str) -> int:
    return len(ModelPrompts(model).encode(prompt).ids) - 1


def prob_bounds(entry: TokenLogits, token: str) -> tuple[float, float]:
    """p(token) when listed; else (0, the smallest listed probability)."""
    listed = {t.token: t.prob for t in entry.top_logits}
    if token in listed:
        return listed[token], listed[token]
    return 0.0, min(listed.values())


def next_prob(entries: list[TokenLogits], position: int, token: str) -> float:
    low, high = prob_bounds(entries[position], token)
    assert low == high, f"{token!r} is not among the top logits"
    return low


def continuation(reply: SteerResponse, prompt: str, steered: bool) -> str:
    text = reply.STEERED_GENERATION if steered else reply.DEFAULT_GENERATION
    assert text.startswith(prompt)
    return text[len(prompt) :]


# ------------------------------------------------------------------------- interventions
def test_ablating_the_top_france_feature_lowers_p_france(model, france_feature) -> None:
    last = last_position(model, PARIS)
    assert france_feature[1] == last  # the graph found it where the answer is read out
    reply = steer(model, request(features=[steer_at(france_feature, last, ablate=True)]))

    default = next_prob(reply.DEFAULT_LOGITS_BY_TOKEN, last, " France")
    ablated = next_prob(reply.STEERED_LOGITS_BY_TOKEN, last, " France")
    assert default > 0.5
    assert ablated < default


def test_boosting_the_top_france_feature_raises_p_france(model, france_feature) -> None:
    # On the Paris prompt p(France) is saturated and a boost mostly grows the residual norm, so
    # push the feature where France is not the answer yet.
    last = last_position(model, ROME)
    features = [steer_at(france_feature, last, delta=5.0)]
    reply = steer(model, request(ROME, features=features, top_k=20))

    _, default_high = prob_bounds(reply.DEFAULT_LOGITS_BY_TOKEN[last], " France")
    boosted_low, _ = prob_bounds(reply.STEERED_LOGITS_BY_TOKEN[last], " France")
    assert boosted_low > default_high


def test_boosting_a_say_7_feature_changes_a_count(model, say_7_feature) -> None:
    last = last_position(model, COUNT_TO_3)
    features = [steer_at(say_7_feature, last, delta=50.0)]
    reply = steer(model, request(COUNT_TO_3, features=features, top_k=20))

    assert continuation(reply, COUNT_TO_3, steered=False).startswith(" 4 5")
    assert not continuation(reply, COUNT_TO_3, steered=True).startswith(" 4")
    _, default_high = prob_bounds(reply.DEFAULT_LOGITS_BY_TOKEN[last], " 7")
    assert prob_bounds(reply.STEERED_LOGITS_BY_TOKEN[last], " 7")[0] > default_high


def test_generated_token_steering_starts_after_the_first_new_token(model, say_7_feature) -> None:
    last = last_position(model, COUNT_TO_3)
    feature = steer_at(say_7_feature, last, delta=50.0)
    feature.update(steer_position=None, steer_generated_tokens=True)
    reply = steer(model, request(COUNT_TO_3, features=[feature]))

    # The first new token is predicted from the prompt alone, which is not steered; the
    # distribution after it already is.
    default, steered = reply.DEFAULT_LOGITS_BY_TOKEN, reply.STEERED_LOGITS_BY_TOKEN
    assert steered[: last + 1] == default[: last + 1]
    assert steered[last + 1].token == default[last + 1].token
    assert steered[last + 1].top_logits != default[last + 1].top_logits
    assert continuation(reply, COUNT_TO_3, steered=True) != continuation(
        reply, COUNT_TO_3, steered=False
    )


def test_frozen_attention_ablation_still_lowers_p_france(model, france_feature) -> None:
    last = last_position(model, PARIS)
    features = [steer_at(france_feature, last, ablate=True)]
    reply = steer(model, request(features=features, freeze_attention=True))

    default = next_prob(reply.DEFAULT_LOGITS_BY_TOKEN, last, " France")
    assert next_prob(reply.STEERED_LOGITS_BY_TOKEN, last, " France") < default


# --------------------------------------------------------------------------- determinism
def test_same_request_gives_the_same_reply(model, france_feature) -> None:
    req = request(features=[steer_at(france_feature, last_position(model, PARIS), delta=-3.0)])

    assert steer(model, req) == steer(model, req)


def test_sampling_with_a_seed_is_reproducible_and_seeds_matter(model, say_7_feature) -> None:
    features = [steer_at(say_7_feature, last_position(model, COUNT_TO_3), delta=10.0)]

    def sample(seed: int) -> SteerResponse:
        return steer(
            model, request(COUNT_TO_3, features=features, temperature=3.0, seed=seed, n_tokens=4)
        )

    assert sample(1234) == sample(1234)
    assert len({sample(seed).DEFAULT_GENERATION for seed in range(3)}) > 1


@pytest.mark.parametrize("seed", [7, None])
def test_both_runs_share_the_seed(model, france_feature, seed) -> None:
    # Setting a feature to its own activation changes nothing, so the runs must agree exactly.
    last = last_position(model, COUNT_TO_3)
    features = [steer_at(france_feature, last, delta=0.0)]
    reply = steer(
        model, request(COUNT_TO_3, features=features, temperature=3.0, seed=seed, n_tokens=8)
    )

    assert reply.STEERED_GENERATION == reply.DEFAULT_GENERATION
    assert reply.STEERED_LOGITS_BY_TOKEN == reply.DEFAULT_LOGITS_BY_TOKEN


def test_frequency_penalty_forbids_repeats_without_changing_reported_probs(model) -> None:
    sampling = {"temperature": 1.0, "seed": 0, "n_tokens": 6}
    plain = steer(model, request(PARIS, **sampling))
    penalised = steer(model, request(PARIS, freq_penalty=100.0, **sampling))

    last = last_position(model, PARIS)
    prompt = {e.token for e in penalised.DEFAULT_LOGITS_BY_TOKEN[: last + 1]}
    repeated = [e.token for e in plain.DEFAULT_LOGITS_BY_TOKEN[last + 1 :]]
    assert len(set(repeated)) < len(repeated)  # " France . . ." without the penalty
    generated = [e.token for e in penalised.DEFAULT_LOGITS_BY_TOKEN[last + 1 :]]
    # The penalty counts the prompt too, so no prompt token comes back either.
    assert len(generated) == len(set(generated)) == 6 and not prompt & set(generated)
    assert plain.DEFAULT_LOGITS_BY_TOKEN[last] == penalised.DEFAULT_LOGITS_BY_TOKEN[last]


# ----------------------------------------------------------------------------- positions
def test_reply_has_one_entry_per_position_and_greedy_top1_is_the_next_token(model) -> None:
    ids = ModelPrompts(model).encode(COUNT_TO_6).ids
    n_prompt = len(ids)
    reply = steer(model, request(COUNT_TO_6, n_tokens=4))

    for entries in (reply.DEFAULT_LOGITS_BY_TOKEN, reply.STEERED_LOGITS_BY_TOKEN):
        assert len(entries) == n_prompt + 4
        assert [e.token for e in entries[:n_prompt]] == ["<bos>", "1", " 2", " 3", " 4", " 5", " 6"]
        assert all(e.top_logits == [] for e in entries[: n_prompt - 1])
        # From the last prompt token on, every entry holds the distribution after it ...
        assert all(len(e.top_logits) == 5 for e in entries[n_prompt - 1 :])
        # ... so under greedy decoding its top-1 is the next entry's token.
        for position in range(n_prompt - 1, len(entries) - 1):
            assert entries[position].top_logits[0].token == entries[position + 1].token
    generated = "".join(e.token for e in reply.DEFAULT_LOGITS_BY_TOKEN[n_prompt:])
    assert generated == " 7 8 9 10"
    assert COUNT_TO_6 + generated == reply.DEFAULT_GENERATION


def test_a_bos_in_the_prompt_text_does_not_shift_positions(model, france_feature) -> None:
    features = [steer_at(france_feature, last_position(model, PARIS), ablate=True)]
    plain = steer(model, request(PARIS, features=features))
    with_bos = steer(model, request("<bos>" + PARIS, features=features))

    assert with_bos.STEERED_LOGITS_BY_TOKEN == plain.STEERED_LOGITS_BY_TOKEN
    assert with_bos.DEFAULT_GENERATION == "<bos>" + plain.DEFAULT_GENERATION


def test_chat_prompts_keep_exactly_one_bos(model) -> None:
    prompt = render_chat(model.tokenizer, [ChatMessage(role="user", content=COUNT_TO_3)])

    reply = steer(model, request(prompt, n_tokens=1))

    tokens = [e.token for e in reply.DEFAULT_LOGITS_BY_TOKEN]
    assert tokens[:3] == ["<bos>", "<start_of_turn>", "user"]
    assert tokens.count("<bos>") == 1


def test_the_model_is_left_unchanged_even_when_a_run_fails(model, monkeypatch) -> None:
    tokenizer = model.tokenizer
    req = request(COUNT_TO_3)
    before = steer(model, req)

    def injected_fault(*args, **kwargs):
        raise RuntimeError("injected fault")

    with monkeypatch.context() as patch:
        patch.setattr(model, "feature_intervention", injected_fault)
        with pytest.raises(RuntimeError, match="injected fault"):
            steer(model, req)

    assert model.tokenizer is tokenizer
    assert steer(model, req) == before


# ------------------------------------------------------------------ unsteerable positions
def test_only_the_steer_position_decides_what_is_dropped() -> None:
    at_bos = SteerFeature.model_validate({**VALID, "token_active_position": 0, "steer_position": 0})
    read_at_bos = SteerFeature.model_validate({**VALID, "token_active_position": 0})
    generated = SteerFeature.model_validate(
        {
            **VALID,
            "token_active_position": 0,
            "steer_position": None,
            "steer_generated_tokens": True,
        }
    )
    at_second_bos = SteerFeature.model_validate({**VALID, "steer_position": 3, "ablate": True})
    at_second_bos = at_second_bos.model_copy(update={"delta": None})

    kept, ignored = drop_unsteerable([at_bos, read_at_bos, generated, at_second_bos], [0, 3])

    assert kept == [read_at_bos, generated]
    assert [(i.request_index, i.feature) for i in ignored] == [(0, at_bos), (3, at_second_bos)]
    assert "steer_position 0 holds a BOS token" in ignored[0].reason
    assert "[0, 3]" in ignored[1].reason
    assert drop_unsteerable([at_bos], []) == ([at_bos], [])


def test_a_feature_steered_at_the_bos_is_ignored_and_listed(model, say_7_feature) -> None:
    last = last_position(model, COUNT_TO_3)
    real = steer_at(say_7_feature, last, delta=50.0)
    # A layer-0 feature: what it writes at the BOS reaches the last position through layer 1.
    at_bos = {**VALID, "token_active_position": last, "steer_position": 0, "delta": 500.0}
    # Applied, the BOS intervention would change the model's prediction ...
    plain, _ = model.feature_intervention(COUNT_TO_3, [])
    pushed, _ = model.feature_intervention(COUNT_TO_3, [(0, 0, VALID["index"], 500.0)])
    assert not torch.allclose(plain[..., -1, :], pushed[..., -1, :])

    both = steer(model, request(COUNT_TO_3, features=[at_bos, real]))
    only_real = steer(model, request(COUNT_TO_3, features=[real]))

    # ... so an identical reply means it was not applied.
    assert both.model_dump(exclude={"ignored_features"}) == only_real.model_dump(
        exclude={"ignored_features"}
    )
    assert only_real.ignored_features == []
    assert both.ignored_features == [
        IgnoredFeature(
            request_index=0,
            feature=SteerFeature.model_validate(at_bos),
            reason=both.ignored_features[0].reason,
        )
    ]


def test_with_every_feature_ignored_the_steered_run_is_the_default(model) -> None:
    at_bos = {**VALID, "steer_position": 0, "delta": 500.0}
    reply = steer(model, request(COUNT_TO_3, features=[at_bos]))

    assert len(reply.ignored_features) == 1
    assert reply.STEERED_GENERATION == reply.DEFAULT_GENERATION
    assert reply.STEERED_LOGITS_BY_TOKEN == reply.DEFAULT_LOGITS_BY_TOKEN


def test_turn_markers_are_steered_and_every_bos_is_not(model) -> None:
    chat = render_chat(model.tokenizer, [ChatMessage(role="user", content=COUNT_TO_3)])
    marker = {**VALID, "token_active_position": 1, "steer_position": 1, "delta": 500.0}

    reply = steer(model, request(chat, features=[marker]))

    assert reply.DEFAULT_LOGITS_BY_TOKEN[1].token == "<start_of_turn>"
    assert reply.ignored_features == []
    assert reply.STEERED_LOGITS_BY_TOKEN != reply.DEFAULT_LOGITS_BY_TOKEN
    # A BOS inside the prompt is as unsteerable as the first one.
    inner = {**VALID, "steer_position": 3}
    reply = steer(model, request("1 2<bos> 3", features=[inner]))
    assert reply.DEFAULT_LOGITS_BY_TOKEN[3].token == "<bos>"
    assert [i.request_index for i in reply.ignored_features] == [0]


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ablate": True}, "exactly one of ablate=true or a delta"),
        ({"delta": None}, "exactly one of ablate=true or a delta"),
        ({"steer_generated_tokens": True}, "exactly one of steer_position or"),
        ({"steer_position": None}, "exactly one of steer_position or"),
        ({"layer": -1}, "layer -1 is outside"),
        ({"layer": "n_layers"}, "is outside"),
        ({"index": -1}, "index -1 is outside"),
        ({"index": "d_transcoder"}, "is outside"),
        ({"token_active_position": -1}, "token_active_position -1 is outside"),
        ({"token_active_position": "n_prompt"}, "token_active_position"),
        ({"steer_position": -1}, "steer_position -1 is outside"),
        ({"steer_position": "n_prompt"}, "steer_position"),
    ],
)
def test_each_rule_names_the_offending_feature(model, change, message) -> None:
    limits = {
        "n_layers": model.cfg.n_layers,
        "d_transcoder": model.transcoders.d_transcoder,
        "n_prompt": last_position(model, PARIS) + 1,
    }
    bad = {**VALID, **{k: limits.get(v, v) for k, v in change.items()}}

    with pytest.raises(InvalidRequest, match=rf"^features\[1\]: .*{message}"):
        request(features=[VALID, bad])


def test_valid_features_pass_and_are_all_applied(model, france_feature) -> None:
    """Three valid features of three kinds: none is ignored, and each one is applied: the
    steered run differs from the same request without it, while the default run does not."""
    generated = {**VALID, "steer_position": None, "steer_generated_tokens": True}
    # Ablating changes the run only where the feature is active: the France feature, where
    # the graph found it.
    ablated = steer_at(france_feature, france_feature[1], delta=None, ablate=True)
    features = [VALID, generated, ablated]

    reply = steer(model, request(features=features))

    assert reply.ignored_features == []
    assert len(reply.STEERED_LOGITS_BY_TOKEN) == len(reply.DEFAULT_LOGITS_BY_TOKEN)
    for i, feature in enumerate(features):
        without = steer(model, request(features=features[:i] + features[i + 1 :]))
        assert without.DEFAULT_LOGITS_BY_TOKEN == reply.DEFAULT_LOGITS_BY_TOKEN
        assert without.STEERED_LOGITS_BY_TOKEN != reply.STEERED_LOGITS_BY_TOKEN, feature


def test_request_bounds() -> None:
    base = {"model_id": "demo", "prompt": PARIS}
    with pytest.raises(ValidationError, match="features"):
        SteerRequest.model_validate({**base, "features": "not a list"})
    for field, value in [("n_tokens", 0), ("n_tokens", 257), ("top_k", 21), ("temperature", -1)]:
        with pytest.raises(ValidationError, match=field):
            SteerRequest.model_validate({**base, "features": [VALID], field: value})
    extra = {**VALID, "unknown": 1}
    req = SteerRequest.model_validate({**base, "features": [extra]})
    assert req.features == [SteerFeature.model_validate(VALID)]
