"""Roofline page: ops on log-log axes under the compute and bandwidth roofs, filtered by phase and
by the shared rank / time-window selection."""

from __future__ import annotations

from typing import Any

import dash
import numpy as np
import pandas as pd
from dash import ALL, Input, Output, dcc, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import graph, selection_note, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "select_points", "build_figure"]

PATH = "/roofline"
NAME = "Roofline"
#: A pattern-matching id: the callback also follows the selection made on other pages, where the
#: radio items do not exist (``ALL`` then matches nothing instead of raising in the browser).
PHASE_ID = {"page": "roofline", "control": "phase"}


def select_points(sample: pd.DataFrame, phase: str | None, selection: Any) -> pd.DataFrame:
    """The sampled events of ``phase`` (``all`` or ``None``: every phase) in the selection."""
    sel = ensure_selection(selection)
    keep = np.ones(len(sample), bool)
    if phase and phase != "all" and "phase" in sample:
        keep &= sample["phase"].astype(str).to_numpy() == phase
    if sel.ranks is not None and "rank" in sample:
        keep &= sample["rank"].isin(sel.ranks).to_numpy()
    if sel.window is not None and "ts" in sample:
        ts = sample["ts"].to_numpy()
        keep &= (ts >= sel.window[0]) & (ts < sel.window[1])
    return sample[keep]


def build_figure(data: DashboardData, phase: str | None, selection: Any) -> Any:
    """The roofline of ``phase`` for the selection: the roofline analysis run on the selected
    ranks and window (its own sample of their ops), filtered by phase here. Raises
    :class:`NotAvailable` without a roofline for the store or the selection."""
    sel = ensure_selection(selection)
    result = data.result("roofline", sel)
    hw = data.report("roofline", sel)["hardware"]
    sample = getattr(result, "sample", None)
    if sample is None:
        raise NotAvailable("the roofline report carries no per-event sample to plot")
    points = select_points(sample, phase, None)
    if not len(points):
        return figures.message_figure("no sampled ops in this phase and selection")
    what = "all phases" if not phase or phase == "all" else phase
    title = (f"roofline · {what} · {len(points):,} sampled ops · peak {hw['peak_flops'] / 1e12:,.0f} TFLOP/s, "
             f"HBM {hw['hbm_bandwidth'] / 1e12:.2f} TB/s")
    return figures.roofline_figure(points, hw["peak_flops"], hw["hbm_bandwidth"], title=title)


def _figure_or_reason(data: DashboardData, phase: str | None, sel: Any) -> Any:
    try:
        return build_figure(data, phase, sel)
    except NotAvailable as exc:
        return figures.message_figure(f"not available for this selection: {exc}")


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    sel = data.page_selection(selection, query)
    try:
        result = data.result("roofline")          # the store has a roofline at all
    except NotAvailable as exc:
        return html.Div([html.H2("Roofline"), unavailable("Roofline", str(exc))])
    sample = getattr(result, "sample", pd.DataFrame())
    phases = sorted(sample["phase"].dropna().astype(str).unique()) if "phase" in sample else []
    return html.Div([
        html.H2("Roofline"),
        html.Div(["Phase: ", dcc.RadioItems(id=PHASE_ID, value="all", inline=True,
                                            options=[{"label": " all ", "value": "all"}]
                                            + [{"label": f" {p} ", "value": p} for p in phases])],
                 className="status"),
        html.Div("Each point is a sampled op (area by duration; WebGL, so every sampled op is drawn); the roof is "
                 "min(peak, HBM bandwidth x intensity). The roofline follows the rank and time-window selection.",
                 className="status"),
        selection_note(data, sel, id="roofline-selection"),
        html.Div(graph("roofline", _figure_or_reason(data, "all", sel)), className="card"),
    ])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("roofline", "figure"), Output("roofline-selection", "children"),
                  Input({**PHASE_ID, "control": ALL}, "value"), Input("selection", "data"), prevent_initial_call=True)
    def _update(phases: list[str | None], selection: Any) -> tuple[Any, Any]:
        data, sel = current_data(), ensure_selection(selection)
        return (_figure_or_reason(data, phases[0] if phases else None, sel),
                selection_note(data, sel, id="roofline-selection").children)
