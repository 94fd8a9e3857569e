"""Drive the dashboard in Debian's headless Chromium through Playwright: every page loads with its
graph drawn and no console error, a zoom on the timeline brings a new figure, a click shows an
op's details, a rank selected on one page carries to the others. Screenshots go to
``tmp/browser-artifacts/`` (gitignored) for a look.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from werkzeug.serving import make_server  # noqa: E402

from sohuprof.dashboards.app import create_app  # noqa: E402

from conftest import CHROMIUM  # noqa: E402  (tests/browser/conftest.py)
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"
ARTIFACTS = REPO / "tmp" / "browser-artifacts"       # /tmp/ is gitignored

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} "
                                "(apt-get install chromium, or set SOHUPROF_CHROMIUM)")

#: page path -> the graph id tests find on it.
PAGES = {"/": None, "/timeline": "timeline", "/roofline": "roofline", "/stalls": "stalls",
         "/comm": "comm-matrix", "/serving": "serving-latency"}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    app = create_app(SAMPLE)
    httpd = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: page.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def _settle(page: Any) -> None:
    """Wait until no Dash callback is pending."""
    page.wait_for_function("() => !document.querySelector('[data-dash-is-loading=\"true\"]')")
    page.wait_for_timeout(300)


@pytest.mark.parametrize("path", list(PAGES))
def test_page_loads_with_its_graph(server: str, page: Any, path: str) -> None:
    page.goto(server + path)
    graph = PAGES[path]
    if graph is None:
        page.wait_for_selector("#overview-kpis .kpi")
        assert "wall time" in page.inner_text("#overview-kpis").lower()
        assert page.locator("#overview-headroom tr").count() > 1
    else:
        page.wait_for_selector(f"#{graph} .main-svg")
        page.wait_for_function(f"() => document.getElementById('{graph}').querySelector('.js-plotly-plot')"
                               f"?.data?.length > 0")
    _settle(page)
    _shot(page, path.strip("/") or "overview")
    assert page.errors == []


def _timeline_state(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => { const g = document.querySelector('#timeline .js-plotly-plot');
        return {traces: g.data.length, types: g.data.map(t => t.type), range: g.layout.xaxis.range,
                title: g.layout.title.text}; }""")


def test_timeline_zoom_brings_a_new_figure_and_a_click_shows_details(server: str, page: Any) -> None:
    page.goto(server + "/timeline")
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    before = _timeline_state(page)
    assert "heatmap" in before["types"]                        # the whole trace: density view
    # Zoom to a 0.2 ms window: few enough ops to draw exactly.
    page.evaluate("""() => Plotly.relayout(document.querySelector('#timeline .js-plotly-plot'),
                                             {'xaxis.range[0]': 10.0, 'xaxis.range[1]': 10.2})""")
    page.wait_for_function("""() => { const g = document.querySelector('#timeline .js-plotly-plot');
        return g.data.length && g.data.every(t => t.type === 'scatter'); }""")
    _settle(page)
    after = _timeline_state(page)
    assert after["title"] != before["title"] and "drawn exactly" in after["title"]
    assert abs(after["range"][0] - 10.0) < 1e-6 and abs(after["range"][1] - 10.2) < 1e-6
    assert "10.000" in page.inner_text("#selection-window")   # the window is now the shared selection
    # Click the middle of the first drawn op: its details appear.
    box = page.evaluate("""() => { const g = document.querySelector('#timeline .js-plotly-plot');
        const t = g._fullData[0], xs = Array.from(t.x), ys = Array.from(t.y);
        const i = xs.findIndex((v, k) => k % 4 === 1 && v >= 10.0 && v <= 10.2);
        const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis, r = g.getBoundingClientRect();
        return {x: r.left + xa._offset + xa.l2p(xs[i]), y: r.top + ya._offset + ya.l2p(ys[i])}; }""")
    page.mouse.click(box["x"], box["y"])
    page.wait_for_selector("#timeline-details-table")
    text = page.inner_text("#timeline-details-table")
    assert "rank" in text and "µs" in text
    _shot(page, "timeline-zoomed")
    assert page.errors == []


def test_rank_selection_carries_across_pages(server: str, page: Any) -> None:
    page.goto(server + "/stalls")
    page.wait_for_selector("#stalls .main-svg")
    _settle(page)
    bar = page.locator("#stalls .trace.bars").nth(2).locator(".point path").nth(5).bounding_box()  # rank 5
    page.mouse.click(bar["x"] + bar["width"] / 2, bar["y"] + bar["height"] / 2)
    page.wait_for_selector("#selection-ranks .Select-value, #selection-ranks [class*='multi-value'], "
                           "#selection-ranks .dash-dropdown-value")
    _settle(page)
    page.click("#nav-timeline")
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    labels = page.evaluate("() => document.querySelector('#timeline .js-plotly-plot').layout.yaxis.ticktext")
    assert labels and all("n1 · chip 1" in label for label in labels), labels   # rank 5 = node 1, chip 1
    _shot(page, "timeline-rank5")
    assert page.errors == []
