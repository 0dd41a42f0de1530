"""Model loading: presets and custom models resolve, and every failure is one clear line.

The Hub is unreachable here, so Hub loading is tested up to the network boundary: with
HF_HUB_OFFLINE=1 (set by conftest) it must fail fast and say which repository and whether
HF_TOKEN is set.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from neuronpedia_graph import demo
from neuronpedia_graph.models.loading import load_model, resolve_dtype
from neuronpedia_graph.models.spec import ModelLoadError, explain_hub_error, preflight, resolve_spec
from neuronpedia_graph.server import module_argv
from neuronpedia_graph.settings import Settings
from tests.helpers import run_cli, run_python

REPO = Path(__file__).resolve().parents[1]


def test_demo_spec_uses_local_artifacts_and_nnsight():
    spec = resolve_spec(Settings(model_id="demo"))
    assert spec.model_path == str(demo.MODEL_DIR) and spec.transcoder_is_local
    assert (spec.scan, spec.backend) == ("demo", "nnsight")
    preflight(spec)  # local files exist


def test_preset_spec_accepts_hf_and_neuronpedia_ids():
    spec = resolve_spec(Settings(model_id="google/gemma-2-2b"))
    assert spec.transcoder_ref == "gemma" and spec.scan == "gemma-2-2b"
    assert spec.transcoder_hub_ref == "mwhanna/gemma-scope-transcoders"
    assert {"google/gemma-2-2b", "gemma-2-2b"} <= spec.accepted_ids
    assert spec.source_urls and spec.neuronpedia_source_set and not spec.warnings


def test_unknown_model_without_transcoder_set_is_rejected():
    with pytest.raises(ModelLoadError, match="No transcoder set is known for model 'gpt2'"):
        resolve_spec(Settings(model_id="gpt2"))


def test_custom_hub_model_with_transcoder_set():
    """The scan is the model's (guessed) Neuronpedia id, never the transcoders' repository."""
    spec = resolve_spec(Settings(model_id="org/Model-1B", transcoder_set="org/transcoders"))
    assert (spec.model_path, spec.transcoder_ref, spec.scan) == (
        "org/Model-1B",
        "org/transcoders",
        "model-1b",
    )
    assert spec.backend == "nnsight" and not spec.model_is_local
    assert spec.source_urls == ("https://huggingface.co/org/transcoders",)
    assert len(spec.warnings) == 1 and "NEURONPEDIA_MODEL_ID" in spec.warnings[0]


def test_local_dir_without_config_yaml(tmp_path):
    (tmp_path / "tc").mkdir()
    with pytest.raises(ModelLoadError, match=r"has no config\.yaml"):
        resolve_spec(Settings(model_id=str(demo.MODEL_DIR), transcoder_set=str(tmp_path / "tc")))


def test_local_model_dir_without_config_json(tmp_path):
    spec = resolve_spec(Settings(model_id=str(tmp_path), transcoder_set=str(demo.TRANSCODER_DIR)))
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        preflight(spec)


def test_local_model_dir_with_transformerlens_backend_is_refused():
    with pytest.raises(ModelLoadError, match="needs --backend nnsight"):
        resolve_spec(
            Settings(
                model_id=str(demo.MODEL_DIR),
                transcoder_set=str(demo.TRANSCODER_DIR),
                backend="transformerlens",
            )
        )


def test_local_model_dir_without_transcoder_set_or_subfolder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="No transcoder set is known"):
        resolve_spec(Settings(model_id=str(tmp_path)))


@pytest.mark.parametrize("model_id", ["google/gemma-2-2b", "meta-llama/Llama-3.2-1B"])
def test_offline_hub_fails_fast_naming_repo_and_token(model_id):
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        preflight(resolve_spec(Settings(model_id=model_id)))
    message = str(info.value)
    # A generous guard, not a timing: without offline detection the Hub client retries for
    # minutes; failing fast takes well under a second.
    assert time.monotonic() - started < 60
    assert f"'{model_id}'" in message and "offline mode" in message
    assert "HF_TOKEN is not set" in message and "\n" not in message


def test_gated_and_missing_repo_messages(monkeypatch):
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    gated = explain_hub_error("meta-llama/Llama-3.2-1B", GatedRepoError("403 gated"))
    assert "gated" in gated and "HF_TOKEN is set" in gated and "meta-llama/Llama-3.2-1B" in gated
    monkeypatch.delenv("HF_TOKEN")
    missing = explain_hub_error("org/nope", RepositoryNotFoundError("404"))
    assert "not found" in missing and "HF_TOKEN is not set" in missing


def test_dtype_defaults_follow_device():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_demo_loads_through_the_user_code_path(demo_loaded):
    assert demo_loaded.spec.model_id == "demo"
    assert demo_loaded.device.type == "cpu" and demo_loaded.dtype == torch.float32
    assert demo_loaded.n_layers >= 1 and demo_loaded.d_transcoder >= 1
    assert "demo" in demo_loaded.spec.accepted_ids
    assert "google/gemma-2-2b" not in demo_loaded.spec.accepted_ids


def test_demo_loads_from_a_custom_local_directory_copy(tmp_path):
    """A user's own model dir + transcoder dir (relative paths in config.yaml) load too."""

    shutil.copytree(demo.MODEL_DIR, tmp_path / "model")
    shutil.copytree(demo.TRANSCODER_DIR, tmp_path / "model" / "transcoders")
    settings = Settings(model_id=str(tmp_path / "model"), device="cpu")
    loaded = load_model(settings)
    assert loaded.spec.model_is_local and loaded.spec.transcoder_ref.endswith("transcoders")
    # An unknown model serves under a guessed Neuronpedia id, and its banner says so.
    from neuronpedia_graph.serving.gunicorn import banner

    assert loaded.spec.scan == "model"
    warning = next(line for line in banner(loaded, settings).splitlines() if "WARNING" in line)
    assert "no known Neuronpedia model id" in warning and "NEURONPEDIA_MODEL_ID" in warning
    # ... and names the versions in use (which copy a mixed host environment loaded).
    versions = next(line for line in banner(loaded, settings).splitlines() if "versions" in line)
    assert "circuit-tracer 0.5.0" in versions and "torch " in versions
    ids = loaded.model.ensure_tokenized("The city of Paris is in")
    assert ids[0].item() == loaded.tokenizer.bos_token_id != 0


SECRET_X = {"SECRET": "x"}


def test_cli_refuses_to_start_without_secret(tmp_path):
    result = run_cli("demo", "--env-file", str(tmp_path / "none.env"), cwd=tmp_path)
    assert result.returncode == 2
    assert "SECRET is not set" in result.stderr


def test_cli_offline_hub_model_exits_with_one_line(tmp_path):
    result = run_cli(
        "google/gemma-2-2b", "--env-file", str(tmp_path / "none.env"), env=SECRET_X, cwd=tmp_path
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "google/gemma-2-2b" in last and "offline" in last


def test_seed_entry_point_still_works(tmp_path):
    result = run_python(
        "neuronpedia_graph/server.py",
        "gpt2",
        "--env-file",
        str(tmp_path / "none.env"),
        env=SECRET_X,
    )
    assert result.returncode == 2
    assert "No transcoder set is known for model 'gpt2'" in result.stderr
    help_text = run_python("neuronpedia_graph/server.py", "--help").stdout
    assert "--transcoder-set" in help_text and "--port" in help_text


def test_seed_entry_point_runs_from_any_folder_and_as_a_module(tmp_path):
    # From elsewhere, the file's folder (whose module names could shadow others) is not what
    # the server imports from: it becomes `python -m neuronpedia_graph` of the installed package.
    script = str(REPO / "neuronpedia_graph" / "server.py")
    for args in ([script], ["-m", "neuronpedia_graph.server"]):
        result = run_python(*args, "--help", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "--transcoder-set" in result.stdout and "--port" in result.stdout


def test_seed_entry_point_keeps_interpreter_options_and_arguments():
    orig = ["python3", "-X", "dev", "-W", "error", "neuronpedia_graph/server.py", "demo", "-v"]
    argv = ["neuronpedia_graph/server.py", "demo", "-v"]
    assert module_argv(orig, argv) == [
        sys.executable,
        *["-X", "dev", "-W", "error"],
        *["-m", "neuronpedia_graph", "demo", "-v"],
    ]
    assert module_argv(["python3", "server.py"], ["server.py"])[1:] == ["-m", "neuronpedia_graph"]


def test_transcoder_dir_with_missing_layer_files_fails_before_serving(tmp_path):
    shutil.copy(demo.TRANSCODER_DIR / "config.yaml", tmp_path / "config.yaml")
    spec = resolve_spec(Settings(model_id="demo", transcoder_set=str(tmp_path)))
    with pytest.raises(ModelLoadError, match=r"Transcoder file\(s\) missing: .*layer_0"):
        preflight(spec)
    result = run_cli(
        "demo",
        "--transcoder-set",
        str(tmp_path),
        "--env-file",
        str(tmp_path / "none.env"),
        env=SECRET_X,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Transcoder file(s) missing" in result.stderr
    assert "gunicorn" not in result.stderr.lower()  # refused before any server started
