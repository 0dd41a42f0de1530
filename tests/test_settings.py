"""Settings precedence (CLI > env > .env > defaults), presets, and the .env bootstrap."""

from __future__ import annotations

import pytest

from neuronpedia_graph.envfile import ensure_env_file
from neuronpedia_graph.models.presets import MODELS, find_preset
from neuronpedia_graph.settings import SettingsError, load_settings


def test_defaults_without_env_file(tmp_path):
    s = load_settings([], environ={}, env_file=tmp_path / "missing.env")
    assert (s.model_id, s.host, s.port, s.device, s.dtype) == (
        "demo",
        "0.0.0.0",
        5004,
        "auto",
        "auto",
    )
    assert (s.token_limit, s.max_feature_nodes, s.gzip_level) == (64, 10_000, 3)
    assert s.secret is None and s.backend is None and s.lazy_decoder is True


def test_env_file_is_used_and_not_shadowed_by_cli_defaults(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=5010\nSECRET=abc\nTOKEN_LIMIT=32\nMODEL_ID=google/gemma-2-2b\n")
    s = load_settings([], environ={}, env_file=env_file)
    assert s.port == 5010 and s.token_limit == 32 and s.model_id == "google/gemma-2-2b"
    assert s.secret is not None and s.secret.get_secret_value() == "abc"


def test_environment_beats_env_file_and_cli_beats_environment(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=5010\nDEVICE=cpu\nMAX_FEATURE_NODES=100\n")
    s = load_settings([], environ={"PORT": "5020"}, env_file=env_file)
    assert s.port == 5020 and s.device == "cpu" and s.max_feature_nodes == 100
    s = load_settings(
        ["meta-llama/Llama-3.2-1B", "--port", "5030", "--no-lazy-decoder"],
        environ={"PORT": "5020", "MODEL_ID": "demo"},
        env_file=env_file,
    )
    assert s.port == 5030 and s.model_id == "meta-llama/Llama-3.2-1B" and s.lazy_decoder is False


def test_env_file_option_on_the_command_line(tmp_path):
    env_file = tmp_path / "custom.env"
    env_file.write_text("HOST=127.0.0.1\n")
    assert load_settings(["--env-file", str(env_file)], environ={}).host == "127.0.0.1"


@pytest.mark.parametrize(
    ("environ", "needle"),
    [
        ({"PORT": "http"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"DTYPE": "int8"}, "DTYPE"),
        ({"BACKEND": "vllm"}, "BACKEND"),
        ({"DEVICE": "tpu"}, "DEVICE"),
        ({"LAZY_ENCODER": "maybe"}, "LAZY_ENCODER"),
        ({"GZIP_LEVEL": "11"}, "GZIP_LEVEL"),
    ],
)
def test_invalid_values_name_the_variable(tmp_path, environ, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings([], environ=environ, env_file=tmp_path / "none")


def test_empty_values_mean_unset(tmp_path):
    s = load_settings(
        [],
        environ={"SECRET": "", "HF_TOKEN": "", "BACKEND": "", "TRANSCODER_SET": ""},
        env_file=tmp_path / "none",
    )
    assert (
        s.secret is None and s.hf_token is None and s.backend is None and s.transcoder_set is None
    )


def test_missing_secret_is_a_clear_error(tmp_path):
    s = load_settings([], environ={}, env_file=tmp_path / "none")
    with pytest.raises(SettingsError, match="SECRET is not set"):
        s.require_secret()


def test_secrets_do_not_appear_in_repr(tmp_path):
    s = load_settings(
        [], environ={"SECRET": "s3cr3t-value", "HF_TOKEN": "hf_abcdef"}, env_file=tmp_path / "none"
    )
    assert "s3cr3t-value" not in repr(s) and "hf_abcdef" not in repr(s)
    assert "s3cr3t-value" not in str(s.model_dump())


def test_presets_know_their_transcoders_scans_and_ids():
    gemma = MODELS["google/gemma-2-2b"]
    assert (gemma.transcoder_set, gemma.scan, gemma.neuronpedia_id) == (
        "gemma",
        "gemma-2-2b",
        "gemma-2-2b",
    )
    llama = MODELS["meta-llama/Llama-3.2-1B"]
    assert (llama.transcoder_set, llama.scan) == ("llama", "llama-3-131k-relu")
    assert find_preset("gemma-2-2b") is gemma
    assert find_preset("llama3.1-8b") is llama  # id sent by the original server's clients
    assert find_preset("demo").scan == "demo"
    assert find_preset("gpt2") is None


def test_env_file_bootstrap_writes_a_fresh_secret_once(tmp_path):
    example = tmp_path / ".env.example"
    example.write_text("# comment\nSECRET=\nPORT=5004\n")
    target = tmp_path / ".env"
    assert ensure_env_file(target, example) is True
    first = target.read_text()
    secret_line = next(line for line in first.splitlines() if line.startswith("SECRET="))
    assert len(secret_line) > len("SECRET=") + 30 and "PORT=5004" in first
    assert ensure_env_file(target, example) is False
    assert target.read_text() == first
    other = tmp_path / "other.env"
    ensure_env_file(other, example)
    assert other.read_text() != first  # random per file


def test_vendored_graph_schema_matches_the_web_app_contract():
    """The copy in tests/contracts is what the contract tests use; it must not drift."""
    import json

    from tests.conftest import SCHEMA_PATH, SHARED_SCHEMA_PATH

    if not SHARED_SCHEMA_PATH.is_file():
        pytest.skip(f"no published contract beside the repo ({SHARED_SCHEMA_PATH})")
    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(SHARED_SCHEMA_PATH.read_text())


def test_every_setting_is_documented_in_the_readme_and_env_example():
    """One declaration in Settings; the README table and .env.example must not fall behind."""
    from neuronpedia_graph.settings import Settings, env_var
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    example = (REPO / ".env.example").read_text()
    missing = [env_var(f) for f in Settings.model_fields if f"`{env_var(f)}`" not in readme]
    assert missing == [], f"README.md does not document {missing}"
    in_example = [env_var(f) for f in Settings.model_fields if f"{env_var(f)}=" not in example]
    assert set(in_example) <= {"DEV"}, f".env.example lacks {in_example}"


def test_the_command_line_is_generated_from_the_settings(tmp_path):
    from neuronpedia_graph.settings import build_parser

    help_text = build_parser().format_help()
    for flag in ("--max-graph-links", "--upload-allowed-hosts", "--neuronpedia-id", "--no-viewer"):
        assert flag in help_text
    assert "--secret" not in help_text and "--hf-token" not in help_text  # kept off argv
    s = load_settings(
        ["--max-graph-links", "7", "--no-viewer", "--neuronpedia-id", "x"],
        environ={},
        env_file=tmp_path / "none",
    )
    assert (s.max_graph_links, s.viewer, s.neuronpedia_model_id) == (7, False, "x")


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["--token-limit", "abc"], {}, "--token-limit (given 'abc'): "),
        (["--port", "70000"], {"PORT": "5000"}, "--port (given '70000'): "),
        ([], {"TOKEN_LIMIT": "-3"}, "TOKEN_LIMIT (given '-3'): "),
        (["--no-viewer"], {"GZIP_LEVEL": "11"}, "GZIP_LEVEL (given '11'): "),
    ],
)
def test_a_bad_value_is_named_as_given_with_its_value(tmp_path, argv, environ, expected):
    """A flag's error names the flag, an env var's the variable; both repeat the value."""
    with pytest.raises(SettingsError) as caught:
        load_settings(argv, environ=environ, env_file=tmp_path / "none")
    assert str(caught.value).startswith(f"invalid configuration: {expected}")


def test_help_lists_the_describe_command():
    from neuronpedia_graph.settings import build_parser

    usage = build_parser().format_usage()
    assert "neuronpedia-graph describe MODEL" in usage
