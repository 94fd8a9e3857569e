"""Small HTML building blocks the pages share: KPI tiles, tables, the "not available" notice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import dcc, html

__all__ = ["kpi", "unavailable", "table", "graph", "fmt_ms", "fmt_si"]

#: Plotly's toolbar, trimmed; every graph gets a PNG download named after its id.
_GRAPH_CONFIG = {"displaylogo": False, "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"]}


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


def graph(id: str, figure: Any, **kwargs: Any) -> dcc.Graph:
    """A ``dcc.Graph`` with the shared toolbar settings."""
    config = dict(_GRAPH_CONFIG, toImageButtonOptions={"filename": f"sohuprof-{id}"})
    return dcc.Graph(id=id, figure=figure, config=config, **kwargs)
