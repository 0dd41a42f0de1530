"""The viewer's re-prune sliders against the server's stored-graph re-prune, in real Chromium.

After a job's graph is drawn, the *Re-prune on the server* sliders ask for
`GET /graphs/{id}/document?node_threshold=&edge_threshold=`, which the server answers from its
stored attribution with the document a fresh `/generate-graph` at those thresholds would give.
These tests need that query on the server (the stored-attribution work); against a server that
ignores it the page says "it does not re-prune stored graphs" and they fail on that message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
import requests

from testkit.hold import HoldControl
from testkit.live import LiveServer, start_server
from tests.conftest import LIVE_SETTINGS, SECRET
from tests.test_viewer import PARIS, enter_secret, france_feature, next_frame, open_tab
from tests.test_viewer_jobs import click_generate, stored_document

AUTH = {"x-secret-key": SECRET}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """This module's server keeps attributions, as `make run` does (the shared one does not,
    so that other tests never get a reused graph)."""
    settings = {k: v for k, v in LIVE_SETTINGS.items() if k != "GRAPH_STORE_BYTES"}
    settings["GRAPH_STORE_DIR"] = str(tmp_path_factory.mktemp("reprune-store"))
    with (
        HoldControl() as control,
        start_server(
            tmp_path_factory.mktemp("reprune"), settings, secret=SECRET, hold=control
        ) as server,
    ):
        yield server


@pytest.fixture
def jobs_tab(browser: Any, live_server: Any) -> Iterator[Any]:
    tab = open_tab(browser, live_server.base, jobs=True)
    tab.page.click("#secret-change")
    enter_secret(tab.page)
    yield tab
    tab.page.context.close()


def move_slider(page: Any, slider: str, value: str, job_id: str) -> Any:
    """Let go of a re-prune slider at `value`; wait for the page to show the server's answer."""
    with page.expect_response(lambda r: f"/graphs/{job_id}/document?" in r.url) as info:
        page.eval_on_selector(
            slider,
            "(e, v) => { e.value = v; e.dispatchEvent(new Event('change')); }",
            value,
        )
    # The status says "asking the server" before the request goes: ok/error is this answer's.
    page.wait_for_selector("#reprune-status.ok, #reprune-status.error")
    assert "ok" in page.get_attribute("#reprune-status", "class").split(), page.inner_text(
        "#reprune-status"
    )
    next_frame(page)
    return info.value


def fresh_graph(live_server: Any, sent: dict[str, Any], **thresholds: float) -> dict[str, Any]:
    body = {**sent, **thresholds, "slug_identifier": sent["slug_identifier"]}
    res = requests.post(live_server.url("/generate-graph"), json=body, headers=AUTH, timeout=300)
    assert res.status_code == 200, res.text
    return res.json()


def pinned(page: Any) -> list[str]:
    params = dict(parse_qsl(page.evaluate("() => location.hash.slice(1)")))
    return [p for p in params.get("pinnedIds", "").split(",") if p]


def supernodes(page: Any) -> list[list[str]]:
    params = dict(parse_qsl(page.evaluate("() => location.hash.slice(1)")))
    return json.loads(params.get("supernodes", "[]"))


def test_a_reprune_slider_gives_the_node_count_of_a_fresh_graph(jobs_tab, live_server):
    page = jobs_tab.page
    page.fill("#prompt", PARIS)
    job_id = click_generate(page)
    page.wait_for_selector("#status.ok")
    sent = next(
        r.post_data_json
        for r in jobs_tab.requests
        if r.method == "POST" and r.url.endswith("/graphs")
    )
    doc = stored_document(live_server, job_id)
    fresh = fresh_graph(live_server, sent, node_threshold=0.5)
    fresh_ids = {n["node_id"] for n in fresh["nodes"]}
    # Pin the France feature and a feature the 0.5 pruning leaves out, grouped as one supernode.
    france = france_feature(doc)
    gone = next(
        n["node_id"]
        for n in doc["nodes"]
        if n["feature_type"] == "cross layer transcoder" and n["node_id"] not in fresh_ids
    )
    for node_id in (france, gone):
        page.fill("#search", node_id)
        page.press("#search", "Enter")
        page.wait_for_function(
            "(id) => document.getElementById('sel-title').textContent === id",
            arg=node_id,
        )
        page.click("#pin-toggle")
    page.check(f"#sg-list input[value='{france}']")
    page.check(f"#sg-list input[value='{gone}']")
    page.fill("#sg-name", "pair")
    page.click("#sg-group")
    assert pinned(page) == [france, gone]
    assert supernodes(page) == [["pair", france, gone]]

    # The node slider: the server prunes the stored graph again at 0.5.
    response = move_slider(page, "#reprune-node", "0.5", job_id)
    assert response.status == 200
    query = dict(parse_qsl(response.url.split("?", 1)[1]))
    assert query == {"node_threshold": "0.5", "edge_threshold": str(sent["edge_threshold"])}
    assert SECRET not in response.url
    assert len(fresh["nodes"]) != len(doc["nodes"])  # the threshold changed the graph
    assert page.locator("#node-layer .node").count() == len(fresh["nodes"])
    assert page.get_attribute("#reprune-status", "data-nodes") == str(len(fresh["nodes"]))
    served = orjson.loads(response.body())
    assert {n["node_id"] for n in served["nodes"]} == {n["node_id"] for n in fresh["nodes"]}
    # Pins and the group keep the nodes that survived, and only those.
    kept = [france] if france in fresh_ids else []
    assert pinned(page) == kept
    assert supernodes(page) == ([["pair", *kept]] if kept else [])

    # The edge slider: both thresholds travel; the links are a fresh graph's.
    move_slider(page, "#reprune-edge", "0.9", job_id)
    both = fresh_graph(live_server, sent, node_threshold=0.5, edge_threshold=0.9)
    assert page.locator("#node-layer .node").count() == len(both["nodes"])
    assert page.inner_text("#reprune-status") == (
        f"{len(both['nodes'])} nodes, {len(both['links'])} links"
    )
    jobs_tab.assert_clean()
