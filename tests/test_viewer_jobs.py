"""The viewer on the graph jobs API, in Debian's headless Chromium against the real demo server.

The page submits through POST /graphs, follows the job's event stream (read with fetch() and the
secret header) in a progress bar, cancels with DELETE /graphs/{id}, and lists the server's recent
graphs. Every wait is on something the server or the page does: the test hold stops the job at a
named point (`graph-feature-batch`, `job-start`) until the test lets it go; nothing sleeps.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import requests

from tests.conftest import SECRET
from tests.jobs_client import AUTH, final_state, job, submit
from tests.test_viewer import (
    PARIS,
    ROME,
    Tab,
    enter_secret,
    next_frame,
    open_tab,
    without_jobs,
)

PHASES = [
    "activations",
    "forward_pass",
    "logit_batches",
    "feature_batches",
    "prune",
    "build_json",
    "compress",
    "upload",
]


@pytest.fixture
def jobs_tab(browser: Any, live_server: Any) -> Any:
    tab = open_tab(browser, live_server.base, jobs=True)
    tab.page.click("#secret-change")
    enter_secret(tab.page)
    yield tab
    tab.page.context.close()


def is_post_graphs(response: Any) -> bool:
    return response.request.method == "POST" and response.url.endswith("/graphs")


def click_generate(page: Any) -> str:
    """Click Generate; return the id of the job the page queued."""
    with page.expect_response(is_post_graphs) as info:
        page.click("#generate")
    assert info.value.status == 202, info.value.text()
    return orjson.loads(info.value.body())["id"]


def bar(page: Any, attribute: str) -> str:
    return page.get_attribute("#job-progress", f"data-{attribute}") or ""


def wait_bar(page: Any, attribute: str, value: str) -> None:
    page.wait_for_function(
        "([a, v]) => document.getElementById('job-progress').dataset[a] === v",
        arg=[attribute, value],
    )


def drawn_nodes(page: Any) -> int:
    next_frame(page)
    return page.locator("#node-layer .node").count()


def stored_document(live_server: Any, job_id: str) -> dict[str, Any]:
    res = requests.get(live_server.url(f"/graphs/{job_id}/document"), headers=AUTH, timeout=30)
    assert res.status_code == 200, res.text
    return res.json()


def no_secret_in_urls(tab: Tab) -> None:
    assert [r.url for r in tab.requests if SECRET in r.url] == []


def test_the_progress_bar_follows_the_job_through_its_phases(jobs_tab, live_server):
    page = jobs_tab.page
    page.fill("#prompt", PARIS)
    with live_server.hold.hold("graph-feature-batch") as held:
        job_id = click_generate(page)
        held.wait()
        # Held in its first feature batch: the bar says so, between 0 and 1.
        wait_bar(page, "phase", "feature_batches")
        value = page.eval_on_selector("#job-progress", "e => e.value")
        assert 0 < value < 1
        assert page.inner_text("#job-label").startswith("Running: feature batches · ")
        assert page.is_visible("#job-cancel") and page.is_disabled("#generate")
        assert bar(page, "id") == job_id
    page.wait_for_selector("#status.ok")
    assert bar(page, "status") == "done"
    assert page.eval_on_selector("#job-progress", "e => e.value") == 1
    assert page.inner_text("#job-label") == "Done · 100 %"
    assert not page.is_visible("#job-cancel") and page.is_enabled("#generate")
    # The phases it showed came in the server's order (a reader gets the latest state, so
    # it may skip one), through the feature batches.
    seen = bar(page, "phases").split()
    assert "feature_batches" in seen and seen == sorted(seen, key=PHASES.index), seen
    # The graph drawn is the job's document, with the job's timings.
    doc = stored_document(live_server, job_id)
    assert drawn_nodes(page) == len(doc["nodes"])
    state = job(live_server, job_id)
    phases = page.eval_on_selector_all("#timings li", "els => els.map(e => e.dataset.phase)")
    assert phases == list(state["timings"]) and phases
    assert f"job {job_id}" in page.inner_text("#status")
    # The stream was read with the secret in its header, never in a URL.
    streams = [r for r in jobs_tab.requests if r.url.endswith(f"/graphs/{job_id}/events")]
    assert streams and streams[0].headers["x-secret-key"] == SECRET
    no_secret_in_urls(jobs_tab)
    # A stored graph can be re-pruned on the server; the page says which slider does what.
    assert page.is_enabled("#reprune-node") and page.is_enabled("#reprune-edge")
    assert page.input_value("#reprune-node") == str(
        doc["metadata"]["pruning_settings"]["node_threshold"]
    )
    assert "Re-prune on the server" in page.inner_text("#reprune")
    assert "(in the page)" in page.inner_text("label[for='node-slider']")
    assert "(in the page)" in page.inner_text("label[for='edge-slider']")
    jobs_tab.assert_clean()


def test_a_queued_job_shows_its_position_and_cancel_takes_it_out(jobs_tab, live_server):
    page = jobs_tab.page
    control = live_server.hold
    with control.hold("graph-feature-batch") as held:
        running = submit(live_server).json()["id"]
        held.wait()
        job_id = click_generate(page)
        wait_bar(page, "status", "queued")
        assert page.get_attribute("#job-label", "data-queue") == "1"
        assert page.inner_text("#job-label") == "Queued: next to run"
        with page.expect_response(lambda r: r.request.method == "DELETE") as info:
            page.click("#job-cancel")
        assert info.value.status == 200
        page.wait_for_selector("#status.cancelled")
        assert bar(page, "status") == "cancelled"
        assert job(live_server, job_id)["status"] == "cancelled"
        assert "cancelled" in page.inner_text("#status")
    # The job that was running was not touched.
    assert final_state(live_server, running)["status"] == "done"
    jobs_tab.assert_clean()


def test_cancel_ends_a_running_job_and_frees_the_server(jobs_tab, live_server):
    page = jobs_tab.page
    control = live_server.hold
    page.fill("#prompt", PARIS)
    with control.hold("graph-feature-batch") as held:
        job_id = click_generate(page)
        held.wait()
        wait_bar(page, "phase", "feature_batches")
        batches = control.seen.count("graph-feature-batch")
        with page.expect_response(lambda r: r.request.method == "DELETE") as info:
            page.click("#job-cancel")
        assert info.value.status == 202
        page.wait_for_function(
            "() => document.getElementById('job-label').textContent.includes('cancelling')"
        )
    page.wait_for_selector("#status.cancelled")
    assert bar(page, "status") == "cancelled"
    # No batch ran after the cancel, and the model is free.
    assert control.seen.count("graph-feature-batch") == batches
    assert job(live_server, job_id)["status"] == "cancelled"
    assert requests.get(live_server.url("/check-busy"), timeout=10).json()["busy"] is False
    # The next graph from the page runs to the end.
    again = click_generate(page)
    page.wait_for_selector("#status.ok")
    assert drawn_nodes(page) == len(stored_document(live_server, again)["nodes"])
    jobs_tab.assert_clean()


def test_the_recent_graphs_list_opens_a_stored_graph(jobs_tab, live_server):
    page = jobs_tab.page
    slug = "viewer-recent-rome"
    job_id = submit(live_server, prompt=ROME, slug_identifier=slug).json()["id"]
    assert final_state(live_server, job_id)["status"] == "done"
    page.click("#recent-refresh")
    item = f"#recent-list li[data-id='{job_id}']"
    page.wait_for_selector(item)
    assert page.inner_text(f"{item} button") == slug
    doc = stored_document(live_server, job_id)
    assert page.inner_text(f"{item} .job-status") == f"{len(doc['nodes'])} nodes"
    with page.expect_response(lambda r: r.url.endswith(f"/graphs/{job_id}/document")) as info:
        page.click(f"{item} button")
    assert info.value.status == 200
    page.wait_for_selector("#status.ok")
    assert page.inner_text("#status").startswith(f"Opened {slug} from the server")
    assert drawn_nodes(page) == len(doc["nodes"])
    assert ROME in page.inner_text("#graph-title")
    assert page.is_enabled("#reprune-node")
    no_secret_in_urls(jobs_tab)
    jobs_tab.assert_clean()


def test_a_failed_job_and_a_refused_request_are_messages_then_the_next_graph_works(
    jobs_tab, live_server
):
    page = jobs_tab.page
    live_server.hold.fail("job-start")
    job_id = click_generate(page)
    page.wait_for_selector("#status.error")
    message = page.inner_text("#status")
    assert message.startswith("Server error (500)") and job_id in message
    assert bar(page, "status") == "failed"
    # A bad setting is refused before anything is queued.
    page.fill("#node_threshold", "5")
    with page.expect_response(is_post_graphs) as info:
        page.click("#generate")
    assert info.value.status == 422
    page.wait_for_function("() => document.getElementById('status').textContent.includes('(422)')")
    page.fill("#node_threshold", "0.8")
    click_generate(page)
    page.wait_for_selector("#status.ok")
    assert [e for e in jobs_tab.console_errors if "500" not in e and "422" not in e] == []


def test_a_server_without_jobs_gets_the_synchronous_graph(browser, live_server):
    """POST /graphs answering 404 (a server before jobs) sends the page to /generate-graph."""
    tab = open_tab(browser, live_server.base, jobs=True)
    page = tab.page
    without_jobs(page)
    page.fill("#prompt", PARIS)
    with page.expect_response(lambda r: r.url.endswith("/generate-graph")) as info:
        page.click("#generate")
        enter_secret(page)
    assert info.value.status == 200
    page.wait_for_selector("#status.ok")
    doc = orjson.loads(info.value.body())
    assert drawn_nodes(page) == len(doc["nodes"])
    assert page.is_hidden("#job") and page.is_disabled("#reprune-node")
    # From then on it goes straight to /generate-graph.
    probes = sum(1 for r in tab.requests if r.method == "POST" and r.url.endswith("/graphs"))
    with page.expect_response(lambda r: r.url.endswith("/generate-graph")) as again:
        page.click("#generate")
    assert again.value.status == 200
    # The page shows progress before it sends: once the answer is in, ok is this graph's.
    page.wait_for_selector("#status.ok")
    posts = [r for r in tab.requests if r.method == "POST" and r.url.endswith("/graphs")]
    assert len(posts) == probes == 1
    tab.page.context.close()
