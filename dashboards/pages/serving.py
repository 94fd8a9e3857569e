"""Serving page: TTFT / TPOT distributions and throughput over time (the time window shaded)."""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import graph, kpi, unavailable
from sohuprof.analyzers.reports.serving import throughput_series
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "latency", "throughput"]

PATH = "/serving"
NAME = "Serving"


def latency(data: DashboardData) -> Any:
    """The latency histograms (raises :class:`NotAvailable` without a serving report)."""
    report = data.report("serving")
    per_request = getattr(data.result("serving"), "latencies", None)
    return figures.latency_figure(per_request, report)


def throughput(data: DashboardData, selection: Any) -> Any:
    """Tokens/s over the whole trace, the selected window shaded."""
    requests = data.requests()
    end = data.origin + int(data.report("summary")["wall_ns"]) if requests is not None else data.origin
    series = throughput_series(requests, data.origin, end)
    return figures.throughput_figure(series, origin=data.origin, window=ensure_selection(selection).window)


def layout(selection: Any = None, **_: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    try:
        report = data.report("serving")
        lat = latency(data)
    except NotAvailable as exc:
        return html.Div([html.H2("Serving"), unavailable("Serving", str(exc))])

    def pct(key: str) -> str:
        p = report.get(key) or {}
        return " · ".join(f"{q} {p[q]:,.2f}" for q in ("p50", "p90", "p99") if p.get(q) is not None) or "–"

    return html.Div([
        html.H2("Serving"),
        html.Div(className="kpis", children=[
            kpi("output tokens/s", f"{report['output_tokens_per_s']:,.0f}",
                f"{report['tokens_per_s']:,.0f} tokens/s with the prompts; {report['output_tokens']:,} output "
                f"tokens in {report['duration_s']:,.3f} s"),
            kpi("requests", f"{report['requests']:,}", f"{report['input_tokens']:,} prompt tokens"),
            kpi("TTFT (ms)", pct("ttft_ms").split(" · ")[0], pct("ttft_ms")),
            kpi("TPOT (ms)", pct("tpot_ms").split(" · ")[0], pct("tpot_ms")),
            kpi("end to end (ms)", pct("e2e_ms").split(" · ")[0], pct("e2e_ms")),
            kpi("MFU", f"{report['mfu']:.1%}" if report.get("mfu") is not None else "–", "against the hardware peak"),
        ]),
        html.Div(graph("serving-latency", lat), className="card"),
        html.Div(graph("serving-throughput", throughput(data, selection)), className="card"),
    ])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("serving-throughput", "figure"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> Any:
        try:
            return throughput(current_data(), selection)
        except NotAvailable as exc:
            return figures.message_figure(f"not available for this trace: {exc}")
