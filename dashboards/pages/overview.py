"""Overview page: the run at a glance (wall time, tokens/s, MFU, worst straggler by root cost, top headroom ops)."""

from __future__ import annotations

from typing import Any

import dash
from dash import dcc, html

from sohuprof.dashboards.components import fmt_ms, kpi, table
from sohuprof.dashboards.data import DashboardData, NotAvailable

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "kpis", "straggler_kpi", "headroom_rows"]

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
        tiles.append(kpi("output tokens/s", f"{serving.get('output_tokens_per_s', 0):,.0f}",
                         f"{serving['tokens_per_s']:,.0f} tokens/s with the prompts, {serving['requests']:,} requests"))
        mfu = serving.get("mfu")
        tiles.append(kpi("MFU", f"{mfu:.1%}" if mfu is not None else "–", "model FLOPs / (chips x peak x time)"))
        ttft = (serving.get("ttft_ms") or {}).get("p50")
        tiles.append(kpi("TTFT p50", f"{ttft:,.2f} ms" if ttft is not None else "–",
                         f"p99 {(serving.get('ttft_ms') or {}).get('p99') or 0:,.2f} ms"))
    else:
        tiles.append(kpi("tokens/s", "n/a", "no served requests in this trace"))
    tiles.append(straggler_kpi(comm))
    return tiles


def straggler_kpi(comm: dict[str, Any] | None) -> html.Div:
    """The worst straggler: the rank whose own excess caused the most waiting (its root cost, the
    comm report's ranking), if it computes at least ``STRAGGLER_RATIO`` x its stage peers'
    median; a rank others waited for only because it waited itself is never named."""
    from sohuprof.analyzers.diagnosis.findings import STRAGGLER_RATIO

    name, tile = "worst straggler", "kpi-worst-straggler"
    rows = (comm or {}).get("stragglers") or []
    if not rows:
        return kpi(name, "–", "no collectives" if comm is not None else "comm report n/a", id=tile)
    if "root_cost_ns" not in rows[0]:    # no dependency graph: only who arrived last
        w = rows[0]
        return kpi("most waited for", f"rank {w['rank']}",
                   f"node {w['node']} chip {w['chip']}: others waited {fmt_ms(w['delay_cost_ns'])} for its late "
                   "arrivals (no root causes: it may have been waiting itself)", id=tile)
    causes = [r for r in rows if (r.get("root_cost_ns") or 0) > 0]     # ranked by root cost
    slow = [r for r in causes if (r.get("peer_ratio") or 0) >= STRAGGLER_RATIO]
    if slow:
        w = slow[0]
        return kpi(name, f"rank {w['rank']}",
                   f"node {w['node']} chip {w['chip']}, {w['peer_ratio']:.2f}x its peers: its own excess made "
                   f"others wait {fmt_ms(w['root_cost_ns'])}" + (f" ({w['cause']})" if w.get("cause") else ""), id=tile)
    if causes:
        return kpi(name, "none", f"no rank computes {STRAGGLER_RATIO:g}x its peers; the most waiting a rank's own "
                                 f"excess caused: {fmt_ms(causes[0]['root_cost_ns'])} (rank {causes[0]['rank']})", id=tile)
    return kpi(name, "none", "no rank's own excess made others wait", id=tile)


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
