"""Plotly figures of the analyses: pure functions from results to ``go.Figure`` (no I/O).

Used by the HTML report and the dashboard alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from sohuprof.analyzers.render.units import duration, scaled, si

__all__ = ["roofline_figure", "stalls_figure", "stalls_by_node_figure", "traffic_figure", "link_ratio_figure",
           "critical_path_figure", "whatif_figure", "figures_by_report"]

_STALL_COLORS = {"compute_ns": "#2a9d8f", "memory_stall_ns": "#e9c46a", "comm_transfer_ns": "#457b9d",
                 "sync_wait_ns": "#e76f51", "idle_ns": "#d3d3d3"}


def _point_labels(points: pd.DataFrame) -> np.ndarray | None:
    """Each sampled op's hover line: its name, phase, rank, layer and duration (what the sample
    has of them; a bounded sample, so formatted value by value)."""
    if not len(points):
        return None
    parts = []
    for col, lead in (("name", ""), ("phase", ""), ("rank", "rank "), ("layer", "layer ")):
        if col in points:
            v = points[col]
            ok = v.notna() & ~((v.astype(str) == "-1") if col == "layer" else False)
            parts.append(np.where(ok, lead + v.astype(str), ""))
    if "dur" in points:
        parts.append(points["dur"].map(duration).to_numpy(dtype=object))
    if not parts:
        return None
    out = np.asarray(parts[0], dtype=object)
    for part in parts[1:]:      # a few fields, each joined column-wise
        part = np.asarray(part, dtype=object)
        sep = np.where((out != "") & (part != ""), " · ", "")
        out = out + sep + part
    return out


def roofline_figure(points: pd.DataFrame, peak_flops: float, hbm_bandwidth: float) -> go.Figure:
    """Ops on log-log axes (intensity, attained FLOP/s) under the compute and bandwidth roofs.

    ``points`` needs ``intensity``, ``attained_flops``, ``op`` and optionally ``dur`` (marker size)
    and ``phase``.
    """
    fig = go.Figure()
    pts = points[(points["intensity"] > 0) & (points["attained_flops"] > 0)]
    lo = float(pts["intensity"].min()) / 4 if len(pts) else 0.1
    hi = float(pts["intensity"].max()) * 4 if len(pts) else 1e5
    ridge = peak_flops / hbm_bandwidth
    x = np.geomspace(max(min(lo, ridge / 100), 1e-3), max(hi, ridge * 100), 200)
    fig.add_trace(go.Scatter(x=x, y=np.minimum(peak_flops, hbm_bandwidth * x), mode="lines",
                             name="roof", line=dict(color="black", width=2)))
    size = pts["dur"].to_numpy(dtype=float) if "dur" in pts else np.ones(len(pts))
    size = 4 + 16 * np.sqrt(size / size.max()) if len(size) and size.max() > 0 else np.full(len(pts), 6.0)
    for op, sel in pts.groupby("op", observed=True).groups.items():
        sub = pts.loc[sel]
        fig.add_trace(go.Scatter(x=sub["intensity"].to_numpy(), y=sub["attained_flops"].to_numpy(), mode="markers",
                                 name=str(op), marker=dict(size=size[pts.index.get_indexer(sel)], opacity=0.6),
                                 text=_point_labels(sub),
                                 customdata=sub["attained_bandwidth"].to_numpy(dtype=float)
                                 if "attained_bandwidth" in sub else None))
    fig.update_layout(xaxis=dict(type="log", title="arithmetic intensity (FLOP/byte)"),
                      yaxis=dict(type="log", title="attained FLOP/s"), height=520,
                      title=f"roofline (peak {peak_flops / 1e12:,.0f} TFLOP/s, {hbm_bandwidth / 1e12:.2f} TB/s)")
    return fig


def stalls_figure(ranks: pd.DataFrame) -> go.Figure:
    """Per-rank stacked bars of the stall partition (ms)."""
    fig = go.Figure()
    labels = [f"r{r}" for r in ranks["rank"]]
    for col, color in _STALL_COLORS.items():
        fig.add_trace(go.Bar(x=labels, y=ranks[col].to_numpy() / 1e6, name=col.removesuffix("_ns"),
                             marker_color=color))
    fig.update_layout(barmode="stack", yaxis_title="ms", height=420, title="where each rank's time went")
    return fig


def traffic_figure(links: pd.DataFrame, nodes: int) -> go.Figure:
    """Node-to-node traffic heatmap (bytes), slow links outlined in the hover text."""
    grid = np.zeros((nodes, nodes))
    if len(links):
        np.add.at(grid, (links["src_node"].to_numpy(int), links["dst_node"].to_numpy(int)),
                  links["bytes"].to_numpy(float))
    fig = go.Figure(go.Heatmap(z=grid, x=[f"node {i}" for i in range(nodes)], y=[f"node {i}" for i in range(nodes)],
                               colorscale="Blues", colorbar=dict(title="bytes")))
    fig.update_layout(xaxis_title="to", yaxis_title="from", height=420, title="node-to-node traffic")
    return fig


_PATH_COLORS = {"compute": "#2a9d8f", "memory": "#e9c46a", "transfer": "#457b9d", "host": "#8d99ae",
                "idle": "#d3d3d3"}


def critical_path_figure(by_kind: pd.DataFrame) -> go.Figure:
    """One stacked bar: what the critical path's time is made of (ms)."""
    fig = go.Figure()
    for kind, t in zip(by_kind["kind"], by_kind["time_ns"]):
        fig.add_trace(go.Bar(y=["critical path"], x=[t / 1e6], name=str(kind), orientation="h",
                             marker_color=_PATH_COLORS.get(str(kind), "#999")))
    fig.update_layout(barmode="stack", xaxis_title="time (ms)", height=240, title="what the critical path is made of",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, traceorder="normal"))
    return fig


def whatif_figure(measured_ns: float, scenarios: pd.DataFrame) -> go.Figure:
    """Measured and predicted wall time of each what-if scenario (ms), each bar labelled with its change."""
    labels = ["measured", *scenarios["spec"].astype(str)]
    walls = np.r_[measured_ns, scenarios["wall_ns"].to_numpy(float)] / 1e6
    text = ["", *(f"{p:+.1f} %" for p in -scenarios["saving_pct"].to_numpy(float))]
    fig = go.Figure(go.Bar(y=labels, x=walls, orientation="h", text=text, textposition="auto",
                           marker_color=["#6c757d", *["#2a9d8f"] * len(scenarios)]))
    fig.update_layout(xaxis_title="wall time (ms)", yaxis=dict(autorange="reversed"),
                      height=160 + 40 * len(labels), title="what-if: predicted wall time")
    return fig


def stalls_by_node_figure(ranks: pd.DataFrame) -> go.Figure:
    """Stacked bars of the stall partition, ranks grouped under their node (a two-level axis),
    in the unit that reads best (ms for a run of milliseconds)."""
    order = ranks.sort_values([c for c in ("node", "rank") if c in ranks.columns], kind="stable")
    nodes = order["node"].to_numpy() if "node" in order else np.zeros(len(order), int)
    x = [[f"node {n}" for n in nodes], [f"r{r}" for r in order["rank"]]]
    _, label = scaled(order[list(_STALL_COLORS)].to_numpy().ravel(), "ns")
    div = {"s": 1e9, "ms": 1e6, "µs": 1e3}.get(label or "ns", 1.0)
    fig = go.Figure()
    for col, color in _STALL_COLORS.items():
        fig.add_trace(go.Bar(x=x, y=order[col].to_numpy(float) / div, name=col.removesuffix("_ns"), marker_color=color,
                             hovertemplate=f"%{{x}}: %{{y:.3g}} {label} {col.removesuffix('_ns')}<extra></extra>"))
    fig.update_layout(barmode="stack", yaxis_title=f"time ({label})", xaxis_title="rank, by node", height=440,
                      title="where each rank's wall time went, by node (parts sum to the wall time)",
                      legend=dict(title_text="stall class "))
    return fig


def link_ratio_figure(links: pd.DataFrame, nodes: int) -> go.Figure:
    """Node-to-node heatmap of each link's measured bandwidth over what the hardware should give
    (1 = as expected), slow links marked; the cell text says both bandwidths."""
    ratio = np.full((nodes, nodes), np.nan)
    text = np.full((nodes, nodes), "", dtype=object)
    if len(links):
        src, dst = links["src_node"].to_numpy(int), links["dst_node"].to_numpy(int)
        measured = links["bandwidth"].to_numpy(float)
        expected = links["expected_bandwidth"].to_numpy(float) if "expected_bandwidth" in links else np.full(len(links), np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[src, dst] = np.where(expected > 0, measured / expected, np.nan)
        slow = links["slow"].to_numpy(bool) if "slow" in links else np.zeros(len(links), bool)
        text[src, dst] = [f"{'⚠ SLOW<br>' if s else ''}{r:.2f}×<br>{si(m, 'B/s')} of {si(e, 'B/s')}"
                          for r, m, e, s in zip(ratio[src, dst], measured, expected, slow)]
    labels = [f"node {i}" for i in range(nodes)]
    top = max(1.0, float(np.nanmax(ratio))) if np.isfinite(ratio).any() else 1.0
    fig = go.Figure(go.Heatmap(z=ratio, x=labels, y=labels, text=text, texttemplate="%{text}", zmin=0, zmax=top,
                               colorscale="RdYlGn", colorbar=dict(title="measured ÷ expected", ticksuffix="×"),
                               hovertemplate="%{y} → %{x}: %{z:.2f}× expected<extra></extra>", hoverongaps=False))
    if len(links) and "slow" in links:   # outline the slow links: the text alone is easy to miss
        for a, b in zip(links.loc[links["slow"].astype(bool), "src_node"], links.loc[links["slow"].astype(bool), "dst_node"]):
            fig.add_shape(type="rect", x0=int(b) - 0.5, x1=int(b) + 0.5, y0=int(a) - 0.5, y1=int(a) + 0.5,
                          line=dict(color="black", width=3))
    fig.update_layout(xaxis=dict(title="to", side="bottom", showgrid=False),
                      yaxis=dict(title="from", autorange="reversed", showgrid=False), height=420, plot_bgcolor="white",
                      title="node-to-node link bandwidth, measured ÷ expected (1× = the hardware's rate)")
    return fig


def _decade_ticks(values: np.ndarray, unit: str) -> dict[str, Any]:
    """Log-axis ticks at each power of ten the values span, labelled with SI prefixes and the unit
    (``1 TFLOP/s``, ``10 TFLOP/s``): plotly's own go to ``10^16`` or say ``B`` for billion."""
    v = values[np.isfinite(values) & (values > 0)]
    if not len(v):
        return {}
    at = 10.0 ** np.arange(math.floor(math.log10(v.min())), math.ceil(math.log10(v.max())) + 1)
    text = [si(t, unit).replace(".00 ", " ").replace(".0 ", " ") for t in at]
    return dict(tickmode="array", tickvals=at.tolist(), ticktext=text)


def _roofline_for_report(fig: go.Figure, peak_flops: float, hbm_bandwidth: float) -> go.Figure:
    """The roofline with ticks that name their unit, and the roofs in the title, in SI units."""
    xs = np.concatenate([np.asarray(t.x, dtype=float) for t in fig.data]) if fig.data else np.array([])
    ys = np.concatenate([np.asarray(t.y, dtype=float) for t in fig.data]) if fig.data else np.array([])
    for trace in fig.data:
        if trace.mode == "markers":
            trace.hovertemplate = (f"<b>{trace.name}</b> %{{text}}<br>intensity %{{x:.3g}} FLOP/B"
                                   "<br>attained %{y:.3s}FLOP/s, %{customdata:.3s}B/s<extra></extra>")
    fig.update_layout(yaxis=dict(title="attained FLOP/s", **_decade_ticks(ys, "FLOP/s")),
                      xaxis=dict(title="arithmetic intensity (FLOP per HBM byte)", **_decade_ticks(xs, "FLOP/B")),
                      title=f"roofline: peak {si(peak_flops, 'FLOP/s')}, HBM {si(hbm_bandwidth, 'B/s')} "
                            "(marker area ∝ time)")
    return fig


def figures_by_report(reports: Any) -> dict[str, list[tuple[str, go.Figure]]]:
    """The figures of the HTML report, by the report they illustrate (only reports with one)."""
    results = reports.results
    out: dict[str, list[tuple[str, go.Figure]]] = {}
    roof = results.get("roofline")
    if roof is not None and getattr(roof, "sample", None) is not None:
        hw = roof.to_json()["hardware"]
        fig = roofline_figure(roof.sample, hw["peak_flops"], hw["hbm_bandwidth"])
        out["roofline"] = [("Roofline", _roofline_for_report(fig, hw["peak_flops"], hw["hbm_bandwidth"]))]
    stalls = results.get("stalls")
    if stalls is not None and len(stalls.ranks):
        out["stalls"] = [("Stalls per rank, by node", stalls_by_node_figure(stalls.ranks))]
    comm = results.get("comm")
    links = getattr(comm, "links", None) if comm is not None else None
    if links is not None and len(links) and "bandwidth" in links:
        # Links reach nodes outside a --ranks selection: size the grid by both.
        nodes = max(int(links["src_node"].max()), int(links["dst_node"].max()), int(reports.ctx.ranks["node"].max())) + 1
        out["comm"] = [("Node-to-node link bandwidth", link_ratio_figure(links, nodes))]
    path = results.get("critical_path")
    if path is not None and len(path.by_kind) and path.path_ns:
        out["critical_path"] = [("Critical path", critical_path_figure(path.by_kind))]
    whatif = results.get("whatif")
    if whatif is not None and len(whatif.scenarios):
        out["whatif"] = [("What-if", whatif_figure(whatif.wall_ns, whatif.scenarios))]
    return out
