"""Shared fixtures: the demo model loaded once per session, an app around it, a live server."""

from __future__ import annotations

import os
import tracemalloc

# Before anything imports huggingface_hub: tests must never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("HF_TOKEN", None)

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from testkit.hold import HoldControl
from testkit.live import LiveServer, free_port, start_server

__all__ = [
    "AUTH",
    "SECRET",
    "STEER_FEATURE",
    "Api",
    "LiveServer",
    "free_port",
    "graph_body",
    "start_server",
    "steer_body",
    "traced_peak",
]

pytest_plugins = ["tests.s3_server"]

REPO = Path(__file__).resolve().parents[1]
# Not a real credential: the secret the test servers are started with.
SECRET = "test-secret-0123456789"
# The header every authenticated request of the tests sends.
AUTH = {"x-secret-key": SECRET}
# S3 (SeaweedFS) and the fault targets listen on loopback, which uploads refuse by default.
LOCAL_UPLOAD_HOSTS = "127.0.0.1"
# The live server's settings: fast upload failures, a modest feature cap.
LIVE_SETTINGS = {
    "UPLOAD_READ_TIMEOUT": "2",
    "UPLOAD_BACKOFF": "0.01",
    "MAX_FEATURE_NODES": "2000",
    "UPLOAD_ALLOWED_HOSTS": LOCAL_UPLOAD_HOSTS,
    # No stored attributions: a graph must not be reused from an earlier test (tests of the
    # store, tests/test_store.py, turn it on).
    "GRAPH_STORE_BYTES": "0",
}
# The web app's graph schema, vendored so the contract test always runs; test_contract_copy
# fails when the copy drifts from the one the web app team publishes in ../shared/.
SCHEMA_PATH = REPO / "tests" / "contracts" / "neuronpedia-graph-schema.json"
SHARED_SCHEMA_PATH = REPO.parent / "shared" / "contracts" / "neuronpedia-graph-schema.json"
# Input -> output vectors of the original graph server's chat functions on the demo tokenizer,
# vendored the same way (test_chat.py checks the copy against ../shared/).
PARITY_PATH = REPO / "tests" / "contracts" / "webapp-parity.json"
SHARED_PARITY_PATH = REPO.parent / "shared" / "contracts" / "webapp-parity.json"


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
        graph_store_bytes=0,  # as LIVE_SETTINGS
    )


@pytest.fixture(scope="session")
def demo_loaded(demo_settings):
    from neuronpedia_graph.models.loading import load_model

    return load_model(demo_settings)


@pytest.fixture(scope="session")
def hold() -> Iterator[HoldControl]:
    """The test hold of the in-process `service` (and so of `app` and `client`)."""
    with HoldControl() as control:
        yield control


@pytest.fixture(scope="session")
def service(demo_loaded, demo_settings, hold):
    from neuronpedia_graph.service import GraphService

    return GraphService(demo_loaded, demo_settings, hooks=hold.hooks())


@pytest.fixture(scope="session")
def app(service):
    from neuronpedia_graph.api import create_app

    return create_app(service, SECRET)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return dict(AUTH)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium through Playwright, one per test module (the viewer's tests)."""
    from playwright.sync_api import sync_playwright

    from testkit.browser import launch_chromium

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)  # raises (fails the tests) when chromium is missing
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def graph_schema() -> dict:
    import json

    return json.loads(SCHEMA_PATH.read_text())


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real product: `python -m neuronpedia_graph demo` under gunicorn, over HTTP.

    It reports to a test hold of its own (`live_server.hold`) through `testkit.serve`.
    """
    with (
        HoldControl() as control,
        start_server(
            tmp_path_factory.mktemp("live"), LIVE_SETTINGS, secret=SECRET, hold=control
        ) as server,
    ):
        yield server


def graph_body(**overrides: Any) -> dict[str, Any]:
    """A small /generate-graph body for the demo model; fields can be overridden or added."""
    return {
        "prompt": "The city of Paris is in",
        "model_id": "demo",
        "slug_identifier": "paris-test",
        "max_feature_nodes": 200,
        **overrides,
    }


# One feature of the demo model, pushed up at the prompt's second position.
STEER_FEATURE = {
    "layer": 0,
    "index": 0,
    "token_active_position": 1,
    "steer_position": 1,
    "delta": 1.0,
}


def steer_body(
    prompt: str = "The city of Paris is in", features: list | None = None, **extra: Any
) -> dict[str, Any]:
    """A small /steer body for the demo model: STEER_FEATURE (a fresh copy) unless `features`."""
    return {
        "model_id": "demo",
        "prompt": prompt,
        "features": [dict(STEER_FEATURE)] if features is None else features,
        "n_tokens": 3,
        **extra,
    }


def traced_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(result or exception, peak bytes Python allocated while fn ran, in any thread)."""
    tracemalloc.start()
    try:
        try:
            outcome = fn()
        except Exception as exc:  # the caller asserts on it
            outcome = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


class Api:
    """Calls a live server with the secret, like the web app does (the AuthActions of flaskr)."""

    def __init__(self, server: LiveServer, headers: dict[str, str] = AUTH) -> None:
        self.server = server
        self.headers = dict(headers)

    def post(self, path: str, body: Any, timeout: float = 120, **kwargs: Any) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return requests.post(
            self.server.url(path), json=body, headers=headers, timeout=timeout, **kwargs
        )

    def graph(self, **overrides: Any) -> requests.Response:
        return self.post("/generate-graph", graph_body(**overrides))

    def get(self, path: str, timeout: float = 10) -> requests.Response:
        return requests.get(self.server.url(path), timeout=timeout)


@pytest.fixture(scope="session")
def api(live_server: LiveServer) -> Api:
    return Api(live_server)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the /dev/null handle nnsight opens at import and never closes.

    Warnings are errors in this suite, but that one is reported at interpreter exit, after
    pytest's filter is gone, as an "Exception ignored" line that would hide real ones.
    """
    import sys

    util = sys.modules.get("nnsight.intervention.tracing.util")
    handle = getattr(util, "_devnull", None)
    if handle is not None and not handle.closed:
        handle.close()
