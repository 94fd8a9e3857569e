"""The timeline figure: a view of the :class:`~sohuprof.analyzers.timeline.TimelineIndex` drawn as
one image, with a few light traces on top.

Every row and pixel column of the view becomes one pixel run of a PNG (colour: the op class
busiest there, a collective's waiting part lighter; opacity: how busy), so the browser draws one
``<image>`` whatever the zoom and the number of lanes: no SVG path per op, and a column with any
op in it is never blank. On top, in exact mode (few ops in view), invisible markers give
each op a hover, and wide bars get their name written in; the critical path is one SVG line;
highlights (a collective's peers, a search match) are layout shapes.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import numpy as np
import pandas as pd

from sohuprof.dashboards.figures import TEMPLATE
from sohuprof.analyzers.timeline import WAIT_SUFFIX
from sohuprof.dashboards.palette import class_color, class_table

__all__ = ["LANE_PX", "PLOT_PX", "png", "lane_image", "timeline_figure", "counters_figure", "highlight_shapes"]

#: Pixels per timeline row.
LANE_PX = 16
#: The plot area's width in CSS pixels the labels are sized for (the figure is responsive).
PLOT_PX = 1300
#: A bar at least this wide (px) gets its name written in.
LABEL_MIN_PX = 44
#: Names written in at most (the widest bars first).
MAX_LABELS = 400
#: Ops given a hover target at most (the widest first).
MAX_HOVER = 2_500
_MARGIN = dict(l=190, r=20, t=70, b=46)
#: The template as plain JSON, once: the figure is built as a dict, because plotly's validating
#: objects cost more than the whole view (~100 ms a zoom for a few traces).
_TEMPLATE = TEMPLATE.to_plotly_json()


def _arr(values: np.ndarray, dtype: str = "f8") -> dict[str, str]:
    """A numpy array as plotly.js's typed-array spec (base64 bytes, no JSON number list)."""
    return {"dtype": dtype, "bdata": base64.b64encode(np.ascontiguousarray(values, dtype="<" + dtype).tobytes()).decode()}


def png(rgba: np.ndarray) -> bytes:
    """An RGBA ``[h, w, 4]`` uint8 array as a PNG file (no filter, fast deflate)."""
    h, w, _ = rgba.shape
    raw = np.zeros((h, 1 + 4 * w), np.uint8)
    raw[:, 1:] = rgba.reshape(h, 4 * w)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1)) + chunk(b"IEND", b""))


def _sub_rows(n: int, width: int) -> int:
    """Image rows per timeline row: 4 (three painted, one gap between rows) unless that is big."""
    return 4 if n * 4 * width <= 6_000_000 else 1


def lane_image(view: Any) -> tuple[str, int]:
    """The view's rows as a PNG data URI, and the image rows per timeline row."""
    busy, cls = view.row_busy, view.row_class
    n, width = busy.shape
    k = _sub_rows(n, width)
    rgb = class_table(view.classes)
    rgba = np.zeros((n, width, 4), np.uint8)
    on = cls >= 0
    if on.any():
        rgba[on, :3] = rgb[cls[on]]
        # Opacity from busy: a column with any op in it shows, however short the op.
        rgba[on, 3] = (80 + 175 * np.clip(busy[on], 0, 1)).astype(np.uint8)
    if k > 1:
        rgba = np.repeat(rgba, k, axis=0)
        rgba[k - 1::k] = 0
    return "data:image/png;base64," + base64.b64encode(png(rgba)).decode("ascii"), k


def _separators(view: Any, x0: float, x1: float) -> list[dict[str, Any]]:
    """Lines between nodes (dark) and between ranks (light), as two SVG paths."""
    rows = view.rows
    node, rank = rows["node"].to_numpy(), rows["rank"].to_numpy()
    out = []
    for where, color, width in ((np.flatnonzero(node[1:] != node[:-1]) + 1, "#333", 1.5),
                                (np.flatnonzero((rank[1:] != rank[:-1]) & (node[1:] == node[:-1])) + 1, "#c8c8c8", 1)):
        if not len(where) or (color != "#333" and len(rows) > 400):
            continue
        y = np.repeat(where - 0.5, 3).astype(float)
        y[2::3] = np.nan
        x = np.tile([x0, x1, np.nan], len(where))
        out.append(dict(type="scatter", x=_arr(x), y=_arr(y), mode="lines", line=dict(color=color, width=width),
                        hoverinfo="skip", showlegend=False))
    return out


def _ops(view: Any, origin: int) -> list[Any]:
    """Exact mode: hover markers for the ops and the names of the wide bars."""
    seg = view.segments
    if seg is None or not len(seg):
        return []
    lo, hi = view.start, view.end
    ts = seg["ts"].to_numpy(np.int64)
    dur = seg["dur"].to_numpy(np.int64)
    a, b = np.maximum(ts, lo), np.minimum(ts + dur, hi)
    mid = ((a + b) / 2 - origin) / 1e6
    row = seg["row"].to_numpy()
    names = seg["name"].to_numpy(dtype=object)
    ops = seg["op"].to_numpy(dtype=object)
    # Hover targets for every op when few, else for the widest: the vertices of one invisible
    # line (hover finds the nearest vertex from the data, so no SVG marker per op is needed:
    # 60 instead of 170 ms a redraw in Chromium at 1.3k ops; a WebGL context costs 1.4 s to create).
    px = (b - a) / max(hi - lo, 1) * PLOT_PX
    hover = np.arange(len(seg)) if len(seg) <= MAX_HOVER else np.sort(np.argsort(-px, kind="stable")[:MAX_HOVER])
    text = [f"<b>{n}</b> ({o})" for n, o in zip(names[hover].tolist(), ops[hover].tolist())]
    out: list[Any] = [dict(
        type="scatter", x=_arr(mid[hover]), y=_arr(row[hover], "i4"), mode="lines",
        line=dict(color="rgba(0,0,0,0)", width=1), text=text, customdata=_arr(dur[hover] / 1e3),
        hovertemplate="%{text}<br>%{customdata:,.2f} µs · %{x:.4f} ms<extra></extra>", showlegend=False, name="ops")]
    wide = np.flatnonzero(px >= LABEL_MIN_PX)
    if len(wide):
        wide = wide[np.argsort(-px[wide], kind="stable")[:MAX_LABELS]]
        chars = np.maximum((px[wide] // 6.5).astype(int) - 1, 1)
        text = [n if len(n) <= c else n[:max(c - 1, 1)] + "…" for n, c in zip(map(str, names[wide]), chars)]
        out.append(dict(type="scatter", x=_arr(mid[wide]), y=_arr(row[wide], "i4"), mode="text", text=text,
                        hoverinfo="skip", showlegend=False, textfont=dict(size=9, color="white"), cliponaxis=True))
    return out


def _path(view: Any, path: pd.DataFrame | None, origin: int) -> list[Any]:
    """The critical path as one line along the top of each rank's first row."""
    if path is None or not len(path):
        return []
    inside = (path["end_ns"].to_numpy() > view.start) & (path["start_ns"].to_numpy() < view.end)
    part = path[inside]
    rank_row = view.rank_rows()
    part = part[part["rank"].isin(rank_row.index)]
    if not len(part):
        return []
    y = rank_row.reindex(part["rank"].to_numpy()).to_numpy(float) - 0.42
    x0 = (np.maximum(part["start_ns"].to_numpy(), view.start) - origin) / 1e6
    x1 = (np.minimum(part["end_ns"].to_numpy(), view.end) - origin) / 1e6
    xs = np.column_stack([x0, x1, np.full(len(x0), np.nan)]).ravel()
    ys = np.column_stack([y, y, np.full(len(y), np.nan)]).ravel()
    return [dict(type="scatter", x=_arr(xs), y=_arr(ys), mode="lines", line=dict(color="#111", width=3),
                 name="critical path", hovertemplate="critical path · %{x:.4f} ms<extra></extra>", showlegend=True)]


def highlight_shapes(boxes: pd.DataFrame, origin: int, *, color: str = "#111") -> list[dict[str, Any]]:
    """Outlined rectangles for ``boxes`` (``row``, ``start_ns``, ``end_ns``, optional ``fill``)."""
    shapes = []
    for row, a, b, fill in zip(boxes["row"], boxes["start_ns"], boxes["end_ns"],
                               boxes["fill"] if "fill" in boxes else [None] * len(boxes)):
        shapes.append(dict(type="rect", xref="x", yref="y", x0=(a - origin) / 1e6, x1=(b - origin) / 1e6,
                           y0=row - 0.48, y1=row + 0.48, line=dict(color=color, width=2),
                           fillcolor=fill or "rgba(0,0,0,0)", layer="above"))
    return shapes


def timeline_figure(view: Any, *, origin: int, path: pd.DataFrame | None = None,
                    shapes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The figure (a plotly JSON dict) of a :class:`~sohuprof.analyzers.timeline.TimelineView`,
    time in ms from ``origin``."""
    rows = view.rows
    n = len(rows)
    start_ms, end_ms = (view.start - origin) / 1e6, (view.end - origin) / 1e6
    width = view.row_busy.shape[1]
    dx = (end_ms - start_ms) / width
    traces: list[dict[str, Any]] = []
    if n:
        uri, k = lane_image(view)
        traces.append(dict(type="image", source=uri, x0=start_ms + dx / 2, dx=dx, y0=-0.5 + 0.5 / k, dy=1 / k,
                           name="lanes", hovertemplate="%{x:.4f} ms<extra></extra>"))
    traces += _separators(view, start_ms, end_ms)
    if view.mode == "exact":
        traces += _ops(view, origin)
    traces += _path(view, path, origin)
    present = np.unique(view.row_class[view.row_class >= 0]) if n else np.zeros(0, int)
    for code in present:        # legend entries only: one per op class in view
        name = str(view.classes[code])
        traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name=name.replace(WAIT_SUFFIX, " (waiting)"),
                           marker=dict(color=class_color(name), size=10, symbol="square"), hoverinfo="skip"))
    if view.mode == "density":
        what = f"{view.events_in_view:,} ops in view: busy per pixel column, coloured by the busiest op class"
    else:
        what = f"{view.events_in_view:,} ops in view, drawn exactly (click one for its details)"
    yaxis = dict(tickmode="array", tickvals=list(range(n)), ticktext=rows["label"].tolist(), range=[n - 0.5, -0.5],
                 fixedrange=True, showgrid=False, zeroline=False, tickfont=dict(size=10), ticks="", showline=False,
                 ticklabeloverflow="allow",
                 scaleanchor=False, autorange=False)
    layout = dict(template=_TEMPLATE, height=max(260, LANE_PX * n + _MARGIN["t"] + _MARGIN["b"]), yaxis=yaxis,
                  xaxis=dict(title=dict(text="time since trace start (ms)", standoff=6), range=[start_ms, end_ms],
                             showgrid=True, zeroline=False, autorange=False, ticklabeloverflow="allow"),
                  title=dict(text=f"timeline {start_ms:,.3f} – {end_ms:,.3f} ms · {what}", font=dict(size=13)),
                  dragmode="zoom", hovermode="closest", margin=_MARGIN, shapes=shapes or [],
                  legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0, itemclick=False, itemdoubleclick=False,
                              font=dict(size=10)), uirevision="timeline",
                  # What the view is, for scripts and the page's own JS (plotly ignores ``meta``).
                  meta=dict(mode=view.mode, ops=int(view.events_in_view), origin_ns=int(origin),
                            window_ns=[int(view.start), int(view.end)]))
    return {"data": traces, "layout": layout}


def counters_figure(tracks: pd.DataFrame, *, origin: int, start: int, end: int) -> dict[str, Any]:
    """One small panel per counter (``counter_tracks`` output), on the timeline's time axis."""
    names = list(dict.fromkeys(tracks["counter"].astype(str))) if len(tracks) else []
    margin = dict(_MARGIN, t=10, b=30)
    if not names:
        return {"data": [], "layout": dict(
            template=_TEMPLATE, height=60, margin=dict(_MARGIN, t=10, b=10), xaxis=dict(visible=False),
            yaxis=dict(visible=False), annotations=[dict(text="no counter track chosen (pick one above)", showarrow=False,
                                                         xref="paper", yref="paper", x=0.5, y=0.5,
                                                         font=dict(color="#666"))])}
    k = len(names)
    gap = 0.06 if k > 1 else 0.0
    tall = (1 - gap * (k - 1)) / k
    data, layout = [], dict(template=_TEMPLATE, height=70 + 90 * k, showlegend=False, margin=margin,
                            hovermode="x unified")
    for i, name in enumerate(names):
        part = tracks[tracks["counter"].astype(str) == name]
        unit = "" if name.startswith(("memory", "cpu_memory")) else "/s"
        axis = "" if i == 0 else str(i + 1)
        data.append(dict(type="scatter", x=_arr((part["t_ns"].to_numpy(float) - origin) / 1e6),
                         y=_arr(part["value"].to_numpy(float)), mode="lines", line=dict(width=1.2, color="#264653"),
                         line_shape="hvh", connectgaps=False, name=name, xaxis="x", yaxis=f"y{axis}",
                         hovertemplate=f"{name}: %{{y:.3s}}{unit}<extra></extra>"))
        top = 1 - i * (tall + gap)
        layout[f"yaxis{axis}"] = dict(domain=[max(top - tall, 0), top], title=dict(text=f"{name}{unit}", font=dict(size=10)),
                                      exponentformat="SI", rangemode="tozero", fixedrange=True)
    layout["xaxis"] = dict(range=[(start - origin) / 1e6, (end - origin) / 1e6], fixedrange=True, anchor=f"y{'' if k == 1 else k}")
    return {"data": data, "layout": layout}
