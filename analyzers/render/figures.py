"""Plotly figures of the analyses: pure functions from results to ``go.Figure`` (no I/O).

Used by the HTML report and the dashboard alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = ["roofline_figure", "stalls_figure", "traffic_figure", "critical_path_figure", "whatif_figure",
           "report_figures"]

_STALL_COLORS = {"compute_ns": "#2a9d8f", "memory_stall_ns": "#e9c46a", "comm_transfer_ns": "#457b9d",
                 "sync_wait_ns": "#e76f51", "idle_ns": "#d3d3d3"}


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
                                 text=sub["phase"].astype(str).to_numpy() if "phase" in sub else None))
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
    fig.update_layout(barmode="stack", xaxis_title="ms", height=220, title="what the critical path is made of")
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


def report_figures(reports: Any) -> Iterator[tuple[str, go.Figure]]:
    """The figures worth looking at for whichever reports were computed."""
    results = reports.results
    roof = results.get("roofline")
    if roof is not None and getattr(roof, "sample", None) is not None:
        hw = roof.to_json()["hardware"]
        yield "Roofline", roofline_figure(roof.sample, hw["peak_flops"], hw["hbm_bandwidth"])
    stalls = results.get("stalls")
    if stalls is not None and len(stalls.ranks):
        yield "Stalls per rank", stalls_figure(stalls.ranks)
    comm = results.get("comm")
    links = getattr(comm, "links", None) if comm is not None else None
    if links is not None and len(links):
        yield "Node-to-node traffic", traffic_figure(links, int(reports.ctx.ranks["node"].max()) + 1)
    path = results.get("critical_path")
    if path is not None and len(path.by_kind) and path.path_ns:
        yield "Critical path", critical_path_figure(path.by_kind)
    whatif = results.get("whatif")
    if whatif is not None and len(whatif.scenarios):
        yield "What-if", whatif_figure(whatif.wall_ns, whatif.scenarios)
