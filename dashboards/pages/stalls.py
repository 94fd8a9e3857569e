"""Stalls page: per-rank stacked bars of the stall partition; a click selects the rank."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, State, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import graph, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "build_figure", "rank_from_click"]

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


def rank_from_click(click: dict[str, Any] | None) -> int | None:
    """The rank of a clicked bar (its ``customdata``, or its ``rN`` label)."""
    if not click or not click.get("points"):
        return None
    point = click["points"][0]
    value = point.get("customdata", point.get("x"))
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return int(str(value).lstrip("r"))
    except (TypeError, ValueError):
        return None


def toggle_rank(rank: int | None, current: list[int] | None) -> Any:
    """The rank dropdown's new value after clicking ``rank``: add it, or remove it if selected."""
    if rank is None:
        return dash.no_update
    ranks = list(current or [])
    return [r for r in ranks if r != rank] if rank in ranks else sorted(ranks + [rank])


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
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("stalls", "figure"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> Any:
        try:
            return build_figure(current_data(), selection)
        except NotAvailable as exc:
            return figures.message_figure(f"not available for this trace: {exc}")

    @app.callback(Output("selection-ranks", "value", allow_duplicate=True), Input("stalls", "clickData"),
                  State("selection-ranks", "value"), prevent_initial_call=True)
    def _select(click: dict[str, Any] | None, current: list[int] | None) -> Any:
        return toggle_rank(rank_from_click(click), current)
