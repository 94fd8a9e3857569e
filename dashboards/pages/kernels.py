"""Kernels page (PyTorch profiler stores): HTA's GPU kernel breakdown, time by kernel type (and
their overlaps), the kernels with the most time, and the CPU ops, annotations and modules that
launched them. All numbers are the ``kernels`` report's; a store without device kernels (a Sohu
run, a CPU-only profile) gets the report's reason instead."""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import fmt_ms, graph, kpi, selection_note, table, unavailable
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "kernels_report", "type_shares", "body"]

PATH = "/kernels"
NAME = "Kernels"
#: Rows of each table (the report's own top-N is ``num_kernels`` per type).
TOP = 20


def kernels_report(data: DashboardData, selection: Any = None, name: str = "kernels") -> dict[str, Any]:
    """The report's JSON, computed by the analyzers for the selection (ranks, window)."""
    return data.report(name, ensure_selection(selection))


def type_shares(report: dict[str, Any]) -> dict[str, float]:
    """Per single kernel type, its ``pct`` row of the type table (time only it runs, % of HTA's base)."""
    return {str(r["kernel_type"]): float(r["pct"]) for r in report.get("types") or []
            if r.get("pct") is not None and " overlapping " not in str(r["kernel_type"])}


def _kernel_name(name: str, width: int = 90) -> Any:
    """A kernel's name cut to ``width`` characters, the whole name on hover (C++ signatures run long)."""
    if len(name) <= width:
        return html.Span(name, className="kernel-name")
    return html.Span(name[:width - 1] + "…", title=name, className="kernel-name")


def _scope_table(rows: list[dict[str, Any]], key: str, header: str, id: str) -> Any:
    if not rows:
        return html.Div(f"no {header.lower()} spans recorded", className="status", id=id)
    shown = [{"label": r[key], "kernels": f"{int(r['kernels']):,}", "gpu": fmt_ms(r["gpu_ns"]),
              "count": f"{int(r['count']):,}", "pct": f"{r['pct']:.2f} %" if r.get("pct") is not None else "–"}
             for r in rows[:TOP]]
    return table(shown, [("label", header), ("kernels", "kernels"), ("gpu", "GPU time"), ("count", "instances"),
                         ("pct", "of kernel time")], id=id)


def body(data: DashboardData, selection: Any) -> list[Any]:
    """The page below its title (raises :class:`NotAvailable` without a kernels report)."""
    report = kernels_report(data, selection)
    shares = type_shares(report)
    names = pd.DataFrame(report.get("names") or [])
    top_name = names.sort_values("sum_ns", ascending=False).iloc[0] if len(names) else None
    tiles = [kpi("kernel time", fmt_ms(report.get("kernel_ns")), "device kernels' summed durations, every rank",
                 id="kernels-kpi-time")]
    for kind in ("COMPUTATION", "COMMUNICATION", "MEMORY"):
        tiles.append(kpi(kind.lower(), f"{shares[kind]:.1f} %" if kind in shares else "–",
                         "of the time any kernel type runs, only this type", id=f"kernels-kpi-{kind.lower()}"))
    if top_name is not None:
        short = str(top_name["name"])
        tiles.append(kpi("top kernel", fmt_ms(top_name["sum_ns"]), (short if len(short) <= 70 else short[:67] + "…"),
                         id="kernels-kpi-top"))
    name_rows = [{"type": r["kernel_type"], "name": _kernel_name(str(r["name"])), "count": f"{int(r['count']):,}",
                  "sum": fmt_ms(r["sum_ns"]), "mean": f"{r['mean_ns'] / 1e3:,.1f} µs",
                  "min": f"{r['min_ns'] / 1e3:,.1f} µs", "max": f"{r['max_ns'] / 1e3:,.1f} µs",
                  "pct": f"{r['pct']:.2f} %" if r.get("pct") is not None else "–"}
                 for r in (names.head(TOP).to_dict("records") if len(names) else [])]
    return [
        *[html.Div(n, className="status kernels-note") for n in report.get("notes") or []],
        html.Div(tiles, className="kpis", id="kernels-kpis"),
        html.Div(className="row", children=[
            html.Div(graph("kernels-types", figures.kernel_types_figure(pd.DataFrame(report.get("types") or []))),
                     className="card"),
            html.Div(graph("kernels-names", figures.kernel_names_figure(names, top=TOP)), className="card"),
        ]),
        html.Div(className="card", children=[
            html.H4("Kernels by time (per type: the top names, then the rest as 'others')"),
            table(name_rows, [("name", "kernel"), ("type", "type"), ("count", "count"), ("sum", "total"),
                              ("mean", "mean"), ("min", "min"), ("max", "max"), ("pct", "of its type")],
                  id="kernels-names-table") if name_rows else html.Div("no kernels", className="status")]),
        html.Div(className="row", children=[
            html.Div([html.H4("Launched by CPU op"),
                      _scope_table(report.get("launchers") or [], "cpu_op", "CPU op", "kernels-launchers")],
                     className="card"),
            html.Div([html.H4("By annotation (record_function)"),
                      _scope_table(report.get("annotations") or [], "annotation", "Annotation", "kernels-annotations")],
                     className="card"),
            html.Div([html.H4("By module"),
                      _scope_table(report.get("modules") or [], "module", "Module", "kernels-modules")],
                     className="card"),
        ]),
    ]


def _body_or_reason(data: DashboardData, sel: Any) -> list[Any]:
    try:
        return [selection_note(data, sel, id="kernels-selection"), *body(data, sel)]
    except NotAvailable as exc:
        return [selection_note(data, sel, id="kernels-selection"),
                html.Div(f"Kernels is not available for this selection: {exc}", className="unavailable",
                         id="kernels-selection-unavailable")]


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    sel = data.page_selection(selection, query)
    try:
        data.report("kernels")                   # the store has the report at all
    except NotAvailable as exc:
        return html.Div([html.H2("Kernels"), unavailable("Kernels", str(exc))])
    return html.Div([html.H2("Kernels"), html.Div(_body_or_reason(data, sel), id="kernels-body")])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("kernels-body", "children"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> Any:
        return _body_or_reason(current_data(), ensure_selection(selection))
