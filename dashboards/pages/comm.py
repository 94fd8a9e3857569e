"""Communication page: where collectives lose time, loss first.

Top to bottom: what is slow (slow NICs and links, the first root cause of waiting), bandwidth
per link and per NIC measured against the hardware, the root-cause ranking of waiting (top ranks
as bars, every rank in a node x chip grid beyond 16), node-to-node traffic with each node's
intra-node traffic on the diagonal, busbw per collective against its link roof, and the
collectives' details. Everything is the comm report's (and the roofline report's link roofs);
the page follows the shared selection (the report computed for the window and ranks, where the
dashboard's data layer offers it; selected ranks outlined either way).
"""

from __future__ import annotations

from typing import Any

import dash
import pandas as pd
from dash import Input, Output, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import (fmt_ms, fmt_si, graph, rank_click_callback, selection_note, table,
                                            unavailable)
from sohuprof.dashboards.data import DashboardData, NotAvailable, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "comm_frames", "comm_report", "link_roofs", "spec_links",
           "root_cause_rows", "collective_rows", "body",
           "stragglers_figure"]

PATH = "/comm"
NAME = "Communication"
#: Ranks drawn as bars in the root-cause ranking; beyond, every rank is a cell of a grid too.
TOP_RANKS = 16
#: Rows of the collectives table (hundreds of groups at 256 ranks: those that expose the most time).
TOP_COLLECTIVES = 24
_FRAMES = ("collectives", "stragglers", "links", "nics", "intra_node")


def comm_report(data: DashboardData, selection: Any = None) -> dict[str, Any]:
    """The comm report's JSON, computed by the analyzers for the selection (ranks, window)."""
    return data.report("comm", ensure_selection(selection))


def comm_frames(data: DashboardData, selection: Any = None) -> dict[str, pd.DataFrame]:
    """The comm report's tables (``collectives``, ``stragglers``, ``links``, ``nics``,
    ``intra_node``) as DataFrames, from its JSON."""
    report = comm_report(data, selection)
    return {key: pd.DataFrame(report.get(key) or []) for key in _FRAMES}


def stragglers_figure(data: DashboardData, selection: Any) -> Any:
    """The root-cause ranking's bars (top ranks), the selected ranks drawn dark."""
    sel = ensure_selection(selection)
    return figures.stragglers_figure(comm_frames(data, sel)["stragglers"], sel.ranks, top=TOP_RANKS)


def link_roofs(data: DashboardData) -> dict[str, float]:
    """Per collective kind, the busbw its links allow (the roofline report's ``link_bandwidth``,
    from the hardware spec and the groups' placement); empty without a roofline report."""
    try:
        rows = data.report("roofline").get("collectives") or []
    except NotAvailable:
        return {}
    return {str(r["op"]): float(r["link_bandwidth"]) for r in rows if r.get("link_bandwidth")}


def spec_links(data: DashboardData) -> dict[str, float]:
    """The hardware's link bandwidths (label -> B/s per direction) from the manifest's spec."""
    hw = data.manifest.get("hardware") or {}
    out = {}
    if hw.get("intra_node_bandwidth"):
        out["intra-node link"] = float(hw["intra_node_bandwidth"])
    if hw.get("inter_node_bandwidth"):
        out["NIC share"] = float(hw["inter_node_bandwidth"])
    return out


def root_cause_rows(stragglers: pd.DataFrame, *, top: int = 10) -> list[dict[str, Any]]:
    """The root-cause ranking's first ``top`` rows, formatted for the table."""
    if not len(stragglers):
        return []
    rooted = "root_cost_ns" in stragglers
    frame = stragglers.sort_values(["root_cost_ns" if rooted else "delay_cost_ns", "rank"],
                                   ascending=[False, True]).head(top)
    rows = []
    for r in frame.to_dict("records"):      # at most ``top`` rows
        ratio = r.get("peer_ratio")
        rows.append({"rank": f"r{r['rank']}", "where": f"node {r['node']} · chip {r['chip']}",
                     "root": fmt_ms(r.get("root_cost_ns")) if rooted else "–",
                     "cause": r.get("cause") or "–",
                     "ratio": f"{ratio:.2f}×" if isinstance(ratio, (int, float)) and ratio == ratio else "–",
                     "delay": fmt_ms(r.get("delay_cost_ns")), "late": f"{int(r.get('late_count') or 0):,}"})
    return rows


def collective_rows(collectives: pd.DataFrame, roofs: dict[str, float]) -> list[dict[str, Any]]:
    """One formatted row per (kind, group): calls, bytes, bandwidths against the roof, times."""
    rows = []
    for r in collectives.to_dict("records"):     # one per (kind, group)
        roof = roofs.get(str(r["kind"]))
        busbw = r.get("busbw")
        share = f"{busbw / roof:.0%}" if busbw is not None and roof else "–"
        rows.append({"kind": str(r["kind"]), "group": r["group"], "count": f"{int(r['count']):,}",
                     "bytes": fmt_si(float(r["bytes"]), "B"), "algbw": fmt_si(r.get("algbw"), "B/s"),
                     "busbw": fmt_si(busbw, "B/s"), "roof": fmt_si(roof, "B/s"), "share": share,
                     "time": fmt_ms(r.get("time_ns")), "exposed": fmt_ms(r.get("exposed_ns")),
                     "overlapped": fmt_ms(r.get("overlapped_ns")), "wait": fmt_ms(r.get("wait_ns"))})
    return rows


def _headline(frames: dict[str, pd.DataFrame]) -> html.Div:
    """What is slow, in a few lines: slow NICs, slow links, the first root cause."""
    items = []
    nics, links, strag = frames["nics"], frames["links"], frames["stragglers"]
    for r in (nics[nics["slow"].astype(bool)].to_dict("records") if len(nics) else []):
        items.append(html.Li([html.B(f"slow NIC on node {r['node']}"),
                              f": {fmt_si(r['rate'], 'B/s')} while moving, {r['ratio']:.2f}× the other nodes "
                              f"(expected {fmt_si(r['expected_rate'], 'B/s')}); held transfers back "
                              f"{fmt_ms(r['wait_ns'])}"]))
    for r in (links[links["slow"].astype(bool)].to_dict("records") if len(links) and "slow" in links else []):
        items.append(html.Li([html.B(f"slow link node {r['src_node']} → node {r['dst_node']}"),
                              f": {fmt_si(r.get('bandwidth'), 'B/s')} measured, "
                              f"{fmt_si(r.get('expected_bandwidth'), 'B/s')} expected"]))
    if len(strag) and "root_cost_ns" in strag and int(strag["root_cost_ns"].max()) > 0:
        top = strag.sort_values("root_cost_ns", ascending=False).iloc[0]
        items.append(html.Li([html.B(f"first root cause of waiting: r{top['rank']} "
                                     f"(node {top['node']} · chip {top['chip']})"),
                              f": its own excess made others wait {fmt_ms(top['root_cost_ns'])}"
                              + (f" ({top['cause']})" if isinstance(top.get("cause"), str) else "")]))
    if not items:
        items.append(html.Li("no slow NIC or link, and no rank's own excess made others wait"))
    return html.Div(className="card", id="comm-headline", children=[html.H4("What is slow"), html.Ul(items)])


def body(data: DashboardData, selection: Any) -> list[Any]:
    """The page below its title, for the selection (raises :class:`NotAvailable` without comm)."""
    sel = ensure_selection(selection)
    frames = comm_frames(data, sel)
    report_notes = comm_report(data, sel).get("notes") or []
    roofs = link_roofs(data)
    ranks = data.ranks
    strag = frames["stragglers"]
    ranking: list[Any] = [graph("comm-stragglers", figures.stragglers_figure(strag, sel.ranks, top=TOP_RANKS))]
    if len(ranks) > TOP_RANKS:
        column = "root_cost_ns" if "root_cost_ns" in strag else "delay_cost_ns"
        ranking.append(graph("comm-rank-grid", figures.rank_grid_figure(
            strag, ranks, column, selected=sel.ranks,
            title="every rank: the waiting its own excess caused (ms; click a cell to select the rank)")))
    cause_rows = root_cause_rows(strag)
    ranking.append(table(cause_rows, [("rank", "rank"), ("where", "node · chip"), ("root", "root cost"),
                                      ("cause", "main cause"), ("ratio", "vs stage peers"),
                                      ("delay", "delay cost"), ("late", "late arrivals")], id="comm-root-causes")
                   if cause_rows else html.Div("no rank made another wait", className="status"))
    intra = frames["intra_node"]
    nodes = max([data.nodes] + [int(frames["links"][c].max()) + 1 for c in ("src_node", "dst_node")
                                if len(frames["links"]) and c in frames["links"]])
    coll = frames["collectives"]
    shown = coll.sort_values(["exposed_ns", "kind", "group"], ascending=[False, True, True]).head(TOP_COLLECTIVES) \
        if len(coll) > TOP_COLLECTIVES else coll
    coll_rows = collective_rows(shown, roofs)
    return [
        selection_note(data, sel, id="comm-selection"),
        *[html.Div(n, className="status comm-note") for n in report_notes],
        _headline(frames),
        html.Div(className="row", children=[
            html.Div(graph("comm-links", figures.link_bandwidth_figure(frames["links"])), className="card"),
            html.Div(graph("comm-nics", figures.nic_figure(frames["nics"])), className="card"),
        ]),
        html.Div(className="card", id="comm-ranking", children=[
            html.H4("Root causes of waiting (the diagnosis' ranking: each rank's own excess, directly and through "
                    "propagation)"), *ranking]),
        html.Div(className="row", children=[
            html.Div([graph("comm-matrix", figures.traffic_figure(frames["links"], nodes, intra)),
                      html.Div("intra-node traffic: " + (", ".join(f"node {r['node']} {fmt_si(float(r['bytes']), 'B')}"
                                                                    for r in intra.head(8).to_dict("records"))
                                                          + (" …" if len(intra) > 8 else "")
                                                          if len(intra) else "none (no collective has two members "
                                                                              "on one node)"),
                               className="status", id="comm-intra")], className="card"),
            html.Div(graph("comm-busbw", figures.busbw_figure(frames["collectives"], roofs, spec_links(data))),
                     className="card"),
        ]),
        html.Div(className="card", children=[
            html.H4("Collectives per kind and group" + (f" (the {len(shown)} of {len(coll)} with the most exposed time)"
                                                         if len(coll) > len(shown) else "")),
            table(coll_rows, [("kind", "kind"), ("group", "group"), ("count", "calls"), ("bytes", "bytes"),
                              ("algbw", "algbw"), ("busbw", "busbw"), ("roof", "link roof"), ("share", "of roof"),
                              ("time", "transfer"), ("exposed", "exposed"), ("overlapped", "overlapped"),
                              ("wait", "sync wait")], id="comm-collectives")
            if coll_rows else html.Div("no collectives", className="status")]),
    ]


def _body_or_reason(data: DashboardData, sel: Any) -> list[Any]:
    try:
        return body(data, sel)
    except NotAvailable as exc:
        return [selection_note(data, sel, id="comm-selection"),
                html.Div(f"Communication is not available for this selection: {exc}", className="unavailable",
                         id="comm-selection-unavailable")]


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    sel = data.page_selection(selection, query)
    try:
        comm_report(data, None)                 # the store has a comm report at all
    except NotAvailable as exc:
        return html.Div([html.H2("Communication"), unavailable("Communication", str(exc))])
    return html.Div([html.H2("Communication"), html.Div(_body_or_reason(data, sel), id="comm-body")])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    @app.callback(Output("comm-body", "children"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> Any:
        return _body_or_reason(current_data(), ensure_selection(selection))

    for graph_id in ("comm-stragglers", "comm-rank-grid"):
        rank_click_callback(app, graph_id)
