"""Stalls page: per-rank stacked bars of the stall partition; a click selects the rank."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import graph, rank_graph_callbacks, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "build_figure"]

PATH = "/stalls"
NAME = "Stalls"


def _ranks(data: DashboardData) -> pd.DataFrame:
    return pd.DataFrame(data.report("stalls")["ranks"])


def build_figure(data: DashboardData, selection: Any) -> Any:
    """The stall bars with the selected ranks outlined."""
    frame = _ranks(data)
    if not len(frame):
        return figures.message_figure("no ranks in this trace")
    return figures.stalls_figure(frame, ensure_selection(selection).ranks)


def layout(selection: Any = None, **_: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    try:
        fig = build_figure(data, selection)
    except NotAvailable as exc:
        return html.Div([html.H2("Stalls"), unavailable("Stalls", str(exc))])
    return html.Div([
        html.H2("Stalls"),
        html.Div("compute: ops computing (minus their own memory stall) · memory stall: waiting on HBM or unhidden "
                 "DMA · comm transfer: collective data movement not hidden under compute · sync wait: arrived at a "
                 "collective, waiting for the last peer · idle: host, launch, nothing to do.", className="status"),
        html.Div(graph("stalls", fig), className="card"),
    ])


def register_callbacks(app: dash.Dash) -> None:
    rank_graph_callbacks(app, "stalls", build_figure)
