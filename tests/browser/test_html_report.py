"""Open ``sohuprof analyze --format html`` pages from file:// in Debian's headless Chromium through
Playwright, with every non-file request refused (the page must work offline): no console error,
the title block and contents present and every contents link landing on a section, every figure
drawn, axes that name their units. A full-page screenshot of each lands in the test's tmp dir.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from click.testing import CliRunner  # noqa: E402

from sohuprof.cli import cli  # noqa: E402

from conftest import CHROMIUM  # noqa: E402  (tests/browser/conftest.py)
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"
KINETO = REPO / "tests" / "data" / "kineto-tiny"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} "
                                "(apt-get install chromium, or set SOHUPROF_CHROMIUM)")


def _ok(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def sohu_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("html") / "sohu.html"
    _ok("analyze", str(SAMPLE), "--format", "html", "-o", str(out))
    return out


@pytest.fixture(scope="module")
def kineto_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("kineto")
    _ok("collect", str(KINETO), "-o", str(tmp / "store"))
    _ok("analyze", str(tmp / "store"), "--format", "html", "-o", str(tmp / "kineto.html"))
    return tmp / "kineto.html"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.requests = []  # type: ignore[attr-defined]
    page.on("console", lambda msg: page.errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: page.errors.append(f"pageerror: {exc}"))

    def refuse(route: Any) -> None:   # offline: anything but the file itself is an error
        page.requests.append(route.request.url)
        route.abort()

    page.route(lambda url: not url.startswith("file://"), refuse)
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()


def _open(page: Any, report: Path) -> None:
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    # Every plotly div drawn: an SVG and its data.
    page.wait_for_function("""() => [...document.querySelectorAll('.plotly-graph-div')]
        .every(d => d.querySelector('.main-svg') && d.data && d.data.length > 0)""")


def _structure(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => ({
        title: document.querySelector('header.title')?.innerText ?? '',
        toc: [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href')),
        missing: [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href'))
                 .filter(h => !document.getElementById(h.slice(1))),
        figures: document.querySelectorAll('div.figure').length,
        drawn: [...document.querySelectorAll('div.figure')]
               .filter(f => f.querySelector('.plotly-graph-div .main-svg')).length,
        first: [...document.querySelectorAll('body > section')].map(s => s.id)[0],
        scripts: [...document.querySelectorAll('script[src]')].length,
    })""")


def test_sohu_report_renders_offline(page: Any, sohu_report: Path, tmp_path: Path) -> None:
    _open(page, sohu_report)
    s = _structure(page)
    page.screenshot(path=str(tmp_path / "sohu-report.png"), full_page=True)
    assert page.errors == [] and page.requests == [] and s["scripts"] == 0
    for label in ("Model", "mixtral-8x7b", "Hardware", "PFLOP/s", "Parallel plan", "tp 4", "Workload",
                  "Faults injected", "straggler:rank=5", "Source", "Store", "sohuprof", "Generated"):
        assert label in s["title"], label
    assert s["first"] == "findings" and s["toc"][0] == "#findings"
    assert s["missing"] == [] and len(s["toc"]) > 10
    assert s["figures"] >= 4 and s["drawn"] == s["figures"]
    assert (tmp_path / "sohu-report.png").stat().st_size > 10_000


def test_sohu_figures_name_their_units(page: Any, sohu_report: Path) -> None:
    _open(page, sohu_report)
    axes = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.plotly-graph-div')].map(d => [d.id, {
        types: d.data.map(t => t.type),
        yticks: [...d.querySelectorAll('.ytick text')].map(t => t.textContent),
        ytitle: d.layout.yaxis?.title?.text ?? '', xtitle: d.layout.xaxis?.title?.text ?? '',
        z: (d._fullData[0].z || []).map(r => Array.from(r)), text: d.data[0].text, colorbar: d.data[0].colorbar?.title?.text ?? '',
        x: d.data[0].x}]))""")
    roof = axes["plot-roofline"]
    major = [t for t in roof["yticks"] if not t.isdigit()]   # a log axis labels minor ticks 2, 5
    assert major and all(t.endswith("FLOP/s") for t in major)
    assert not any(t.removesuffix("FLOP/s").endswith("B") for t in major)   # never plotly's "B" for billion
    stalls = axes["plot-stalls-per-rank-by-node"]
    assert stalls["ytitle"] == "time (ms)"
    assert stalls["x"][0] == sorted(stalls["x"][0]) and set(stalls["x"][0]) == {"node 0", "node 1"}   # by node
    link = axes["plot-node-to-node-link-bandwidth"]
    assert link["types"] == ["heatmap"] and "expected" in link["colorbar"]
    flat = [v for row in link["z"] for v in (row if isinstance(row, list) else [row])]
    ratios = [v for v in flat if isinstance(v, (int, float)) and v == v]   # NaN: no link
    assert ratios and all(0 < v < 10 for v in ratios)                           # ratios, not raw bytes
    assert any("B/s of" in t for row in link["text"] for t in row)


def test_sohu_tables_read_in_units(page: Any, sohu_report: Path) -> None:
    _open(page, sohu_report)
    heads = page.evaluate("() => [...document.querySelectorAll('th')].map(t => t.textContent)")
    cells = page.evaluate("() => [...document.querySelectorAll('td')].map(t => t.textContent)")
    assert "time (ms)" in heads and any(h.endswith("(GB/s)") for h in heads)
    runs = [re.match(r"-?[\d,]+", c) for c in cells]
    assert not any(m and len(m.group().replace(",", "")) > 9 for m in runs)   # no 9,500,000,000,...


def test_kineto_report_renders_offline(page: Any, kineto_report: Path, tmp_path: Path) -> None:
    _open(page, kineto_report)
    s = _structure(page)
    page.screenshot(path=str(tmp_path / "kineto-report.png"), full_page=True)
    assert page.errors == [] and page.requests == []
    for label in ("Source", "kineto", "Source files", "rank 0:", "Ranks", "Generated"):
        assert label in s["title"], label
    assert "Faults injected" not in s["title"]
    assert s["missing"] == [] and s["drawn"] == s["figures"]
    text = page.inner_text("body")
    assert "comm · links" not in text or "no cross-node traffic" in text
