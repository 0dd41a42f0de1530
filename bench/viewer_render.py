"""Viewer interaction times in headless Chromium: a 5,000-node, 200,000-link graph via Open JSON.

The page is served by a Flask app holding only the viewer blueprint (no model: drawing does not
depend on one). Every time comes from the Performance API: the page records a user-timing
measure for each action ("npg:render", "npg:hover", "npg:select", "npg:zoom", "npg:edge-slider",
"npg:node-slider": from the event to the end of the animation frame that drew its result), and
the bench reads it with `performance.getEntriesByName`. Beside it, `frame` is the bench's own
`performance.now()` from dispatching the event until two animation frames later (style, layout
and a committed frame included). For the first drawing, `raster` is how much longer the next
screenshot takes than a screenshot of the unchanged page: Chromium rasterizes after the frame,
off the main thread (software raster here, --disable-gpu as in the tests).

The baseline is a small graph (the size of a demo graph) opened the same way in the same
browser; the large graph's drawing is also given as a ratio to it.

Run: `.venv/bin/python -m bench.viewer_render [--repeats 3] [--shots DIR]` (needs
`make browser`; about 20 s a repeat). `--shots` saves the large graph fitted, zoomed in and
with a node selected as PNGs in DIR. The last line is machine-readable.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from testkit.browser import launch_chromium, synthetic_graph_document

# Dispatch an event (or run a step) in the page, then report the page's newest measure of that
# name and the bench's own time to two animation frames later.
ACTION = """async ([name, script]) => {
  performance.clearMeasures(name);
  const t0 = performance.now();
  (new Function(script))();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const frame = performance.now() - t0;
  const entries = performance.getEntriesByName(name, 'measure');
  return { measure: entries.length ? entries[entries.length - 1].duration : null, frame };
}"""
ARM_OPEN = """() => {
  performance.clearMeasures('npg:render');
  document.getElementById('file-input').addEventListener('change', () => {
    window.__openedAt = performance.now();
  }, { capture: true, once: true });
}"""
AFTER_OPEN = """async () => {
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  const entries = performance.getEntriesByName('npg:render', 'measure');
  const parse = performance.getEntriesByName('npg:parse', 'measure');
  return {
    measure: entries[entries.length - 1].duration,
    parse: parse[parse.length - 1].duration,
    frame: performance.now() - window.__openedAt,
  };
}"""
# A zoom draws only the strongest edges until the view has been still a moment; wait for that.
SETTLED = "() => document.getElementById('graph-view').dataset.moving !== 'true'"
AFTER_FRAMES = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))"
RENDERED = "(n) => Number(document.getElementById('graph').dataset.rendered || 0) >= n"
FIRST_FEATURE = "document.querySelector('#node-layer .node.feature')"
HOVER = (
    f"{FIRST_FEATURE}.dispatchEvent(new MouseEvent('mousemove', "
    "{bubbles: true, clientX: 400, clientY: 400}));"
)
CLICK = f"{FIRST_FEATURE}.dispatchEvent(new MouseEvent('click', {{bubbles: true}}));"
CLICK_BACKGROUND = (
    "document.getElementById('graph').dispatchEvent(new MouseEvent('click', {bubbles: true}));"
)


def wheel(delta: int) -> str:
    return (
        "const v = document.getElementById('graph-view'); const r = v.getBoundingClientRect();"
        "v.dispatchEvent(new WheelEvent('wheel', {bubbles: true, cancelable: true, "
        f"deltaY: {delta}, clientX: r.x + r.width / 2, clientY: r.y + r.height / 2}}));"
    )


def slider(element: str, value: int) -> str:
    return (
        f"const s = document.getElementById('{element}'); s.value = '{value}';"
        "s.dispatchEvent(new Event('input'));"
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


class Bench:
    """Runs page actions and keeps every run's times, by action name."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.runs: dict[str, list[float]] = {}
        self.rendered = 0

    def keep(self, name: str, value: float | None) -> None:
        if value is not None:
            self.runs.setdefault(name, []).append(value)

    def _shot_ms(self) -> float:
        started = time.perf_counter()
        self.page.screenshot()
        return (time.perf_counter() - started) * 1000

    def raster_ms(self) -> float:
        """Extra screenshot time now, against two more screenshots of the same page."""
        first = self._shot_ms()
        steady = min(self._shot_ms(), self._shot_ms())
        return max(0.0, first - steady)

    def open_file(self, name: str, path: Path) -> None:
        self.page.evaluate(ARM_OPEN)
        self.rendered += 1
        self.page.set_input_files("#file-input", str(path))
        self.page.wait_for_function(RENDERED, arg=self.rendered, timeout=120_000)
        times = self.page.evaluate(AFTER_OPEN)
        self.keep(name, times["measure"])
        self.keep(f"{name}_frame", times["frame"])
        self.keep(f"{name}_parse", times["parse"])
        self.keep(f"{name}_raster", self.raster_ms())

    def action(self, name: str, measure: str, script: str) -> None:
        times = self.page.evaluate(ACTION, [measure, script])
        self.keep(name, times["measure"])
        self.keep(f"{name}_frame", times["frame"])
        self.page.wait_for_function(SETTLED)
        self.page.evaluate(AFTER_FRAMES)


def median(values: list[float] | None) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--links", type=int, default=200_000)
    parser.add_argument("--shots", type=Path, help="save screenshots of the large graph here")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

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
            bench = Bench(page)
            for _ in range(args.repeats):
                bench.open_file("small", small)
                bench.open_file("render", large)
                default_drawn = int(page.get_attribute("#edge-count", "data-drawn"))
                bench.action("hover", "npg:hover", HOVER)
                bench.action("select", "npg:select", CLICK)
                bench.action("deselect", "npg:none", CLICK_BACKGROUND)
                bench.action("zoom", "npg:zoom", wheel(-200))
                bench.action("zoom_out", "npg:zoom", wheel(200))
                bench.action("edge_slider", "npg:edge-slider", slider("edge-slider", 0))
                all_drawn = int(page.get_attribute("#edge-count", "data-drawn"))
                bench.action("zoom_all_edges", "npg:zoom", wheel(-200))
                bench.action("edge_back", "npg:edge-slider", slider("edge-slider", 985))
                bench.action("node_slider", "npg:node-slider", slider("node-slider", 500))
                bench.action("node_back", "npg:node-slider", slider("node-slider", 0))
                page.click("#zoom-fit")
            if args.shots:
                args.shots.mkdir(parents=True, exist_ok=True)
                page.mouse.move(0, 0)
                page.evaluate("() => { document.getElementById('tooltip').hidden = true; }")
                page.screenshot(path=str(args.shots / "viewer-5000-fitted.png"))
                for _ in range(4):
                    bench.action("shot_zoom", "npg:zoom", wheel(-300))
                page.screenshot(path=str(args.shots / "viewer-5000-zoomed.png"))
                page.click("#zoom-fit")
                bench.action("shot_select", "npg:select", CLICK)
                page.screenshot(path=str(args.shots / "viewer-5000-selected.png"))
            browser.close()
    m = {name: median(values) for name, values in bench.runs.items()}
    print(f"medians of {args.repeats}; large graph file {size_mb:.1f} MB; times in ms")
    print("action: page measure (event to its frame drawn) / frame (to two frames later)")
    print(
        f"small graph (100 nodes, 400 links): {m['small']:.0f} / {m['small_frame']:.0f} "
        f"+ raster {m['small_raster']:.0f}"
    )
    print(
        f"draw {args.nodes} nodes, {args.links} links ({default_drawn} edges drawn by default): "
        f"{m['render']:.0f} / {m['render_frame']:.0f} + raster {m['render_raster']:.0f} "
        f"(parse {m['render_parse']:.0f})"
    )
    for name, label in (
        ("hover", "hover a node"),
        ("select", "click a node"),
        ("zoom", "wheel zoom"),
        ("edge_slider", f"edge slider to show all ({all_drawn} drawn, the cap)"),
        ("zoom_all_edges", f"wheel zoom with {all_drawn} edges"),
        ("node_slider", "node slider to half"),
    ):
        print(f"{label}: {m[name]:.0f} / {m[name + '_frame']:.0f}")
    print(
        f"render_ms={m['render']:.0f} render_frame_ms={m['render_frame']:.0f} "
        f"render_raster_ms={m['render_raster']:.0f} baseline_ms={m['small']:.0f} "
        f"ratio={m['render'] / m['small']:.1f} hover_ms={m['hover']:.1f} "
        f"select_ms={m['select']:.1f} zoom_ms={m['zoom']:.1f} "
        f"zoom_all_edges_ms={m['zoom_all_edges']:.1f} edge_slider_ms={m['edge_slider']:.1f} "
        f"node_slider_ms={m['node_slider']:.1f} select_frame_ms={m['select_frame']:.0f} "
        f"zoom_frame_ms={m['zoom_frame']:.0f} nodes={args.nodes} links={args.links} "
        f"default_drawn={default_drawn} all_drawn={all_drawn}"
    )


if __name__ == "__main__":
    main()
