"""Hub transcoder sets resolve from the local cache first; the network is only for what is missing.

Uses a fabricated cache holding google/gemma-2-2b and the `gemma` set (mwhanna config.yaml
listing `hf://google/gemma-scope-2b-pt-transcoders/...params.npz`): the set that could not start
offline before, because circuit-tracer asks the Hub about every repository first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.hubcache import build, revision_for
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[1]
NPZ_REPO = "models--google--gemma-scope-2b-pt-transcoders"


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("hf_gemma")
    build(home, ["gemma"])
    return home


@pytest.fixture
def hub_cache(gemma_home, tmp_path, monkeypatch) -> Path:
    """A private copy of the cache, with huggingface_hub pointed at it in this process."""
    import huggingface_hub.constants

    home = tmp_path / "hf"
    shutil.copytree(gemma_home, home, symlinks=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def _listed_files(home: Path) -> list[Path]:
    snapshot = (
        home / "hub" / NPZ_REPO / "snapshots" / revision_for("google/gemma-scope-2b-pt-transcoders")
    )
    return sorted(snapshot.rglob("params.npz"))


def test_every_listed_file_resolves_to_the_cache_offline(hub_cache, monkeypatch):
    from neuronpedia_graph.models import hub_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = hub_offline.resolve_hub_config("mwhanna/gemma-scope-transcoders")
    assert config["repo_id"] == "mwhanna/gemma-scope-transcoders"  # selects the npz loader
    assert config["transcoders"] == [str(p) for p in _listed_files(hub_cache)]
    assert all(Path(p).is_file() for p in config["transcoders"])


def test_only_missing_files_go_to_the_downloader(hub_cache, monkeypatch):
    """Online, a partly warm cache downloads exactly the missing file (Hub replaced here)."""
    import circuit_tracer.utils.hf_utils as hf_utils

    from neuronpedia_graph.models import hub_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cached, missing = _listed_files(hub_cache)
    missing.unlink()
    asked: list[list[str]] = []

    def download(uris):  # the network boundary: no Hub is reachable from the tests
        asked.append(list(uris))
        return {uri: f"/downloaded/{i}" for i, uri in enumerate(uris)}

    monkeypatch.setattr(hf_utils, "download_hf_uris", download)
    config = hub_offline.resolve_hub_config("mwhanna/gemma-scope-transcoders")
    assert len(asked) == 1 and len(asked[0]) == 1 and asked[0][0].endswith("/params.npz")
    assert "layer_1/" in asked[0][0]
    assert config["transcoders"] == [str(cached), "/downloaded/0"]


def test_offline_with_a_missing_file_is_one_clear_error(hub_cache, monkeypatch):
    from neuronpedia_graph.models import hub_offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _listed_files(hub_cache)[0].unlink()
    with pytest.raises(hub_offline.HubFilesMissing, match=r"1 of 2 transcoder files .*/layer_0/"):
        hub_offline.resolve_hub_config("mwhanna/gemma-scope-transcoders")


def _cli(home: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real CLI against the fabricated cache `home`, offline, with no token or .env."""
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "SECRET": "x"}
    return run_cli(
        *args,
        "--env-file",
        str(cwd / "none.env"),
        env=env,
        unset=("HF_TOKEN", "HF_HUB_CACHE"),
        cwd=cwd,
        timeout=300,
    )


def test_cold_cache_fails_before_serving_naming_the_file(hub_cache, tmp_path):
    _listed_files(hub_cache)[1].unlink()
    result = _cli(hub_cache, "google/gemma-2-2b", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Transcoder set 'gemma': 1 of 2 transcoder files")
    assert "HF_HUB_OFFLINE=1" in last and "layer_1/" in last
    assert "gunicorn" not in result.stderr.lower() and "Traceback" not in result.stderr


def test_missing_config_yaml_offline_names_the_repository(hub_cache, tmp_path):
    shutil.rmtree(hub_cache / "hub" / "models--mwhanna--gemma-scope-transcoders")
    result = _cli(hub_cache, "google/gemma-2-2b", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "'mwhanna/gemma-scope-transcoders'" in last and "offline mode" in last


def test_fabricated_cache_is_a_valid_hub_cache(gemma_home):
    """huggingface_hub's own scanner reads it cleanly: blobs, snapshots, refs/main."""
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(gemma_home / "hub")
    assert not info.warnings
    repos = {repo.repo_id: repo for repo in info.repos}
    assert set(repos) == {
        "google/gemma-2-2b",
        "mwhanna/gemma-scope-transcoders",
        "google/gemma-scope-2b-pt-transcoders",
    }
    for repo_id, repo in repos.items():
        (revision,) = repo.revisions
        assert revision.commit_hash == revision_for(repo_id) and "main" in revision.refs
        assert all(f.file_path.resolve().is_file() for f in revision.files)


# An unresolvable Hub endpoint (the .invalid top-level domain never resolves): "no network".
NO_HUB = "https://hub.invalid"


def _no_network_env(home: Path, cwd: Path, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        and not k.lower().endswith("_proxy")
    }
    env.update(HF_HOME=str(home), HF_ENDPOINT=NO_HUB, SECRET="x", PORT=str(port), HOST="127.0.0.1")
    env.update(DEVICE="cpu", SPOOL_DIR=str(cwd / "spool"), PYTHONUNBUFFERED="1")
    return env


def test_no_network_and_a_cold_cache_fail_at_once_with_one_line(tmp_path):
    """No HF_HUB_OFFLINE and no network: one clear line, no retries, no second warning."""
    result = subprocess.run(
        [sys.executable, "-m", "neuronpedia_graph", "google/gemma-2-2b"],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard only; bench-free: the retries it replaces took ~23 s
        env=_no_network_env(tmp_path / "empty-hf", tmp_path, 1),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: Cannot download 'google/gemma-2-2b': the Hugging Face Hub is unreachable "
        "(hub.invalid: name not resolved"
    )
    assert "not in the local cache" in lines[0]


def test_no_network_and_a_warm_cache_start_offline_with_one_warning(hub_cache, tmp_path):
    from testkit.live import free_port, start_process

    port = free_port()
    argv = [sys.executable, "-m", "neuronpedia_graph", "google/gemma-2-2b"]
    env = _no_network_env(hub_cache, tmp_path, port)
    with start_process(argv, tmp_path, env, port=port, timeout=300, inherit_env=False) as server:
        log = server.log()
    assert log.count("the Hugging Face Hub is unreachable (hub.invalid: name not resolved") == 1
    assert "using the local cache only" in log
    assert "Retrying" not in log and "Traceback" not in log
