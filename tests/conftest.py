"""Shared fixtures: the demo model loaded once per session, an app around it, a live server."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub: tests must never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("HF_TOKEN", None)

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

pytest_plugins = ["tests.s3_server"]

REPO = Path(__file__).resolve().parents[1]
SECRET = "test-secret-0123456789"
# S3 (SeaweedFS) and the fault targets listen on loopback, which uploads refuse by default.
LOCAL_UPLOAD_HOSTS = "127.0.0.1"
# The web app's graph schema, vendored so the contract test always runs; test_contract_copy
# fails when the copy drifts from the one the web app team publishes in ../shared/.
SCHEMA_PATH = REPO / "tests" / "contracts" / "neuronpedia-graph-schema.json"
SHARED_SCHEMA_PATH = REPO.parent / "shared" / "contracts" / "neuronpedia-graph-schema.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def demo_settings(tmp_path_factory: pytest.TempPathFactory):
    from neuronpedia_graph.settings import Settings

    return Settings(
        model_id="demo",
        secret=SECRET,
        device="cpu",
        spool_dir=tmp_path_factory.mktemp("spool"),
        upload_read_timeout=2.0,
        upload_backoff=0.01,
        upload_allowed_hosts=LOCAL_UPLOAD_HOSTS,
        max_feature_nodes=2000,
    )


@pytest.fixture(scope="session")
def demo_loaded(demo_settings):
    from neuronpedia_graph.loading import load_model

    return load_model(demo_settings)


@pytest.fixture(scope="session")
def service(demo_loaded, demo_settings):
    from neuronpedia_graph.service import GraphService

    return GraphService(demo_loaded, demo_settings)


@pytest.fixture(scope="session")
def app(service):
    from neuronpedia_graph.app import create_app

    return create_app(service, SECRET)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"x-secret-key": SECRET}


@pytest.fixture(scope="session")
def graph_schema() -> dict:
    import json

    return json.loads(SCHEMA_PATH.read_text())


def wait_for_health(base: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise TimeoutError("server did not become healthy")


@dataclass
class LiveServer:
    base: str
    log_path: Path
    proc: subprocess.Popen

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real product: `python -m neuronpedia_graph demo` under gunicorn, over HTTP."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("live")
    log_path = workdir / "server.log"
    env = {
        **os.environ,
        "SECRET": SECRET,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DEVICE": "cpu",
        "SPOOL_DIR": str(workdir / "spool"),
        "UPLOAD_READ_TIMEOUT": "2",
        "UPLOAD_BACKOFF": "0.01",
        "UPLOAD_ALLOWED_HOSTS": LOCAL_UPLOAD_HOSTS,
        "MAX_FEATURE_NODES": "2000",
        "PYTHONUNBUFFERED": "1",
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "neuronpedia_graph",
                "demo",
                "--env-file",
                str(workdir / ".env"),
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(base, proc)
    except Exception:
        proc.kill()
        proc.wait()
        pytest.fail(f"live server failed to start:\n{log_path.read_text()[-4000:]}")
    yield LiveServer(base, log_path, proc)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
