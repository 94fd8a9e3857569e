"""Idle page (PyTorch profiler stores): HTA's idle-time breakdown, why each GPU stream sat idle
between its kernels: host wait (the CPU had not launched the next kernel yet), kernel wait (the
overhead between back-to-back kernels) or other. All numbers are the ``idle`` report's; a store
without GPU streams gets the report's reason instead."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import fmt_ms, graph, kpi, selection_note, table, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection
from sohuprof.dashboards.pages.kernels import kernels_report

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "idle_totals", "body"]

PATH = "/idle"
NAME = "Idle"
#: Streams drawn and listed (the idlest first).
TOP = 32
_PARTS = ("host_wait", "kernel_wait", "other")


def idle_totals(streams: pd.DataFrame) -> dict[str, int]:
    """Summed over the report's streams: ``window_ns``, ``busy_ns``, ``idle_ns`` and each idle part."""
    cols = ("window_ns", "busy_ns", "idle_ns", *(f"{p}_ns" for p in _PARTS))
    return {c: int(streams[c].sum()) if len(streams) else 0 for c in cols}


def body(data: DashboardData, selection: Any) -> list[Any]:
    """The page below its title (raises :class:`NotAvailable` without an idle report)."""
    report = kernels_report(data, selection, "idle")
    streams = pd.DataFrame(report.get("streams") or [])
    intervals = pd.DataFrame(report.get("intervals") or [])
    tot = idle_totals(streams)

    def share(part: int, whole: int) -> str:
        return f"{100.0 * part / whole:.1f} %" if whole else "–"

    tiles = [kpi("idle", fmt_ms(tot["idle_ns"]), f"{share(tot['idle_ns'], tot['window_ns'])} of the streams' windows "
                 f"({len(streams)} stream(s))", id="idle-kpi-idle")]
    for p in _PARTS:
        tiles.append(kpi(p.replace("_", " "), share(tot[f"{p}_ns"], tot["idle_ns"]),
                         f"{fmt_ms(tot[f'{p}_ns'])} of the idle time", id=f"idle-kpi-{p.replace('_', '-')}"))
    idlest = streams.sort_values(["idle_ns", "rank", "stream"], ascending=[False, True, True]).head(TOP) \
        if len(streams) else streams
    stream_rows = [{"stream": f"r{r['rank']} · stream {r['stream']}", "kernels": f"{int(r['kernels']):,}",
                    "window": fmt_ms(r["window_ns"]), "busy": fmt_ms(r["busy_ns"]), "idle": fmt_ms(r["idle_ns"]),
                    "idle_pct": f"{r['idle_pct']:.2f} %" if r.get("idle_pct") is not None else "–",
                    **{p: f"{fmt_ms(r[f'{p}_ns'])} ({r[f'{p}_pct']:.1f} %)" if r.get(f"{p}_pct") is not None
                       else fmt_ms(r[f"{p}_ns"]) for p in _PARTS}}
                   for r in idlest.to_dict("records")]
    top_intervals = intervals.sort_values("total_ns", ascending=False).head(TOP) if len(intervals) else intervals
    interval_rows = [{"stream": f"r{r['rank']} · stream {r['stream']}", "category": r["idle_category"],
                      "count": f"{int(r['count']):,}", "total": fmt_ms(r["total_ns"]),
                      **{q: f"{r[f'{q}_ns'] / 1e3:,.1f} µs" for q in ("mean", "p50", "p90", "max")}}
                     for r in top_intervals.to_dict("records")]
    return [
        html.Div(tiles, className="kpis", id="idle-kpis"),
        html.Div(graph("idle-streams", figures.idle_figure(streams, top=TOP)), className="card"),
        html.Div(className="card", children=[
            html.H4("Streams, idlest first"),
            table(stream_rows, [("stream", "stream"), ("kernels", "kernels"), ("window", "window"), ("busy", "busy"),
                                ("idle", "idle"), ("idle_pct", "idle of window"), ("host_wait", "host wait"),
                                ("kernel_wait", "kernel wait"), ("other", "other")], id="idle-streams-table")
            if stream_rows else html.Div("no streams", className="status")]),
        html.Div(className="card", children=[
            html.H4("Idle intervals per stream and kind"),
            table(interval_rows, [("stream", "stream"), ("category", "kind"), ("count", "intervals"),
                                  ("total", "total"), ("mean", "mean"), ("p50", "p50"), ("p90", "p90"),
                                  ("max", "max")], id="idle-intervals-table")
            if interval_rows else html.Div("no idle intervals", className="status")]),
    ]


def _body_or_reason(data: DashboardData, sel: Any) -> list[Any]:
    try:
        return [selection_note(data, sel, id="idle-selection"), *body(data, sel)]
    except NotAvailable as exc:
        return [selection_note(data, sel, id="idle-selection"),
                html.Div(f"Idle is not available for this selection: {exc}", className="unavailable",
                         id="idle-selection-unavailable")]


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    sel = data.page_selection(selection, query)
    try:
        data.report("idle")                   # the store has the report at all
    except NotAvailable as exc:
        return html.Div([html.H2("Idle time"), unavailable("Idle", str(exc))])
    return html.Div([html.H2("Idle time"), html.Div(_body_or_reason(data, sel), id="idle-body")])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("idle-body", "children"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> Any:
        return _body_or_reason(current_data(), ensure_selection(selection))
