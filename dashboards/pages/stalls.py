"""Stalls page: where each rank's time went (the stall partition), computed by the stalls analysis
for the selection (ranks, window): stacked bars per rank, or beyond :data:`HEATMAP_RANKS` ranks a
heatmap of rank x stall class (256 bars are unreadable). A click selects the rank."""

from __future__ import annotations

from typing import Any

import dash
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from dash import Input, Output, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import graph, rank_click_callback, selection_note, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, Selection, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "build_figure", "stalls_frame", "heatmap_figure",
           "STALL_CLASSES", "HEATMAP_RANKS"]

PATH = "/stalls"
NAME = "Stalls"
#: The stall partition's parts (they sum to the wall time), in drawing order.
STALL_CLASSES = ("compute_ns", "memory_stall_ns", "comm_transfer_ns", "sync_wait_ns", "idle_ns")
#: Above this many ranks the bars become a heatmap.
HEATMAP_RANKS = 64


def stalls_frame(data: DashboardData, selection: Any) -> pd.DataFrame:
    """The stalls report's rows for ``selection`` (one per rank), as a DataFrame.

    Raises
    ------
    NotAvailable
        The selection holds no events, or the report does not apply.
    """
    return pd.DataFrame(data.report("stalls", ensure_selection(selection))["ranks"])


def heatmap_figure(frame: pd.DataFrame) -> go.Figure:
    """Rank x stall class: each cell the class's share of the rank's wall against the median rank's
    (percentage points; a straggler's column stands out among 256), the hover its ms and share;
    nodes separated by lines, one tick per node."""
    ranks = frame["rank"].to_numpy(np.int64)
    ms = np.stack([frame[c].to_numpy(float) / 1e6 for c in STALL_CLASSES])
    wall = np.maximum(frame["wall_ns"].to_numpy(float) / 1e6, 1e-12)
    share = ms / wall[None, :]
    median = np.median(share, axis=1)
    delta = 100.0 * (share - median[:, None])
    span = max(float(np.abs(delta).max()), 1.0)
    labels = [f"{c.removesuffix('_ns').replace('_', ' ')} · median {m:.0%}" for c, m in zip(STALL_CLASSES, median)]
    fig = go.Figure(go.Heatmap(
        z=delta, x=[f"r{r}" for r in ranks], y=labels, zmid=0.0, zmin=-span, zmax=span, colorscale="RdBu_r",
        colorbar=dict(title=dict(text="vs median<br>rank (pp)"), ticksuffix=" pp"),
        customdata=np.stack([ms, 100.0 * share], axis=-1), ygap=2,
        hovertemplate="%{x} %{y}<br>%{customdata[0]:.3f} ms, %{customdata[1]:.1f} % of the wall "
                      "(%{z:+.1f} pp vs the median rank)<extra></extra>"))
    nodes = frame["node"].to_numpy(np.int64) if "node" in frame else np.zeros(len(frame), np.int64)
    cuts = np.flatnonzero(nodes[1:] != nodes[:-1]) + 1
    shapes = [dict(type="line", xref="x", yref="paper", x0=c - 0.5, x1=c - 0.5, y0=0, y1=1,
                   line=dict(color="#888", width=1)) for c in cuts.tolist()]
    # One tick per node (its first rank): 256 rank labels would overprint.
    starts = np.r_[0, cuts]
    return figures._style(fig, height=380, shapes=shapes, margin=dict(l=190, r=20, t=90, b=70),
                          xaxis=dict(title=dict(text="rank (ticks: each node's first rank)", standoff=12),
                                     tickmode="array", tickvals=[f"r{r}" for r in ranks[starts]],
                                     ticktext=[f"r{r}<br>n{n}" for r, n in zip(ranks[starts], nodes[starts])],
                                     showgrid=False),
                          yaxis=dict(autorange="reversed", showgrid=False),
                          title=f"where each of {len(frame)} ranks' wall time went, against the median rank "
                                "(click a rank to select it)")


def build_figure(data: DashboardData, selection: Any) -> Any:
    """The stall bars (or heatmap, beyond :data:`HEATMAP_RANKS` ranks) for ``selection``."""
    frame = stalls_frame(data, selection)
    if not len(frame):
        return figures.message_figure("no ranks in this selection")
    if len(frame) > HEATMAP_RANKS:
        return heatmap_figure(frame)
    return figures.stalls_figure(frame, None)


def _figure_or_reason(data: DashboardData, sel: Selection) -> Any:
    try:
        return build_figure(data, sel)
    except NotAvailable as exc:
        return figures.message_figure(f"not available for this selection: {exc}")


_LEGEND = ("compute: ops computing (minus their own memory stall) · memory stall: waiting on HBM or unhidden "
           "DMA · comm transfer: collective data movement not hidden under compute · sync wait: arrived at a "
           "collective, waiting for the last peer · idle: host, launch, nothing to do.")


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    sel = data.page_selection(selection, query)
    try:
        stalls_frame(data, Selection())       # the store has a stalls report at all
    except NotAvailable as exc:
        return html.Div([html.H2("Stalls"), unavailable("Stalls", str(exc))])
    return html.Div([
        html.H2("Stalls"),
        html.Div(_LEGEND, className="status"),
        selection_note(data, sel, id="stalls-selection"),
        html.Div(graph("stalls", _figure_or_reason(data, sel)), className="card"),
    ])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("stalls", "figure"), Output("stalls-selection", "children"), Input("selection", "data"),
                  prevent_initial_call=True)
    def _update(selection: Any) -> tuple[Any, Any]:
        data, sel = current_data(), ensure_selection(selection)
        return _figure_or_reason(data, sel), selection_note(data, sel, id="stalls-selection").children

    rank_click_callback(app, "stalls")
