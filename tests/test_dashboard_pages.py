"""The Communication, Roofline, Kernels and Idle pages without a browser: figures built from real
stores (the sample Sohu run, a PyTorch profiler trace collected with the CLI), their numbers
checked against the reports' own and against an independent count from the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dash
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from plotly.utils import PlotlyJSONEncoder

from sohuprof.analyzers.report import run_reports
from sohuprof.cli import cli
from sohuprof.dashboards import figures
from sohuprof.dashboards.app import PAGES, create_app, current_data
from sohuprof.dashboards.components import fmt_ms
from sohuprof.dashboards.pages import comm, idle, kernels, roofline
from sohuprof.schema import OP_CLASSES
from sohuprof.store import open_store

from dashboard_support import SAMPLE, app, page_data  # noqa: F401  (app: a pytest fixture)

REPO = Path(__file__).resolve().parents[1]
#: A real Kineto trace (HTA's A100 ResNet DDP rank 0, as in ../shared/traces/kineto/) and a real
#: CPU-only one (no device kernels).
KINETO = REPO / "tests" / "data" / "kineto"
KINETO_TINY = REPO / "tests" / "data" / "kineto-tiny"


def _collect(source: Path, out: Path) -> Path:
    result = CliRunner().invoke(cli, ["collect", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


# Apps are built outside any request (pages register with Dash then); a test runs inside one.
@pytest.fixture
def sample(app: dash.Dash) -> Any:
    with page_data(app) as d:
        yield d


@pytest.fixture(scope="module")
def kineto_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _collect(KINETO, tmp_path_factory.mktemp("kineto") / "store")


@pytest.fixture(scope="module")
def kineto_app(kineto_store: Path) -> dash.Dash:
    return create_app(kineto_store)


@pytest.fixture
def kineto(kineto_app: dash.Dash) -> Any:
    with page_data(kineto_app) as d:
        yield d


def _text(component: Any) -> str:
    return json.dumps(component.to_plotly_json(), cls=PlotlyJSONEncoder, ensure_ascii=False)


def _find(component: Any, id: str) -> Any:
    """The component with ``id`` in a layout tree."""
    stack = [component]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
        elif hasattr(node, "to_plotly_json"):
            if getattr(node, "id", None) == id:
                return node
            stack.append(getattr(node, "children", None))
    raise AssertionError(f"no component {id!r}")


def _intra_node_bytes(store: Path) -> dict[int, float]:
    """Bytes each node's chips send each other by collectives, counted row by row from
    collectives.parquet (nccl's conventions: ring all-reduce 2(n-1)/n x S and all-gather
    (n-1)/n x S to the next member, all-to-all S/n to every peer; an all-reduce across nodes is
    hierarchical, its reduce-scatter and all-gather moving 2(l-1)/l x S inside a node of l members)."""
    rows = pq.read_table(store / "collectives.parquet").to_pandas().sort_values(["coll_id", "rank"])
    out: dict[int, float] = {}
    for _, inst in rows.groupby("coll_id"):
        n = len(inst)
        if n < 2:
            continue
        kind = str(inst["kind"].iloc[0])
        nodes, size = inst["node"].to_numpy(), inst["bytes"].to_numpy(float)
        spanning = len(set(nodes.tolist())) > 1
        for i in range(n):
            if kind == "all_reduce" and spanning:
                local = int((nodes == nodes[i]).sum())
                out[int(nodes[i])] = out.get(int(nodes[i]), 0.0) + 2 * (local - 1) / local * size[i]
            elif kind == "all_to_all":
                peers = int((nodes == nodes[i]).sum()) - 1
                out[int(nodes[i])] = out.get(int(nodes[i]), 0.0) + size[i] / n * peers
            elif nodes[(i + 1) % n] == nodes[i]:
                factor = 2 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n
                out[int(nodes[i])] = out.get(int(nodes[i]), 0.0) + factor * size[i]
    return out


# -- Communication ----------------------------------------------------------------------------

def test_traffic_heatmap_shows_intra_node_traffic_and_never_goes_negative(sample: Any) -> None:
    frames = comm.comm_frames(sample)
    want = _intra_node_bytes(SAMPLE)
    got = {int(r["node"]): float(r["bytes"]) for r in frames["intra_node"].to_dict("records")}
    assert set(got) == set(want) == {0, 1}
    for node in want:
        assert got[node] == pytest.approx(want[node], rel=1e-9)
    fig = figures.traffic_figure(frames["links"], sample.nodes, frames["intra_node"])
    heat = fig.data[0]
    z = np.asarray(heat.z, dtype=float)
    assert heat.zmin == 0 and (z >= 0).all()
    assert np.diag(z) == pytest.approx([want[0] / 1e9, want[1] / 1e9])
    links = frames["links"]
    assert z[0, 1] == pytest.approx(links.loc[(links["src_node"] == 0) & (links["dst_node"] == 1), "bytes"].iloc[0] / 1e9)
    assert "inside a node" in fig.layout.title.text or "one node" in fig.layout.title.text
    # Nothing inside a node: the title says so, the colour bar still starts at 0.
    empty = figures.traffic_figure(links, sample.nodes, frames["intra_node"].iloc[0:0])
    assert "no collective traffic stays inside a node" in empty.layout.title.text and empty.data[0].zmin == 0


def test_link_bandwidth_measured_against_expected(sample: Any) -> None:
    links = comm.comm_frames(sample)["links"]
    fig = figures.link_bandwidth_figure(links)
    bars, expected = fig.data[0], fig.data[1]
    order = (links["bandwidth"] / links["expected_bandwidth"]).sort_values().index
    assert list(bars.x) == pytest.approx((links.loc[order, "bandwidth"] / 1e9).tolist())
    assert list(expected.x) == pytest.approx((links.loc[order, "expected_bandwidth"] / 1e9).tolist())
    assert list(bars.y) == [f"node {a} → node {b}" for a, b in links.loc[order, ["src_node", "dst_node"]].to_numpy()]
    nics = comm.comm_frames(sample)["nics"]
    nic = figures.nic_figure(nics)
    assert list(nic.data[0].x) == pytest.approx((nics.sort_values(["ratio", "node"])["rate"] / 1e9).tolist())
    assert "no traffic crosses nodes" in figures.link_bandwidth_figure(links.iloc[0:0]).layout.annotations[0].text


def test_busbw_bars_carry_their_link_roof(sample: Any) -> None:
    coll = comm.comm_frames(sample)["collectives"]
    roofs = comm.link_roofs(sample)
    roof_rows = {r["op"]: r["link_bandwidth"] for r in sample.report("roofline")["collectives"]}
    assert roofs == pytest.approx(roof_rows) and set(roofs) == set(coll["kind"])
    fig = figures.busbw_figure(coll, roofs, comm.spec_links(sample))
    bars, roof = fig.data[0], fig.data[1]
    assert list(bars.x) == pytest.approx((coll["busbw"] / 1e9).tolist())
    assert list(roof.x) == pytest.approx([roof_rows[k] / 1e9 for k in coll["kind"]])
    assert list(roof.y) == list(bars.y)
    hw = sample.manifest["hardware"]
    lines = sorted(s.x0 for s in fig.layout.shapes)
    assert lines == pytest.approx(sorted([hw["intra_node_bandwidth"] / 1e9, hw["inter_node_bandwidth"] / 1e9]))
    assert fig.layout.xaxis.type == "log"        # 8 GB/s all-to-all beside a 2.7 TB/s roof
    texts = [a.text for a in fig.layout.annotations]
    assert any("NIC share 50 GB/s" in t for t in texts) and any("intra-node link 900 GB/s" in t for t in texts)


def test_root_cause_ranking_and_page(sample: Any) -> None:
    strag = comm.comm_frames(sample)["stragglers"]
    rows = comm.root_cause_rows(strag)
    ranked = strag.sort_values(["root_cost_ns", "rank"], ascending=[False, True])
    assert [r["rank"] for r in rows] == [f"r{r}" for r in ranked["rank"].head(10)]
    assert rows[0]["root"] == fmt_ms(ranked["root_cost_ns"].iloc[0]) and rows[0]["cause"] == ranked["cause"].iloc[0]
    page = comm.layout(None)
    text = _text(page)
    for graph_id in ("comm-links", "comm-nics", "comm-stragglers", "comm-matrix", "comm-busbw", "comm-root-causes",
                     "comm-collectives", "comm-headline"):
        assert f'"{graph_id}"' in text
    assert "comm-rank-grid" not in text                   # 8 ranks: bars are enough
    assert f"first root cause of waiting: r{ranked['rank'].iloc[0]}" in text
    table = _text(_find(page, "comm-collectives"))
    assert "link roof" in table and "of roof" in table


def test_communication_follows_the_selection(sample: Any) -> None:
    """A window: the page's collectives are the comm analysis run on that window (the analyzers'
    own selection), not the whole trace's."""
    from sohuprof.analyzers.engine import Selection as EngineSelection
    from sohuprof.dashboards.data import Selection

    whole = comm.comm_frames(sample)["collectives"]
    t0 = sample.trace_start
    sel = Selection(None, (t0 + 20_000_000, t0 + 60_000_000))
    want = run_reports(open_store(SAMPLE), ["comm"],
                       selection=EngineSelection(start_ms=20.0, end_ms=60.0)).to_json()["comm"]["collectives"]
    page = comm.body(sample, sel)
    table = _text(_find(page, "comm-collectives"))
    assert 0 < sum(r["count"] for r in want) < int(whole["count"].sum())
    for row in want:
        assert f"{row['count']:,}" in table and fmt_ms(row["exposed_ns"]) in table
    assert "Computed for the selection only" in _text(_find(page, "comm-selection"))
    busbw = _find(page, "comm-busbw").figure
    assert list(busbw.data[0].x) == pytest.approx([r["busbw"] / 1e9 for r in want])


def test_many_ranks_get_a_grid_not_256_bars(sample: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    strag = comm.comm_frames(sample)["stragglers"]
    fig = figures.rank_grid_figure(strag, sample.ranks, "root_cost_ns", title="t", selected=(5,))
    z, ranks = np.asarray(fig.data[0].z, dtype=float), np.asarray(fig.data[0].customdata)
    assert z.shape == (2, 4) and fig.data[0].zmin == 0
    for row in strag.to_dict("records"):
        assert ranks[row["node"], row["chip"]] == row["rank"]
        assert z[row["node"], row["chip"]] == pytest.approx(row["root_cost_ns"] / 1e6)
    assert len(fig.layout.shapes) == 1
    bars = figures.stragglers_figure(strag, top=comm.TOP_RANKS)
    assert len(bars.data[0].x) <= comm.TOP_RANKS
    monkeypatch.setattr(comm, "TOP_RANKS", 4)            # as many ranks as bars: the grid joins them
    assert "comm-rank-grid" in _text(comm.layout(None))


def test_a_32_rank_run_names_its_slow_nic_and_straggler(tmp_path: Path) -> None:
    """An emulated 8-node x 4-chip run with a straggler and a slow NIC, both placed at random:
    the page names them first, ranks every rank in a grid (32 > 16 bars) and paints the slow
    links red."""
    import random

    rng = random.Random()
    rank, node = rng.randrange(32), rng.randrange(8)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["emulate", "--model", "mixtral-8x7b", "--nodes", "8", "--chips-per-node", "4",
                                      "--tp", "4", "--ep", "8", "--requests", "16", "--prompt-len", "256",
                                      "--output-len", "8", "--inject", f"straggler:rank={rank},slowdown=1.3",
                                      "--inject", f"slow-link:node={node},factor=0.3", "-o", str(run)])
    assert result.exit_code == 0, result.output
    app = create_app(_collect(run, tmp_path / "store"))
    with app.server.test_request_context("/"):
        data = current_data()
        frames = comm.comm_frames(data)
        page = comm.layout(None)
        head = _text(_find(page, "comm-headline"))
        assert f"slow NIC on node {node}" in head, (rank, node)
        assert f"first root cause of waiting: r{rank} " in head, (rank, node)
        grid = _find(page, "comm-rank-grid").figure
        z, at = np.asarray(grid.data[0].z, dtype=float), np.asarray(grid.data[0].customdata)
        assert z.shape == (8, 4) and at[np.unravel_index(np.nanargmax(z), z.shape)] == rank
        assert len(_find(page, "comm-stragglers").figure.data[0].x) <= comm.TOP_RANKS
        links = _find(page, "comm-links").figure.data[0]
        red = {y for y, c in zip(links.y, links.marker.color) if c == "#d62828"}
        assert red and all(f"node {node}" in y for y in red)
        heat = np.asarray(_find(page, "comm-matrix").figure.data[0].z, dtype=float)
        assert (np.diag(heat) > 0).all() and heat[~np.eye(8, dtype=bool)].sum() > 0
        assert np.diag(heat) == pytest.approx(frames["intra_node"].sort_values("node")["bytes"].to_numpy() / 1e9)


# -- Roofline ----------------------------------------------------------------------------------

def test_roofline_is_webgl_with_a_colour_per_op_class(sample: Any) -> None:
    fig = roofline.build_figure(sample, "all", None)
    markers = [t for t in fig.data if t.type == "scattergl"]
    pts = sample.result("roofline").sample
    pts = pts[(pts["intensity"] > 0) & (pts["attained_flops"] > 0)]     # what log axes can place
    sample_ops = set(pts["op"].astype(str))
    assert {t.name for t in markers} == sample_ops and len(markers) >= 6
    assert all(t.type != "scatter" or t.mode == "lines" for t in fig.data)
    colours = [t.marker.color for t in markers]
    assert len(set(colours)) == len(colours)
    assert all(c == figures.OP_CLASS_COLORS[t.name] for t, c in zip(markers, colours))
    assert set(figures.OP_CLASS_COLORS) == set(OP_CLASSES)
    assert len(set(figures.OP_CLASS_COLORS.values())) == len(OP_CLASSES)
    assert sum(len(t.x) for t in markers) == len(pts) > 10_000
    # The ridge label sits inside the plot: its x within the axis range, its y on the paper.
    hw = sample.report("roofline")["hardware"]
    ridge = hw["peak_flops"] / hw["hbm_bandwidth"]
    label = next(a for a in fig.layout.annotations if a.text.startswith("ridge"))
    lo, hi = fig.layout.xaxis.range
    assert lo < label.x < hi and label.x == pytest.approx(np.log10(ridge)) and 0 <= label.y <= 1
    assert label.yref == "paper"
    gemm = next(t for t in markers if t.name == "gemm")
    assert all(k in gemm.hovertemplate for k in ("%{text}", "FLOP/s", "B/s"))
    first = str(gemm.text[0])
    assert "rank " in first and "layer " in first and any(p in first for p in ("prefill", "decode", "mixed"))


# -- PyTorch profiler stores -------------------------------------------------------------------

def test_kernels_page_numbers_are_the_reports(kineto: Any, kineto_store: Path) -> None:
    want = run_reports(open_store(kineto_store), ["kernels", "idle"]).to_json()
    report = want["kernels"]
    page = kernels.layout(None)
    assert _text(_find(page, "kernels-kpi-time")).count(fmt_ms(report["kernel_ns"])) == 1
    shares = kernels.type_shares(report)
    assert shares["COMPUTATION"] > 0 and shares["COMMUNICATION"] > 0
    assert f"{shares['COMPUTATION']:.1f} %" in _text(_find(page, "kernels-kpi-computation"))
    types = kernels.body(kineto, None)
    fig = _find(types, "kernels-types").figure
    assert list(fig.data[0].y) == [r["kernel_type"] for r in report["types"]]
    assert list(fig.data[0].x) == pytest.approx([r["sum_ns"] / 1e6 for r in report["types"]])
    names = _find(types, "kernels-names").figure
    top = sorted(report["names"], key=lambda r: -r["sum_ns"])[:kernels.TOP]
    assert list(names.data[0].x) == pytest.approx([r["sum_ns"] / 1e6 for r in top])
    launchers = _text(_find(page, "kernels-launchers"))
    assert report["launchers"][0]["cpu_op"] in launchers and fmt_ms(report["launchers"][0]["gpu_ns"]) in launchers


def test_idle_page_numbers_are_the_reports(kineto: Any, kineto_store: Path) -> None:
    report = run_reports(open_store(kineto_store), ["idle"]).to_json()["idle"]
    streams = pd.DataFrame(report["streams"])
    page = idle.layout(None)
    total = int(streams["idle_ns"].sum())
    assert fmt_ms(total) in _text(_find(page, "idle-kpi-idle"))
    host = int(streams["host_wait_ns"].sum())
    assert f"{100.0 * host / total:.1f} %" in _text(_find(page, "idle-kpi-host-wait"))
    fig = _find(idle.body(kineto, None), "idle-streams").figure
    by_name = {t.name: t for t in fig.data}
    order = streams.sort_values(["rank", "stream"])
    for part in ("busy", "host_wait", "kernel_wait", "other"):
        assert list(by_name[part.replace("_", " ")].x) == pytest.approx((order[f"{part}_ns"] / 1e6).tolist())
    stacked = sum(np.asarray(t.x, dtype=float) for t in fig.data)
    assert stacked == pytest.approx((order["window_ns"] / 1e6).to_numpy())
    assert f"r0 · stream {order['stream'].iloc[0]}" in _text(_find(page, "idle-streams-table"))


def test_pytorch_pages_say_why_when_the_store_has_no_kernels(app: dash.Dash, tmp_path: Path) -> None:
    assert PAGES[-2:] == ("kernels", "idle")
    with app.server.test_request_context("/"):
        for module, name in ((kernels, "Kernels"), (idle, "Idle")):
            notice = _text(module.layout(None))
            assert f"{name} is not available for this trace" in notice and "Sohu" in notice
    tiny = create_app(_collect(KINETO_TINY, tmp_path / "tiny"))
    with tiny.server.test_request_context("/"):
        data = current_data()
        for module, name in ((kernels, "kernels"), (idle, "idle")):
            with pytest.raises(Exception) as why:
                data.result(name)
            assert str(why.value) in _text(module.layout(None))


def test_new_pages_are_registered_and_served(kineto_app: dash.Dash) -> None:
    app = kineto_app
    paths = [p["path"] for p in dash.page_registry.values() if p["module"].startswith("sohuprof.dashboards.pages.")]
    assert "/kernels" in paths and "/idle" in paths
    client = app.server.test_client()
    assert client.get("/kernels").status_code == 200 and client.get("/idle").status_code == 200
