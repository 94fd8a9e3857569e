"""Overview page: what is wrong first (the diagnosis's ranked findings, each with its saving and a
link to the page, ranks and time window that show it), then the run's KPIs, then the ops furthest
below their roof. Everything is computed for the selection (ranks, window) by the analyzers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import dash
import numpy as np
from dash import Input, Output, dcc, html

from sohuprof.dashboards.components import fmt_ms, kpi, selection_note, table
from sohuprof.dashboards.data import DashboardData, NotAvailable, Selection, selection_query

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "body", "findings_list", "finding_links", "kpis",
           "headroom_rows", "REPORTS_SHOWN"]

PATH = "/"
NAME = "Overview"
#: The reports the overview shows, computed together for a selection.
REPORTS_SHOWN = ("findings", "critical_path", "summary", "serving", "roofline")
#: Ranks a finding's timeline link shows at most (the culprit and a few peers to compare with).
_TIMELINE_RANKS = 3


def _report(data: DashboardData, name: str, sel: Selection) -> tuple[dict[str, Any] | None, str | None]:
    """(report JSON, None) or (None, why it is not available)."""
    try:
        return data.report(name, sel), None
    except NotAvailable as exc:
        return None, str(exc)


def _href(data: DashboardData, path: str, ranks: Any = None, window: tuple[int, int] | None = None) -> str:
    chosen = tuple(sorted({int(r) for r in ranks})) if ranks else None
    if chosen is not None and set(chosen) >= set(data.ranks["rank"].tolist()):
        chosen = None          # every rank is no rank selection
    query = selection_query(Selection(chosen, window), data.origin)
    return path + ("?" + urlencode(query, safe=",") if query else "")


def _steps(cp: dict[str, Any] | None) -> list[tuple[int, int]]:
    """The critical path's steps as (start, end) ns, longest first."""
    steps = [(int(s["start_ns"]), int(s["end_ns"])) for s in (cp or {}).get("steps") or []
             if s.get("end_ns") is not None and s["end_ns"] > s["start_ns"]]
    return sorted(steps, key=lambda s: s[0] - s[1])


def _peers(data: DashboardData, rank: int) -> list[int]:
    """The ranks running the same program as ``rank`` (its pipeline stage), itself first."""
    from sohuprof.analyzers.diagnosis.findings import manifest_roles

    ranks = data.ranks["rank"].to_numpy(np.int64)
    role = manifest_roles(data.manifest, ranks)
    mine = role[ranks == rank]
    same = ranks[role == mine[0]] if len(mine) else ranks
    return [rank] + [int(r) for r in same if r != rank]


def finding_links(data: DashboardData, finding: dict[str, Any], cp: dict[str, Any] | None,
                  sel: Selection) -> list[tuple[str, str]]:
    """(label, href) of the pages that show ``finding``: its page, ranks and a time window (the
    longest step of the critical path, else the selected window), as URL query parameters."""
    kind = finding.get("kind")
    ranks = [int(r) for r in finding.get("ranks") or []]
    nodes = [int(n) for n in finding.get("nodes") or []]
    steps = _steps(cp)
    step = steps[0] if steps else sel.window
    first = min(steps)[0:2] if steps else sel.window
    where = "the longest step" if steps else ("the window" if sel.window else "the whole run")
    if kind == "straggler" and ranks:
        peers = _peers(data, ranks[0])
        return [(f"Timeline: rank {ranks[0]} beside {min(len(peers) - 1, _TIMELINE_RANKS - 1)} peers, {where}",
                 _href(data, "/timeline", peers[:_TIMELINE_RANKS], step)),
                (f"Stalls: rank {ranks[0]} and its {len(peers) - 1} peers",
                 _href(data, "/stalls", peers if len(peers) > 1 else None, sel.window))]
    if kind == "slow_link" and nodes:
        on_node = data.ranks.loc[data.ranks["node"].isin(nodes), "rank"].tolist()
        return [("Communication: links and bandwidth", _href(data, "/comm", None, sel.window)),
                (f"Timeline: node {nodes[0]}'s ranks, {where}", _href(data, "/timeline", on_node, step))]
    if kind == "exposed_comm":
        return [("Communication", _href(data, "/comm", None, sel.window)),
                (f"Timeline: {where}", _href(data, "/timeline", sel.ranks, step))]
    if kind == "memory_bound":
        return [("Roofline", _href(data, "/roofline", sel.ranks, sel.window))]
    if kind == "load_imbalance" and ranks:
        return [(f"Stalls: ranks {', '.join(map(str, ranks))}", _href(data, "/stalls", ranks, sel.window)),
                (f"Timeline: {where}", _href(data, "/timeline", ranks, step))]
    if kind == "host_overhead":
        return [("Timeline: the first step", _href(data, "/timeline", sel.ranks, first))]
    if kind in ("idle", "pipeline_bubble"):
        return [(f"Timeline: {where}", _href(data, "/timeline", sel.ranks, step)),
                ("Stalls", _href(data, "/stalls", sel.ranks, sel.window))]
    return [("Timeline", _href(data, "/timeline", sel.ranks, sel.window))]


def _no_findings() -> str:
    from sohuprof.analyzers.diagnosis.findings import MIN_SAVING_PCT, STRAGGLER_RATIO

    return (f"None above noise: no change the what-if engine tried saves {MIN_SAVING_PCT:g} % of the wall or more, "
            f"and no rank computes {STRAGGLER_RATIO:g}x its stage peers' median or slower.")


def findings_list(data: DashboardData, sel: Selection) -> html.Div:
    """The findings card: each finding's saving (ms, % of the wall), its sentence and its links."""
    found, why = _report(data, "findings", sel)
    head = html.H3("Findings: what fixing each would save", id="overview-findings-title")
    if found is None:
        # The analyzers speak of the CLI's flags; here they are the header's selection.
        why = (why or "").replace("without --ranks", "without a rank selection (clear it in the header)").replace(
            "a --start-ms/--end-ms window", "a time window")
        return html.Div(className="card findings", id="overview-findings", children=[
            head, html.Div(f"Not available for this selection: {why}", className="status",
                           id="overview-findings-unavailable")])
    cp, _ = _report(data, "critical_path", sel)
    wall = found.get("wall_ns")
    intro = ("Replayed on the run's dependency graph, largest first"
             + (f"; wall {fmt_ms(wall)}" if wall else "") + ".")
    items = []
    for i, f in enumerate(found.get("findings") or [], start=1):     # a few findings
        links = finding_links(data, f, cp, sel)
        items.append(html.Li(id=f"overview-finding-{i}", className="finding", children=[
            html.Span(f"{(f.get('saving_ns') or 0) / 1e6:,.2f} ms", className="saving"),
            html.Span(f" ({f.get('saving_pct') or 0:.1f} % of the wall) ", className="saving-pct"),
            html.Span(str(f.get("title") or f.get("kind")), className="finding-title"),
            html.Div(className="finding-links", children=[
                dcc.Link(label, href=href, id=f"overview-finding-{i}-link-{j}", className="finding-link")
                for j, (label, href) in enumerate(links)]),
        ]))
    body: list[Any] = [head, html.Div(intro, className="status")]
    body.append(html.Ol(items, id="overview-findings-list") if items
                else html.Div(_no_findings(), className="status", id="overview-findings-none"))
    body += [html.Div(f"note: {n}", className="status") for n in found.get("notes") or []]
    return html.Div(className="card findings", id="overview-findings", children=body)


def kpis(data: DashboardData, sel: Selection | None = None) -> list[html.Div]:
    """The KPI tiles (output tokens/s apart from the total); a tile whose report does not apply says so."""
    sel = sel or Selection()
    summary = _report(data, "summary", sel)[0] or {}
    serving, why = _report(data, "serving", sel)
    tiles = [kpi("wall time", fmt_ms(summary.get("wall_ns")),
                 f"{summary.get('events', 0):,} events on {summary.get('ranks', '?')} ranks, "
                 f"{summary.get('nodes', '?')} nodes")]
    if serving:
        tiles.append(kpi("output tokens/s", f"{serving.get('output_tokens_per_s') or 0:,.0f}",
                         f"{serving.get('output_tokens', 0):,} generated tokens, {serving.get('requests', 0):,} requests"))
        tiles.append(kpi("total tokens/s", f"{serving.get('tokens_per_s') or 0:,.0f}",
                         f"prompt and generated: {serving.get('input_tokens', 0):,} + {serving.get('output_tokens', 0):,}"))
        mfu = serving.get("mfu")
        tiles.append(kpi("MFU", f"{mfu:.1%}" if mfu is not None else "–", "model FLOPs / (chips x peak x time)"))
        ttft = serving.get("ttft_ms") or {}
        tiles.append(kpi("TTFT p50", f"{ttft['p50']:,.2f} ms" if ttft.get("p50") is not None else "–",
                         f"p99 {ttft['p99']:,.2f} ms" if ttft.get("p99") is not None else ""))
    else:
        tiles.append(kpi("tokens/s", "n/a", why or "no served requests in this trace", id="kpi-output-tokens-s"))
    return tiles


def headroom_rows(data: DashboardData, sel: Selection | None = None, top: int = 8) -> list[dict[str, Any]]:
    """The ops whose reaching the roof would save the most time."""
    roof = _report(data, "roofline", sel or Selection())[0]
    if not roof:
        return []
    ops = sorted(roof.get("ops") or [], key=lambda r: -(r.get("headroom_ns") or 0))[:top]
    return [{"op": r["op"], "phase": r.get("phase") or "", "time": fmt_ms(r.get("time_ns")),
             "headroom": fmt_ms(r.get("headroom_ns")), "bound": r.get("bound") or "",
             "efficiency": f"{r['efficiency']:.0%}" if r.get("efficiency") is not None else "–",
             "intensity": f"{r['intensity']:,.1f}" if r.get("intensity") is not None else "–"} for r in ops]


def body(data: DashboardData, sel: Selection) -> list[Any]:
    """The page under its title, for ``sel`` (the analyses of the selection, computed together)."""
    data.prefetch(REPORTS_SHOWN, sel)
    rows = headroom_rows(data, sel)
    ops = (table(rows, [("op", "op"), ("phase", "phase"), ("time", "time (all ranks)"), ("headroom", "headroom"),
                        ("efficiency", "of roof"), ("bound", "bound"), ("intensity", "FLOP/B")], id="overview-headroom")
           if rows else html.Div("Roofline not available for this trace.", className="status"))
    return [
        selection_note(data, sel, id="overview-selection"),
        findings_list(data, sel),
        html.Div(kpis(data, sel), className="kpis", id="overview-kpis"),
        html.Details(className="card small", open=False, children=[
            html.Summary("Ops furthest below their roof (time saved if each ran at its roof, alone)"), ops]),
        html.Div(className="card small", children=[
            html.H4("Where to look"),
            html.Ul([
                html.Li([dcc.Link("Timeline", href="/timeline"), ": every node, chip and engine over time; zoom to see ops."]),
                html.Li([dcc.Link("Roofline", href="/roofline"), ": how far each op class sits below its roof."]),
                html.Li([dcc.Link("Stalls", href="/stalls"), ": where each rank's time went; click a rank to select it."]),
                html.Li([dcc.Link("Communication", href="/comm"), ": traffic between nodes, bus bandwidth, stragglers."]),
                html.Li([dcc.Link("Serving", href="/serving"), ": TTFT / TPOT distributions and throughput over time."]),
            ])]),
    ]


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    sel = data.page_selection(selection, query)
    return html.Div([html.H2("Overview"), html.Div(body(data, sel), id="overview-body")])


def register_callbacks(app: dash.Dash) -> None:
    """A new selection (the header's ranks, "clear") recomputes the page for it."""
    from sohuprof.dashboards.app import current_data
    from sohuprof.dashboards.data import ensure_selection

    @app.callback(Output("overview-body", "children"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> list[Any]:
        return body(current_data(), ensure_selection(selection))
