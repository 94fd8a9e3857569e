"""The dashboard's selection without a browser: windowed analyses are the analyzers' own (run with
their Selection), cached per selection; the selection's URL form; the Overview's findings and links;
the Stalls heatmap beyond 64 ranks."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import dash
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sohuprof.analyzers import report as report_module
from sohuprof.analyzers.engine import Selection as EngineSelection
from sohuprof.analyzers.engine import build_context
from sohuprof.analyzers.report import run_reports
from sohuprof.cli import cli
from sohuprof.dashboards.app import create_app, current_data, selection_from_url, window_text
from sohuprof.dashboards.components import selection_text
from sohuprof.dashboards.data import (SELECTION_CACHE, DashboardData, NotAvailable, Selection, format_ranks,
                                      parse_query, parse_ranks, selection_query)
from sohuprof.dashboards.pages import overview, stalls
from sohuprof.store import open_store

from dashboard_support import SAMPLE, app, data  # noqa: F401  (pytest fixtures; tests/dashboard_support.py)

MS = 1_000_000


def _text(component: Any) -> str:
    return json.dumps(component, default=lambda o: o.to_plotly_json(), ensure_ascii=False)


def _cli_report(names: list[str], ranks: list[int] | None, start_ms: float | None, end_ms: float | None) -> dict:
    sel = EngineSelection(ranks, start_ms, end_ms)
    return run_reports(open_store(SAMPLE), names, selection=sel).to_json()


# -- windowed analyses ------------------------------------------------------------------------


@pytest.mark.parametrize("ranks, start_ms, end_ms", [(None, 10.0, 20.0), ((1, 2), 10.0, 20.0), ((5,), None, None),
                                                     (None, 0.0, 3.25)])
def test_a_selection_gives_the_analyzers_own_numbers(data: Any, ranks: Any, start_ms: Any, end_ms: Any) -> None:
    window = None if start_ms is None else (data.origin + int(start_ms * MS), data.origin + int(end_ms * MS))
    sel = Selection(ranks, window)
    want = _cli_report(["stalls", "summary", "serving"], list(ranks) if ranks else None, start_ms, end_ms)
    for name in ("stalls", "summary", "serving"):
        assert data.report(name, sel) == want[name], name
    whole = data.report("stalls")
    assert data.report("stalls", sel) != whole
    # The window the analyzers resolved is the one selected, to the ns.
    ctx = build_context(data.store, selection=data.analysis_selection(sel))
    assert ctx.options["window_ns"] == window
    assert sorted(ctx.ranks["rank"]) == list(ranks or range(8))


def test_the_whole_trace_and_every_rank_are_no_selection(data: Any) -> None:
    assert data.selection_key(None) is None and data.selection_key({"ranks": None, "window": None}) is None
    assert data.selection_key(Selection(tuple(range(8)))) is None        # every rank: the diagnosis still runs
    assert data.report("stalls", Selection(tuple(range(8)))) is data.report("stalls")
    assert data.report("findings", Selection(tuple(range(8))))["findings"]


def test_what_a_selection_cannot_show_says_why(data: Any) -> None:
    with pytest.raises(NotAvailable, match="every rank"):
        data.report("findings", Selection((1, 2)))
    with pytest.raises(NotAvailable, match="holds no events"):
        data.report("stalls", Selection(None, (data.origin + 500 * MS, data.origin + 600 * MS)))
    with pytest.raises(NotAvailable, match="not in the store"):
        data.report("stalls", Selection((42,)))
    # A window reaching left of the trace starts at its start.
    early = Selection(None, (data.trace_start - 5 * MS, data.trace_start + 10 * MS))
    assert data.report("stalls", early) == _cli_report(["stalls"], None, 0.0, 10.0)["stalls"]
    # The findings of a window are the windowed diagnosis's.
    window = Selection(None, (data.origin + 10 * MS, data.origin + 20 * MS))
    assert data.report("findings", window) == _cli_report(["findings"], None, 10.0, 20.0)["findings"]


def test_selections_are_cached_and_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    data = DashboardData(open_store(SAMPLE))
    calls: list[Any] = []
    real = report_module.run_reports

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("selection"))
        return real(*args, **kwargs)

    monkeypatch.setattr(report_module, "run_reports", counting)
    sel = Selection(None, (data.origin + 10 * MS, data.origin + 20 * MS))
    out: list[Any] = []
    threads = [threading.Thread(target=lambda: out.append(data.report("stalls", sel))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(out) == 4 and all(o == out[0] for o in out)
    data.prefetch(["stalls", "summary"], sel)                     # only summary is new
    assert len(calls) == 2
    for k in range(SELECTION_CACHE):                              # push it out of the LRU
        data.report("stalls", Selection(None, (data.origin + k * MS, data.origin + (k + 30) * MS)))
    data.report("stalls", sel)
    assert len(calls) == 3 + SELECTION_CACHE


# -- the URL form --------------------------------------------------------------------------------


def test_ranks_spec_both_ways() -> None:
    assert parse_ranks("0,3,5-7") == (0, 3, 5, 6, 7)
    assert parse_ranks(" 7, 1,1 ,") == (1, 7) and parse_ranks(["3", "1"]) == (1, 3)
    for bad in ("", None, "x", "1,,a", "-1", "5-3", "0-99999999", "1.5"):
        assert parse_ranks(bad) is None, bad
    assert format_ranks([7, 0, 3, 5, 6]) == "0,3,5-7" and format_ranks([1, 2]) == "1,2" and format_ranks([]) == ""
    ranks = tuple(sorted(np.random.default_rng(3).choice(256, 40, replace=False).tolist()))
    assert parse_ranks(format_ranks(ranks)) == ranks


def test_query_both_ways() -> None:
    origin = 1_700_000_000_000
    sel = Selection((1, 2), (origin + 12_500_000, origin + 14_250_000))
    query = selection_query(sel, origin)
    assert query == {"ranks": "1,2", "start_ms": "12.5", "end_ms": "14.25"}
    assert parse_query(query, origin) == sel
    assert parse_query({"start_ms": "0.000001", "end_ms": "2"}, origin) == Selection(None, (origin + 1, origin + 2 * MS))
    assert parse_query({}, origin) is None and parse_query({"expand": "0", "search": "gemm"}, origin) is None
    # Half a window, a reversed one or junk selects no window, never a guess.
    assert parse_query({"start_ms": "3"}, 0) == Selection()
    assert parse_query({"start_ms": "3", "end_ms": "1", "ranks": "2"}, 0) == Selection((2,), None)
    assert parse_query({"start_ms": "nan", "end_ms": "inf"}, 0) == Selection()
    assert selection_query(Selection(), origin) == {}


def test_url_into_the_store(data: Any) -> None:
    origin = data.origin
    store, ranks = selection_from_url("/stalls", "?ranks=1,2&start_ms=10&end_ms=20&expand=0", None, origin)
    assert store == {"ranks": [1, 2], "window": [origin + 10 * MS, origin + 20 * MS]} and ranks == [1, 2]
    assert selection_from_url("/stalls", "?ranks=1%2C2&start_ms=10&end_ms=20", store, origin) == \
        (dash.no_update, dash.no_update)                        # already the selection
    assert selection_from_url("/timeline", "?expand=0", store, origin) == (dash.no_update, dash.no_update)
    assert selection_from_url("/", "", None, origin) == (dash.no_update, dash.no_update)
    assert window_text(store, origin) == "window 10.000 – 20.000 ms"
    assert selection_text(Selection((0, 1, 2, 5)), origin) == "ranks 0-2, 5"
    # A page's first render takes the URL's selection over the (not yet updated) shared one.
    assert data.page_selection(None, {"ranks": "3"}) == Selection((3,))
    assert data.page_selection({"ranks": [4]}, {"expand": "1"}) == Selection((4,))


# -- pages --------------------------------------------------------------------------------------


def test_overview_leads_with_the_findings_and_links_to_them(data: Any) -> None:
    page = overview.layout(selection=None)
    text = _text(page)
    assert text.index("overview-findings") < text.index("overview-kpis") < text.index("overview-headroom")
    found = data.report("findings")["findings"]
    first = found[0]
    assert f"{first['saving_ns'] / 1e6:,.2f} ms" in text and f"({first['saving_pct']:.1f} % of the wall)" in text
    straggler = next(f for f in found if f["kind"] == "straggler")
    links = overview.finding_links(data, straggler, data.report("critical_path"), Selection())
    (label, href), (_, stalls_href) = links
    url = urlparse(href)
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    sel = parse_query(query, data.origin)
    steps = data.report("critical_path")["steps"]
    longest = max(steps, key=lambda s: s["end_ns"] - s["start_ns"])
    assert url.path == "/timeline" and sel.ranks is not None and 5 in sel.ranks and len(sel.ranks) == 3
    assert sel.window == (longest["start_ns"], longest["end_ns"])
    assert urlparse(stalls_href).path == "/stalls"
    html_kpis = overview.kpis(data)
    kpis = _text(html_kpis)
    serving = data.report("serving")
    assert f"{serving['output_tokens_per_s']:,.0f}" in kpis and f"{serving['tokens_per_s']:,.0f}" in kpis
    assert {k.id for k in html_kpis} >= {"kpi-output-tokens-s", "kpi-total-tokens-s", "kpi-mfu", "kpi-ttft-p50"}


def test_overview_of_a_selection(data: Any) -> None:
    sel = Selection(None, (data.origin + 10 * MS, data.origin + 20 * MS))
    text = _text(overview.body(data, sel))
    want = _cli_report(["findings", "summary"], None, 10.0, 20.0)
    assert f"{want['findings']['findings'][0]['saving_ns'] / 1e6:,.2f} ms" in text
    assert "Computed for the selection only: 10.000 – 20.000 ms" in text
    assert f"{want['summary']['events']:,} events" in text
    ranked = _text(overview.body(data, Selection((1, 2))))
    assert "overview-findings-unavailable" in ranked and "every rank" in ranked and "--ranks" not in ranked


def test_a_clean_run_names_no_straggler(tmp_path: Path) -> None:
    runner = CliRunner()
    small = ["--model", "llama3-8b", "--nodes", "2", "--chips-per-node", "2", "--tp", "2", "--requests", "8",
             "--prompt-len", "128", "--output-len", "8", "--seed", "3"]
    assert runner.invoke(cli, ["-q", "emulate", *small, "-o", str(tmp_path / "run")]).exit_code == 0
    assert runner.invoke(cli, ["-q", "collect", str(tmp_path / "run"), "-o", str(tmp_path / "store")]).exit_code == 0
    app = create_app(tmp_path / "store")
    with app.server.test_request_context("/"):
        data = current_data()
        card = _text(overview.findings_list(data, Selection()))
        kinds = [f["kind"] for f in data.report("findings")["findings"]]
    assert "straggler" not in kinds and "slow_link" not in kinds
    assert "overview-finding-1" in card and not re.search(r"rank \d+ \(node \d+, chip \d+\) computes", card), card


def test_stalls_of_a_selection_and_a_heatmap_beyond_64_ranks(data: Any) -> None:
    sel = {"ranks": [1, 2], "window": [data.origin + 10 * MS, data.origin + 20 * MS]}
    fig = stalls.build_figure(data, sel)
    want = _cli_report(["stalls"], [1, 2], 10.0, 20.0)["stalls"]["ranks"]
    compute = next(t for t in fig.data if t.name == "compute")
    assert list(compute.x) == ["r1", "r2"]
    assert np.allclose(np.asarray(compute.y, float), [r["compute_ns"] / 1e6 for r in want])
    rng = np.random.default_rng(0)
    R = 256
    # Every rank alike but for a 1 % jitter: their parts fill the 50 ms wall.
    parts = np.array([0.2, 0.3, 0.3, 0.1, 0.1]) * rng.uniform(0.99, 1.01, (R, len(stalls.STALL_CLASSES)))
    parts = parts / parts.sum(axis=1, keepdims=True) * 50e6
    frame = pd.DataFrame(parts, columns=list(stalls.STALL_CLASSES)).assign(
        rank=np.arange(R), node=np.arange(R) // 8, chip=np.arange(R) % 8, wall_ns=50e6)
    parts[:, 0] *= np.where(np.arange(R) == 77, 0.5, 1.0)           # rank 77 computes less of its wall
    frame = frame.assign(**{stalls.STALL_CLASSES[0]: parts[:, 0]})
    heat = stalls.heatmap_figure(frame)
    z = np.asarray(heat.data[0].z, float)
    custom = np.asarray(heat.data[0].customdata, float)
    assert heat.data[0].type == "heatmap" and z.shape == (len(stalls.STALL_CLASSES), R)
    share = parts.T / 50e6
    assert np.allclose(custom[:, :, 0], parts.T / 1e6) and np.allclose(custom[:, :, 1], 100 * share)
    assert np.allclose(z, 100 * (share - np.median(share, axis=1, keepdims=True)))   # against the median rank
    assert int(np.argmin(z[0])) == 77
    assert len(heat.layout.xaxis.tickvals) == 32 and len(heat.layout.shapes) == 31     # one per node
    assert list(heat.data[0].x[:2]) == ["r0", "r1"]              # a click names the rank (rank_from_click)


def test_a_stragglers_peers_are_its_pipeline_stage() -> None:
    """The Overview's links for a straggler open its stage's ranks, read from the manifest
    (the dashboard keeps no analysis context)."""
    from types import SimpleNamespace

    from sohuprof.dashboards.pages.overview import _peers

    manifest = {"source": {"format": "sohu-raw-trace"}, "parallel": {"tp": 2, "dp": 2, "pp": 2}}
    data = SimpleNamespace(manifest=manifest, ranks=pd.DataFrame({"rank": np.arange(8)}))
    assert _peers(data, 5) == [5, 4, 6, 7]                 # stage 1 = ranks 4-7
    kineto = SimpleNamespace(manifest={"source": {"format": "kineto"}}, ranks=pd.DataFrame({"rank": np.arange(4)}))
    assert _peers(kineto, 2) == [2, 0, 1, 3]               # one role for all
