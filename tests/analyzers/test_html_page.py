"""The HTML report's parts without a browser: the title block from Sohu and PyTorch manifests,
the link heatmap's ratios and slow marks, the stall bars by node, the page's order and its empty
tables (tests/browser/test_html_report.py opens the page in Chromium)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sohuprof
from sohuprof.analyzers.render.figures import link_ratio_figure, stalls_by_node_figure
from sohuprof.analyzers.render.html_report import report_html, title_facts
from sohuprof.analyzers.report import run_reports
from sohuprof.collectors import collect
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "mixtral-2node" / "store"
WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def test_title_facts_of_a_sohu_run() -> None:
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    facts = dict(title_facts(manifest, store_path=SAMPLE, generated=WHEN))
    assert facts["Model"].startswith("mixtral-8x7b (dtype fp8")
    assert "9.50 PFLOP/s fp8" in facts["Hardware"] and "HBM 4.80 TB/s" in facts["Hardware"]
    assert "144 GB HBM" in facts["Hardware"] and "inter-node 50.0 GB/s" in facts["Hardware"]
    assert facts["Parallel plan"] == "tp 4 × pp 1 × dp 2, ep 8, world size 8, 4 chips a node"
    assert facts["Workload"].startswith("12 requests at 300/s, prompt 256 tokens, output 12 tokens")
    assert facts["Faults injected"] == "straggler:rank=5,slowdown=1.3"
    assert facts["Source"] == "sample_traces/mixtral-2node/raw (sohu-raw-trace)"
    assert facts["Store"] == str(SAMPLE) and facts["Ranks"] == "8 ranks on 2 nodes"
    assert facts["sohuprof"].startswith(sohuprof.__version__)
    assert facts["Generated"] == "2026-01-02 03:04:05 UTC"


def test_title_facts_of_a_pytorch_trace() -> None:
    manifest = {"source": {"format": "kineto", "path": "traces/", "files": {str(r): f"r{r}.json" for r in range(10)}},
                "hardware": {"devices": ["NVIDIA H100"]}, "model": None, "parallel": {"world_size": 16},
                "ranks": list(range(10)), "nodes": [0, 1]}
    facts = dict(title_facts(manifest, generated=WHEN))
    assert facts["Devices"] == "NVIDIA H100" and facts["Parallel plan"] == "world size 16"
    assert facts["Source"] == "traces/ (kineto)" and facts["Ranks"] == "10 ranks on 2 nodes"
    assert facts["Source files"].startswith("rank 0: r0.json; rank 1: r1.json") and "and 2 more" in facts["Source files"]
    assert "Faults injected" not in facts and "Model" not in facts and "Hardware" not in facts
    assert "Generated" in dict(title_facts({}))   # an empty manifest still gives a block


def test_link_heatmap_is_measured_over_expected_with_slow_links_marked() -> None:
    links = pd.DataFrame({"src_node": [0, 1, 0], "dst_node": [1, 0, 2], "bytes": [1e9, 1e9, 5e8],
                          "bandwidth": [40e9, 10e9, 20e9], "expected_bandwidth": [40e9, 40e9, 40e9],
                          "slow": [False, True, False]})
    fig = link_ratio_figure(links, 3)
    heat = fig.data[0]
    assert [(s.x0, s.y0) for s in fig.layout.shapes] == [(-0.5, 0.5)]   # the slow link 1 -> 0 outlined
    z = np.asarray(heat.z, dtype=float)
    assert z[0, 1] == 1.0 and z[1, 0] == 0.25 and z[0, 2] == 0.5 and np.isnan(z[0, 0])
    assert "SLOW" in heat.text[1][0] and "SLOW" not in heat.text[0][1]
    assert "10.0 GB/s of 40.0 GB/s" in heat.text[1][0]
    assert "expected" in heat.colorbar.title.text
    empty = link_ratio_figure(links.iloc[:0], 2).data[0]
    assert np.isnan(np.asarray(empty.z, dtype=float)).all()


def test_stall_bars_grouped_by_node() -> None:
    ranks = pd.DataFrame({"rank": [3, 0, 2, 1], "node": [1, 0, 1, 0], "compute_ns": [1e6] * 4,
                          "memory_stall_ns": [2e6] * 4, "comm_transfer_ns": [0] * 4, "sync_wait_ns": [0] * 4,
                          "idle_ns": [5e5] * 4})
    fig = stalls_by_node_figure(ranks)
    nodes, labels = fig.data[0].x
    assert list(nodes) == ["node 0", "node 0", "node 1", "node 1"] and list(labels) == ["r0", "r1", "r2", "r3"]
    assert fig.layout.yaxis.title.text == "time (ms)" and list(fig.data[0].y) == [1.0] * 4


@pytest.fixture(scope="module")
def sohu_page() -> str:
    return report_html(run_reports(open_store(SAMPLE)), generated=WHEN)


def test_page_order_and_contents(sohu_page: str) -> None:
    page = sohu_page
    order = [page.index(s) for s in ("<header class='title'", "<nav class='toc'", "<section id='findings'>",
                                     "<section id='report-roofline'>", "<section id='report-stalls'>")]
    assert order == sorted(order)
    assert page.count("* plotly.js v") == 1 and "<script src=" not in page
    ids = set(re.findall(r"id='([^']+)'", page))
    hrefs = re.findall(r"<a href='#([^']+)'>", page)
    assert hrefs and set(hrefs) <= ids
    # Each report's figure before its tables.
    stalls = page[page.index("<section id='report-stalls'>"):]
    assert stalls.index("plotly-graph-div") < stalls.index("<table")


def test_tables_read_in_units(sohu_page: str) -> None:
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", sohu_page)
    assert cells and not [c for c in cells if re.match(r"-?\d[\d,]{9,}", c)]   # no 9,500,000,000,...
    assert not [c for c in cells if re.search(r"\de[-+]\d", c)]               # no 2e-05
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", sohu_page)
    assert "time (ms)" in heads and "busbw (GB/s)" in heads and "bytes (MB)" in heads


def test_empty_tables_left_out_or_one_line(tmp_path: Path) -> None:
    collect(ROOT / "tests" / "data" / "kineto", tmp_path / "store")
    page = report_html(run_reports(open_store(tmp_path / "store")), generated=WHEN)
    assert "no cross-node traffic" in page
    for title in re.findall(r"<h3 id='[^']+'>([^<]+)</h3>\s*<div class='scroll'><table><thead><tr>.*?</tr></thead>"
                            r"<tbody></tbody>", page):
        pytest.fail(f"empty table shown: {title}")


def test_the_roofline_hover_names_the_op_and_where_it_ran() -> None:
    from sohuprof.analyzers.render.figures import figures_by_report
    from sohuprof.analyzers.report import run_reports
    from sohuprof.store import open_store

    store = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"
    fig = figures_by_report(run_reports(open_store(store), ["roofline"]))["roofline"][0][1]
    markers = [t for t in fig.data if t.mode == "markers"]
    assert markers and all("B/s" in t.hovertemplate and "FLOP/s" in t.hovertemplate for t in markers)
    label = str(markers[0].text[0])
    assert " · rank " in label and " · layer " in label and label.split(" · ")[-1].endswith("s")


def test_findings_evidence_reads_in_units() -> None:
    from sohuprof.analyzers.render.diagnosis import _evidence_item

    assert _evidence_item("transfer_on_path_ns", 68_995_611) == "transfer_on_path = 69.0 ms"
    assert _evidence_item("peer_ratio", 1.27) == "peer_ratio = 1.27×"
    assert _evidence_item("what_if", "rank=5:compute=0.77") == "what_if = rank=5:compute=0.77"
