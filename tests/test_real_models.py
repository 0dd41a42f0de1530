"""Every preset and known transcoder set, end to end, from a fabricated Hub cache, offline.

For each model + transcoder-set pair the real CLI (`python -m neuronpedia_graph MODEL`) starts
gunicorn with HF_HUB_OFFLINE=1 and HF_HOME pointing at a cache that `testkit/hubcache/` writes
under the REAL repository ids (small random-weight models, nnsight backend). So what runs is
what a GPU box with a warm cache runs: our cache-first resolution of `hf://` transcoder files,
circuit-tracer's loaders (GemmaScope npz, GemmaScope 2, cross-layer, safetensors discovery),
transformers' cache lookups, then HTTP. One server per pair (module scope), few requests each.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import orjson
import pytest
import requests

from testkit.hubcache import PAIRS, Pair, build
from testkit.live import LiveServer, free_port, server_command, server_settings, start_process
from tests.conftest import AUTH, SECRET
from tests.helpers import run_cli

PROMPT = "The city of Paris is in"

# Written out, not read from presets.py: these are the contract with the web app.
SOURCE_URLS = {
    "gemma": [
        "https://neuronpedia.org/gemma-2-2b/gemmascope-transcoder-16k",
        "https://huggingface.co/google/gemma-scope-2b-pt-transcoders",
    ],
    "llama": ["https://huggingface.co/mntss/transcoder-Llama-3.2-1B"],
    "clt": [
        "https://neuronpedia.org/gemma-2-2b/clt-hp",
        "https://huggingface.co/mntss/clt-gemma-2-2b-2.5M",
    ],
    "qwen": [
        "https://neuronpedia.org/qwen3-4b/transcoder-hp",
        "https://huggingface.co/mwhanna/qwen3-4b-transcoders",
    ],
    "gemma3": [
        "https://neuronpedia.org/gemma-3-4b-it/gemmascope-transcoder-262k",
        "https://huggingface.co/mwhanna/gemma-scope-2-4b-it/transcoder_all/width_262k_l0_small_affine",
        "https://huggingface.co/google/gemma-scope-2-4b-it/transcoder_all",
    ],
}


# Written out too: the Neuronpedia source set whose feature dashboards each set's nodes link to
# (`metadata.feature_details.neuronpedia_source_set`; none for the Llama set).
SOURCE_SETS = {
    "gemma": "gemmascope-transcoder-16k",
    "llama": None,
    "clt": "clt-hp",
    "qwen": "transcoder-hp",
    "gemma3": "gemmascope-transcoder-262k",
}
# The pairs whose model refuses a prompt without its chat turn (gemma-3-it).
INSTRUCT = [key for key, pair in PAIRS.items() if pair.chat_prompt_prefix]

# (layer, index, position) of a feature from each pair's graph, for the steering test.
served_features: dict[str, tuple[int, int, int]] = {}


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    build(home, PAIRS)
    return home


def _env(hub_home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MODEL_ID", "TRANSCODER_SET", "NEURONPEDIA_MODEL_ID", "BACKEND", "HF_TOKEN")
    }
    env.update(
        HF_HOME=str(hub_home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    env.pop("HF_HUB_CACHE", None)
    return env


def _cli_args(pair: Pair) -> list[str]:
    args = [pair.model_id]
    return args + (["--transcoder-set", pair.transcoder_set] if pair.transcoder_set else [])


@pytest.fixture(scope="module", params=list(PAIRS))
def served(request, hub_home: Path, tmp_path_factory) -> Iterator[tuple[Pair, LiveServer]]:
    pair = PAIRS[request.param]
    workdir = tmp_path_factory.mktemp(f"serve-{pair.key}")
    port = free_port()
    settings = server_settings(workdir, port, SECRET, {"MAX_FEATURE_NODES": "2000"})
    argv = server_command(workdir, pair.model_id, _cli_args(pair)[1:])
    try:
        with start_process(
            argv, workdir, _env(hub_home, **settings), port=port, timeout=300, inherit_env=False
        ) as server:
            yield pair, server
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{pair.key}: server failed to start: {exc}")


def _post(server: LiveServer, path: str, body: dict) -> requests.Response:
    return requests.post(f"{server.base}{path}", json=body, headers=AUTH, timeout=300)


def _prompt(pair: Pair) -> str:
    return pair.chat_prompt_prefix + PROMPT


def test_health_and_banner(served):
    pair, server = served
    health = requests.get(f"{server.base}/health", timeout=10).json()
    assert (health["model_id"], health["scan"], health["backend"]) == (
        pair.model_id,
        pair.scan,
        "nnsight",
    )
    log = server.log()
    assert "neuronpedia-graph ready" in log and "WARNING" not in log
    assert "OfflineModeIsEnabled" not in log


def test_graph_matches_the_web_app_schema_and_scan(served, graph_schema):
    pair, server = served
    res = _post(
        server,
        "/generate-graph",
        {
            "prompt": _prompt(pair),
            "model_id": pair.model_id,
            "slug_identifier": f"real-{pair.key}",
            "max_feature_nodes": 64,
            "batch_size": 32,
            # Random transcoders explain little, so error nodes carry most of the influence;
            # a high threshold keeps some feature nodes in the pruned graph.
            "node_threshold": 0.99,
        },
    )
    assert res.status_code == 200, res.text
    doc = orjson.loads(res.content)
    jsonschema.Draft7Validator(graph_schema).validate(doc)
    meta = doc["metadata"]
    assert meta["scan"] == pair.scan
    assert meta["info"]["source_urls"] == SOURCE_URLS[pair.key]
    source_set = meta.get("feature_details", {}).get("neuronpedia_source_set")
    assert source_set == SOURCE_SETS[pair.key]
    assert any(n["feature_type"] == "cross layer transcoder" for n in doc["nodes"])
    assert any(n["is_target_logit"] for n in doc["nodes"])
    # A feature from this graph drives the steering test below.
    node = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
    served_features[pair.key] = tuple(map(int, node["node_id"].split("_")))


def test_forward_pass(served):
    pair, server = served
    res = _post(server, "/forward-pass", {"prompt": _prompt(pair), "model_id": pair.model_id})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["salient_logits"] and 0 < body["cumulative_probability"] <= 1.0001
    assert len(body["input_tokens"]) >= 6


def test_steer_changes_the_output(served):
    pair, server = served
    layer, index, pos = served_features.get(pair.key, (0, 0, 1))
    body = {
        "model_id": pair.model_id,
        "prompt": _prompt(pair),
        "features": [
            {
                "layer": layer,
                "index": index,
                "token_active_position": pos,
                "steer_position": pos,
                "delta": 200.0,
            }
        ],
        "n_tokens": 2,
        "seed": 1,
    }
    res = _post(server, "/steer", body)
    assert res.status_code == 200, res.text
    out = res.json()
    default = out["DEFAULT_LOGITS_BY_TOKEN"]
    steered = out["STEERED_LOGITS_BY_TOKEN"]
    assert len(default) == len(steered)
    last_prompt = next(i for i in range(len(default) - 1, -1, -1) if default[i]["top_logits"])
    assert default[last_prompt]["top_logits"] != steered[last_prompt]["top_logits"]


def test_chat_messages(served):
    """`messages` are rendered with the model's own template; no template is a clear 400."""
    pair, server = served
    messages = [{"role": "user", "content": "What is the capital of France ?"}]
    res = _post(server, "/forward-pass", {"messages": messages, "model_id": pair.model_id})
    if pair.has_chat_template:
        assert res.status_code == 200, res.text
        tokens = res.json()["input_tokens"]
        assert any(marker in tokens for marker in ("<start_of_turn>", "<|im_start|>"))
        assert " France" in tokens or "France" in "".join(tokens)
    else:
        assert res.status_code == 400 and "chat template" in res.json()["error"]
    assert _post(server, "/forward-pass", {"prompt": _prompt(pair)}).status_code == 200


@pytest.mark.parametrize("served", INSTRUCT, indirect=True)
def test_instruct_model_refuses_plain_prompts_with_400(served):
    """gemma-3-it: circuit-tracer asserts on prompts without the user turn (was a 500)."""
    pair, server = served
    assert INSTRUCT and pair.chat_prompt_prefix
    plain = {"prompt": PROMPT, "model_id": pair.model_id}
    feature = {"layer": 0, "index": 0, "token_active_position": 1, "steer_position": 1}
    for path, body in (
        ("/forward-pass", plain),
        ("/generate-graph", {**plain, "slug_identifier": "plain", "max_feature_nodes": 8}),
        ("/steer", {**plain, "features": [{**feature, "delta": 1.0}]}),
    ):
        res = _post(server, path, body)
        assert res.status_code == 400, (path, res.text)
        assert "<start_of_turn>user" in res.json()["error"]
    assert _post(server, "/forward-pass", {"prompt": _prompt(pair)}).status_code == 200


@pytest.mark.parametrize("key", list(PAIRS))
def test_describe_in_the_same_environment(hub_home, key):
    pair = PAIRS[key]
    result = run_cli(
        "describe",
        *_cli_args(pair),
        "--env-file",
        "/nonexistent",
        env=_env(hub_home),
        inherit=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["model_id"], out["scan"], out["backend"]) == (pair.model_id, pair.scan, "nnsight")
    assert out["source_urls"] == SOURCE_URLS[key]


def test_nnsight_multimodal_guard_is_lifted_only_while_loading(hub_home):
    """The shim is still needed (nnsight refuses gemma-3 by itself) and never leaks."""
    from nnsight.modeling.language import LanguageModel

    from neuronpedia_graph.models.nnsight_compat import mapped_multimodal_allowed
    from testkit.hubcache import revision_for

    snapshot = (
        hub_home
        / "hub"
        / "models--google--gemma-3-4b-it"
        / "snapshots"
        / revision_for("google/gemma-3-4b-it")
    )
    with pytest.raises(ValueError, match="multimodal"):
        LanguageModel(str(snapshot))
    guard = LanguageModel._check_is_text_only
    with mapped_multimodal_allowed("nnsight", "Gemma3ForConditionalGeneration"):
        assert LanguageModel._check_is_text_only is not guard
        LanguageModel(str(snapshot))  # meta load passes the guard
    assert LanguageModel._check_is_text_only is guard
    for backend, architecture in (("nnsight", "NotMappedForCausalLM"), ("transformerlens", None)):
        with mapped_multimodal_allowed(backend, architecture):
            assert LanguageModel._check_is_text_only is guard
