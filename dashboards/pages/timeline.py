"""Timeline page: rows for every node -> chip -> engine, level of detail by zoom.

Whatever is in view, the lanes are one image (see :mod:`sohuprof.dashboards.timeline_figure`):
each pixel column is coloured by the op class busiest there, so a zoom costs the pixels, not the
events. Once at most :data:`MAX_SEGMENTS` ops of expanded lanes are in view each op also gets a
hover and, if wide, its name. Nodes beyond :data:`OPEN_CHIPS` chips start collapsed (one row per
node); a click on a collapsed row opens it, the two dropdowns say which nodes and chips are open.

A zoom (plotly ``relayoutData``), a change of the shared selection, of what is open, of the
overlays or a search step is one callback: it returns the figure, the counter tracks, the status
and the new window in one response. The window and ranks live in the shared selection (and the
URL, through the app); what is open, the overlays and the search are this page's URL parameters.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import dash
import numpy as np
import pandas as pd
from dash import Input, Output, Patch, State, dcc, html

from sohuprof.analyzers.timeline import Expand, counter_tracks, layout_rows
from sohuprof.dashboards import timeline_figure as tf
from sohuprof.dashboards.components import fmt_ms, fmt_si, graph
from sohuprof.dashboards.data import DashboardData, NotAvailable, Selection, ensure_selection, parse_ranks

__all__ = ["PATH", "NAME", "layout", "warm", "register_callbacks", "timeline_view", "build_figure", "window_from_relayout",
           "zoom_selection", "on_relayout", "details_panel", "expand_of", "search", "collective_details",
           "MAX_SEGMENTS", "OPEN_CHIPS"]

PATH = "/timeline"
NAME = "Timeline"
#: Ops drawn one by one (hover, names) at most; above this only the image.
MAX_SEGMENTS = 10_000
#: Pixel columns of a view.
WIDTH = 1400
#: The narrowest window a zoom may ask for (ns).
MIN_SPAN_NS = 2_000
#: Stores with at most this many chips open every node and chip by default.
OPEN_CHIPS = 16
#: URL parameters this page owns.
VIEW_KEYS = ("nodes", "chips", "overlay", "counters", "q")

_cache: weakref.WeakKeyDictionary[DashboardData, dict[str, Any]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _small(data: DashboardData) -> dict[str, Any]:
    """Per-store tables this page reads often (counters, collectives, the critical path), once."""
    with _cache_lock:
        return _cache.setdefault(data, {})


def _counters(data: DashboardData) -> pd.DataFrame:
    small = _small(data)
    if "counters" not in small:
        small["counters"] = data.store.read("counters").to_pandas()
    return small["counters"]


def _collectives(data: DashboardData) -> pd.DataFrame:
    small = _small(data)
    if "collectives" not in small:
        small["collectives"] = data.store.read("collectives").to_pandas()
    return small["collectives"]


def _critical_path(data: DashboardData) -> pd.DataFrame | None:
    small = _small(data)
    if "path" not in small:
        try:
            small["path"] = getattr(data.result("critical_path"), "segments", None)
        except NotAvailable:
            small["path"] = None
    return small["path"]


# -- what is shown ------------------------------------------------------------------------------

def default_open(data: DashboardData) -> tuple[list[int], list[int]]:
    """Open nodes and chips (ranks) by default: all of them up to :data:`OPEN_CHIPS` chips, else none."""
    lanes = data.index.lanes
    ranks = np.unique(lanes["rank"].to_numpy())
    if len(ranks) <= OPEN_CHIPS:
        return np.unique(lanes["node"].to_numpy()).tolist(), ranks.tolist()
    return [], []


def expand_of(data: DashboardData, selection: Any, nodes: list[int] | None, chips: list[int] | None) -> Expand:
    """What is open: the dropdowns' nodes and chips; a selection of a few ranks shows them whole."""
    sel = ensure_selection(selection)
    if sel.ranks is not None and len(sel.ranks) <= OPEN_CHIPS:
        return Expand()
    return Expand(frozenset(int(n) for n in nodes or []), frozenset(int(r) for r in chips or []))


def _ranks(data: DashboardData, selection: Any) -> list[int] | None:
    sel = ensure_selection(selection)
    ranks = list(sel.ranks) if sel.ranks is not None else None
    if ranks is not None and not data.index.lanes["rank"].isin(ranks).any():
        return None
    return ranks


def timeline_view(data: DashboardData, selection: Any, expand: Expand | None = None) -> Any:
    """The :class:`TimelineView` of the selected window and ranks."""
    sel = ensure_selection(selection)
    index = data.index
    start, end = sel.window if sel.window is not None else (index.start, index.end)
    if expand is None:
        expand = expand_of(data, selection, *default_open(data))
    return index.view(start, end, width=WIDTH, max_segments=MAX_SEGMENTS, ranks=_ranks(data, selection),
                      expand=expand)


def _status(view: Any) -> str:
    closed = int((view.rows["kind"] != "lane").sum())
    fold = f" {closed:,} collapsed row(s): click one to open it." if closed else ""
    if view.mode == "density":
        return (f"{view.events_in_view:,} ops in view; each pixel column shows the op class that kept the row "
                f"busiest (lighter: a collective waiting for its last peer; fainter: less busy). Drag or W/S to zoom, "
                f"A/D to pan; below {MAX_SEGMENTS:,} ops of open rows each op gets a hover.{fold}")
    return (f"{view.events_in_view:,} ops drawn exactly. Click an op for its details (a collective: its peers, "
            f"arrivals and waits); double-click for the whole trace.{fold}")


#: Figures kept per store (the default view, and going back and forth between a few).
FIGURES_KEPT = 8


def build_figure(data: DashboardData, selection: Any, expand: Expand | None = None, *,
                 overlay: list[str] | None = None, shapes: list[dict[str, Any]] | None = None) -> tuple[Any, str]:
    """The timeline figure for ``selection`` and the status line under it."""
    sel = ensure_selection(selection)
    expand = expand if expand is not None else expand_of(data, selection, *default_open(data))
    path_on = bool(overlay and "path" in overlay)
    ranks = _ranks(data, selection)
    key = (tuple(sel.window) if sel.window is not None else None, tuple(ranks) if ranks is not None else None,
           expand, path_on)
    small = _small(data)
    with _cache_lock:
        cached = small.setdefault("figures", OrderedDict()).get(key) if shapes is None else None
        if cached is not None:
            small["figures"].move_to_end(key)
    if cached is not None:
        # The cached dict is shared: hand out a copy whose layout the caller may change.
        return {"data": cached[0]["data"], "layout": dict(cached[0]["layout"])}, cached[1]
    view = timeline_view(data, selection, expand)
    path = _critical_path(data) if path_on else None
    fig = tf.timeline_figure(view, origin=data.index.start, path=path, shapes=shapes)
    status = _status(view)
    if shapes is None:
        with _cache_lock:
            figures = small["figures"]
            figures[key] = (fig, status)
            while len(figures) > FIGURES_KEPT:
                figures.popitem(last=False)
    return fig, status


def warm(data: DashboardData) -> None:
    """Build the index and the default view now (the server does, before the analyses)."""
    build_figure(data, None)


def counters_panel(data: DashboardData, selection: Any, names: list[str] | None) -> Any:
    """The chosen counter tracks over the window (a rate, or a level for memory counters)."""
    sel = ensure_selection(selection)
    index = data.index
    start, end = sel.window if sel.window is not None else (index.start, index.end)
    edges = np.linspace(start, end, 301).round().astype(np.int64)
    tracks = counter_tracks(_counters(data), list(names or []), _ranks(data, selection), edges)
    return tf.counters_figure(tracks, origin=index.start, start=start, end=end)


def counter_names(data: DashboardData) -> list[str]:
    counters = _counters(data)
    return sorted(counters["counter"].astype(str).unique().tolist()) if len(counters) else []


# -- zoom -------------------------------------------------------------------------------------

def window_from_relayout(relayout: dict[str, Any] | None, data: DashboardData) -> tuple[int, int] | None | bool:
    """The time window a plotly relayout event asks for (ns), ``None`` for the whole trace, or
    ``False`` when the event is not a change of the time axis (autosize, legend clicks ...)."""
    if not relayout:
        return False
    if relayout.get("xaxis.autorange"):
        return None
    if "xaxis.range[0]" in relayout and "xaxis.range[1]" in relayout:
        lo, hi = relayout["xaxis.range[0]"], relayout["xaxis.range[1]"]
    elif isinstance(relayout.get("xaxis.range"), (list, tuple)) and len(relayout["xaxis.range"]) == 2:
        lo, hi = relayout["xaxis.range"]
    else:
        return False
    try:
        lo_ms, hi_ms = float(lo), float(hi)
    except (TypeError, ValueError):
        return False
    return _clamp(data, int(data.index.start + lo_ms * 1e6), int(data.index.start + hi_ms * 1e6))


def _clamp(data: DashboardData, start: int, end: int) -> tuple[int, int] | None:
    index = data.index
    start, end = max(start, index.start), min(end, index.end)
    if end - start < MIN_SPAN_NS:
        mid = (start + end) // 2
        start, end = max(mid - MIN_SPAN_NS // 2, index.start), min(mid + MIN_SPAN_NS // 2, index.end)
    if start <= index.start and end >= index.end:
        return None
    return (start, end) if end > start else None


def zoom_selection(data: DashboardData, relayout: dict[str, Any] | None, selection: Any) -> Any:
    """The selection after a zoom or pan of the timeline (``no_update`` if the time axis did not move)."""
    window = window_from_relayout(relayout, data)
    if window is False:
        return dash.no_update
    sel = ensure_selection(selection)
    new = Selection(sel.ranks, window)  # type: ignore[arg-type]
    return dash.no_update if new == sel else new.to_store()


def on_relayout(data: DashboardData, relayout: dict[str, Any] | None, selection: Any,
                expand: Expand | None = None, overlay: list[str] | None = None) -> tuple[Any, Any, Any]:
    """A zoom round-trip as the browser sees it: (new selection, new figure, status), or
    ``no_update`` everywhere when the time axis did not move."""
    new = zoom_selection(data, relayout, selection)
    if new is dash.no_update:
        return dash.no_update, dash.no_update, dash.no_update
    fig, status = build_figure(data, new, expand, overlay=overlay)
    return new, fig, status


# -- search -----------------------------------------------------------------------------------

def search(data: DashboardData, query: str | None, direction: int, selection: Any,
           at: Any = None) -> tuple[Any, str, Any]:
    """The next (``direction`` 1) or previous (-1) op whose name contains ``query`` (any case)
    on the shown ranks: after the match ``at`` (``(rank, lane, start_ns, end_ns)``, as returned
    before), else from the middle of the window. Returns (new selection centred on it, status,
    the match as ``at``), or ``(no_update, why, None)``."""
    text = (query or "").strip()
    if not text:
        return dash.no_update, "", None
    index = data.index
    codes = np.flatnonzero(pd.Series(index.names, dtype=object).astype(str).str.contains(text, case=False,
                                                                                          regex=False).to_numpy())
    lanes = index.visible_lanes(_ranks(data, selection))["lane"].to_numpy()
    pos, lane_of = index.find(codes, lanes) if len(codes) else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if not len(pos):
        return dash.no_update, f"no op named like {text!r} on the shown ranks", None
    sel = ensure_selection(selection)
    ts, dur = index.ts[pos], index.dur[pos]
    if isinstance(at, (list, tuple)) and len(at) == 4:
        # Matches in (start, lane) order: step past the last one, even among simultaneous ones.
        t_at, lane_at = int(at[2]), int(at[1])
        if direction > 0:
            after = (ts > t_at) | ((ts == t_at) & (lane_of > lane_at))
            at = int(np.argmax(after)) if after.any() else 0                   # wrap around
        else:
            before = (ts < t_at) | ((ts == t_at) & (lane_of < lane_at))
            at = int(np.flatnonzero(before)[-1]) if before.any() else len(pos) - 1
    else:
        ref = (sel.window[0] + sel.window[1]) / 2 if sel.window is not None else None
        if direction > 0:
            at = int(np.searchsorted(ts, ref, side="right")) if ref is not None else 0
            at = at if at < len(pos) else 0
        else:
            at = (int(np.searchsorted(ts + dur / 2, ref - 1, side="left")) - 1 if ref is not None else len(pos) - 1)
            at = at if at >= 0 else len(pos) - 1
    t, d = int(ts[at]), int(dur[at])
    span = sel.window[1] - sel.window[0] if sel.window is not None else 0
    if not (span >= 3 * max(d, 1) and span <= 2_000 * max(d, 1_000)):
        span = max(40 * d, 10_000)
    mid = t + d // 2
    window = _clamp(data, mid - span // 2, mid + span // 2)
    new = Selection(sel.ranks, window).to_store()
    lane = int(lane_of[at])
    row = index.lanes.iloc[lane]
    name = str(index.names[index._name_codes[pos[at]]])
    status = (f"match {at + 1:,} of {len(pos):,} for {text!r}: {name} at {fmt_ms(t - index.start)} on "
              f"r{row['rank']} {row['track']}, {d / 1e3:,.2f} µs")
    return new, status, (int(row["rank"]), lane, t, t + d)


# -- clicks -----------------------------------------------------------------------------------

def _layout(data: DashboardData, selection: Any, expand: Expand) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    lanes = data.index.visible_lanes(_ranks(data, selection)).reset_index(drop=True)
    rows, lane_row = layout_rows(lanes, expand)
    return lanes, rows, lane_row


def collective_details(data: DashboardData, coll_id: int) -> pd.DataFrame:
    """Every member of collective instance ``coll_id``: rank, node, arrive, start, end, wait_ns,
    and ``last`` (the member the others waited for), in arrival order."""
    coll = _collectives(data)
    members = coll[coll["coll_id"] == int(coll_id)].copy()
    members["wait_ns"] = members["start"] - members["arrive"]
    members["last"] = members["arrive"] == members["arrive"].max() if len(members) else []
    return members.sort_values(["arrive", "rank"]).reset_index(drop=True)


def _peer_boxes(data: DashboardData, selection: Any, expand: Expand, members: pd.DataFrame,
                track: str) -> pd.DataFrame:
    """Rows and spans (arrival to leave) of a collective's members, for highlighting."""
    lanes, rows, lane_row = _layout(data, selection, expand)
    mine = lanes.assign(row=lane_row)
    coll = mine[mine["track"].astype(str) == track].drop_duplicates("rank").set_index("rank")["row"]
    first = mine.groupby("rank")["row"].min()
    row = coll.reindex(members["rank"].to_numpy()).to_numpy(float)
    fallback = first.reindex(members["rank"].to_numpy()).to_numpy(float)
    row = np.where(np.isnan(row), fallback, row)
    keep = ~np.isnan(row)
    return pd.DataFrame({"row": row[keep].astype(int), "start_ns": members["arrive"].to_numpy()[keep],
                         "end_ns": members["end"].to_numpy()[keep],
                         "fill": np.where(members["last"].to_numpy(bool)[keep], "rgba(255,200,0,0.25)", None)})


def _collective_panel(data: DashboardData, event: dict[str, Any], members: pd.DataFrame) -> Any:
    origin = data.index.start
    last = members[members["last"]]
    me = members[members["rank"] == event.get("rank")]
    head = (f"{event.get('op')} instance {event['coll_id']}: {len(members)} members; transfer began at "
            f"{fmt_ms(int(members['start'].max()) - origin)} when the last arrived "
            f"(r{', r'.join(map(str, last['rank'].tolist()))})")
    if len(me):
        head += f"; r{event.get('rank')} waited {int(me['wait_ns'].iloc[0]) / 1e3:,.2f} µs"
    rows = [html.Tr([html.Th(h) for h in ("rank", "node", "arrived", "waited", "left", "")])]
    for r in members.head(64).itertuples():     # the members of one collective, not events
        rows.append(html.Tr([html.Td(f"r{r.rank}"), html.Td(r.node), html.Td(fmt_ms(r.arrive - origin)),
                             html.Td(f"{r.wait_ns / 1e3:,.2f} µs"), html.Td(fmt_ms(r.end - origin)),
                             html.Td("last arriver" if r.last else "")]))
    more = html.Div(f"… and {len(members) - 64} more", className="status") if len(members) > 64 else None
    return html.Div([html.B("Collective"), html.Div(head, className="status", id="timeline-collective-summary"),
                     html.Table(rows, className="simple details", id="timeline-collective-table"), more])


def details_panel(data: DashboardData, click: dict[str, Any] | None, selection: Any,
                  expand: Expand | None = None) -> tuple[Any, Any, Any, Any]:
    """What a click on the timeline does: (details panel, open node, open chip, highlight boxes).

    A click on a collapsed row opens it; on an op, shows its store row and roofline position;
    on a collective, its members' arrivals and waits, with them highlighted."""
    expand = expand if expand is not None else expand_of(data, selection, *default_open(data))
    none = (dash.no_update, None, None, None)
    if not click or not click.get("points"):
        return (html.Div("Click an op on the timeline to see its details.", className="status"),) + none[1:]
    point = click["points"][0]
    try:
        row, t_ms = int(round(float(point["y"]))), float(point["x"])
    except (KeyError, TypeError, ValueError):
        return none
    lanes, rows, lane_row = _layout(data, selection, expand)
    if not 0 <= row < len(rows):
        return none
    info = rows.iloc[row]
    if info["kind"] == "node":
        return (html.Div(f"Opened node {info['node']}.", className="status"), int(info["node"]), None, None)
    if info["kind"] == "chip":
        return (html.Div(f"Opened r{info['rank']}.", className="status"), int(info["node"]), int(info["rank"]), None)
    lane = int(lanes["lane"].to_numpy()[np.flatnonzero(lane_row == row)[0]])
    event = data.event_at(lane, int(data.index.start + t_ms * 1e6))
    if event is None:
        return (html.Div("No op there.", className="status"), None, None, None)
    if event.get("coll_id") is not None:
        members = collective_details(data, int(event["coll_id"]))
        if len(members):
            boxes = _peer_boxes(data, selection, expand, members, str(event.get("track")))
            return (html.Div([_op_table(data, event), _collective_panel(data, event, members)]), None, None, boxes)
    return (_op_table(data, event), None, None, None)


def _op_table(data: DashboardData, event: dict[str, Any]) -> Any:
    origin = data.index.start
    fields = [
        ("op", f"{event.get('name')} ({event.get('op')}, {event.get('category')})"),
        ("where", f"rank {event.get('rank')} · node {event.get('node')} · chip {event.get('chip')} · {event.get('track')}"),
        ("when", f"{fmt_ms(event['ts'] - origin)} from start, lasting {event['dur'] / 1e3:,.3f} µs"),
        ("layer / step / phase", f"{event.get('layer')} / {event.get('step')} / {event.get('phase')}"),
        ("FLOPs", fmt_si(event.get("flops"), "FLOP")),
        ("HBM bytes", fmt_si(event.get("hbm_bytes"), "B")),
        ("network bytes", fmt_si(event.get("net_bytes"), "B")),
        ("memory stall", f"{(event.get('stall_mem_ns') or 0) / 1e3:,.3f} µs"),
    ]
    roof = event.get("roofline")
    if roof:
        fields += [("roofline", f"intensity {roof['intensity']:,.1f} FLOP/B, {roof['bound']}-bound"),
                   ("attained vs roof", f"{fmt_si(roof['attained_flops'], 'FLOP/s')} of {fmt_si(roof['roof_flops'], 'FLOP/s')} "
                                        f"({roof['efficiency']:.0%} of the roof)")]
    rows = [html.Tr([html.Th(k), html.Td(v)]) for k, v in fields]
    return html.Div([html.B("Selected op"), html.Table(rows, className="simple details", id="timeline-details-table")])


# -- page -------------------------------------------------------------------------------------

def _list(text: Any) -> list[int] | None:
    if text in (None, ""):
        return None
    if str(text) == "none":
        return []
    parsed = parse_ranks(str(text))
    return list(parsed) if parsed is not None else None


def layout(selection: Any = None, **query: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    selection = data.page_selection(selection, query).to_store()   # a pasted link's window and ranks
    nodes, chips = default_open(data)
    nodes = _list(query.get("nodes")) if _list(query.get("nodes")) is not None else nodes
    chips = _list(query.get("chips")) if _list(query.get("chips")) is not None else chips
    overlay = [v for v in str(query.get("overlay") or "").split(",") if v in ("path",)]
    names = counter_names(data)
    counters = [c for c in str(query.get("counters") or "").split(",") if c in names]
    expand = expand_of(data, selection, nodes, chips)
    fig, status = build_figure(data, selection, expand, overlay=overlay)
    lanes = data.index.lanes
    node_options = [{"label": f"node {n}", "value": int(n)} for n in np.unique(lanes["node"].to_numpy())]
    chip_frame = lanes.drop_duplicates("rank")
    chip_options = [{"label": f"r{r} (n{n}·c{c})", "value": int(r)}
                    for r, n, c in zip(chip_frame["rank"], chip_frame["node"], chip_frame["chip"])]
    control = {"minWidth": "220px", "fontSize": "13px"}
    return html.Div([
        html.H2("Timeline"),
        html.Div(className="controls", children=[
            html.Label("open nodes", className="label"),
            dcc.Dropdown(id="timeline-nodes", options=node_options, value=nodes, multi=True, placeholder="none",
                         style=control),
            html.Label("open chips", className="label"),
            dcc.Dropdown(id="timeline-chips", options=chip_options, value=chips, multi=True, placeholder="none",
                         style=control),
            html.Button("open all", id="timeline-open-all", n_clicks=0, className="button"),
            html.Button("collapse all", id="timeline-collapse-all", n_clicks=0, className="button"),
            dcc.Checklist(id="timeline-overlay", options=[{"label": " critical path", "value": "path"}],
                          value=overlay, inline=True),
            dcc.Dropdown(id="timeline-counters-pick", options=[{"label": c, "value": c} for c in names], value=counters,
                         multi=True, placeholder="counter tracks", style=control),
            dcc.Input(id="timeline-search", type="text", placeholder="find op by name", debounce=True,
                      value=str(query.get("q") or ""), style={"width": "160px"}),
            html.Button("◀", id="timeline-search-prev", n_clicks=0, className="button", title="previous match"),
            html.Button("▶", id="timeline-search-next", n_clicks=0, className="button", title="next match"),
            html.Span(id="timeline-search-status", className="status"),
        ]),
        html.Div(status, id="timeline-status", className="status"),
        html.Div(graph("timeline", fig), className="card"),
        html.Div(graph("timeline-counters", counters_panel(data, selection, counters)), className="card"),
        html.Div(id="timeline-details", className="card", children=details_panel(data, None, selection, expand)[0]),
        dcc.Store(id="timeline-url-sink"),
        dcc.Store(id="timeline-search-at"),
        # The shared selection as this page last drew it, and a copy that changes only when someone
        # else (the header, a link) moved it: see _SELECTION_IN_JS.
        dcc.Store(id="timeline-drawn", data=selection),
        dcc.Store(id="timeline-view-drawn", data=_view_key(nodes, chips, overlay, counters)),
        dcc.Store(id="timeline-selection", data=selection),
    ])


def _view_key(nodes: Any, chips: Any, overlay: Any, counters: Any) -> list[list[Any]]:
    """What is open and overlaid, comparable across the browser's JSON round trip."""
    return [sorted(int(v) for v in nodes or []), sorted(int(v) for v in chips or []),
            sorted(map(str, overlay or [])), sorted(map(str, counters or []))]


#: The page's own controls: a change of only these to what is drawn already is no redraw.
_VIEW_CONTROLS = {"timeline-nodes.value", "timeline-chips.value", "timeline-overlay.value",
                  "timeline-counters-pick.value"}


def _url_view_js() -> str:
    """Write this page's view (what is open, overlays, counters, search) into the URL, keeping
    the other parameters: no server round trip."""
    return """
    function(nodes, chips, overlay, counters, q) {
        const fmt = v => (v && v.length) ? v.slice().sort((a, b) => a - b).join(',') : 'none';
        const url = new URL(window.location.href);
        url.searchParams.set('nodes', fmt(nodes));
        url.searchParams.set('chips', fmt(chips));
        const put = (k, v) => { if (v && v.length) url.searchParams.set(k, v); else url.searchParams.delete(k); };
        put('overlay', (overlay || []).join(','));
        put('counters', (counters || []).join(','));
        put('q', q || '');
        if (url.href !== window.location.href) window.history.replaceState(window.history.state, '', url.href);
        return null;
    }"""


#: The shared selection into the page's own copy, unless it is the one the page just drew (its
#: own zoom, which must not draw twice). A callback with only page outputs is skipped on other
#: pages; one with the shared store as an Input beside page-only Inputs is not (console errors).
_SELECTION_IN_JS = """
    function(selection, drawn) {
        const key = s => JSON.stringify([(s || {}).ranks ?? null, (s || {}).window ?? null]);
        return key(selection) === key(drawn) ? window.dash_clientside.no_update : selection;
    }"""


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    # One callback for every redraw: a zoom, the shared selection, what is open, the overlays,
    # the counters or a search step. It also moves the shared window (same-callback cycle).
    @app.callback(Output("timeline", "figure"), Output("timeline-counters", "figure"),
                  Output("timeline-status", "children"), Output("selection", "data", allow_duplicate=True),
                  Output("timeline-search-status", "children"), Output("timeline-search-at", "data"),
                  Output("timeline-drawn", "data"), Output("timeline-view-drawn", "data"),
                  Input("timeline", "relayoutData"), Input("timeline-selection", "data"), Input("timeline-nodes", "value"),
                  Input("timeline-chips", "value"), Input("timeline-overlay", "value"),
                  Input("timeline-counters-pick", "value"), Input("timeline-search-next", "n_clicks"),
                  Input("timeline-search-prev", "n_clicks"), Input("timeline-search", "n_submit"),
                  State("timeline-search", "value"), State("timeline-search-at", "data"), State("selection", "data"),
                  State("timeline-view-drawn", "data"), prevent_initial_call=True)
    def _render(relayout: Any, _moved: Any, nodes: Any, chips: Any, overlay: Any, counters: Any,
                _next: Any, _prev: Any, _submit: Any, query: Any, at: Any, selection: Any,
                view_drawn: Any) -> tuple[Any, ...]:
        view = _view_key(nodes, chips, overlay, counters)
        # The controls report their values once when the page mounts (dash fires this despite
        # prevent_initial_call): the layout drew exactly that, so the figure is not built twice.
        if set(dash.ctx.triggered_prop_ids) <= _VIEW_CONTROLS and view == view_drawn:
            return (dash.no_update,) * 8
        data = current_data()
        trigger = dash.ctx.triggered_id
        new_sel: Any = dash.no_update
        found: Any = dash.no_update
        match: Any = dash.no_update
        shapes = None
        if trigger == "timeline":
            new_sel = zoom_selection(data, relayout, selection)
            if new_sel is dash.no_update:
                return (dash.no_update,) * 8
            selection = new_sel
        elif trigger in ("timeline-search-next", "timeline-search-prev", "timeline-search"):
            step = -1 if trigger == "timeline-search-prev" else 1
            moved, found, box = search(data, query, step, selection, at if trigger != "timeline-search" else None)
            match = box
            if moved is not dash.no_update:
                new_sel = selection = moved
            if box is not None:
                expand = expand_of(data, selection, nodes, chips)
                lanes, rows, lane_row = _layout(data, selection, expand)
                at = np.flatnonzero(lanes["lane"].to_numpy() == box[1])
                if len(at):
                    shapes = tf.highlight_shapes(pd.DataFrame({"row": [int(lane_row[at[0]])], "start_ns": [box[2]],
                                                               "end_ns": [box[3]], "fill": ["rgba(255,200,0,0.35)"]}),
                                                 data.index.start)
        expand = expand_of(data, selection, nodes, chips)
        fig, status = build_figure(data, selection, expand, overlay=overlay, shapes=shapes)
        drawn = ensure_selection(selection).to_store()
        # No counter picked: the empty panel stays as it is (a redraw costs the browser ~20 ms).
        panel = (counters_panel(data, selection, counters) if counters or trigger == "timeline-counters-pick"
                 else dash.no_update)
        return fig, panel, status, new_sel, found, match, drawn, view

    @app.callback(Output("timeline-details", "children"), Output("timeline-nodes", "value", allow_duplicate=True),
                  Output("timeline-chips", "value", allow_duplicate=True),
                  Output("timeline", "figure", allow_duplicate=True),
                  Input("timeline", "clickData"), State("selection", "data"), State("timeline-nodes", "value"),
                  State("timeline-chips", "value"), prevent_initial_call=True)
    def _click(click: Any, selection: Any, nodes: Any, chips: Any) -> tuple[Any, ...]:
        data = current_data()
        panel, node, rank, boxes = details_panel(data, click, selection, expand_of(data, selection, nodes, chips))
        nodes_out = sorted(set(nodes or []) | {node}) if node is not None else dash.no_update
        chips_out = sorted(set(chips or []) | {rank}) if rank is not None else dash.no_update
        fig: Any = dash.no_update
        if boxes is not None:
            fig = Patch()
            fig["layout"]["shapes"] = tf.highlight_shapes(boxes, data.index.start)
        return panel, nodes_out, chips_out, fig

    @app.callback(Output("timeline-nodes", "value", allow_duplicate=True),
                  Output("timeline-chips", "value", allow_duplicate=True),
                  Input("timeline-open-all", "n_clicks"), Input("timeline-collapse-all", "n_clicks"),
                  prevent_initial_call=True)
    def _fold(_open: Any, _collapse: Any) -> tuple[Any, Any]:
        if dash.ctx.triggered_id == "timeline-collapse-all":
            return [], []
        lanes = current_data().index.lanes
        return np.unique(lanes["node"]).tolist(), np.unique(lanes["rank"]).tolist()

    app.clientside_callback(_SELECTION_IN_JS, Output("timeline-selection", "data"), Input("selection", "data"),
                            State("timeline-drawn", "data"), prevent_initial_call=True)
    app.clientside_callback(_url_view_js(), Output("timeline-url-sink", "data"), Input("timeline-nodes", "value"),
                            Input("timeline-chips", "value"), Input("timeline-overlay", "value"),
                            Input("timeline-counters-pick", "value"), Input("timeline-search", "value"))
