"""Overview page: the run at a glance (wall time, tokens/s, MFU, worst straggler, top headroom ops)."""

from __future__ import annotations

from typing import Any

import dash
from dash import dcc, html

from sohuprof.dashboards.components import fmt_ms, kpi, table
from sohuprof.dashboards.data import DashboardData, NotAvailable

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "kpis", "headroom_rows"]

PATH = "/"
NAME = "Overview"


def _report(data: DashboardData, name: str) -> dict[str, Any] | None:
    try:
        return data.report(name)
    except NotAvailable:
        return None


def kpis(data: DashboardData) -> list[html.Div]:
    """The KPI tiles; a tile whose report does not apply says so."""
    summary = _report(data, "summary") or {}
    serving = _report(data, "serving")
    comm = _report(data, "comm")
    tiles = [kpi("wall time", fmt_ms(summary.get("wall_ns")),
                 f"{summary.get('events', 0):,} events on {summary.get('ranks', '?')} ranks, {summary.get('nodes', '?')} nodes")]
    if serving:
        tiles.append(kpi("tokens/s", f"{serving['tokens_per_s']:,.0f}",
                         f"{serving['output_tokens']:,} output tokens, {serving['requests']:,} requests"))
        mfu = serving.get("mfu")
        tiles.append(kpi("MFU", f"{mfu:.1%}" if mfu is not None else "–", "model FLOPs / (chips x peak x time)"))
        ttft = (serving.get("ttft_ms") or {}).get("p50")
        tiles.append(kpi("TTFT p50", f"{ttft:,.2f} ms" if ttft is not None else "–",
                         f"p99 {(serving.get('ttft_ms') or {}).get('p99') or 0:,.2f} ms"))
    else:
        tiles.append(kpi("tokens/s", "n/a", "no served requests in this trace"))
    worst = (comm or {}).get("stragglers") or []
    if worst:
        w = worst[0]
        tiles.append(kpi("worst straggler", f"rank {w['rank']}",
                         f"node {w['node']} chip {w['chip']}: others waited {fmt_ms(w['delay_cost_ns'])}"))
    else:
        tiles.append(kpi("worst straggler", "–", "no collectives" if comm is not None else "comm report n/a"))
    return tiles


def headroom_rows(data: DashboardData, top: int = 8) -> list[dict[str, Any]]:
    """The ops whose reaching the roof would save the most time."""
    roof = _report(data, "roofline")
    if not roof:
        return []
    ops = sorted(roof.get("ops") or [], key=lambda r: -(r.get("headroom_ns") or 0))[:top]
    return [{"op": r["op"], "phase": r.get("phase") or "", "time": fmt_ms(r.get("time_ns")),
             "headroom": fmt_ms(r.get("headroom_ns")), "bound": r.get("bound") or "",
             "efficiency": f"{r['efficiency']:.0%}" if r.get("efficiency") is not None else "–",
             "intensity": f"{r['intensity']:,.1f}" if r.get("intensity") is not None else "–"} for r in ops]


def layout(selection: Any = None, **_: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    rows = headroom_rows(data)
    ops = (table(rows, [("op", "op"), ("phase", "phase"), ("time", "time (all ranks)"), ("headroom", "headroom"),
                        ("efficiency", "of roof"), ("bound", "bound"), ("intensity", "FLOP/B")], id="overview-headroom")
           if rows else html.Div("Roofline not available for this trace.", className="status"))
    return html.Div([
        html.H2("Overview"),
        html.Div(kpis(data), className="kpis", id="overview-kpis"),
        html.Div(className="card", children=[
            html.H4("Top headroom ops (time saved if they ran at their roof)"), ops]),
        html.Div(className="card", children=[
            html.H4("Where to look"),
            html.Ul([
                html.Li([dcc.Link("Timeline", href="/timeline"), ": every node, chip and engine over time; zoom to see ops."]),
                html.Li([dcc.Link("Roofline", href="/roofline"), ": how far each op class sits below its roof."]),
                html.Li([dcc.Link("Stalls", href="/stalls"), ": where each rank's time went; click a rank to select it."]),
                html.Li([dcc.Link("Communication", href="/comm"), ": traffic between nodes, bus bandwidth, stragglers."]),
                html.Li([dcc.Link("Serving", href="/serving"), ": TTFT / TPOT distributions and throughput over time."]),
            ])]),
    ])


def register_callbacks(app: dash.Dash) -> None:
    """The overview is static: nothing to bind."""
