"""Drive the dashboard in Debian's headless Chromium through Playwright: every page loads with its
graph drawn and no console error, a zoom on the timeline brings a new figure, a click shows an
op's details, a rank selected on one page carries to the others. Screenshots go to
``tmp/browser-artifacts/`` (gitignored) for a look.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from conftest import CHROMIUM, serve_dashboard, settle as _settle  # noqa: E402  (tests/browser/conftest.py)

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
    with serve_dashboard(SAMPLE) as url:
        yield url


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


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
        return {traces: g.data.length, types: g.data.map(t => t.type), names: g.data.map(t => t.name),
                range: g._fullLayout.xaxis.range, title: g.layout.title.text,
                labels: g.layout.yaxis.ticktext}; }""")


def _relayout_and_wait(page: Any, script: str) -> dict[str, Any]:
    """Run ``script`` (a gesture moving the time axis) and wait for the server's new figure
    drawn; returns the POSTs it caused and the time from the gesture to the redrawn plot (ms)."""
    posts: list[list[str]] = []

    def _count(r: Any) -> None:       # the store watch's poll (a dcc.Interval) is not the gesture's
        ids = (r.post_data_json or {}).get("changedPropIds") or [] if r.method == "POST" else []
        if "_dash-update" in r.url and ids and not all(i.endswith(".n_intervals") for i in ids):
            posts.append(ids)
    page.on("request", _count)
    ms = page.evaluate("""(script) => new Promise(resolve => {
        const g = document.querySelector('#timeline .js-plotly-plot'), title = g.layout.title.text;
        const t0 = performance.now();
        const done = () => { if (g.layout.title.text !== title) { g.removeListener('plotly_afterplot', done);
                                                                   resolve(performance.now() - t0); } };
        g.on('plotly_afterplot', done);
        (new Function(script))(); })""", script)
    _settle(page)
    return {"ms": ms, "posts": len(posts), "triggers": posts}


def test_timeline_zoom_is_one_callback_and_a_click_shows_details(server: str, page: Any) -> None:
    page.goto(server + "/timeline")
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    before = _timeline_state(page)
    assert before["types"][0] == "image" and "ops" not in before["names"]      # whole trace: the lane image only
    assert page.locator("#timeline image").count() == 1                         # one <image>, not an SVG path per op
    # Zoom to a 0.2 ms window: few enough ops for a hover each.
    zoom = _relayout_and_wait(page, """Plotly.relayout(document.querySelector('#timeline .js-plotly-plot'),
                                       {'xaxis.range[0]': 10.0, 'xaxis.range[1]': 10.2})""")
    after = _timeline_state(page)
    assert zoom["posts"] == 1                                     # one round trip for the figure and the window
    assert after["title"] != before["title"] and "drawn exactly" in after["title"] and "ops" in after["names"]
    assert abs(after["range"][0] - 10.0) < 1e-6 and abs(after["range"][1] - 10.2) < 1e-6
    assert "10.000" in page.inner_text("#selection-window")   # the window is now the shared selection
    assert "start_ms=10" in page.url                           # and in the URL
    # Click the first hover target (an op's middle): its details appear.
    box = page.evaluate("""() => { const g = document.querySelector('#timeline .js-plotly-plot');
        const t = g._fullData.find(d => d.name === 'ops'); const i = 0;
        const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis, r = g.getBoundingClientRect();
        return {x: r.left + xa._offset + xa.l2p(t.x[i]), y: r.top + ya._offset + ya.l2p(t.y[i])}; }""")
    page.mouse.move(box["x"], box["y"])                        # the op's hover (a vertex of an invisible line)
    page.wait_for_selector("#timeline .hoverlayer .hovertext")
    assert "µs" in (page.text_content("#timeline .hoverlayer") or "")
    page.mouse.click(box["x"], box["y"])
    page.wait_for_selector("#timeline-details-table")
    text = page.inner_text("#timeline-details-table")
    assert "rank" in text and "µs" in text
    _shot(page, "timeline-zoomed")
    # Keyboard: S zooms out (twice the span, around the middle).
    page.mouse.move(5, 5)
    keys = _relayout_and_wait(page, "document.body.dispatchEvent(new KeyboardEvent('keydown', {key: 's', bubbles: true}))")
    wide = _timeline_state(page)
    assert keys["posts"] == 1, keys["triggers"]
    assert wide["range"][1] - wide["range"][0] == pytest.approx(0.4, rel=1e-3)
    assert page.errors == []


def test_collapsed_nodes_open_on_click_and_the_view_is_in_the_url(server: str, page: Any) -> None:
    page.goto(server + "/timeline?nodes=none&chips=none")
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    state = _timeline_state(page)
    assert [label[:8] for label in state["labels"]] == ["▸ node 0", "▸ node 1"]
    box = page.evaluate("""() => { const g = document.querySelector('#timeline .js-plotly-plot');
        const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis, r = g.getBoundingClientRect();
        return {x: r.left + xa._offset + xa._length / 2, y: r.top + ya._offset + ya.l2p(1)}; }""")
    page.mouse.click(box["x"], box["y"])                       # node 1's row
    page.wait_for_function("""() => document.querySelector('#timeline .js-plotly-plot').layout.yaxis.ticktext
                              .some(l => l.startsWith('▸ r4'))""")
    _settle(page)
    assert "nodes=1" in page.url
    page.reload()
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    labels = _timeline_state(page)["labels"]
    assert labels[0].startswith("▸ node 0") and any(label.startswith("▸ r4") for label in labels)
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
    assert labels and all(label.startswith("r5 n1·c1") for label in labels), labels   # rank 5 = node 1, chip 1
    _shot(page, "timeline-rank5")
    assert page.errors == []


def test_header_rank_change_redraws_the_open_timeline_once(server: str, page: Any) -> None:
    page.goto(server + "/timeline")
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "_dash-update" in r.url
            and "n_intervals" not in (r.post_data or "") else None)
    page.evaluate("() => window.dash_clientside.set_props('selection-ranks', {value: [3]})")   # the header's dropdown
    page.wait_for_function("""() => document.querySelector('#timeline .js-plotly-plot').layout.yaxis.ticktext
                              .every(l => l.startsWith('r3 '))""")
    _settle(page)
    assert len(posts) == 1 and "ranks=3" in page.url         # one redraw, and the link carries it
    zoom = _relayout_and_wait(page, """Plotly.relayout(document.querySelector('#timeline .js-plotly-plot'),
                                       {'xaxis.range[0]': 10.0, 'xaxis.range[1]': 10.2})""")
    assert zoom["posts"] == 1                                 # its own zoom is not drawn twice
    assert all(label.startswith("r3 ") for label in _timeline_state(page)["labels"])
    assert page.errors == []
