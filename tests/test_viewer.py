"""The built-in viewer in a real browser (Debian's headless Chromium) against the real server.

Everything runs against the gunicorn `live_server` on the demo model: the page generates the
Paris graph, draws it, highlights the France feature and steers Rome into France, exactly as a
researcher would click through it. The browser must be installed (`make browser`, which
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

import orjson
import pytest
import requests

from testkit.browser import launch_chromium, synthetic_graph_document
from tests.conftest import REPO, SECRET
from tests.helpers import strongest_feature_into_target

PARIS = "The city of Paris is in"
ROME = "The city of Rome is in"
SCREENSHOT_COPY = REPO / "build" / "viewer-screenshot.png"
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


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)  # raises (fails the tests) when chromium is missing
        yield chromium
        chromium.close()


def open_tab(browser: Any, base: str) -> Tab:
    context = browser.new_context(viewport={"width": 1500, "height": 950}, accept_downloads=True)
    page = context.new_page()
    tab = Tab(page, base)
    page.on("console", lambda m: m.type == "error" and tab.console_errors.append(m.text))
    page.on("pageerror", lambda e: tab.console_errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: tab.requests.append(r))
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


def set_slider(page: Any, value: int) -> None:
    page.fill("#edge-slider", str(value))
    page.wait_for_function(
        "(v) => document.getElementById('edge-slider').value === String(v)", arg=value
    )
    # The redraw runs in the next animation frame.
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


def drawn_edges(page: Any) -> tuple[int, int]:
    """(sum of the edge paths' data-count, number of path segments actually in their `d`)."""
    return page.eval_on_selector_all(
        "#edge-layer path",
        """(paths) => [
             paths.reduce((n, p) => n + Number(p.dataset.count), 0),
             paths.reduce((n, p) => n + (p.getAttribute('d').match(/M/g) || []).length, 0),
           ]""",
    )


def france_feature(doc: dict[str, Any]) -> str:
    """The node id of the feature with the strongest direct edge into " France" (the target)."""
    return "_".join(map(str, strongest_feature_into_target(doc)))


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
        "#grid-layer .token-label", "els => els.map(e => e.textContent.trim())"
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
    assert "dimmed" in page.get_attribute("#graph-back", "class")
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


def test_steering_the_france_feature_on_rome_says_france(paris, tmp_path):
    page = paris.tab.page
    node_id = france_feature(paris.doc)
    layer, index, pos = (int(v) for v in node_id.split("_"))
    page.click(f"#node-layer .node[data-id='{node_id}']")
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

    # A position outside the prompt is a readable 400, and the page keeps working.
    page.fill("#steer-position", "99")
    assert click_and_wait(page, "#steer-run", "/steer").status == 400
    message = page.inner_text("#steer-status")
    assert "(400)" in message and "steer_position 99 is outside" in message
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
    yield
