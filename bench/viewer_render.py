"""Viewer render time in headless Chromium: a 5,000-node, 200,000-link graph via Open JSON.

The page is served by a Flask app holding only the viewer blueprint (no model: rendering does
not depend on one). Two numbers per action:

- `*_ms`: from the action (the file input's `change` event, a slider move, a click) until two
  animation frames later, i.e. reading the file, JSON parsing, layout, DOM building, style and
  layout are done and a frame was committed;
- `*_raster_ms`: how much longer the next screenshot takes than a screenshot of the unchanged
  page. Chromium rasterizes off the main thread, after the frame; a screenshot waits for it, so
  this is the extra time before the pixels exist (software raster: the browser runs with
  --disable-gpu, as in the tests).

The baseline is a small graph (the size of a demo graph) opened the same way in the same
browser; the large graph's time is also given as a ratio to it.

Run: `.venv/bin/python bench/viewer_render.py [--repeats 3]` (needs `make browser`, a few
seconds per repeat). The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testkit.browser import launch_chromium, synthetic_graph_document

ARM = """() => {
  document.getElementById('file-input').addEventListener('change', () => {
    window.__t0 = performance.now();
  }, { capture: true });
}"""
AFTER_FRAMES = """() => new Promise((resolve) => requestAnimationFrame(
  () => requestAnimationFrame(() => resolve(performance.now() - window.__t0))))"""
RENDERED = "(n) => Number(document.getElementById('graph').dataset.rendered || 0) >= n"
SLIDER_TO_ALL = (
    "const s = document.getElementById('edge-slider'); s.value = '0';"
    "s.dispatchEvent(new Event('input'));"
)
SLIDER_TO_DEFAULT = (
    "const s = document.getElementById('edge-slider'); s.value = '985';"
    "s.dispatchEvent(new Event('input'));"
)
CLICK_FEATURE = (
    "document.querySelector('#node-layer .node.feature')"
    ".dispatchEvent(new MouseEvent('click', {bubbles: true}));"
)
CLICK_BACKGROUND = (
    "document.getElementById('graph').dispatchEvent(new MouseEvent('click', {bubbles: true}));"
)


@contextmanager
def viewer_server() -> Iterator[str]:
    """The viewer blueprint alone, on a free local port, in a thread."""
    from flask import Flask
    from werkzeug.serving import make_server

    from neuronpedia_graph.viewer import viewer_blueprint

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = Flask("viewer-bench")
    app.register_blueprint(viewer_blueprint)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


class Timer:
    """Frame and raster times of page actions, see the module docstring."""

    def __init__(self, page: Any) -> None:
        self.page = page

    def _shot_ms(self) -> float:
        started = time.perf_counter()
        self.page.screenshot()
        return (time.perf_counter() - started) * 1000

    def raster_ms(self) -> float:
        """Extra screenshot time now, against two more screenshots of the same page."""
        first = self._shot_ms()
        steady = min(self._shot_ms(), self._shot_ms())
        return max(0.0, first - steady)

    def action(self, script: str) -> float:
        return float(
            self.page.evaluate(
                """(script) => new Promise((resolve) => {
                     const t0 = performance.now();
                     (new Function(script))();
                     requestAnimationFrame(() => requestAnimationFrame(
                       () => resolve(performance.now() - t0)));
                   })""",
                script,
            )
        )

    def open_file(self, path: Path, count: int) -> float:
        self.page.set_input_files("#file-input", str(path))
        self.page.wait_for_function(RENDERED, arg=count, timeout=120_000)
        return float(self.page.evaluate(AFTER_FRAMES))


def median_of(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--links", type=int, default=200_000)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    runs: dict[str, list[float]] = {}

    def record(name: str, measure: Callable[[], float]) -> None:
        runs.setdefault(name, []).append(measure())

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small.json"
        large = Path(tmp) / "large.json"
        small.write_bytes(orjson.dumps(synthetic_graph_document(100, 400, n_layers=2, n_pos=8)))
        large.write_bytes(orjson.dumps(synthetic_graph_document(args.nodes, args.links)))
        size_mb = large.stat().st_size / 1e6
        with viewer_server() as base, sync_playwright() as pw:
            browser = launch_chromium(pw)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(base + "/")
            page.evaluate(ARM)
            timer = Timer(page)
            rendered = 0
            for _ in range(args.repeats):
                rendered += 1
                record("small", lambda n=rendered: timer.open_file(small, n))
                record("small_raster", timer.raster_ms)
                rendered += 1
                record("render", lambda n=rendered: timer.open_file(large, n))
                record("render_raster", timer.raster_ms)
                info = page.evaluate("() => window.npgViewer.lastRender")
                default_drawn = int(page.get_attribute("#edge-count", "data-drawn"))
                record("select", lambda: timer.action(CLICK_FEATURE))
                record("select_raster", timer.raster_ms)
                timer.action(CLICK_BACKGROUND)
                record("slider_all", lambda: timer.action(SLIDER_TO_ALL))
                record("slider_all_raster", timer.raster_ms)
                all_drawn = int(page.get_attribute("#edge-count", "data-drawn"))
                timer.action(SLIDER_TO_DEFAULT)
            browser.close()
    m = {name: median_of(values) for name, values in runs.items()}
    print(f"medians of {args.repeats}; large graph file {size_mb:.1f} MB")
    print(
        f"small graph (100 nodes, 400 links): {m['small']:.0f} ms "
        f"+ raster {m['small_raster']:.0f} ms"
    )
    print(
        f"large graph ({info['nodes']} nodes, {info['links']} links, {default_drawn} edges drawn "
        f"by default): {m['render']:.0f} ms + raster {m['render_raster']:.0f} ms "
        f"(last run: parse {info['parseMs']:.0f} ms, layout+DOM {info['drawMs']:.0f} ms)"
    )
    print(f"select a feature: {m['select']:.0f} ms + raster {m['select_raster']:.0f} ms")
    print(
        f"slider to 'show all' ({all_drawn} edges drawn, the cap): {m['slider_all']:.0f} ms "
        f"+ raster {m['slider_all_raster']:.0f} ms"
    )
    print(
        f"render_ms={m['render']:.0f} render_raster_ms={m['render_raster']:.0f} "
        f"baseline_ms={m['small']:.0f} ratio={m['render'] / m['small']:.1f} "
        f"select_ms={m['select']:.0f} select_raster_ms={m['select_raster']:.0f} "
        f"slider_all_ms={m['slider_all']:.0f} slider_all_raster_ms={m['slider_all_raster']:.0f} "
        f"nodes={info['nodes']} links={info['links']} default_drawn={default_drawn} "
        f"all_drawn={all_drawn}"
    )


if __name__ == "__main__":
    main()
