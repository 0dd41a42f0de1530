"""Quality bars of the committed demo model and transcoders, and a smoke rebuild.

Every other test of the project runs on these artifacts, so their quality is asserted here,
on the committed files, rather than trusted from the build's printout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, Gemma2ForCausalLM

from neuronpedia_graph.demo import (
    ARTIFACTS_DIR,
    MODEL_DIR,
    SCAN,
    TRANSCODER_DIR,
)
from neuronpedia_graph.demo.build import chat_probes, probe_token_ids
from neuronpedia_graph.demo.corpus import Probe, build_corpus
from neuronpedia_graph.demo.train import encode_relu, fvu, mlp_io
from neuronpedia_graph.models.spec import local_transcoder_config

FAMILIES = ("counting", "cities", "addition", "opposites", "plurals")
PARIS = "The city of Paris is in"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL_DIR)


@pytest.fixture(scope="module")
def model():
    return Gemma2ForCausalLM.from_pretrained(MODEL_DIR, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def corpus():
    return build_corpus()


@pytest.fixture(scope="module")
def transcoders():
    return [load_file(str(path)) for path in local_transcoder_config(TRANSCODER_DIR)["transcoders"]]


@pytest.fixture(scope="module")
def probe_io(model, tokenizer, corpus):
    """Per layer (transcoder input, MLP output) on every probe token, plain and chat."""
    return mlp_io(model, probe_token_ids(corpus, tokenizer), tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def replacement_model(demo_loaded):
    """The committed model and transcoders in circuit-tracer, loaded once for the session."""
    return demo_loaded.model


def test_paths_and_layout():
    assert MODEL_DIR == ARTIFACTS_DIR / "model"
    assert TRANSCODER_DIR == ARTIFACTS_DIR / "transcoders"
    assert SCAN == "demo"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (MODEL_DIR / name).is_file(), name
    config = yaml.safe_load((TRANSCODER_DIR / "config.yaml").read_text())
    assert config["model_kind"] == "transcoder_set"
    assert config["feature_input_hook"] == "ln2.hook_normalized"
    assert config["feature_output_hook"] == "hook_mlp_out"
    assert config["scan"] == SCAN
    # Relative names keep the committed directory relocatable.
    assert config["transcoders"] == ["layer_0.safetensors", "layer_1.safetensors"]
    resolved = local_transcoder_config(TRANSCODER_DIR)["transcoders"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in resolved)
    total = sum(f.stat().st_size for f in ARTIFACTS_DIR.rglob("*") if f.is_file())
    assert total < 2_500_000


def test_model_is_a_small_gemma2(model):
    assert model.config.architectures == ["Gemma2ForCausalLM"]
    assert 150_000 <= sum(p.numel() for p in model.parameters()) <= 300_000


def test_tokenizer_special_tokens(tokenizer):
    assert tokenizer.is_fast
    # circuit-tracer prepends the first truthy id among bos/pad/eos: a bos of 0 would be skipped.
    assert tokenizer.bos_token_id not in (None, 0)
    with_bos = tokenizer(PARIS).input_ids
    without = tokenizer(PARIS, add_special_tokens=False).input_ids
    assert with_bos == [tokenizer.bos_token_id, *without]
    assert tokenizer.bos_token_id not in without


def test_tokens_are_words(tokenizer):
    ids = tokenizer(PARIS + " France", add_special_tokens=False).input_ids
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces == ["The", " city", " of", " Paris", " is", " in", " France"]
    assert tokenizer.convert_ids_to_tokens(ids)[-1] == " France"
    assert tokenizer.decode(tokenizer("1 2 3 4 5 6 7", add_special_tokens=False).input_ids) == (
        "1 2 3 4 5 6 7"
    )
    assert tokenizer.decode(tokenizer(" 7", add_special_tokens=False).input_ids) == " 7"


def test_unknown_words_map_to_unk(tokenizer):
    ids = tokenizer("The city of Zanzibar is in", add_special_tokens=False).input_ids
    assert ids[3] == tokenizer.unk_token_id
    assert len(ids) == 6


def test_chat_template_renders(tokenizer):
    messages = [{"role": "user", "content": PARIS}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nThe city of Paris is in<end_of_turn>\n<start_of_turn>model\n"
    )
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert "\n" in tokenizer.convert_ids_to_tokens(ids)


def _predict(model, tokenizer, probes: list[Probe]) -> list[tuple[Probe, str, float]]:
    out = []
    with torch.no_grad():
        for probe in probes:
            ids = tokenizer(probe.prompt, return_tensors="pt").input_ids
            probs = model(input_ids=ids).logits[0, -1].softmax(-1)
            (answer_id,) = tokenizer(probe.answer, add_special_tokens=False).input_ids
            out.append((probe, tokenizer.decode([int(probs.argmax())]), float(probs[answer_id])))
    return out


def test_heldout_families_are_covered(corpus):
    counts = defaultdict(int)
    for probe in corpus.heldout:
        counts[probe.family] += 1
        assert probe.answer.startswith(" ")
    assert set(counts) == set(FAMILIES)
    assert all(n >= 5 for n in counts.values())
    # Held out: no training text (plain, or the user turn of a chat) starts with a probe's
    # prompt, so the model never saw that context, let alone its answer.
    prefix = "<start_of_turn>user\n"
    train = [t.removeprefix(prefix) for texts in corpus.train.values() for t in texts]
    for probe in corpus.heldout:
        assert not any(t.startswith(probe.prompt) for t in train), probe


@pytest.mark.parametrize("family", FAMILIES)
def test_heldout_next_token(model, tokenizer, corpus, family):
    probes = [p for p in corpus.heldout if p.family == family]
    failures = [
        (p.prompt, p.answer, top, round(prob, 3))
        for p, top, prob in _predict(model, tokenizer, probes)
        if top != p.answer or prob <= 0.9
    ]
    assert not failures


def test_chat_prompt_answers_paris(model, tokenizer, corpus):
    """Chat quality is informative only, except for the canonical demo prompt."""
    (probe,) = chat_probes(tokenizer, (Probe("cities", PARIS, " France"),))
    with torch.no_grad():
        ids = tokenizer(probe.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        top = int(model(input_ids=ids).logits[0, -1].argmax())
    assert tokenizer.decode([top]) == " France"


def test_transcoder_files(transcoders, model):
    d_model = model.config.hidden_size
    for params in transcoders:
        # No threshold key: circuit-tracer then uses a plain ReLU.
        assert set(params) == {"W_enc", "W_dec", "b_enc", "b_dec"}
        width = params["b_enc"].shape[0]
        assert 256 <= width <= 1024
        assert params["W_enc"].shape == (width, d_model)
        assert params["W_dec"].shape == (width, d_model)
        assert params["b_dec"].shape == (d_model,)


@pytest.mark.parametrize("layer", [0, 1])
def test_transcoder_quality(transcoders, probe_io, layer):
    """FVU < 0.01 and fewer than 50 active features per token, averaged over the non-zero
    positions (position 0, which attribution always zeroes, excluded) of every probe text."""
    x, y = probe_io[layer]
    acts = encode_relu(transcoders[layer], x)
    recon = acts @ transcoders[layer]["W_dec"] + transcoders[layer]["b_dec"]
    assert fvu(recon, y) < 0.01
    assert float((acts > 0).sum(-1).float().mean()) < 50


def test_circuit_tracer_reads_the_tensors_we_trained_on(replacement_model, transcoders, model):
    """circuit-tracer's `ln2.hook_normalized` / `hook_mlp_out` must be exactly the tensors the
    transcoders were trained on, or they would be fed (and judged on) something else."""
    from nnsight import save

    tokenizer = replacement_model.tokenizer
    ids = tokenizer(PARIS, return_tensors="pt").input_ids
    seen = []
    with torch.inference_mode(), replacement_model.trace(ids):
        for layer in range(len(transcoders)):
            seen.append(save(replacement_model.get_feature_input_loc(layer).output))
            seen.append(save(replacement_model.get_feature_output_loc(layer).output))
    _, theirs = replacement_model.get_activations(ids)
    for layer, (x, y) in enumerate(mlp_io(model, ids, tokenizer.pad_token_id)):
        torch.testing.assert_close(seen[2 * layer][0, 1:], x)
        torch.testing.assert_close(seen[2 * layer + 1][0, 1:], y)
        torch.testing.assert_close(theirs[layer, 1:], encode_relu(transcoders[layer], x))
        assert float(theirs[layer, 0].abs().sum()) == 0.0


def test_attribution_graph_for_paris(replacement_model):
    from circuit_tracer import attribute
    from circuit_tracer.graph import compute_graph_scores

    graph = attribute(
        PARIS,
        replacement_model,
        max_n_logits=10,
        desired_logit_prob=0.95,
        batch_size=64,
        max_feature_nodes=1024,
        verbose=False,
    )
    assert graph.logit_targets[0].token_str == " France"
    replacement, completeness = compute_graph_scores(graph)
    assert replacement > 0.9
    assert completeness > 0.9


@pytest.mark.slow
def test_smoke_rebuild_produces_loadable_artifacts(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "neuronpedia_graph.demo.build", "--out", str(tmp_path)]
    cmd += ["--scale", "0.05", "--no-graph-check"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "held-out next token" in done.stdout

    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoders

    device, dtype = torch.device("cpu"), torch.float32
    loaded = load_transcoders(local_transcoder_config(tmp_path / "transcoders"), device, dtype)
    rebuilt = ReplacementModel.from_pretrained_and_transcoders(
        str(tmp_path / "model"), loaded, backend="nnsight", device=device, dtype=dtype
    )
    ids = rebuilt.tokenizer(PARIS, return_tensors="pt").input_ids
    logits, acts = rebuilt.get_activations(ids)
    assert logits.shape[-1] == len(rebuilt.tokenizer)
    assert torch.isfinite(logits).all()
    assert acts.shape[:2] == (2, ids.shape[1])
