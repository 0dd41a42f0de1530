"""The model and transcoder-set tables, seen through `neuronpedia-graph describe`.

Expected values are written out here (not read from presets.py), so a change to a table row
must be made twice, on purpose. The original server's values: TLENS_MODEL_ID_TO_NP_MODEL_ID and
TRANSCODER_SET_TO_SOURCE_URL_ARRAYS in apps/graph/neuronpedia_graph/server.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuronpedia_graph import demo
from neuronpedia_graph.models.describe import describe
from tests.helpers import run_cli, run_python

REPO = Path(__file__).resolve().parents[1]

GEMMA_URLS = [
    "https://neuronpedia.org/gemma-2-2b/gemmascope-transcoder-16k",
    "https://huggingface.co/google/gemma-scope-2b-pt-transcoders",
]
CLT_URLS = [
    "https://neuronpedia.org/gemma-2-2b/clt-hp",
    "https://huggingface.co/mntss/clt-gemma-2-2b-2.5M",
]
QWEN_URLS = [
    "https://neuronpedia.org/qwen3-4b/transcoder-hp",
    "https://huggingface.co/mwhanna/qwen3-4b-transcoders",
]
GEMMA3_SET = "mwhanna/gemma-scope-2-4b-it/transcoder_all/width_262k_l0_small_affine"
GEMMA3_URLS = [
    "https://neuronpedia.org/gemma-3-4b-it/gemmascope-transcoder-262k",
    f"https://huggingface.co/{GEMMA3_SET}",
    "https://huggingface.co/google/gemma-scope-2-4b-it/transcoder_all",
]
LLAMA_URLS = ["https://huggingface.co/mntss/transcoder-Llama-3.2-1B"]


def _fields(
    transcoder_set: str,
    ref: str,
    scan: str,
    urls: list[str],
    source_set: str | None,
    neuronpedia_id: str | None = None,
) -> dict:
    """The fields describe must print; the Neuronpedia id is the scan unless given."""
    return dict(
        transcoder_set=transcoder_set,
        transcoder_ref=ref,
        scan=scan,
        neuronpedia_id=neuronpedia_id or scan,
        source_urls=urls,
        neuronpedia_source_set=source_set,
    )


GEMMA_REF = "mwhanna/gemma-scope-transcoders"
CLT_REF = "mntss/clt-gemma-2-2b-2.5M"
QWEN_REF = "mwhanna/qwen3-4b-transcoders"
GEMMA = _fields("gemma", GEMMA_REF, "gemma-2-2b", GEMMA_URLS, "gemmascope-transcoder-16k")
LLAMA = _fields(
    "llama", "mntss/transcoder-Llama-3.2-1B", "llama-3-131k-relu", LLAMA_URLS, None, "llama-3.2-1b"
)
QWEN = _fields(QWEN_REF, QWEN_REF, "qwen3-4b", QWEN_URLS, "transcoder-hp")
GEMMA3 = _fields(GEMMA3_SET, GEMMA3_SET, "gemma-3-4b-it", GEMMA3_URLS, "gemmascope-transcoder-262k")

# model, explicit set (None: the default) -> the fields describe must print.
ROWS = [
    ("google/gemma-2-2b", None, GEMMA),
    ("google/gemma-2-2b", "gemma", GEMMA),
    ("google/gemma-2-2b", GEMMA_REF, {**GEMMA, "transcoder_set": GEMMA_REF}),
    ("google/gemma-2-2b", CLT_REF, _fields(CLT_REF, CLT_REF, "gemma-2-2b", CLT_URLS, "clt-hp")),
    ("meta-llama/Llama-3.2-1B", None, LLAMA),
    ("meta-llama/Llama-3.2-1B", "llama", LLAMA),
    ("Qwen/Qwen3-4B", None, QWEN),
    ("Qwen/Qwen3-4B", f"hf://{QWEN_REF}", {**QWEN, "transcoder_set": f"hf://{QWEN_REF}"}),
    ("google/gemma-3-4b-it", None, GEMMA3),
    ("google/gemma-3-4b-it", GEMMA3_SET, GEMMA3),
]


def _args(model: str, transcoder_set: str | None, *extra: str) -> list[str]:
    args = [model, "--env-file", "/nonexistent/.env", *extra]
    return args + (["--transcoder-set", transcoder_set] if transcoder_set else [])


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch):
    for var in ("MODEL_ID", "TRANSCODER_SET", "NEURONPEDIA_MODEL_ID", "BACKEND"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(("model", "transcoder_set", "expected"), ROWS)
def test_every_table_row(model, transcoder_set, expected):
    out = describe(_args(model, transcoder_set))
    assert out["model_id"] == model
    assert {k: out[k] for k in expected} == expected
    assert out["backend"] == "nnsight" and out["warnings"] == []


@pytest.mark.parametrize(
    ("alias", "model_id"),
    [
        ("gemma-2-2b", "google/gemma-2-2b"),
        ("llama3.1-8b", "meta-llama/Llama-3.2-1B"),
        ("llama-3-131k-relu", "meta-llama/Llama-3.2-1B"),
        ("llama-3.2-1b", "meta-llama/Llama-3.2-1B"),
        ("qwen3-4b", "Qwen/Qwen3-4B"),
        ("gemma-3-4b-it", "google/gemma-3-4b-it"),
    ],
)
def test_neuronpedia_ids_and_aliases_select_the_model(alias, model_id):
    out = describe(_args(alias, None))
    assert out["model_id"] == model_id and alias in out["accepted_ids"]


def test_override_sets_scan_and_is_accepted():
    out = describe(_args("google/gemma-2-2b", None, "--neuronpedia-id", "gemma-2-2b-custom"))
    assert (out["scan"], out["neuronpedia_id"]) == ("gemma-2-2b-custom", "gemma-2-2b-custom")
    assert "gemma-2-2b-custom" in out["accepted_ids"] and out["warnings"] == []


def test_override_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEURONPEDIA_MODEL_ID", "qwen3-1.7b")
    out = describe(_args("Qwen/Qwen3-1.7B", "mwhanna/qwen3-1.7b-transcoders-lowl0"))
    assert out["scan"] == "qwen3-1.7b" and out["warnings"] == []
    assert out["source_urls"] == ["https://huggingface.co/mwhanna/qwen3-1.7b-transcoders-lowl0"]


def test_unknown_model_gets_a_guessed_id_and_a_warning():
    out = describe(_args("Qwen/Qwen3-1.7B", "mwhanna/qwen3-1.7b-transcoders-lowl0"))
    assert out["scan"] == out["neuronpedia_id"] == "qwen3-1.7b"
    assert len(out["warnings"]) == 1 and "NEURONPEDIA_MODEL_ID" in out["warnings"][0]


def test_a_set_made_for_another_model_is_flagged():
    out = describe(_args("google/gemma-2-2b", "mwhanna/qwen3-4b-transcoders"))
    assert out["scan"] == "gemma-2-2b" and out["neuronpedia_source_set"] is None
    assert "made for Qwen/Qwen3-4B" in out["warnings"][0]


def test_local_transcoder_directory():
    out = describe(_args("demo", str(demo.TRANSCODER_DIR)))
    assert out["transcoder_ref"] == str(demo.TRANSCODER_DIR.resolve())
    assert (out["scan"], out["source_urls"]) == ("demo", [])


def test_cli_prints_one_json_object_without_loading_torch_or_the_hub():
    """No weights and no network: neither torch nor huggingface_hub is even imported."""
    code = (
        "import sys; from neuronpedia_graph.__main__ import main; "
        "rc = main(['describe', 'google/gemma-2-2b', '--env-file', '/nonexistent']); "
        "heavy = [m for m in ('torch', 'huggingface_hub', 'circuit_tracer') if m in sys.modules]; "
        "print('heavy', heavy, file=sys.stderr); sys.exit(rc)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert "heavy []" in result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["scan"] == "gemma-2-2b"


def test_cli_describe_needs_no_secret_and_reports_errors_on_one_line():
    ok = run_cli("describe", "meta-llama/Llama-3.2-1B", "--env-file", "/x")
    assert ok.returncode == 0 and json.loads(ok.stdout)["scan"] == "llama-3-131k-relu"
    bad = run_cli("describe", "gpt2", "--env-file", "/x")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: No transcoder set is known for model 'gpt2'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_describe_flags_are_generated_from_the_settings():
    """describe offers exactly its settings' flags, with the server's names and help."""
    from neuronpedia_graph.models.describe import DESCRIBE_FIELDS, build_parser
    from neuronpedia_graph.settings import Settings

    help_text = build_parser().format_help()
    for field in DESCRIBE_FIELDS:
        assert Settings.model_fields[field].description in " ".join(help_text.split())
    assert "--port" not in help_text and "--transcoder-set" in help_text
