"""The built-in viewer in a real browser (Debian's headless Chromium) against the real server.

Everything runs against the gunicorn `live_server` on the demo model: the page generates the
Paris graph, draws it, highlights the France feature and steers Rome into France, exactly as a
researcher would click through it. These tests drive the synchronous `/generate-graph` path: the
page meets a server without graph jobs (`without_jobs`); `tests/test_viewer_jobs.py` covers the
jobs path (progress, Cancel, recent graphs). The browser must be installed (`make browser`, which
`make test` runs): a missing browser fails these tests, it never skips them.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
import requests

from testkit.browser import synthetic_graph_document
from tests.conftest import REPO, SECRET
from tests.helpers import strongest_feature_into_target

PARIS = "The city of Paris is in"
ROME = "The city of Rome is in"
SCREENSHOT_COPY = REPO / "build" / "viewer-screenshot.png"
SMALL_SCREEN_SHOT = REPO / "build" / "viewer-27-tokens-1280x720.png"
SUBGRAPH_SHOT = REPO / "build" / "viewer-subgraph.png"
DEFAULT_VISIBLE_EDGES = 3000  # viewer.js: edges drawn before the slider is touched
MAX_DRAWN_EDGES = 30000  # viewer.js: the drawing cap


@dataclass
class Tab:
    """A browser page plus everything it logged and requested."""

    page: Any
    base: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.console_errors == []
        outside = [r.url for r in self.requests if not r.url.startswith(self.base + "/")]
        assert outside == [], "the page talked to something other than its server"


def without_jobs(page: Any) -> None:
    """Make the page meet a server without graph jobs: POST /graphs answers a JSON 404, as the
    server before jobs did, so the page generates with the synchronous /generate-graph."""

    def answer(route: Any) -> None:
        if route.request.method == "POST":
            route.fulfill(
                status=404, content_type="application/json", body='{"error": "Not Found"}'
            )
        else:
            route.continue_()

    page.route("**/graphs", answer)


def is_jobs_probe(request: Any) -> bool:
    return request.method == "POST" and request.url.endswith("/graphs")


def is_probe_log(message: Any) -> bool:
    """The browser's console line for the 404 that `without_jobs` answers."""
    return message.location.get("url", "").endswith("/graphs")


def open_tab(browser: Any, base: str, jobs: bool = False) -> Tab:
    """A fresh page on the server; without `jobs` it meets a server without graph jobs (its
    POST /graphs probe, answered in the browser, is left out of `tab.requests`)."""
    context = browser.new_context(viewport={"width": 1500, "height": 950}, accept_downloads=True)
    page = context.new_page()
    tab = Tab(page, base)

    def console(message: Any) -> None:
        if message.type == "error" and (jobs or not is_probe_log(message)):
            tab.console_errors.append(message.text)

    def request(r: Any) -> None:
        if jobs or not is_jobs_probe(r):
            tab.requests.append(r)

    page.on("console", console)
    page.on("pageerror", lambda e: tab.console_errors.append(f"pageerror: {e}"))
    page.on("request", request)
    if not jobs:
        without_jobs(page)
    page.goto(base + "/")
    # /health answered and the form holds the server's defaults. (Predicates are functions:
    # Playwright evaluates expression strings with eval, which the page's CSP forbids.)
    page.wait_for_function(
        "() => document.getElementById('server-info').textContent.includes('demo')"
    )
    return tab


@pytest.fixture
def tab(browser: Any, live_server: Any) -> Iterator[Tab]:
    tab = open_tab(browser, live_server.base)
    yield tab
    tab.page.context.close()


def enter_secret(page: Any, secret: str = SECRET) -> None:
    page.wait_for_selector("#secret-dialog[open]")
    page.fill("#secret-input", secret)
    page.click("#secret-save")


def click_and_wait(page: Any, button: str, path: str, secret: str | None = None) -> Any:
    """Click a button that POSTs to `path` (entering `secret` when the page asks for it) and
    wait until the page has shown the outcome; returns the response.

    The page shows progress before it sends, so once the response is in, the status element
    is either still in progress or final: an earlier final message cannot be mistaken for it.
    """
    status = "#steer-status" if path == "/steer" else "#status"
    with page.expect_response(lambda r: r.url.endswith(path)) as info:
        page.click(button)
        if secret is not None:
            enter_secret(page, secret)
    page.wait_for_selector(f"{status}.ok, {status}.error")
    return info.value


def generate(page: Any, secret: str | None = None) -> dict[str, Any]:
    """Click Generate; return the graph the server sent."""
    response = click_and_wait(page, "#generate", "/generate-graph", secret)
    assert response.status == 200, page.inner_text("#status")
    return orjson.loads(response.body())


def next_frame(page: Any) -> None:
    """Wait until the page has drawn its next animation frame (the canvas redraws in one)."""
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


def set_slider(page: Any, value: int, slider: str = "#edge-slider") -> None:
    page.fill(slider, str(value))
    page.wait_for_function(
        "([s, v]) => document.querySelector(s).value === String(v)", arg=[slider, value]
    )
    next_frame(page)


def drawn_edges(page: Any) -> tuple[int, int]:
    """(edges the counter says are drawn, curves the canvas actually stroked last frame)."""
    next_frame(page)
    return [
        int(page.get_attribute("#edge-count", "data-drawn")),
        int(page.get_attribute("#edge-canvas", "data-curves")),
    ]


def france_feature(doc: dict[str, Any]) -> str:
    """The node id of the feature with the strongest direct edge into " France" (the target)."""
    return "_".join(map(str, strongest_feature_into_target(doc)))


def select_france_feature(paris: Any) -> tuple[Any, tuple[int, int, int]]:
    """Click the France feature in the Paris graph: (the page, its layer, index and position)."""
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    page.click(f"#node-layer .node[data-id='{node_id}']")
    layer, index, pos = (int(v) for v in node_id.split("_"))
    return page, (layer, index, pos)


# ----------------------------------------------------------------------------- serving
def test_page_loads_with_no_console_errors_and_no_outside_requests(tab, live_server):
    page = tab.page
    assert page.title() == "neuronpedia-graph viewer"
    # The form holds the server's defaults: max_feature_nodes clamped to the server cap.
    assert page.input_value("#max_feature_nodes") == "2000"
    assert page.input_value("#node_threshold") == "0.8"
    assert page.input_value("#batch_size") == "48"
    assert {r.url.removeprefix(live_server.base) for r in tab.requests} == {
        "/",
        "/viewer/viewer.css",
        "/viewer/viewer.js",
        "/health",
    }
    tab.assert_clean()


def test_assets_have_content_types_and_cache_headers(live_server):
    base = live_server.base
    page = requests.get(base + "/", timeout=5)  # no secret needed
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for name, kind in (("viewer.js", "text/javascript"), ("viewer.css", "text/css")):
        res = requests.get(f"{base}/viewer/{name}", timeout=5)
        assert res.status_code == 200 and res.headers["Content-Type"].startswith(kind)
        assert res.headers["Cache-Control"] == "no-cache" and res.headers["ETag"]
        again = requests.get(
            f"{base}/viewer/{name}", headers={"If-None-Match": res.headers["ETag"]}, timeout=5
        )
        assert again.status_code == 304
    for path in ("/viewer/missing.js", "/viewer/../app.py", "/viewer/%2e%2e/app.py"):
        res = requests.get(base + path, timeout=5)
        assert res.status_code == 404 and res.json()["error"] == "Not found"


def test_viewer_off_gives_json_404(demo_loaded, demo_settings):
    from neuronpedia_graph.api import create_app
    from neuronpedia_graph.service import GraphService

    off = demo_settings.model_copy(update={"viewer": False})
    client = create_app(GraphService(demo_loaded, off), SECRET).test_client()
    for path in ("/", "/viewer/viewer.js"):
        res = client.get(path)
        assert res.status_code == 404 and res.get_json()["error"] == "Not found"
    assert client.get("/health").status_code == 200


def test_viewer_setting_from_env_and_cli(tmp_path):
    from neuronpedia_graph.settings import load_settings

    missing = tmp_path / "none.env"
    assert load_settings([], environ={}, env_file=missing).viewer is True
    assert load_settings([], environ={"VIEWER": "false"}, env_file=missing).viewer is False
    assert load_settings(["--no-viewer"], environ={}, env_file=missing).viewer is False
    assert load_settings(["--viewer"], environ={"VIEWER": "0"}, env_file=missing).viewer is True


# ----------------------------------------------------------------------------- the Paris graph
RECORD_STATUS = """() => {
  const status = document.getElementById('status');
  window.statusLog = [];
  new MutationObserver(() => window.statusLog.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
}"""


@dataclass
class ParisView:
    tab: Tab
    doc: dict[str, Any]
    body: bytes


@pytest.fixture(scope="module")
def paris(browser: Any, live_server: Any) -> Iterator[ParisView]:
    """One page that generated the Paris graph; the tests below look at it in turn."""
    tab = open_tab(browser, live_server.base)
    page = tab.page
    page.fill("#prompt", PARIS)
    page.evaluate(RECORD_STATUS)
    response = click_and_wait(page, "#generate", "/generate-graph", SECRET)  # asked once
    assert response.status == 200
    next_frame(page)
    body = response.body()
    yield ParisView(tab, orjson.loads(body), body)
    tab.page.context.close()


def test_generate_shows_progress_then_server_timing(paris):
    page = paris.tab.page
    log = page.evaluate("() => window.statusLog")
    assert re.fullmatch(r"Generating… \d+\.\d s", log[0]), log
    assert page.inner_text("#status").startswith("Graph ready in")
    phases = page.eval_on_selector_all("#timings li", "els => els.map(e => e.dataset.phase)")
    assert phases == ["tokenize", "attribute", "prune", "build_json"]
    posts = [r for r in paris.tab.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].headers["x-secret-key"] == SECRET
    sent = posts[0].post_data_json
    assert sent["prompt"] == PARIS and sent["model_id"] == "demo"
    assert sent["max_feature_nodes"] == 2000 and sent["node_threshold"] == 0.8
    assert sent["slug_identifier"].startswith("viewer-the-city-of-paris-is-in-")
    paris.tab.assert_clean()


def test_every_node_and_edge_is_drawn(paris):
    page = paris.tab.page
    doc = paris.doc
    assert page.locator("#node-layer .node").count() == len(doc["nodes"])
    drawn_ids = page.eval_on_selector_all("#node-layer .node", "els => els.map(e => e.dataset.id)")
    assert sorted(drawn_ids) == sorted(n["node_id"] for n in doc["nodes"])
    set_slider(page, 0)
    assert drawn_edges(page) == [len(doc["links"])] * 2
    assert page.get_attribute("#edge-count", "data-hidden") == "0"
    # Hiding weak edges says how many are hidden, and keeps the strongest.
    set_slider(page, 500)
    hidden = len(doc["links"]) // 2
    assert drawn_edges(page) == [len(doc["links"]) - hidden] * 2
    assert f"{hidden} hidden" in page.inner_text("#edge-count")
    set_slider(page, 0)
    # x = token position, labelled with the prompt tokens; embeddings at the bottom.
    labels = page.eval_on_selector_all(
        "#axis-bottom .token-label", "els => els.map(e => e.textContent.trim())"
    )
    assert labels == [token.strip() for token in doc["metadata"]["prompt_tokens"]]
    y = {
        kind: page.eval_on_selector_all(
            f"#node-layer .node.{kind}", "els => els.map(e => e.getBoundingClientRect().y)"
        )
        for kind in ("embedding", "feature", "logit")
    }
    assert min(y["embedding"]) > max(y["feature"]) > max(y["logit"])


def test_france_is_the_top_logit(paris):
    page = paris.tab.page
    logits = [n for n in paris.doc["nodes"] if n["feature_type"] == "logit"]
    top = max(logits, key=lambda n: n["token_prob"])
    assert '" France"' in top["clerp"] and top["is_target_logit"]
    assert page.locator("#node-layer .node.top-logit").count() == 1
    assert page.get_attribute("#node-layer .node.top-logit", "data-id") == top["node_id"]
    assert page.text_content("#label-layer .logit-label.top").strip() == "France"
    assert 'top logit " France"' in page.inner_text("#graph-title")


def test_hover_shows_node_details(paris):
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    layer, index, pos = node_id.split("_")
    node = next(n for n in paris.doc["nodes"] if n["node_id"] == node_id)
    page.hover(f"#node-layer .node[data-id='{node_id}']")
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert f"layer: {layer}" in text and f"feature index: {index}" in text
    assert f'position: {pos} " in"' in text
    assert f"activation: {node['activation']:.3f}" in text
    assert f"influence: {node['influence']:.3f}" in text and "label: —" in text
    page.mouse.move(5, 5)
    tip.wait_for(state="hidden")


def test_clicking_the_france_feature_highlights_its_edges(paris):
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    page.click(f"#node-layer .node[data-id='{node_id}']")
    assert "selected" in page.get_attribute(f"#node-layer .node[data-id='{node_id}']", "class")
    incident = {
        (lk["source"], lk["target"])
        for lk in paris.doc["links"]
        if node_id in (lk["source"], lk["target"])
    }
    highlighted = page.eval_on_selector_all(
        "#highlight-layer .hl-edge", "els => els.map(e => [e.dataset.source, e.dataset.target])"
    )
    assert len(highlighted) == len(incident) and {tuple(h) for h in highlighted} == incident
    assert "dimmed" in page.get_attribute("#node-layer", "class")
    # Its strongest neighbours are listed, the " France" logit among its outputs.
    target = next(n["node_id"] for n in paris.doc["nodes"] if n["is_target_logit"])
    outputs = page.eval_on_selector_all("#sel-outputs button", "els => els.map(e => e.dataset.id)")
    assert target in outputs
    strongest_in = max(
        (lk for lk in paris.doc["links"] if lk["target"] == node_id),
        key=lambda lk: abs(lk["weight"]),
    )
    assert (
        page.get_attribute("#sel-inputs li:first-child button", "data-id") == strongest_in["source"]
    )
    assert page.is_visible("#steer-panel")
    # The demo graph names no Neuronpedia source set: no feature page to link to.
    assert not page.is_visible("#sel-np-link")


def test_steering_the_france_feature_on_rome_says_france(paris, tmp_path):
    page, (layer, index, pos) = select_france_feature(paris)
    assert page.input_value("#steer-prompt") == PARIS  # prefilled from the graph
    page.fill("#steer-prompt", ROME)
    page.fill("#steer-delta", "20")
    response = click_and_wait(page, "#steer-run", "/steer")
    assert not page.locator("#secret-dialog[open]").count()  # the secret was asked only once
    assert response.status == 200
    assert page.is_visible("#steer-result")
    sent = response.request.post_data_json
    assert sent["prompt"] == ROME and sent["model_id"] == "demo"
    assert sent["features"] == [
        {
            "layer": layer,
            "index": index,
            "token_active_position": pos,
            "delta": 20,
            "steer_position": pos,
        }
    ]
    assert response.request.headers["x-secret-key"] == SECRET
    steered = page.get_attribute("#steer-steered .generation", "data-continuation")
    default = page.get_attribute("#steer-default .generation", "data-continuation")
    assert steered.startswith(" France") and default.startswith(" Italy")
    # Top-token probabilities side by side: after " in", France leads only when steered.
    first_default = page.inner_text("#steer-default .probs tr:nth-child(2) td:first-child")
    first_steered = page.inner_text("#steer-steered .probs tr:nth-child(2) td:first-child")
    assert (first_default, first_steered) == ('" Italy"', '" France"')

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    SCREENSHOT_COPY.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    assert shot.stat().st_size > 10_000

    # A position outside the prompt is a readable 400, and the page keeps working; the previous
    # result leaves the screen (it stayed beside the error before).
    page.fill("#steer-position", "99")
    assert click_and_wait(page, "#steer-run", "/steer").status == 400
    message = page.inner_text("#steer-status")
    assert "(400)" in message and "steer_position 99 is outside" in message
    assert not page.is_visible("#steer-result") and not page.is_visible("#steer-steered")
    assert [e for e in paris.tab.console_errors if "400" not in e] == []


def test_download_saves_the_graph_as_received(paris, tmp_path):
    page = paris.tab.page
    with page.expect_download() as info:
        page.click("#download-json")
    download = info.value
    assert download.suggested_filename.startswith("viewer-the-city-of-paris-is-in-")
    target = tmp_path / download.suggested_filename
    download.save_as(str(target))
    assert target.read_bytes() == paris.body


# ----------------------------------------------------------------------------- Open JSON
def test_open_a_circuit_tracer_file(tab, demo_loaded, tmp_path):
    """circuit-tracer's own writer (create_graph_files) on the demo model opens and draws."""
    from circuit_tracer import attribute
    from circuit_tracer.utils.create_graph_files import create_graph_files

    graph = attribute(PARIS, demo_loaded.model, verbose=False)
    create_graph_files(graph, "ct-paris", tmp_path, scan="demo")
    path = tmp_path / "ct-paris.json"
    doc = json.loads(path.read_text())
    page = tab.page
    # gzip'd files open too (what a compressed upload stores).
    packed = tmp_path / "ct-paris.json.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    page.set_input_files("#file-input", str(packed))
    page.wait_for_selector("#status.ok:has-text('Opened ct-paris.json.gz')")
    assert page.locator("#node-layer .node").count() == len(doc["nodes"])
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#status.ok:has-text('Opened ct-paris.json:')")
    assert page.locator("#node-layer .node").count() == len(doc["nodes"])
    set_slider(page, 0)
    assert drawn_edges(page) == [len(doc["links"])] * 2
    assert page.get_attribute("#node-layer .node.top-logit", "data-id") == next(
        n["node_id"] for n in doc["nodes"] if n["is_target_logit"]
    )
    # What was opened downloads unchanged.
    with page.expect_download() as info:
        page.click("#download-json")
    saved = tmp_path / "saved.json"
    info.value.save_as(str(saved))
    assert saved.read_bytes() == path.read_bytes()
    tab.assert_clean()


def test_large_graph_draws_the_strongest_edges_and_says_how_many_are_hidden(tab, tmp_path):
    n_nodes, n_links = 1500, 36_000
    doc = synthetic_graph_document(n_nodes, n_links, seed=3)
    path = tmp_path / "large.json"
    path.write_bytes(orjson.dumps(doc))
    page = tab.page
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#status.ok:has-text('Opened large.json')")
    assert page.locator("#node-layer .node").count() == n_nodes
    assert drawn_edges(page) == [DEFAULT_VISIBLE_EDGES] * 2
    assert page.get_attribute("#edge-count", "data-hidden") == str(n_links - DEFAULT_VISIBLE_EDGES)
    assert f"{n_links - DEFAULT_VISIBLE_EDGES:,} hidden" in page.inner_text("#edge-count")
    # The drawn edges are the strongest: the stated threshold splits the weights there.
    weights = sorted((abs(lk["weight"]) for lk in doc["links"]), reverse=True)
    threshold = float(page.inner_text("#edge-count").split("|weight| < ")[1].split(")")[0])
    assert weights[DEFAULT_VISIBLE_EDGES - 1] == pytest.approx(threshold, rel=2e-3)
    set_slider(page, 0)
    assert drawn_edges(page) == [MAX_DRAWN_EDGES] * 2
    assert f"capped at the {MAX_DRAWN_EDGES:,} strongest" in page.inner_text("#edge-count")
    tab.assert_clean()


def test_a_file_that_is_not_a_graph_is_a_message(tab, tmp_path):
    page = tab.page
    for name, content, expected in (
        ("notjson.json", "{nope", "not valid JSON"),
        ("other.json", '{"nodes": 3}', "not a graph document"),
    ):
        path = tmp_path / name
        path.write_text(content)
        page.set_input_files("#file-input", str(path))
        page.wait_for_selector(f"#status.error:has-text('{name}')")
        assert page.inner_text("#status").startswith(f"Could not open {name}:")
        assert expected in page.inner_text("#status")
    tab.assert_clean()


# ----------------------------------------------------------------------------- errors
def test_wrong_secret_and_bad_settings_are_messages(tab):
    page = tab.page
    assert click_and_wait(page, "#generate", "/generate-graph", "not-the-secret").status == 403
    assert "The secret key was rejected (403)" in page.inner_text("#status")
    # The wrong key is forgotten: the next POST asks again.
    page.fill("#max_feature_nodes", "999999")
    assert click_and_wait(page, "#generate", "/generate-graph", SECRET).status == 422
    message = page.inner_text("#status")
    assert "(422)" in message and "max_feature_nodes: must be at most 2000" in message
    # Chat turns go out as messages and draw a graph.
    page.fill("#max_feature_nodes", "2000")
    page.check("input[name='mode'][value='chat']")
    page.fill(".chat-turn textarea", PARIS)
    with page.expect_request(lambda r: r.url.endswith("/generate-graph")) as sent:
        doc = generate(page)
    assert sent.value.post_data_json["messages"] == [{"role": "user", "content": PARIS}]
    assert "prompt" not in sent.value.post_data_json
    assert page.locator("#node-layer .node").count() == len(doc["nodes"])
    assert [e for e in tab.console_errors if "403" not in e and "422" not in e] == []


def test_no_secret_unreachable_server_and_oversized_body_are_messages(tab):
    page = tab.page
    page.click("#generate")
    page.wait_for_selector("#secret-dialog[open]")
    page.click("#secret-dialog button[value='cancel']")
    page.wait_for_selector("#status.error:has-text('A secret key is needed')")
    page.click("#secret-change")
    enter_secret(page)
    # A body over the server's 1 MiB limit: the server's 413, as a sentence.
    page.eval_on_selector("#prompt", "(el) => { el.value = 'Paris '.repeat(200000); }")
    assert click_and_wait(page, "#generate", "/generate-graph").status == 413
    assert "The request is too large (413)" in page.inner_text("#status")
    # The connection itself fails (an injected network fault: the server cannot be made to).
    page.fill("#prompt", PARIS)
    page.route("**/generate-graph", lambda route: route.abort("connectionrefused"))
    page.click("#generate")
    page.wait_for_selector("#status.error:has-text('Could not reach the server')")
    page.unroute("**/generate-graph")
    assert generate(page)["metadata"]["prompt"] == "<bos>" + PARIS
    assert [e for e in tab.console_errors if "413" not in e and "CONNECTION_REFUSED" not in e] == []


def test_busy_server_is_shown_as_a_message(tab, live_server):
    """A real graph held on the server (the test hold) makes the page's request a 503."""
    page = tab.page
    page.click("#secret-change")
    enter_secret(page)
    body = {"prompt": "1 2 3 4 5 6", "model_id": "demo", "slug_identifier": "viewer-busy"}
    results: list[requests.Response] = []

    def run_held_graph() -> None:
        results.append(
            requests.post(
                f"{live_server.base}/generate-graph",
                json=body,
                headers={"x-secret-key": SECRET},
                timeout=300,
            )
        )

    with live_server.hold.hold("generate-graph") as held:
        worker = threading.Thread(target=run_held_graph)
        worker.start()
        held.wait()
        response = click_and_wait(page, "#generate", "/generate-graph")
    worker.join(timeout=300)
    assert response.status == 503
    message = page.inner_text("#status")
    assert "The server is busy with another request (503)" in message
    assert f"Try again in {response.headers['retry-after']} s." in message
    assert results[0].status_code == 200
    # The server serves the next request, and the page draws it.
    doc = generate(page)
    assert page.locator("#node-layer .node").count() == len(doc["nodes"])
    assert [e for e in tab.console_errors if "503" not in e] == []
    outside = [r.url for r in tab.requests if not r.url.startswith(live_server.base + "/")]
    assert outside == []


@pytest.fixture(autouse=True, scope="module")
def _no_stale_screenshot() -> Iterator[None]:
    """The copied screenshot is this run's: an old one must not pass for a new one."""
    SCREENSHOT_COPY.unlink(missing_ok=True)
    SMALL_SCREEN_SHOT.unlink(missing_ok=True)
    SUBGRAPH_SHOT.unlink(missing_ok=True)
    yield


def test_contrast_target_logit_is_labelled_as_a_logit_difference(tab, live_server, tmp_path):
    """A graph for logit(" France") − logit(" Italy") has one logit node, labelled as that
    difference (its token in the document is circuit-tracer's label " France− Italy")."""
    res = requests.post(
        live_server.base + "/generate-graph",
        json={
            "prompt": PARIS,
            "model_id": "demo",
            "slug_identifier": "contrast",
            "max_feature_nodes": 100,
            "attribution_targets": {"contrast": [" France", " Italy"]},
        },
        headers={"x-secret-key": SECRET},
        timeout=120,
    )
    assert res.status_code == 200, res.text
    doc = res.json()
    path = tmp_path / "contrast.json"
    path.write_bytes(res.content)
    page = tab.page
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#status.ok:has-text('Opened contrast.json')")
    node_id = doc["metadata"]["attribution_targets"]["node_id"]
    assert page.get_attribute("#node-layer .node.top-logit", "data-id") == node_id
    assert page.locator(".logit-label").all_text_contents() == [
        'logit(" France") − logit(" Italy")'
    ]
    tab.assert_clean()


# ----------------------------------------------------------------------------- real size
# 26 words the demo knows, after <bos>: 27 prompt tokens.
PROMPT_27 = (
    "The city of Paris is in France . the city of Rome is in Italy . "
    "the city of Berlin is in Germany . the city"
)
NODE_BOXES = """() => [...document.querySelectorAll('#node-layer .node')].map((e) => {
  const r = e.getBoundingClientRect();
  return { id: e.dataset.id, x: r.x, y: r.y, w: r.width, h: r.height };
})"""


def plot_area(page: Any) -> dict[str, float]:
    """The part of the graph view not under the pinned axes (layer labels left, tokens below)."""
    view = page.locator("#graph-view").bounding_box()
    left = page.locator("#axis-left").bounding_box()
    bottom = page.locator("#axis-bottom").bounding_box()
    return {
        "left": left["x"] + left["width"],
        "right": view["x"] + view["width"],
        "top": view["y"],
        "bottom": bottom["y"],
    }


def boxes_by_id(page: Any) -> dict[str, dict[str, float]]:
    return {b["id"]: b for b in page.evaluate(NODE_BOXES)}


def centre(box: dict[str, float]) -> tuple[float, float]:
    return box["x"] + box["w"] / 2, box["y"] + box["h"] / 2


@dataclass
class SmallScreen:
    tab: Tab
    doc: dict[str, Any]


@pytest.fixture(scope="module")
def small_screen(browser: Any, live_server: Any) -> Iterator[SmallScreen]:
    """A 27-token prompt's graph generated on a 1280×720 screen."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    page = context.new_page()
    tab = Tab(page, live_server.base)
    page.on(
        "console",
        lambda m: m.type == "error" and not is_probe_log(m) and tab.console_errors.append(m.text),
    )
    page.on("pageerror", lambda e: tab.console_errors.append(f"pageerror: {e}"))
    without_jobs(page)
    page.goto(live_server.base + "/")
    page.wait_for_function(
        "() => document.getElementById('server-info').textContent.includes('demo')"
    )
    page.fill("#prompt", PROMPT_27)
    doc = generate(page, SECRET)
    next_frame(page)
    yield SmallScreen(tab, doc)
    context.close()


def test_a_27_token_graph_fits_a_1280x720_screen_without_scrolling(small_screen):
    page, doc = small_screen.tab.page, small_screen.doc
    assert (
        len(doc["metadata"]["prompt_tokens"]) == 27
        and "<unk>" not in doc["metadata"]["prompt_tokens"]
    )
    area = plot_area(page)
    boxes = page.evaluate(NODE_BOXES)
    assert len(boxes) == len(doc["nodes"])
    outside = [
        b["id"]
        for b in boxes
        if b["x"] < area["left"]
        or b["x"] + b["w"] > area["right"]
        or b["y"] < area["top"]
        or b["y"] + b["h"] > area["bottom"]
    ]
    assert outside == []
    # Nothing scrolls: not the page, not the graph.
    scroll = page.evaluate(
        """() => [document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth,
                  document.scrollingElement.scrollHeight - document.scrollingElement.clientHeight,
                  getComputedStyle(document.getElementById('graph-view')).overflow]"""
    )
    assert scroll == [0, 0, "hidden"]
    # Every token is labelled; a token with no features gets a narrow column.
    labels = page.eval_on_selector_all(
        "#axis-bottom .token-label", "els => els.map(e => [Number(e.dataset.pos), e.textContent])"
    )
    assert [pos for pos, _ in labels] == list(range(27))
    with_features = {
        n["ctx_idx"]
        for n in doc["nodes"]
        if n["feature_type"] in ("cross layer transcoder", "mlp reconstruction error")
    }
    widths = dict(
        page.eval_on_selector_all(
            "#axis-bottom .token-label",
            "els => els.map(e => [Number(e.dataset.pos), Number(e.dataset.width)])",
        )
    )
    empty = [widths[p] for p in range(27) if p not in with_features]
    full = [widths[p] for p in with_features]
    assert empty and full and max(empty) < min(full) / 2
    SCREENSHOT_COPY.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SMALL_SCREEN_SHOT))
    small_screen.tab.assert_clean()


def test_wheel_buttons_and_drag_change_the_view_and_fit_restores_it(small_screen):
    page = small_screen.tab.page
    view = page.locator("#graph-view").bounding_box()
    fitted = boxes_by_id(page)
    feature = next(
        n["node_id"]
        for n in small_screen.doc["nodes"]
        if n["feature_type"] == "cross layer transcoder"
    )
    axis_labels = page.eval_on_selector_all(
        "#axis-left .axis-label", "els => els.map(e => e.getBoundingClientRect().x)"
    )
    assert page.get_attribute("#graph-view", "data-zoom") == "1.0000"
    # The wheel zooms about the pointer: the node under it stays put and grows.
    fx, fy = centre(fitted[feature])
    page.mouse.move(fx, fy)
    page.mouse.wheel(0, -300)
    next_frame(page)
    zoomed = boxes_by_id(page)
    assert float(page.get_attribute("#graph-view", "data-zoom")) > 1.5
    assert zoomed[feature]["w"] > 1.5 * fitted[feature]["w"]
    assert centre(zoomed[feature]) == pytest.approx((fx, fy), abs=1)
    # Dragging pans by exactly the drag; the axes stay where they are, labels on them.
    start = (view["x"] + 60, view["y"] + 8)
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + 40, start[1] + 30, steps=4)
    page.mouse.move(start[0] + 90, start[1] + 70, steps=4)
    page.mouse.up()
    next_frame(page)
    panned = boxes_by_id(page)
    zx, zy = centre(zoomed[feature])
    assert centre(panned[feature]) == pytest.approx((zx + 90, zy + 70), abs=1)
    assert page.locator("#node-layer .selected").count() == 0  # a drag is not a click
    axis = page.locator("#axis-bottom").bounding_box()
    assert axis["y"] + axis["height"] == pytest.approx(view["y"] + view["height"], abs=1)
    tokens = page.eval_on_selector_all(
        "#axis-bottom .token-label", "els => els.map(e => e.getBoundingClientRect().y)"
    )
    assert tokens and all(axis["y"] - 2 <= y <= axis["y"] + axis["height"] for y in tokens)
    pinned = page.eval_on_selector_all(
        "#axis-left .axis-label", "els => els.map(e => e.getBoundingClientRect().x)"
    )
    assert pinned and set(pinned) == set(axis_labels) and len(set(pinned)) == 1
    # The buttons zoom about the centre.
    before = float(page.get_attribute("#graph-view", "data-zoom"))
    page.click("#zoom-out")
    next_frame(page)
    assert float(page.get_attribute("#graph-view", "data-zoom")) == pytest.approx(
        before / 1.5, rel=1e-3
    )
    page.click("#zoom-in")
    page.click("#zoom-in")
    next_frame(page)
    assert float(page.get_attribute("#graph-view", "data-zoom")) == pytest.approx(
        before * 1.5, rel=1e-3
    )
    # Fit puts every node back where it was drawn.
    page.click("#zoom-fit")
    next_frame(page)
    assert page.get_attribute("#graph-view", "data-zoom") == "1.0000"
    restored = boxes_by_id(page)
    for node_id, box in fitted.items():
        assert restored[node_id] == pytest.approx(box, abs=0.5)
    small_screen.tab.assert_clean()


def search(page: Any, text: str) -> str:
    page.fill("#search", text)
    page.press("#search", "Enter")
    next_frame(page)
    return page.inner_text("#search-status")


def test_search_by_feature_id_layer_index_and_token_centres_and_selects(paris):
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    layer, index, _ = node_id.split("_")
    view = page.locator("#graph-view").bounding_box()
    middle = (view["x"] + view["width"] / 2, view["y"] + view["height"] / 2)
    for query in (node_id, f"{layer}/{index}", f" {layer} / {index} "):
        page.click("#zoom-fit")
        assert node_id in search(page, query)
        assert page.get_attribute("#node-layer .node.selected", "data-id") == node_id
        box = page.locator(f"#node-layer .node[data-id='{node_id}']").bounding_box()
        assert centre({"x": box["x"], "y": box["y"], "w": box["width"], "h": box["height"]}) == (
            pytest.approx(middle, abs=1)
        )
        assert page.inner_text("#sel-title") == node_id
    # A token: its embedding node.
    tokens = paris.doc["metadata"]["prompt_tokens"]
    embedding = next(
        n["node_id"]
        for n in paris.doc["nodes"]
        if n["feature_type"] == "embedding" and n["ctx_idx"] == tokens.index(" Paris")
    )
    assert '" Paris"' in search(page, "paris")
    assert page.get_attribute("#node-layer .node.selected", "data-id") == embedding
    # No match is a message; the selection stays.
    assert search(page, "Lisbon") == "no node or token matches “Lisbon”"
    assert page.get_attribute("#node-layer .node.selected", "data-id") == embedding
    page.keyboard.press("Escape")
    page.click("#zoom-fit")
    assert [e for e in paris.tab.console_errors if "(BAD REQUEST)" not in e] == []


def shown_ids(page: Any) -> set[str]:
    return set(
        page.eval_on_selector_all(
            "#node-layer .node",
            "els => els.filter(e => e.checkVisibility()).map(e => e.dataset.id)",
        )
    )


def test_filters_hide_what_they_say(paris):
    page = paris.tab.page
    doc = paris.doc
    page.click("#zoom-fit")
    set_slider(page, 0)
    filtered = [
        n
        for n in doc["nodes"]
        if n["feature_type"] in ("cross layer transcoder", "mlp reconstruction error")
    ]
    # Node influence: features and error nodes above the cutoff go, with their links.
    set_slider(page, 400, "#node-slider")
    low, high = min(n["influence"] for n in filtered), max(n["influence"] for n in filtered)
    cutoff = low + (high - low) * 0.6
    gone = {n["node_id"] for n in filtered if n["influence"] > cutoff}
    assert gone and len(gone) < len(filtered)
    assert shown_ids(page) == {n["node_id"] for n in doc["nodes"]} - gone
    kept_links = [lk for lk in doc["links"] if not {lk["source"], lk["target"]} & gone]
    assert drawn_edges(page) == [len(kept_links)] * 2
    assert page.get_attribute("#node-count", "data-shown") == str(len(doc["nodes"]) - len(gone))
    set_slider(page, 0, "#node-slider")
    assert shown_ids(page) == {n["node_id"] for n in doc["nodes"]}
    # A selected node's links: inputs, outputs or both.
    node_id = france_feature(doc)
    page.click(f"#node-layer .node[data-id='{node_id}']")

    def highlighted() -> list[tuple[str, str]]:
        return [
            tuple(pair)
            for pair in page.eval_on_selector_all(
                "#highlight-layer .hl-edge",
                "els => els.map(e => [e.dataset.source, e.dataset.target])",
            )
        ]

    ins = {(lk["source"], lk["target"]) for lk in doc["links"] if lk["target"] == node_id}
    outs = {(lk["source"], lk["target"]) for lk in doc["links"] if lk["source"] == node_id}
    assert ins and outs
    for choice, expected in (("in", ins), ("out", outs), ("both", ins | outs)):
        page.check(f"input[name='link-dir'][value='{choice}']")
        assert sorted(highlighted()) == sorted(expected)
    neighbours = set(
        page.eval_on_selector_all("#node-layer .node.neighbor", "els => els.map(e => e.dataset.id)")
    )
    assert neighbours == {s for s, _ in ins} | {t for _, t in outs}
    page.keyboard.press("Escape")
    assert [e for e in paris.tab.console_errors if "(BAD REQUEST)" not in e] == []


def test_hiding_error_nodes_hides_them_and_their_links(tab, tmp_path):
    page = tab.page
    doc = synthetic_graph_document(300, 2000, n_layers=6, n_pos=12, seed=5)
    path = tmp_path / "errors.json"
    path.write_bytes(orjson.dumps(doc))
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#status.ok:has-text('Opened errors.json')")
    set_slider(page, 0)
    every = {n["node_id"] for n in doc["nodes"]}
    errors = {n["node_id"] for n in doc["nodes"] if n["feature_type"] == "mlp reconstruction error"}
    assert errors
    page.check("#hide-errors")
    next_frame(page)
    assert shown_ids(page) == every - errors
    kept = [lk for lk in doc["links"] if not {lk["source"], lk["target"]} & errors]
    assert len(kept) < len(doc["links"])
    assert drawn_edges(page) == [len(kept)] * 2
    page.uncheck("#hide-errors")
    next_frame(page)
    assert shown_ids(page) == every
    assert drawn_edges(page) == [len(doc["links"])] * 2
    tab.assert_clean()


# ----------------------------------------------------------------------------- defects
def test_the_edge_slider_works_while_a_node_is_selected(paris):
    page = paris.tab.page
    doc = paris.doc
    set_slider(page, 0)
    node_id = france_feature(doc)
    page.click(f"#node-layer .node[data-id='{node_id}']")
    incident = [lk for lk in doc["links"] if node_id in (lk["source"], lk["target"])]
    assert page.locator("#highlight-layer .hl-edge").count() == len(incident)
    set_slider(page, 900)
    strongest = sorted(doc["links"], key=lambda lk: abs(lk["weight"]), reverse=True)
    kept = strongest[: len(strongest) - int(0.9 * len(strongest))]
    expected = [lk for lk in kept if node_id in (lk["source"], lk["target"])]
    assert 0 < len(expected) < len(incident)
    assert page.locator("#highlight-layer .hl-edge").count() == len(expected)
    assert f"selected: {len(expected)} of its {len(incident)} links" in page.inner_text(
        "#edge-count"
    )
    set_slider(page, 0)
    assert page.locator("#highlight-layer .hl-edge").count() == len(incident)
    page.keyboard.press("Escape")


def test_steering_boxes_stay_hidden_until_a_steer_returns(tab, live_server):
    page = tab.page
    page.fill("#prompt", PARIS)
    doc = generate(page, SECRET)
    page.click(f"#node-layer .node[data-id='{france_feature(doc)}']")
    assert page.is_visible("#steer-panel")
    assert not page.is_visible("#steer-result")
    assert not page.is_visible("#steer-default") and not page.is_visible("#steer-steered")
    tab.assert_clean()


def test_the_hover_card_stays_off_the_details_panel(paris):
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    page.click(f"#node-layer .node[data-id='{node_id}']")  # the details panel is filled
    page.click("#zoom-fit")
    # The rightmost node: a card placed right of the pointer would cover the details panel.
    rightmost = max(page.evaluate(NODE_BOXES), key=lambda b: b["x"])
    page.hover(f"#node-layer .node[data-id='{rightmost['id']}']")
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    card = tip.bounding_box()
    details = page.locator(".details").bounding_box()
    view = page.locator("#graph-view").bounding_box()
    assert card["x"] + card["width"] <= details["x"]
    assert view["x"] <= card["x"] and card["x"] + card["width"] <= view["x"] + view["width"]
    page.mouse.move(5, 5)
    tip.wait_for(state="hidden")
    page.keyboard.press("Escape")


def test_a_long_request_id_wraps_inside_the_error_box(paris):
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    page.click(f"#node-layer .node[data-id='{node_id}']")
    page.fill("#steer-prompt", PARIS)
    page.check("input[name='steer-where'][value='position']")
    page.fill("#steer-position", "99")
    rid = "a" * 128  # the longest id the server echoes (a proxy's, say)

    def with_request_id(route: Any) -> None:
        route.continue_(headers={**route.request.headers, "x-request-id": rid})

    page.route("**/steer", with_request_id)
    try:
        assert click_and_wait(page, "#steer-run", "/steer").status == 400
    finally:
        page.unroute("**/steer")
    assert f"(request id {rid})" in page.inner_text("#steer-status")
    overflow = page.eval_on_selector("#steer-status", "e => e.scrollWidth - e.clientWidth")
    assert overflow <= 0
    box = page.locator("#steer-status").bounding_box()
    panel = page.locator(".details").bounding_box()
    assert box["x"] + box["width"] <= panel["x"] + panel["width"]
    page.keyboard.press("Escape")


# ----------------------------------------------------------------------------- vocabulary
def test_health_sends_the_demo_vocabulary(live_server):
    health = requests.get(f"{live_server.base}/health", timeout=5).json()
    vocabulary = health["vocabulary"]
    assert vocabulary["unk_token"] == "<unk>"
    assert " Paris" in vocabulary["words"] and " France" in vocabulary["words"]
    assert "<unk>" not in vocabulary["words"] and "<bos>" not in vocabulary["words"]


def test_the_page_says_which_words_the_demo_does_not_know(tab):
    page = tab.page
    page.fill("#prompt", PARIS)
    assert not page.is_visible("#vocab-notice")
    page.fill("#prompt", "Hello world the city of Paris is in")
    notice = page.locator("#vocab-notice")
    notice.wait_for(state="visible")
    text = page.inner_text("#vocab-unknown")
    assert '"Hello", " world" are not among them' in text and "<unk>" in text
    assert "Paris" not in text
    page.click("#vocab-notice summary")
    words = page.inner_text("#vocab-words").split()
    assert "Paris" in words and "France" in words and "Hello" not in words
    doc = generate(page, SECRET)
    unknown = doc["metadata"]["prompt_tokens"].count("<unk>")
    assert unknown == 2
    note = page.inner_text("#unk-note")
    assert note.startswith(f"2 of the {len(doc['metadata']['prompt_tokens'])} prompt tokens")
    next_frame(page)
    assert page.locator("#axis-bottom .token-label.unk").count() == 2
    # Known words only: no notice, no note.
    page.fill("#prompt", PARIS)
    generate(page)
    assert not page.is_visible("#vocab-notice") and not page.is_visible("#unk-note")
    tab.assert_clean()


# ----------------------------------------------------------------------------- steering modes
def steer_from_page(page: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Click Steer; return (the request the page sent, the server's reply)."""
    response = click_and_wait(page, "#steer-run", "/steer")
    assert response.status == 200, page.inner_text("#steer-status")
    assert page.is_visible("#steer-result")
    return response.request.post_data_json, orjson.loads(response.body())


def test_ablating_the_france_feature_lowers_france(paris):
    page, (layer, index, pos) = select_france_feature(paris)
    page.fill("#steer-prompt", PARIS)
    page.check("input[name='steer-kind'][value='ablate']")
    page.check("input[name='steer-where'][value='position']")
    page.fill("#steer-position", str(pos))
    sent, reply = steer_from_page(page)
    assert sent["features"] == [
        {
            "layer": layer,
            "index": index,
            "token_active_position": pos,
            "ablate": True,
            "steer_position": pos,
        }
    ]

    def france(entries: list[dict[str, Any]]) -> float:
        return next(t["prob"] for t in entries[pos]["top_logits"] if t["token"] == " France")

    default, steered = (
        france(reply["DEFAULT_LOGITS_BY_TOKEN"]),
        france(reply["STEERED_LOGITS_BY_TOKEN"]),
    )
    assert steered < default  # the feature pushed France up; without it France is less sure
    # The page shows the two probabilities side by side.
    cells = [
        page.eval_on_selector_all(
            f"{column} .probs td",
            "els => els.map(e => e.textContent)",
        )
        for column in ("#steer-default", "#steer-steered")
    ]
    shown = [float(c[c.index('" France"') + 1]) for c in cells]
    assert shown == [pytest.approx(default, abs=5e-4), pytest.approx(steered, abs=5e-4)]
    page.check("input[name='steer-kind'][value='delta']")
    page.keyboard.press("Escape")


def test_steering_every_generated_token_repeats_france(paris):
    page, (layer, index, pos) = select_france_feature(paris)
    page.fill("#steer-prompt", PARIS)
    page.check("input[name='steer-kind'][value='delta']")
    page.fill("#steer-delta", "20")
    page.check("input[name='steer-where'][value='generated']")
    sent, reply = steer_from_page(page)
    assert sent["features"] == [
        {
            "layer": layer,
            "index": index,
            "token_active_position": pos,
            "delta": 20,
            "steer_generated_tokens": True,
        }
    ]
    default = page.get_attribute("#steer-default .generation", "data-continuation")
    steered = page.get_attribute("#steer-steered .generation", "data-continuation")
    assert default == reply["DEFAULT_GENERATION"].removeprefix(PARIS)
    assert steered == reply["STEERED_GENERATION"].removeprefix(PARIS)
    # Unsteered, France comes once and then full stops; steered on every new token, France
    # keeps coming.
    assert default.startswith(" France") and default.count(" France") == 1
    assert steered.count(" France") >= 3
    page.check("input[name='steer-where'][value='position']")
    page.keyboard.press("Escape")


# ----------------------------------------------------------------------------- bad files
def test_nonsensical_coordinates_are_refused_with_a_message(tab, tmp_path):
    page = tab.page
    good = synthetic_graph_document(120, 400, n_layers=4, n_pos=8, seed=1)
    cases = (
        ("ctx_idx", 50_000_000, "has ctx_idx 50000000, but the prompt has 8 tokens"),
        ("layer", "30000000", 'has layer "30000000", not a layer number from 0 to 1024'),
        ("ctx_idx", -1, "has ctx_idx -1"),
        ("layer", "x", 'has layer "x"'),
    )
    for field_name, value, expected in cases:
        doc = json.loads(json.dumps(good))
        victim = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
        victim[field_name] = value
        path = tmp_path / f"bad-{field_name}.json"
        path.write_bytes(orjson.dumps(doc))
        page.set_input_files("#file-input", str(path))
        page.wait_for_selector(f"#status.error:has-text('{path.name}')")
        message = page.inner_text("#status")
        assert f'node "{victim["node_id"]}" {expected}' in message, message
        # The page stays usable: the good file opens next.
        path.write_bytes(orjson.dumps(good))
        page.set_input_files("#file-input", str(path))
        page.wait_for_selector(f"#status.ok:has-text('{path.name}')")
        assert page.locator("#node-layer .node").count() == 120
    tab.assert_clean()


# ----------------------------------------------------------------------------- feature pages
def test_the_feature_page_link_is_the_web_apps_and_nothing_is_fetched_before_a_click(tab, tmp_path):
    page = tab.page
    doc = synthetic_graph_document(150, 500, n_layers=4, n_pos=8, seed=2)
    doc["metadata"]["scan"] = "gemma-2-2b"
    doc["metadata"]["feature_details"] = {"neuronpedia_source_set": "gemmascope-transcoder-16k"}
    feature = next(n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder")
    layer, index, _ = feature["node_id"].split("_")
    path = tmp_path / "sourced.json"
    path.write_bytes(orjson.dumps(doc))
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#status.ok:has-text('Opened sourced.json')")
    page.click(f"#node-layer .node[data-id='{feature['node_id']}']")
    expected = f"https://www.neuronpedia.org/gemma-2-2b/{layer}-gemmascope-transcoder-16k/{index}"
    link = page.locator("#sel-np-link")
    assert link.is_visible() and link.get_attribute("href") == expected
    assert f"layer {layer} feature {index}" in link.inner_text()
    # Other kinds of node have no feature page.
    embedding = next(n["node_id"] for n in doc["nodes"] if n["feature_type"] == "embedding")
    page.click(f"#node-layer .node[data-id='{embedding}']")
    assert not link.is_visible()
    tab.assert_clean()  # nothing went to Neuronpedia (or anywhere else) so far
    # A click opens the page in a new tab (answered here: the tests have no internet).
    page.click(f"#node-layer .node[data-id='{feature['node_id']}']")
    asked: list[str] = []

    def answer(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, body="feature page", content_type="text/plain")

    page.context.route("https://www.neuronpedia.org/**", answer)
    with page.context.expect_page() as opened:
        link.click()
    opened.value.wait_for_load_state()
    assert asked == [expected] and opened.value.url == expected
    opened.value.close()


# ----------------------------------------------------------------------------- labels
def test_labels_are_edited_saved_in_the_web_apps_qparams_and_restored(tab, tmp_path):
    """qParams.clerps is the web app's: [[featureId, label], ...], featureId being
    "<layer>_<feature field>_<ctx_idx>"; a file written that way opens with its labels."""
    page = tab.page
    doc = synthetic_graph_document(150, 500, n_layers=4, n_pos=8, seed=4)
    features = [n for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"]
    first, second = features[0], features[1]

    def web_id(node: dict[str, Any]) -> str:
        return f"{node['layer']}_{node['feature']}_{node['ctx_idx']}"

    doc["qParams"]["clerps"] = [[web_id(first), "capital cities"], ["nope"], "bad"]
    doc["qParams"]["pinnedIds"] = [first["node_id"]]
    path = tmp_path / "labelled.json"
    path.write_bytes(orjson.dumps(doc))
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#status.ok:has-text('Opened labelled.json')")
    page.click(f"#node-layer .node[data-id='{first['node_id']}']")
    assert page.input_value("#sel-label") == "capital cities"
    assert "capital cities" in page.inner_text("#sel-facts")
    # Unedited, the download is the file as opened, byte for byte.
    with page.expect_download() as info:
        page.click("#download-json")
    same = tmp_path / "same.json"
    info.value.save_as(str(same))
    assert same.read_bytes() == path.read_bytes()
    # Edit one label, clear the other.
    page.click(f"#node-layer .node[data-id='{second['node_id']}']")
    page.fill("#sel-label", "says France")
    page.press("#sel-label", "Enter")
    assert "label: says France" in page.inner_text("#sel-facts").replace("\n", ": ")
    page.hover(f"#node-layer .node[data-id='{second['node_id']}']")
    page.locator("#tooltip").wait_for(state="visible")
    assert "label: says France" in page.inner_text("#tooltip")
    with page.expect_download() as info:
        page.click("#download-json")
    saved = tmp_path / "saved.json"
    info.value.save_as(str(saved))
    written = orjson.loads(saved.read_bytes())
    assert written["qParams"]["clerps"] == [
        [web_id(first), "capital cities"],
        [web_id(second), "says France"],
    ]
    # The rest of the document and of qParams is untouched.
    assert written["qParams"]["pinnedIds"] == [first["node_id"]]
    assert written["nodes"] == doc["nodes"] and written["links"] == doc["links"]
    # Opening the saved file restores the labels.
    page.set_input_files("#file-input", str(saved))
    page.wait_for_selector("#status.ok:has-text('Opened saved.json')")
    page.click(f"#node-layer .node[data-id='{second['node_id']}']")
    assert page.input_value("#sel-label") == "says France"
    # An emptied label goes back to the graph's own (and leaves qParams.clerps).
    page.fill("#sel-label", "")
    page.press("#sel-label", "Enter")
    assert page.input_value("#sel-label") == second["clerp"]
    with page.expect_download() as info:
        page.click("#download-json")
    again = tmp_path / "again.json"
    info.value.save_as(str(again))
    assert orjson.loads(again.read_bytes())["qParams"]["clerps"] == [
        [web_id(first), "capital cities"]
    ]
    tab.assert_clean()


# ----------------------------------------------------------------------------- pins and groups
def linked_features(doc: dict[str, Any]) -> tuple[str, str, str]:
    """Three features a, b, c with a link a→b and a link between c and one of a, b."""
    features = {n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"}
    links = [lk for lk in doc["links"] if lk["source"] in features and lk["target"] in features]
    for first in links:
        a, b = first["source"], first["target"]
        for other in links:
            ends = {other["source"], other["target"]}
            if len(ends & {a, b}) == 1:
                return a, b, (ends - {a, b}).pop()
    raise AssertionError("no three linked features")


def subgraph(page: Any) -> tuple[set[str], dict[tuple[str, str], float]]:
    """The pane's items and its edges with their weights."""
    next_frame(page)
    items = set(page.eval_on_selector_all("#sg-svg .sg-node", "els => els.map(e => e.dataset.id)"))
    edges = page.eval_on_selector_all(
        "#sg-svg .sg-edge",
        "els => els.map(e => [e.dataset.source, e.dataset.target, Number(e.dataset.weight)])",
    )
    return items, {(s, t): w for s, t, w in edges}


def open_file(page: Any, path: Any) -> None:
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector(f"#status.ok:has-text('Opened {path.name}')")


def test_pinned_nodes_and_supernodes_in_the_pane_survive_download_and_open(tab, tmp_path):
    page = tab.page
    doc = synthetic_graph_document(150, 900, n_layers=4, n_pos=8, seed=6)
    a, b, c = linked_features(doc)
    path = tmp_path / "pins.json"
    path.write_bytes(orjson.dumps(doc))
    open_file(page, path)
    assert not page.is_visible("#subgraph")
    for node_id in (a, b):
        page.click(f"#node-layer .node[data-id='{node_id}']")
        page.click("#pin-toggle")
        assert page.inner_text("#pin-toggle") == "Unpin"
    # Exactly the two pinned nodes and the links between them.
    items, edges = subgraph(page)
    assert items == {a, b}
    between = {
        (lk["source"], lk["target"]): lk["weight"]
        for lk in doc["links"]
        if {lk["source"], lk["target"]} <= {a, b}
    }
    assert between and edges.keys() == between.keys()
    assert all(edges[k] == pytest.approx(w, rel=1e-6) for k, w in between.items())
    # Group a and b into a supernode; c stays itself. The supernode's links are the sums.
    page.click(f"#node-layer .node[data-id='{c}']")
    page.click("#pin-toggle")
    page.check(f"#sg-list input[value='{a}']")
    page.check(f"#sg-list input[value='{b}']")
    page.fill("#sg-name", "pair")
    page.click("#sg-group")
    items, edges = subgraph(page)
    assert items == {"pair", c}
    assert page.text_content("#sg-svg .sg-node.supernode[data-id='pair'] text") == "pair"
    expected: dict[tuple[str, str], float] = {}
    for lk in doc["links"]:
        ends = [
            "pair" if end in (a, b) else end if end == c else None
            for end in (lk["source"], lk["target"])
        ]
        if None not in ends and ends[0] != ends[1]:
            key = (ends[0], ends[1])
            expected[key] = expected.get(key, 0.0) + lk["weight"]
    assert expected and edges.keys() == expected.keys()
    assert all(edges[k] == pytest.approx(w, rel=1e-5) for k, w in expected.items())
    # Download carries the state in the web app's qParams; opening it restores it.
    with page.expect_download() as info:
        page.click("#download-json")
    saved = tmp_path / "saved-pins.json"
    info.value.save_as(str(saved))
    q = orjson.loads(saved.read_bytes())["qParams"]
    assert q["pinnedIds"] == [a, b, c]
    assert q["supernodes"] == [["pair", a, b]]
    assert q["clickedId"] == c and q["linkType"] == "both"
    page.click("#sg-clear")
    assert not page.is_visible("#subgraph")
    open_file(page, saved)
    assert subgraph(page)[0] == {"pair", c}
    assert page.get_attribute("#node-layer .node.selected", "data-id") == c
    page.screenshot(path=str(SUBGRAPH_SHOT))
    tab.assert_clean()


def test_a_web_app_qparams_file_opens_with_its_pins_supernodes_and_labels(tab, tmp_path):
    """The state as the Neuronpedia web app stores it (graph-types.ts: CLTGraphQParams plus
    clerps), written here from that format."""
    page = tab.page
    doc = synthetic_graph_document(150, 900, n_layers=4, n_pos=8, seed=7)
    a, b, c = linked_features(doc)
    node_c = next(n for n in doc["nodes"] if n["node_id"] == c)
    doc["qParams"] = {
        "linkType": "both",
        "pinnedIds": [a, b, c, "99_1_1"],  # an id the graph lacks is dropped
        "clickedId": b,
        "supernodes": [["my group", a, b]],
        "sg_pos": "",
        "clerps": [[f"{node_c['layer']}_{node_c['feature']}_{node_c['ctx_idx']}", "label c"]],
    }
    path = tmp_path / "webapp.json"
    path.write_bytes(orjson.dumps(doc))
    open_file(page, path)
    items, _ = subgraph(page)
    assert items == {"my group", c}
    assert page.text_content(f"#sg-svg .sg-node[data-id='{c}'] text") == "label c"
    assert page.get_attribute("#node-layer .node.selected", "data-id") == b
    assert page.inner_text("#pin-toggle") == "Unpin"
    assert page.is_checked("input[name='link-dir'][value='both']")
    # linkType "input" shows the selected node's inputs only.
    doc["qParams"]["linkType"] = "input"
    path.write_bytes(orjson.dumps(doc))
    open_file(page, path)
    assert page.is_checked("input[name='link-dir'][value='in']")
    highlighted = page.eval_on_selector_all(
        "#highlight-layer .hl-edge", "els => els.map(e => e.dataset.target)"
    )
    assert highlighted and set(highlighted) == {b}
    page.check("input[name='link-dir'][value='both']")
    tab.assert_clean()


def test_steering_the_pinned_features_at_once(paris):
    page = paris.tab.page
    doc = paris.doc
    france = france_feature(doc)
    # A second feature: the strongest other feature feeding the France feature.
    features = {n["node_id"] for n in doc["nodes"] if n["feature_type"] == "cross layer transcoder"}
    other = max(
        (lk for lk in doc["links"] if lk["target"] == france and lk["source"] in features),
        key=lambda lk: abs(lk["weight"]),
    )["source"]
    for node_id in (france, other):
        page.click(f"#node-layer .node[data-id='{node_id}']")
        page.click("#pin-toggle")
    page.keyboard.press("Escape")
    assert page.is_visible("#pin-steer")
    rows = page.eval_on_selector_all("#pin-steer-rows tr", "els => els.map(e => e.dataset.id)")
    assert rows == [france, other]
    assert page.input_value("#pin-steer-prompt") == PARIS
    # Positions are picked from the prompt's tokens.
    tokens = doc["metadata"]["prompt_tokens"]
    options = page.eval_on_selector_all(
        f"#pin-steer-rows tr[data-id='{other}'] .pin-where option",
        "els => els.map(e => e.textContent)",
    )
    assert options == [f"{pos} {json.dumps(token)}" for pos, token in enumerate(tokens)] + [
        "every generated token"
    ]
    france_row = f"#pin-steer-rows tr[data-id='{france}']"
    other_row = f"#pin-steer-rows tr[data-id='{other}']"
    page.fill(f"{france_row} .pin-delta", "20")
    page.select_option(f"{france_row} .pin-where", "generated")
    page.select_option(f"{other_row} .pin-kind", "ablate")
    other_pos = int(other.split("_")[2])
    page.select_option(f"{other_row} .pin-where", str(other_pos))
    page.fill("#pin-seed", "3")
    page.check("#pin-freeze")
    with page.expect_response(lambda r: r.url.endswith("/steer")) as info:
        page.click("#pin-steer-run")
    page.wait_for_selector("#pin-steer-status.ok, #pin-steer-status.error")
    response = info.value
    assert response.status == 200, page.inner_text("#pin-steer-status")
    sent = response.request.post_data_json
    fl, fi, fp = (int(v) for v in france.split("_"))
    ol, oi, op = (int(v) for v in other.split("_"))
    assert sent["features"] == [
        {
            "layer": fl,
            "index": fi,
            "token_active_position": fp,
            "delta": 20,
            "steer_generated_tokens": True,
        },
        {
            "layer": ol,
            "index": oi,
            "token_active_position": op,
            "ablate": True,
            "steer_position": op,
        },
    ]
    assert (sent["seed"], sent["temperature"], sent["freq_penalty"], sent["freeze_attention"]) == (
        3,
        0,
        0,
        True,
    )
    reply = orjson.loads(response.body())
    assert reply["STEERED_GENERATION"] != reply["DEFAULT_GENERATION"]
    assert page.get_attribute("#pin-steer-steered .generation", "data-continuation") == reply[
        "STEERED_GENERATION"
    ].removeprefix(PARIS)
    assert "2 features steered" in page.inner_text("#pin-steer-status")
    page.click("#sg-clear")
    assert not page.is_visible("#pin-steer") and not page.is_visible("#subgraph")


def test_a_reload_keeps_the_graph_and_its_state_from_the_link(tab, tmp_path):
    page = tab.page
    doc = synthetic_graph_document(150, 900, n_layers=4, n_pos=8, seed=8)
    a, b, c = linked_features(doc)
    path = tmp_path / "reload.json"
    path.write_bytes(orjson.dumps(doc))
    open_file(page, path)
    for node_id in (a, b, c):
        page.click(f"#node-layer .node[data-id='{node_id}']")
        page.click("#pin-toggle")
    page.check(f"#sg-list input[value='{a}']")
    page.check(f"#sg-list input[value='{b}']")
    page.fill("#sg-name", "pair")
    page.click("#sg-group")
    page.click(f"#node-layer .node[data-id='{c}']")
    page.fill("#sel-label", "kept label")
    page.press("#sel-label", "Enter")
    # The link holds the state in the web app's query-parameter form.
    fragment = page.evaluate("() => location.hash.slice(1)")
    params = dict(parse_qsl(fragment))
    assert params["slug"] == doc["metadata"]["slug"]
    assert params["pinnedIds"] == f"{a},{b},{c}"
    assert json.loads(params["supernodes"]) == [["pair", a, b]]
    assert params["clickedId"] == c
    assert json.loads(params["clerps"])[0][1] == "kept label"
    page.reload()
    page.wait_for_selector("#status.ok:has-text('as the link left it')")
    assert page.locator("#node-layer .node").count() == len(doc["nodes"])
    assert subgraph(page)[0] == {"pair", c}
    assert page.get_attribute("#node-layer .node.selected", "data-id") == c
    assert page.input_value("#sel-label") == "kept label"
    tab.assert_clean()
