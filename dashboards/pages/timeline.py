"""Timeline page: swimlanes for every node -> chip -> engine, level of detail by zoom.

While many ops are in view the figure is the per-pixel busy fraction of each lane (from the
:class:`~sohuprof.analyzers.timeline.TimelineIndex`'s cumulative sums: the cost depends on the
pixels, not on the events); once at most :data:`MAX_SEGMENTS` are, every op is drawn. A zoom
(plotly ``relayoutData``) asks the server for the new window's view and moves the shared time
window; a click on an op shows its store row and roofline position.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Input, Output, State, html

from sohuprof.dashboards import figures
from sohuprof.dashboards.components import fmt_ms, fmt_si, graph
from sohuprof.dashboards.data import DashboardData, Selection, ensure_selection

__all__ = ["PATH", "NAME", "layout", "register_callbacks", "timeline_view", "build_figure", "window_from_relayout",
           "zoom_selection", "on_relayout", "details_panel"]

PATH = "/timeline"
NAME = "Timeline"
#: Ops drawn one by one at most; above this the view is per-pixel density.
MAX_SEGMENTS = 10_000
#: Pixel columns of a density view.
WIDTH = 1200
#: The narrowest window a zoom may ask for (ns).
MIN_SPAN_NS = 1_000


def timeline_view(data: DashboardData, selection: Any) -> Any:
    """The :class:`TimelineView` of the selected window and ranks."""
    sel = ensure_selection(selection)
    index = data.index
    start, end = sel.window if sel.window is not None else (index.start, index.end)
    ranks = list(sel.ranks) if sel.ranks is not None else None
    if ranks is not None and not index.lanes["rank"].isin(ranks).any():
        ranks = None
    return index.view(start, end, width=WIDTH, max_segments=MAX_SEGMENTS, ranks=ranks)


def build_figure(data: DashboardData, selection: Any) -> tuple[Any, str]:
    """The timeline figure for ``selection`` and the status line under it."""
    view = timeline_view(data, selection)
    fig = figures.timeline_figure(view, origin=data.index.start)
    if view.mode == "density":
        status = (f"Level of detail: {view.events_in_view:,} ops in view, shown as busy fraction per pixel column "
                  f"({WIDTH} columns). Drag across the plot to zoom; below {MAX_SEGMENTS:,} ops every op is drawn. "
                  "Double-click to see the whole trace.")
    else:
        status = (f"Exact: {view.events_in_view:,} ops drawn. Click an op for its details; "
                  "double-click to see the whole trace.")
    return fig, status


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
    index = data.index
    start = max(int(index.start + lo_ms * 1e6), index.start)
    end = min(int(index.start + hi_ms * 1e6), index.end)
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


def on_relayout(data: DashboardData, relayout: dict[str, Any] | None, selection: Any) -> tuple[Any, Any, Any]:
    """A zoom round-trip as the browser sees it: (new selection, new figure, status), or
    ``no_update`` everywhere when the time axis did not move."""
    new = zoom_selection(data, relayout, selection)
    if new is dash.no_update:
        return dash.no_update, dash.no_update, dash.no_update
    fig, status = build_figure(data, new)
    return new, fig, status


def _row_lane(data: DashboardData, selection: Any, row: int) -> int | None:
    lanes = timeline_view_lanes(data, selection)
    return int(lanes["lane"].iloc[row]) if 0 <= row < len(lanes) else None


def timeline_view_lanes(data: DashboardData, selection: Any) -> Any:
    """The lanes drawn for ``selection``, in display order (row ``i`` of the figure)."""
    sel = ensure_selection(selection)
    lanes = data.index.lanes
    if sel.ranks is not None and lanes["rank"].isin(sel.ranks).any():
        lanes = lanes[lanes["rank"].isin(sel.ranks)]
    return lanes.reset_index(drop=True)


def details_panel(data: DashboardData, click: dict[str, Any] | None, selection: Any) -> Any:
    """The details of the clicked op: its store row and its place under the roofline."""
    if not click or not click.get("points"):
        return html.Div("Click an op on the timeline to see its details.", className="status")
    point = click["points"][0]
    try:
        row, t_ms = int(round(float(point["y"]))), float(point["x"])
    except (KeyError, TypeError, ValueError):
        return dash.no_update
    lane = _row_lane(data, selection, row)
    event = data.event_at(lane, int(data.index.start + t_ms * 1e6)) if lane is not None else None
    if event is None:
        return html.Div("No op there.", className="status")
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
    if event.get("coll_id") is not None:
        fields.append(("collective", f"instance {event['coll_id']}"))
    roof = event.get("roofline")
    if roof:
        fields += [("roofline", f"intensity {roof['intensity']:,.1f} FLOP/B, {roof['bound']}-bound"),
                   ("attained vs roof", f"{fmt_si(roof['attained_flops'], 'FLOP/s')} of {fmt_si(roof['roof_flops'], 'FLOP/s')} "
                                        f"({roof['efficiency']:.0%} of the roof)")]
    rows = [html.Tr([html.Th(k), html.Td(v)]) for k, v in fields]
    return html.Div([html.B("Selected op"), html.Table(rows, className="simple details", id="timeline-details-table")])


def layout(selection: Any = None, **_: Any) -> Any:
    from sohuprof.dashboards.app import current_data

    data = current_data()
    fig, status = build_figure(data, selection)
    return html.Div([
        html.H2("Timeline"),
        html.Div(status, id="timeline-status", className="status"),
        html.Div(graph("timeline", fig), className="card"),
        html.Div(id="timeline-details", className="card", children=details_panel(data, None, selection)),
    ])


def register_callbacks(app: dash.Dash) -> None:
    from sohuprof.dashboards.app import current_data

    # Two steps, so no callback has an Input on another page's component: a zoom moves the shared
    # window, and the shared selection (window or ranks, from any page) redraws the timeline.
    @app.callback(Output("selection", "data", allow_duplicate=True), Input("timeline", "relayoutData"),
                  State("selection", "data"), prevent_initial_call=True)
    def _zoom(relayout: dict[str, Any] | None, selection: Any) -> Any:
        return zoom_selection(current_data(), relayout, selection)

    @app.callback(Output("timeline", "figure"), Output("timeline-status", "children"), Input("selection", "data"),
                  prevent_initial_call=True)
    def _update(selection: Any) -> tuple[Any, Any]:
        return build_figure(current_data(), selection)

    @app.callback(Output("timeline-details", "children"), Input("timeline", "clickData"), State("selection", "data"),
                  prevent_initial_call=True)
    def _details(click: dict[str, Any] | None, selection: Any) -> Any:
        return details_panel(current_data(), click, selection)
