"""/steer generation on the demo model: the original server's sampling rules, and the cached
loop against a full recompute.

Expected tokens are computed here, independently of neuronpedia_graph.sampling and the cached
loop: each step runs circuit-tracer's `feature_intervention` over the whole sequence and applies
the original's formula (TransformerLens's `sample_logits`, written out), drawing with
`torch.manual_seed(seed)` and `torch.distributions.Categorical` as the original did.
"""

from __future__ import annotations

import pytest
import torch

from neuronpedia_graph.prompts.chat import ChatMessage, render_chat
from neuronpedia_graph.prompts.encoding import ModelPrompts
from neuronpedia_graph.sampling import new_generator, next_token
from neuronpedia_graph.schemas import SteerRequest, SteerResponse, parse_request
from neuronpedia_graph.steering import _tensor_inputs, generate, steer
from tests.test_steering import context_for

PARIS = "The city of Paris is in"
COUNT_TO_3 = "1 2 3"
EOS = 1  # the demo tokenizer's <eos>
END_OF_TURN = 5  # an end id of the demo's generation config, not the tokenizer's EOS


@pytest.fixture(scope="module")
def model(demo_loaded):
    """The session's demo model (nnsight, CPU, float32): these tests only read it."""
    return demo_loaded.model


def request(model, prompt: str, **fields) -> SteerRequest:
    body = {"model_id": "demo", "prompt": prompt, "features": [], **fields}
    return parse_request(SteerRequest, body, context_for(model))


def prompt_ids(model, prompt: str) -> list[int]:
    return ModelPrompts(model).encode(prompt).ids


def full_logits(model, ids: list[int], interventions=(), freeze: bool = False) -> torch.Tensor:
    """Next-token logits after `ids`: one full forward pass, no cache."""
    with _tensor_inputs(model):
        logits, _ = model.feature_intervention(
            torch.tensor(ids), list(interventions), freeze_attention=freeze
        )
    return logits.reshape(-1, logits.shape[-1])[-1].float()


def original_run(
    model,
    ids: list[int],
    interventions=(),
    *,
    n_tokens: int,
    temperature: float = 0.0,
    freq_penalty: float = 0.0,
    seed: int = 0,
    penalty_rule: str = "original",
) -> tuple[list[int], list[torch.Tensor]]:
    """The original's continuation by the formula (see the module docstring).

    `penalty_rule` also computes two wrong rules, to show the tests can tell them apart:
    "before_temperature" (subtract, then divide) and "generated_only" (prompt not counted).
    """
    sequence = list(ids)
    generated: list[int] = []
    rows: list[torch.Tensor] = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        while True:
            logits = full_logits(model, sequence, interventions)
            rows.append(logits)
            if len(generated) == n_tokens or (generated and generated[-1] == EOS):
                return generated, rows
            if temperature == 0:
                token = int(logits.argmax())
            else:
                counted = generated if penalty_rule == "generated_only" else sequence
                counted_ids = torch.tensor(counted, dtype=torch.long)
                counts = torch.bincount(counted_ids, minlength=logits.numel())
                penalty = freq_penalty * counts if freq_penalty > 0 else 0.0
                if penalty_rule == "before_temperature":
                    scores = (logits - penalty) / temperature
                else:
                    scores = logits / temperature - penalty
                token = int(torch.distributions.Categorical(logits=scores).sample())
            generated.append(token)
            sequence.append(token)


def generated_tokens(reply: SteerResponse, n_prompt: int, steered: bool = False) -> list[str]:
    entries = reply.STEERED_LOGITS_BY_TOKEN if steered else reply.DEFAULT_LOGITS_BY_TOKEN
    return [e.token for e in entries[n_prompt:]]


def decoded(model, ids: list[int]) -> list[str]:
    return [model.tokenizer.decode([i]) for i in ids]


def feature_value(model, ids: list[int], layer: int, position: int, index: int) -> float:
    _, activations = model.get_activations(torch.tensor(ids), sparse=True)
    return float(activations.to_dense()[layer, position, index])


# ------------------------------------------------------------------------- sampling rules
def test_greedy_decoding_ignores_the_frequency_penalty(model) -> None:
    ids = prompt_ids(model, PARIS)
    expected, _ = original_run(model, ids, n_tokens=6)
    assert decoded(model, expected) == [" France"] + [" ."] * 5  # a penalty would matter

    for penalty in (0.0, 100.0, -100.0):
        reply = steer(model, request(model, PARIS, n_tokens=6, freq_penalty=penalty))
        assert generated_tokens(reply, len(ids)) == decoded(model, expected)


@pytest.mark.parametrize(("temperature", "freq_penalty", "seed"), [(2.0, 1.5, 1), (1.5, 4.0, 1)])
def test_sampled_penalty_is_applied_after_temperature_over_the_whole_sequence(
    model, temperature, freq_penalty, seed
) -> None:
    ids = prompt_ids(model, PARIS)
    sampling = {"temperature": temperature, "freq_penalty": freq_penalty, "seed": seed}
    expected, rows = original_run(model, ids, n_tokens=8, **sampling)
    # The other orders and counts give other tokens here, so this pins the rule.
    for wrong in ("before_temperature", "generated_only"):
        assert original_run(model, ids, n_tokens=8, penalty_rule=wrong, **sampling)[0] != expected

    reply = steer(model, request(model, PARIS, n_tokens=8, **sampling))

    assert generated_tokens(reply, len(ids)) == decoded(model, expected)
    # Reported probabilities stay the model's own softmax, before temperature and penalty.
    for entry, row in zip(reply.DEFAULT_LOGITS_BY_TOKEN[len(ids) - 1 :], rows, strict=True):
        top = torch.softmax(row.double(), -1).topk(len(entry.top_logits))
        assert [t.prob for t in entry.top_logits] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_a_negative_penalty_is_ignored_like_a_zero_one(model) -> None:
    sampling = {"temperature": 1.5, "seed": 11, "n_tokens": 8}
    plain = steer(model, request(model, PARIS, **sampling))
    negative = steer(model, request(model, PARIS, freq_penalty=-50.0, **sampling))
    positive = steer(model, request(model, PARIS, freq_penalty=50.0, **sampling))

    assert negative == plain
    assert positive.DEFAULT_GENERATION != plain.DEFAULT_GENERATION


def test_generation_stops_only_at_the_tokenizer_eos(model) -> None:
    chat = render_chat(model.tokenizer, [ChatMessage(role="user", content=COUNT_TO_3)])
    ids = prompt_ids(model, chat)
    expected, _ = original_run(model, ids, n_tokens=10)
    assert END_OF_TURN in expected[:-1]  # the generation config's end token does not stop it

    reply = steer(model, request(model, chat, n_tokens=10))

    assert generated_tokens(reply, len(ids)) == decoded(model, expected)
    assert len(expected) == 10


def test_generation_stops_at_the_eos_and_keeps_it(model) -> None:
    # At a high temperature almost any token is drawn; with this seed <eos> comes third.
    sampling = {"temperature": 50.0, "seed": 6}
    ids = prompt_ids(model, PARIS)
    expected, _ = original_run(model, ids, n_tokens=30, **sampling)
    assert expected[-1] == EOS and len(expected) < 30

    reply = steer(model, request(model, PARIS, n_tokens=30, **sampling))

    assert generated_tokens(reply, len(ids)) == decoded(model, expected)
    assert reply.DEFAULT_LOGITS_BY_TOKEN[-1].token == "<eos>"


def test_the_random_stream_is_transformer_lens_sample_logits_under_manual_seed() -> None:
    from transformer_lens.utilities.logits_utils import sample_logits

    vocab = 97
    for dtype in (torch.float32, torch.bfloat16):
        for temperature, penalty in [(1.0, 0.0), (0.7, 0.5), (2.5, 2.0), (1.3, -1.0)]:
            for seed in range(5):
                inputs = torch.Generator().manual_seed(1000 + seed)
                sequence = torch.randint(0, vocab, (12,), generator=inputs)
                rows = [torch.randn(vocab, generator=inputs).to(dtype) * 3 for _ in range(20)]
                ours, original = [], []
                mine = new_generator(seed, torch.device("cpu"))
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    seq_theirs = sequence.clone()
                    for row in rows:
                        token = sample_logits(
                            row[None].clone(),
                            temperature=temperature,
                            freq_penalty=penalty,
                            tokens=seq_theirs[None],
                        )
                        original.append(int(token))
                        seq_theirs = torch.cat([seq_theirs, token])
                seq_ours = sequence.clone()
                for row in rows:
                    ours.append(next_token(row, seq_ours, temperature, penalty, mine))
                    seq_ours = torch.cat([seq_ours, torch.tensor([ours[-1]])])
                assert ours == original, (dtype, temperature, penalty, seed)


# --------------------------------------------------------------- cached loop vs recompute
def active_on_generated_tokens(model, ids: list[int]) -> tuple[int, int, float]:
    """(layer, index, activation) of the feature most active on the first generated token:
    an intervention's delta there depends on reading that activation right."""
    continuation, _ = original_run(model, ids, n_tokens=2)
    _, activations = model.get_activations(torch.tensor(ids + continuation), sparse=True)
    at_first = activations.to_dense()[:, len(ids)]  # (layers, features)
    layer, index = divmod(int(at_first.argmax()), at_first.shape[1])
    return layer, index, float(at_first[layer, index])


def steering_cases(model) -> dict[str, list[tuple]]:
    ids = prompt_ids(model, PARIS)
    last = len(ids) - 1
    generated = slice(len(ids), None)
    boost = feature_value(model, ids, 1, last, 382) + 5.0
    layer, index, active = active_on_generated_tokens(model, ids)
    assert active > 0.5
    return {
        "default": [],
        "fixed_position": [(1, last, 382, boost)],
        "generated_tokens": [(layer, generated, index, active + 3.0)],
        "ablate": [(1, last, 382, 0.0)],
        "all_kinds": [(1, last, 382, 0.0), (0, 2, 7, 4.0), (layer, generated, index, 0.0)],
    }


@pytest.mark.parametrize(
    "kind", ["default", "fixed_position", "generated_tokens", "ablate", "all_kinds"]
)
@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.5, "freq_penalty": 0.5, "seed": 4}])
def test_cached_generation_equals_a_full_recompute(model, kind, sampling) -> None:
    ids = prompt_ids(model, PARIS)
    interventions = steering_cases(model)[kind]
    req = request(model, PARIS, n_tokens=12, **sampling)

    expected, expected_rows = original_run(model, ids, interventions, n_tokens=12, **sampling)
    with _tensor_inputs(model):
        tokens, rows = generate(
            model, torch.tensor(ids), interventions, req, seed=sampling.get("seed", 0)
        )

    assert tokens == expected
    assert len(rows) == len(expected_rows) == 13
    worst = max(float((a - b).abs().max()) for a, b in zip(rows, expected_rows, strict=True))
    assert worst < 1e-4


# circuit-tracer 0.5.0's feature_intervention_generate (the reference here; the server does not
# call it) uses nnsight's `with tracer.iter[...]:`, which nnsight deprecates. Its warning names no
# useful module (its stacklevel lands in threading), so the message and category narrow it.
@pytest.mark.filterwarnings(r"ignore:`with tracer\.iter\[\.\.\.\]:DeprecationWarning")
def test_frozen_attention_holds_only_while_the_prompt_is_read(model) -> None:
    ids = prompt_ids(model, PARIS)
    last = len(ids) - 1
    interventions = [(1, last, 382, 20.0), (0, slice(len(ids), None), 5, 3.0)]
    req = request(model, PARIS, n_tokens=6, freeze_attention=True)
    with _tensor_inputs(model):
        tokens, rows = generate(model, torch.tensor(ids), interventions, req, seed=0)
        # The original's steered path: circuit-tracer's own generation, attention frozen on its
        # first step only, its later steps reading the cache that step wrote.
        _, library, _ = model.feature_intervention_generate(
            torch.tensor(ids),
            interventions,
            freeze_attention=True,
            do_sample=False,
            max_new_tokens=6,
            return_activations=False,
        )

    assert float((rows[0] - full_logits(model, ids, interventions, freeze=True)).abs().max()) < 1e-5
    library = library.reshape(-1, library.shape[-1]).float()
    assert tokens == [int(row.argmax()) for row in library]
    assert max(float((a - b).abs().max()) for a, b in zip(rows, library, strict=False)) < 1e-4
    # Freezing on every pass (this server's old rule) gives other probabilities after step one.
    sequence = ids + tokens[:1]
    every_pass = full_logits(model, sequence, interventions, freeze=True)
    assert float((rows[1] - every_pass).abs().max()) > 1e-2


def test_steer_leaves_no_hook_behind_when_a_step_fails(model, monkeypatch) -> None:
    body = model._model.model
    req = request(model, PARIS, n_tokens=3)
    before = steer(model, req)
    hooks = (dict(body._forward_pre_hooks), dict(body._forward_hooks))  # nnsight keeps its own
    calls = {"n": 0}
    original = model.feature_intervention

    def fails_on_the_third_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(model, "feature_intervention", fails_on_the_third_step)
        with pytest.raises(RuntimeError, match="injected fault"):
            steer(model, req)

    assert (dict(body._forward_pre_hooks), dict(body._forward_hooks)) == hooks
    assert steer(model, req) == before


def test_cached_generation_equals_a_full_recompute_on_every_fabricated_architecture(
    tmp_path,
) -> None:
    """Gemma 2, Llama, cross-layer transcoders, Qwen 3 and the multimodal Gemma 3 (small shapes,
    nnsight), greedy and seeded. A child process, since HF_HOME is read once per process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from testkit.hubcache import PAIRS

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.steer",
            "--check",
            ",".join(PAIRS),
            "--new",
            "6",
            "--hf-home",
            str(tmp_path),
        ],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("pair=")]
    results = {
        fields["pair"]: fields
        for fields in (dict(kv.split("=") for kv in line.split()) for line in lines)
    }
    assert set(results) == set(PAIRS)
    for key, fields in results.items():
        assert fields["tokens_identical"] == "1", key
        assert float(fields["max_logit_diff"]) < 1e-4, key
