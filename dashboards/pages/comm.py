"""Communication page: node-to-node traffic, bus bandwidth per collective, the straggler ranking."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import fmt_si, graph, rank_graph_callbacks, table, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "comm_frames"]

PATH = "/comm"
NAME = "Communication"


def comm_frames(data: DashboardData) -> dict[str, pd.DataFrame]:
    """The comm report's ``collectives``, ``stragglers`` and ``links`` as DataFrames (from its JSON)."""
    report = data.report("comm")
    return {key: pd.DataFrame(report.get(key) or []) for key in ("collectives", "stragglers", "links")}


def stragglers_figure(data: DashboardData, selection: Any) -> Any:
    frame = comm_frames(data)["stragglers"]
    return figures.stragglers_figure(frame, ensure_selection(selection).ranks)


def layout(selection: Any = None, **_: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    try:
        frames = comm_frames(data)
    except NotAvailable as exc:
        return html.Div([html.H2("Communication"), unavailable("Communication", str(exc))])
    links = frames["links"]
    if not len(links):
        links = pd.DataFrame({"src_node": pd.Series(dtype="int64"), "dst_node": pd.Series(dtype="int64"),
                              "bytes": pd.Series(dtype="float64")})
    slow = links[links["slow"].astype(bool)] if "slow" in links and len(links) else links.iloc[0:0]
    slow_rows = [{"link": f"node {r['src_node']} → node {r['dst_node']}", "bw": fmt_si(r.get("bandwidth"), "B/s"),
                  "expected": fmt_si(r.get("expected_bandwidth"), "B/s")} for r in slow.to_dict("records")]
    return html.Div([
        html.H2("Communication"),
        html.Div(className="row", children=[
            html.Div(graph("comm-matrix", figures.traffic_figure(links, data.nodes)), className="card"),
            html.Div(graph("comm-stragglers", stragglers_figure(data, selection)), className="card"),
        ]),
        html.Div(graph("comm-busbw", figures.busbw_figure(frames["collectives"])), className="card"),
        html.Div(className="card", children=[
            html.H4("Slow links (bandwidth far below their peers')"),
            table(slow_rows, [("link", "link"), ("bw", "measured"), ("expected", "expected")], id="comm-slow-links")
            if slow_rows else html.Div("none found", className="status")]),
    ])


def register_callbacks(app: dash.Dash) -> None:
    rank_graph_callbacks(app, "comm-stragglers", stragglers_figure)
