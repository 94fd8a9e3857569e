"""Small HTML building blocks the pages share: KPI tiles, tables, the "not available" notice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dash
from dash import Input, Output, State, dcc, html

__all__ = ["kpi", "unavailable", "table", "graph", "fmt_ms", "fmt_si", "rank_from_click", "toggle_rank",
           "rank_graph_callbacks", "rank_click_callback", "selection_note", "selection_text"]

#: Plotly's toolbar, trimmed; every graph gets a PNG download named after its id.
#: ``plotGlPixelRatio`` 1: plotly's default 2 draws WebGL traces at four times the pixels, which
#: made the roofline's first draw 0.8-1.8 s instead of 0.2-0.35 s in Chromium's software WebGL.
_GRAPH_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"],
                 "plotGlPixelRatio": 1}


def fmt_ms(ns: float | None) -> str:
    """Nanoseconds as ``12.345 ms``."""
    return "–" if ns is None else f"{ns / 1e6:,.3f} ms"


def fmt_si(value: float | None, unit: str = "") -> str:
    """``9.5 P<unit>``-style numbers for FLOP/s, bytes/s and the like."""
    if value is None:
        return "–"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:,.2f} {prefix}{unit}"
    return f"{value:,.3g} {unit}".rstrip()


def kpi(name: str, value: str, detail: str = "", *, id: str | None = None) -> html.Div:
    """A KPI tile: a big number, its name and a line of context."""
    return html.Div(className="kpi", id=id or f"kpi-{name.lower().replace(' ', '-').replace('/', '-')}",
                    children=[html.Div(name, className="name"), html.Div(value, className="value"),
                              html.Div(detail, className="detail")])


def unavailable(page: str, reason: str) -> html.Div:
    """The notice a page shows instead of its figures when its report does not apply."""
    return html.Div(className="unavailable", id=f"{page.lower()}-unavailable",
                    children=f"{page} is not available for this trace: {reason}")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], *, id: str | None = None) -> html.Table:
    """A plain HTML table of ``rows`` showing ``columns`` as ``(key, header)`` pairs."""
    head = html.Thead(html.Tr([html.Th(header) for _, header in columns]))
    body = html.Tbody([html.Tr([html.Td(row.get(key, "")) for key, _ in columns]) for row in rows])
    return html.Table([head, body], className="simple", **({"id": id} if id else {}))


def selection_text(sel: Any, origin: int) -> str:
    """``ranks 1, 2 · 12.500 – 14.250 ms`` for what a page was computed on, or ``""`` for the whole trace."""
    from sohuprof.dashboards.data import ensure_selection, format_ranks

    sel = ensure_selection(sel)
    parts = []
    if sel.ranks is not None:
        parts.append(f"rank{'s' if len(sel.ranks) > 1 else ''} {format_ranks(sel.ranks).replace(',', ', ')}")
    if sel.window is not None:
        a, b = ((t - origin) / 1e6 for t in sel.window)
        parts.append(f"{a:,.3f} – {b:,.3f} ms")
    return " · ".join(parts)


def selection_note(data: Any, sel: Any, *, id: str) -> html.Div:
    """The line saying a page's numbers are for the selection only (empty for the whole trace)."""
    text = selection_text(sel, data.origin)
    return html.Div(f"Computed for the selection only: {text} (clear it in the header for the whole run)."
                    if text else "", className="status selection-note", id=id)


def graph(id: str, figure: Any, **kwargs: Any) -> dcc.Graph:
    """A ``dcc.Graph`` with the shared toolbar settings."""
    config = dict(_GRAPH_CONFIG, toImageButtonOptions={"filename": f"sohuprof-{id}"})
    return dcc.Graph(id=id, figure=figure, config=config, **kwargs)


def rank_from_click(click: dict[str, Any] | None) -> int | None:
    """The rank of a clicked bar (its ``customdata``, or its ``rN`` label)."""
    if not click or not click.get("points"):
        return None
    point = click["points"][0]
    value = point.get("customdata", point.get("x"))
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return int(str(value).lstrip("r"))
    except (TypeError, ValueError):
        return None


def toggle_rank(rank: int | None, current: list[int] | None) -> Any:
    """The rank dropdown's new value after clicking ``rank``: add it, or remove it if selected."""
    if rank is None:
        return dash.no_update
    ranks = list(current or [])
    return [r for r in ranks if r != rank] if rank in ranks else sorted(ranks + [rank])


def rank_click_callback(app: dash.Dash, graph_id: str) -> None:
    """A click on a per-rank graph toggles the clicked rank in the shared selection."""

    @app.callback(Output("selection-ranks", "value", allow_duplicate=True), Input(graph_id, "clickData"),
                  State("selection-ranks", "value"), prevent_initial_call=True)
    def _select(click: dict[str, Any] | None, current: list[int] | None) -> Any:
        return toggle_rank(rank_from_click(click), current)


def rank_graph_callbacks(app: dash.Dash, graph_id: str, build: Callable[[Any, Any], Any]) -> None:
    """A per-rank graph's two callbacks: redraw it when the selection changes (``build(data,
    selection)``), and toggle the clicked rank in the shared selection."""
    from sohuprof.dashboards import figures
    from sohuprof.dashboards.app import current_data
    from sohuprof.dashboards.data import NotAvailable

    @app.callback(Output(graph_id, "figure"), Input("selection", "data"), prevent_initial_call=True)
    def _update(selection: Any) -> Any:
        try:
            return build(current_data(), selection)
        except NotAvailable as exc:
            return figures.message_figure(f"not available for this trace: {exc}")

    rank_click_callback(app, graph_id)
