"""The dashboard leads to the loss and shares its selection, in Debian's headless Chromium:

- the Overview's first finding names a straggler injected at a random rank of a small emulated run;
- a time window (zoomed on the timeline) turns the Stalls bars into the windowed analysis's numbers;
- a URL with a selection reproduces it (rank dropdown, header window, windowed numbers), and a reload
  keeps it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from click.testing import CliRunner  # noqa: E402
from sohuprof.analyzers.engine import Selection as EngineSelection  # noqa: E402
from sohuprof.analyzers.report import run_reports  # noqa: E402
from sohuprof.cli import cli  # noqa: E402
from sohuprof.dashboards.data import parse_ranks  # noqa: E402
from sohuprof.dashboards.pages.stalls import STALL_CLASSES  # noqa: E402
from sohuprof.store import open_store  # noqa: E402

from conftest import CHROMIUM, serve_dashboard  # noqa: E402  (tests/browser/conftest.py)
from conftest import settle as _settle  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"Chromium not found at {CHROMIUM} "
                                "(apt-get install chromium, or set SOHUPROF_CHROMIUM)")

#: A small run (2 nodes x 2 chips, TP 2, a few short requests): emulated and collected in ~2 s.
SMALL = ["--model", "llama3-8b", "--nodes", "2", "--chips-per-node", "2", "--tp", "2", "--requests", "8",
         "--prompt-len", "128", "--output-len", "8"]


@pytest.fixture(scope="module")
def straggler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """(rank, server URL) of a small emulated run with a straggler at a random rank."""
    rng = np.random.default_rng(20260415)
    rank = int(rng.integers(4))
    slowdown = float(rng.uniform(2.5, 3.0))
    tmp = tmp_path_factory.mktemp("straggler")
    runner = CliRunner()
    result = runner.invoke(cli, ["-q", "emulate", *SMALL, "--seed", str(int(rng.integers(1000))), "--inject",
                                 f"straggler:rank={rank},slowdown={slowdown:.2f}", "-o", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["-q", "collect", str(tmp / "run"), "-o", str(tmp / "store")])
    assert result.exit_code == 0, result.output
    with serve_dashboard(tmp / "store") as url:
        yield rank, url


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_dashboard(SAMPLE) as url:
        yield url


def _stall_bars(page: Any) -> dict[str, dict[int, float]]:
    """The Stalls figure as drawn: {stall class: {rank: ms}}."""
    page.wait_for_selector("#stalls .main-svg")
    # _fullData: plotly's decoded arrays (``data`` keeps the packed base64 ones).
    traces = page.evaluate("""() => document.querySelector('#stalls .js-plotly-plot')._fullData.map(
        t => ({name: t.name, x: Array.from(t.x), y: Array.from(t.y)}))""")
    return {t["name"]: {int(str(x).lstrip("r")): float(y) for x, y in zip(t["x"], t["y"])} for t in traces}


def _expected(ranks: list[int] | None = None, start_ms: float | None = None,
              end_ms: float | None = None) -> dict[str, dict[int, float]]:
    """The stalls analysis's own numbers for that selection (ms), as the CLI computes them."""
    sel = None if ranks is None and start_ms is None else EngineSelection(ranks, start_ms, end_ms)
    rows = run_reports(open_store(SAMPLE), ["stalls"], selection=sel).to_json()["stalls"]["ranks"]
    return {c.removesuffix("_ns"): {r["rank"]: r[c] / 1e6 for r in rows} for c in STALL_CLASSES}


def _assert_bars(drawn: dict[str, dict[int, float]], expected: dict[str, dict[int, float]]) -> None:
    assert set(drawn) == set(expected)
    for name, values in expected.items():
        assert set(drawn[name]) == set(values), name
        for rank, ms in values.items():
            assert drawn[name][rank] == pytest.approx(ms, rel=1e-9, abs=1e-9), (name, rank)


def test_overview_names_the_injected_straggler_first(straggler: tuple[int, str], page: Any) -> None:
    rank, url = straggler
    page.goto(url + "/")
    page.wait_for_selector("#overview-finding-1")
    _settle(page)
    first = page.inner_text("#overview-finding-1")
    assert f"rank {rank} (node {rank // 2}, chip {rank % 2}) computes" in first, first
    assert "% of the wall" in first and " ms" in first
    # Its timeline link opens the straggler beside its peers over one step of the run.
    href = page.get_attribute("#overview-finding-1-link-0", "href")
    query = parse_qs(urlparse(href).query)
    assert urlparse(href).path == "/timeline" and rank in (parse_ranks(query["ranks"][0]) or ())
    assert float(query["end_ms"][0]) > float(query["start_ms"][0]) >= 0
    # KPIs follow the findings: output tokens/s apart from the total.
    kpis = page.inner_text("#overview-kpis").lower()
    assert "output tokens/s" in kpis and "total tokens/s" in kpis and "mfu" in kpis and "ttft" in kpis
    # Following it makes its ranks and window the shared selection (header, URL).
    page.click("#overview-finding-1-link-0")
    page.wait_for_function("() => document.getElementById('selection-window').innerText.startsWith('window')")
    _settle(page)
    here = parse_qs(urlparse(page.url).query)
    assert urlparse(page.url).path == "/timeline" and here["ranks"] == query["ranks"], page.url
    assert f"r{rank} " in page.inner_text("#selection-ranks")
    assert f"{float(query['start_ms'][0]):,.3f}" in page.inner_text("#selection-window")
    assert page.errors == []


def test_a_window_turns_the_stalls_into_the_windowed_analysis(server: str, page: Any) -> None:
    page.goto(server + "/stalls")
    _settle(page)
    whole = _stall_bars(page)
    _assert_bars(whole, _expected())
    # Zoom the timeline to 10-20 ms: the window becomes the shared selection.
    page.click("#nav-timeline")
    page.wait_for_selector("#timeline .main-svg")
    _settle(page)
    page.evaluate("""() => Plotly.relayout(document.querySelector('#timeline .js-plotly-plot'),
                                             {'xaxis.range[0]': 10.0, 'xaxis.range[1]': 20.0})""")
    page.wait_for_function("() => document.getElementById('selection-window').innerText.includes('10.000')")
    _settle(page)
    assert "start_ms=10" in page.url and "end_ms=20" in page.url      # the selection is in the URL
    page.click("#nav-stalls")
    _settle(page)
    windowed = _stall_bars(page)
    _assert_bars(windowed, _expected(None, 10.0, 20.0))
    assert windowed["compute"] != whole["compute"]
    assert "10.000 – 20.000 ms" in page.inner_text("#stalls-selection")
    assert "start_ms=10" in page.url
    assert page.errors == []


def test_a_url_with_a_selection_reproduces_it_and_a_reload_keeps_it(server: str, page: Any) -> None:
    page.goto(server + "/stalls?ranks=1,2&start_ms=10&end_ms=20&expand=0")
    expected = _expected([1, 2], 10.0, 20.0)
    for attempt in ("load", "reload"):
        _settle(page)
        drawn = _stall_bars(page)
        _assert_bars(drawn, expected)
        assert page.inner_text("#selection-window") == "window 10.000 – 20.000 ms", attempt
        chosen = page.inner_text("#selection-ranks")
        assert "r1 " in chosen and "r2 " in chosen and "r3 " not in chosen, (attempt, chosen)
        query = parse_qs(urlparse(page.url).query)
        assert query["ranks"] == ["1,2"] and query["start_ms"] == ["10"] and query["end_ms"] == ["20"], page.url
        assert query["expand"] == ["0"]                   # a parameter the selection does not own stays
        if attempt == "load":
            page.reload()
    # Clearing the selection clears the URL's part of it, and the whole run's numbers come back.
    page.click("#selection-clear")
    page.wait_for_function("() => document.getElementById('selection-window').innerText === 'whole trace'")
    _settle(page)
    assert "ranks" not in page.url and "start_ms" not in page.url and "expand=0" in page.url
    _assert_bars(_stall_bars(page), _expected())
    assert page.errors == []
