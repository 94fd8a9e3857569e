"""Dashboard-only figures: pure functions from views and analysis results to ``go.Figure``.

Arrays go in as numpy so plotly packs them as base64 typed arrays (``bdata``), never as long
JSON number lists; every figure uses :data:`TEMPLATE`, a few hundred bytes, instead of plotly's
default template. The roofline, stall and traffic figures of the HTML report are reused from
:mod:`sohuprof.analyzers.render.figures` and restyled here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sohuprof.analyzers.render import figures as report_figures

__all__ = ["TEMPLATE", "CATEGORY_COLORS", "lane_labels", "timeline_figure", "roofline_figure",
           "stalls_figure", "traffic_figure", "busbw_figure", "stragglers_figure", "latency_figure",
           "throughput_figure", "message_figure"]

#: A small template: plain white plots, readable fonts (plotly's default adds ~8 KB a figure).
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family="Inter, Helvetica, Arial, sans-serif", size=12, color="#222"),
    paper_bgcolor="white", plot_bgcolor="white", colorway=["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51",
                                                             "#457b9d", "#8338ec", "#6a994e", "#bc4749", "#577590"],
    xaxis=dict(gridcolor="#eee", zerolinecolor="#ddd", linecolor="#999", showline=True, ticks="outside"),
    yaxis=dict(gridcolor="#eee", zerolinecolor="#ddd", linecolor="#999", showline=True, ticks="outside"),
    margin=dict(l=70, r=20, t=100, b=60), hoverlabel=dict(font_size=12),
    title=dict(x=0.5, xanchor="center", yref="container", y=1, yanchor="top", pad=dict(t=14), font=dict(size=15)),
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0, itemsizing="constant")))

#: Category colours; communication is the loud one, so collectives stand out on any timeline.
CATEGORY_COLORS = {"compute": "#2a9d8f", "memory": "#e9a23b", "communication": "#d62828", "host": "#6c7a89"}
_OTHER_COLOR = "#8d99ae"
#: Pixels per timeline lane.
LANE_PX = 16


def _rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def _style(fig: go.Figure, **layout: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, **layout)
    return fig


def message_figure(text: str, *, height: int = 300) -> go.Figure:
    """An empty plot that says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14, color="#666"))
    return _style(fig, height=height, xaxis=dict(visible=False), yaxis=dict(visible=False))


def lane_labels(lanes: pd.DataFrame) -> list[str]:
    """``node 0 · chip 1 · matrix`` per lane (the category too when an engine has several)."""
    counts = lanes.groupby(["rank", "track"], observed=True)["category"].transform("size").to_numpy()
    out = []
    for node, chip, track, cat, n in zip(lanes["node"], lanes["chip"], lanes["track"], lanes["category"], counts):
        label = f"n{node} · chip {chip} · {track}"
        out.append(f"{label} ({cat})" if n > 1 else label)
    return out


def _lane_axis(lanes: pd.DataFrame) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The y axis of a timeline (one row per lane, node 0 on top) and its rank/node separators."""
    n = len(lanes)
    axis = dict(tickmode="array", tickvals=np.arange(n), ticktext=lane_labels(lanes), range=[n - 0.5, -0.5],
                fixedrange=True, showgrid=False, tickfont=dict(size=10), ticks="")
    shapes: list[dict[str, Any]] = []
    rank = lanes["rank"].to_numpy()
    node = lanes["node"].to_numpy()
    for row in np.flatnonzero(rank[1:] != rank[:-1]) + 1:
        new_node = node[row] != node[row - 1]
        shapes.append(dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=row - 0.5, y1=row - 0.5,
                           line=dict(color="#333" if new_node else "#ccc", width=2 if new_node else 1), layer="above"))
    return axis, shapes


def timeline_figure(view: Any, *, origin: int, max_text: int = 4000) -> go.Figure:
    """Swimlanes of a :class:`~sohuprof.analyzers.timeline.TimelineView`, time in ms from ``origin``.

    ``density`` views draw one single-row heatmap per lane: the busy fraction of each pixel column
    in the lane's category colour (transparent when idle), a few bytes a pixel whatever the number
    of events. ``exact`` views draw every op as a horizontal bar (one SVG path per category:
    start, middle and end points separated by gaps), clickable for its details.
    """
    lanes = view.lanes.reset_index(drop=True)
    n = len(lanes)
    row_of = {int(lane): i for i, lane in enumerate(lanes["lane"])}
    categories = lanes["category"].astype(str).to_numpy()
    fig = go.Figure()
    seen: set[str] = set()
    if view.mode == "density":
        edges = np.asarray(view.edges, dtype=np.float64)
        x0 = (edges[0] - origin) / 1e6
        dx = float(np.mean(np.diff(edges))) / 1e6
        pct = np.rint(np.asarray(view.density) * 100).astype(np.uint8)
        labels = lane_labels(lanes)
        for i in range(n):
            cat = categories[i]
            r, g, b = _rgb(CATEGORY_COLORS.get(cat, _OTHER_COLOR))
            scale = [[0.0, f"rgba({r},{g},{b},0)"], [0.005, f"rgba({r},{g},{b},0.18)"], [1.0, f"rgba({r},{g},{b},1)"]]
            fig.add_trace(go.Heatmap(
                z=pct[i:i + 1], x0=x0, dx=dx, y0=i, dy=1, zmin=0, zmax=100, colorscale=scale, showscale=False,
                name=cat, legendgroup=cat, showlegend=cat not in seen, zsmooth=False,
                hovertemplate=f"{labels[i]}<br>%{{x:.3f}} ms: %{{z}}% busy ({cat})<extra></extra>"))
            seen.add(cat)
    else:
        seg = view.segments
        rows = np.array([row_of[int(v)] for v in np.unique(seg["lane"])]) if len(seg) else np.zeros(0, int)
        lut = np.zeros(int(seg["lane"].max()) + 1 if len(seg) else 1, np.int16)
        if len(seg):
            lut[np.unique(seg["lane"].to_numpy())] = rows
        seg_cat = categories[lut[seg["lane"].to_numpy()]] if len(seg) else np.zeros(0, object)
        width = max(2, int(LANE_PX * 0.7))
        for cat in sorted(set(seg_cat), key=lambda c: (c == "communication", c)):
            sel = seg[seg_cat == cat]
            ts = (sel["ts"].to_numpy(np.int64) - origin) / 1e6
            end = ts + sel["dur"].to_numpy(np.int64) / 1e6
            x = np.column_stack([ts, (ts + end) / 2, end, np.full(len(ts), np.nan)]).ravel()
            y = np.repeat(lut[sel["lane"].to_numpy()], 4).astype(np.int16)
            text = np.repeat(sel["name"].to_numpy(dtype=object), 4) if len(seg) <= max_text else None
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", name=cat, legendgroup=cat, connectgaps=False,
                line=dict(color=CATEGORY_COLORS.get(cat, _OTHER_COLOR), width=width),
                text=text, hovertemplate=("%{text}<br>" if text is not None else "")
                + "%{x:.4f} ms<extra>" + cat + "</extra>"))
            seen.add(cat)
    axis, shapes = _lane_axis(lanes)
    start_ms, end_ms = (view.start - origin) / 1e6, (view.end - origin) / 1e6
    if view.mode == "density":
        what = (f"{view.events_in_view:,} ops in view: busy fraction per pixel column "
                "(zoom in for individual ops)")
    else:
        what = f"{view.events_in_view:,} ops in view, drawn exactly (click one for its details)"
    return _style(fig, height=max(320, LANE_PX * n + 130), shapes=shapes, yaxis=axis,
                  xaxis=dict(title="time since trace start (ms)", range=[start_ms, end_ms], showgrid=True),
                  title=dict(text=f"timeline {start_ms:,.3f} – {end_ms:,.3f} ms · {what}", font=dict(size=13),
                             x=0.5, xanchor="center", yref="container", y=1, yanchor="top", pad=dict(t=14)),
                  dragmode="zoom", hovermode="closest", margin=dict(l=170, r=20, t=80, b=50),
                  legend=dict(title_text="category ", orientation="h", yanchor="bottom", y=1.0, x=0))


def roofline_figure(sample: pd.DataFrame, peak_flops: float, hbm_bandwidth: float, *, title: str = "") -> go.Figure:
    """The report's roofline (ops under the compute and bandwidth roofs, sized by time), restyled."""
    fig = report_figures.roofline_figure(sample, peak_flops, hbm_bandwidth)
    for trace in fig.data:
        if trace.mode == "markers":
            trace.hovertemplate = (f"<b>{trace.name}</b> (%{{text}})<br>intensity %{{x:.3g}} FLOP/B"
                                   "<br>attained %{y:.3s}FLOP/s<extra></extra>")
    ridge = peak_flops / hbm_bandwidth
    fig.add_vline(x=ridge, line=dict(color="#999", dash="dot"),
                  annotation_text=f"ridge {ridge:,.0f} FLOP/B", annotation_position="bottom right")
    return _style(fig, height=560, title=title or fig.layout.title.text,
                  yaxis=dict(type="log", title="attained FLOP/s", exponentformat="SI"),
                  xaxis=dict(type="log", title="arithmetic intensity (FLOP / HBM byte)"),
                  legend=dict(title_text="op class (marker area ∝ duration) "))


def stalls_figure(ranks: pd.DataFrame, selected: Sequence[int] | None = None) -> go.Figure:
    """Per-rank stacked bars of the stall partition (ms); selected ranks outlined. Click a bar to
    select its rank."""
    fig = report_figures.stalls_figure(ranks)
    outline = [3 if selected and r in selected else 0 for r in ranks["rank"]]
    for trace in fig.data:
        trace.marker.line = dict(width=outline, color="#111")
        trace.hovertemplate = f"%{{x}}: %{{y:.3f}} ms {trace.name}<extra></extra>"
    fig.update_traces(customdata=ranks["rank"].to_numpy())
    nodes = ranks["node"].to_numpy() if "node" in ranks else np.zeros(len(ranks), int)
    ticks = [f"r{r}<br>n{n}·c{c}" for r, n, c in zip(ranks["rank"], nodes, ranks.get("chip", nodes))]
    return _style(fig, height=480, xaxis=dict(title=dict(text="rank (node · chip)", standoff=18), tickmode="array",
                                              tickvals=[f"r{r}" for r in ranks["rank"]], ticktext=ticks),
                  yaxis=dict(title="time (ms)"), legend=dict(title_text="stall class "),
                  title="where each rank's wall time went (parts sum to the wall time; click a rank to select it)")


def traffic_figure(links: pd.DataFrame, nodes: int) -> go.Figure:
    """Node-to-node traffic (GB), from the report's heatmap, restyled with values written in."""
    fig = report_figures.traffic_figure(links, nodes)
    z = np.asarray(fig.data[0].z, dtype=float) / 1e9
    fig.data[0].z = z
    fig.data[0].colorbar = dict(title="GB")
    fig.data[0].text = np.vectorize(lambda v: f"{v:,.2f} GB")(z) if z.size else None
    fig.data[0].texttemplate = "%{text}"
    fig.data[0].hovertemplate = "%{y} → %{x}: %{z:.3f} GB<extra></extra>"
    return _style(fig, height=420, title="node-to-node traffic (GB sent)", yaxis=dict(title="from", autorange="reversed"),
                  xaxis=dict(title="to", side="bottom"))


def busbw_figure(collectives: pd.DataFrame) -> go.Figure:
    """Bus bandwidth per collective kind and group (GB/s), with the exposed time in the hover."""
    if not len(collectives):
        return message_figure("no collectives in this trace")
    label = collectives["kind"].astype(str) + " · group " + collectives["group"].astype(str)
    fig = go.Figure(go.Bar(
        x=collectives["busbw"].to_numpy(float) / 1e9, y=label.to_numpy(), orientation="h", marker_color="#d62828",
        customdata=np.column_stack([collectives["count"].to_numpy(float), collectives["exposed_ns"].to_numpy(float) / 1e6,
                                    collectives["algbw"].to_numpy(float) / 1e9]),
        hovertemplate="%{y}: busbw %{x:.1f} GB/s, algbw %{customdata[2]:.1f} GB/s<br>%{customdata[0]:,.0f} calls, "
                      "%{customdata[1]:.3f} ms exposed<extra></extra>"))
    return _style(fig, height=max(300, 26 * len(collectives) + 120), title="bus bandwidth per collective (nccl-tests busbw)",
                  xaxis=dict(title="busbw (GB/s)"), yaxis=dict(autorange="reversed"), margin=dict(l=170))


def stragglers_figure(stragglers: pd.DataFrame, selected: Sequence[int] | None = None, *, top: int = 16) -> go.Figure:
    """Ranks by the waiting their own excess caused (root cost, ms; ranks others waited for only
    because they waited themselves cost nothing); click one to select it. Ranks at least
    ``STRAGGLER_RATIO`` x their stage peers' median are drawn loud, the others grey. Without root
    causes (no dependency graph) the bars are the delay cost: the wait each rank's late arrivals
    caused, whatever made it late."""
    from sohuprof.analyzers.diagnosis.findings import STRAGGLER_RATIO

    if not len(stragglers):
        return message_figure("no collectives, so no stragglers")
    rooted = "root_cost_ns" in stragglers
    if rooted:
        stragglers = stragglers[stragglers["root_cost_ns"] > 0]
        if not len(stragglers):
            return message_figure("no rank's own excess made others wait")
    top_ranks = stragglers.head(top)
    value = top_ranks["root_cost_ns" if rooted else "delay_cost_ns"].to_numpy(float) / 1e6
    ratio = (pd.to_numeric(top_ranks["peer_ratio"], errors="coerce").to_numpy(float)
             if "peer_ratio" in top_ranks else np.full(len(top_ranks), np.nan))
    slow = ratio >= STRAGGLER_RATIO
    colors = ["#111" if selected and r in selected else ("#e76f51" if s or not rooted else "#b8b8b8")
              for r, s in zip(top_ranks["rank"], slow)]
    cause = (top_ranks["cause"].fillna("-").astype(str).to_numpy() if "cause" in top_ranks
             else np.full(len(top_ranks), "-"))
    fig = go.Figure(go.Bar(
        x=value, y=[f"r{r} (n{n}·c{c})" for r, n, c in zip(top_ranks["rank"], top_ranks["node"], top_ranks["chip"])],
        orientation="h", marker_color=colors, customdata=top_ranks["rank"].to_numpy(),
        text=[f"{q:.2f}x peers" if q == q else "" for q in ratio] if rooted
        else [f"{v:,} late arrivals" for v in top_ranks["late_count"]], textposition="auto",
        hovertext=[f"cause: {c}; others waited {d / 1e6:,.3f} ms for it in all (delay cost)"
                   for c, d in zip(cause, top_ranks["delay_cost_ns"].to_numpy(float))],
        hovertemplate=("%{y}: its own excess made others wait %{x:.3f} ms<br>%{hovertext}<extra></extra>" if rooted
                       else "%{y}: others waited %{x:.3f} ms for it<extra></extra>")))
    title = ("stragglers: waiting each rank's own excess caused (click to select the rank)" if rooted
             else "stragglers: wait caused to others (click to select the rank)")
    return _style(fig, height=max(300, 26 * len(top_ranks) + 120), yaxis=dict(autorange="reversed"), title=title,
                  xaxis=dict(title="root cost (ms)" if rooted else "delay cost (ms)"), margin=dict(l=120))


def latency_figure(latencies: pd.DataFrame | None, percentiles: dict[str, dict[str, Any]]) -> go.Figure:
    """TTFT and TPOT distributions (ms), with p50/p90/p99 marked."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("time to first token (TTFT)", "time per output token (TPOT)"))
    for col, key, color in ((1, "ttft_ms", "#457b9d"), (2, "tpot_ms", "#2a9d8f")):
        values = (latencies[key].dropna().to_numpy(float) if latencies is not None and key in latencies
                  else np.zeros(0))
        if len(values):
            fig.add_trace(go.Histogram(x=values, nbinsx=40, marker_color=color, name=key.removesuffix("_ms").upper(),
                                       hovertemplate="%{x} ms: %{y} requests<extra></extra>"), row=1, col=col)
        for q, dash, where in (("p50", "solid", "top left"), ("p90", "dash", None), ("p99", "dot", "top right")):
            v = (percentiles.get(key) or {}).get(q)
            if v is not None:
                fig.add_vline(x=v, line=dict(color="#222", dash=dash, width=1), row=1, col=col,
                              **(dict(annotation_text=f"{q} {v:.2f}", annotation_position=where,
                                      annotation_font_size=10) if where else {}))
        fig.update_xaxes(title_text="ms", row=1, col=col)
    fig.update_yaxes(title_text="requests", row=1, col=1)
    return _style(fig, height=420, showlegend=False,
                  title="request latency distributions (lines: p50 solid, p90 dashed, p99 dotted)")


def throughput_figure(series: pd.DataFrame, *, origin: int, window: tuple[int, int] | None = None) -> go.Figure:
    """Output tokens/s over time and requests in flight; the selected time window shaded."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    t = (series["t_ns"].to_numpy(float) - origin) / 1e6
    fig.add_trace(go.Scatter(x=t, y=series["tokens_per_s"].to_numpy(float), mode="lines", line_shape="hv",
                             name="output tokens/s", line=dict(color="#264653", width=2),
                             hovertemplate="%{x:.1f} ms: %{y:,.0f} tokens/s<extra></extra>"), secondary_y=False)
    fig.add_trace(go.Scatter(x=t, y=series["in_flight"].to_numpy(float), mode="lines", line_shape="hv",
                             name="requests in flight", line=dict(color="#f4a261", width=1, dash="dot"),
                             hovertemplate="%{x:.1f} ms: %{y:.0f} in flight<extra></extra>"), secondary_y=True)
    if window is not None:
        fig.add_vrect(x0=(window[0] - origin) / 1e6, x1=(window[1] - origin) / 1e6, fillcolor="#457b9d",
                      opacity=0.12, line_width=0, annotation_text="selected window", annotation_position="top left")
    fig.update_yaxes(title_text="output tokens/s", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="requests in flight", secondary_y=True, rangemode="tozero", showgrid=False)
    return _style(fig, height=380, title="throughput over time", xaxis=dict(title="time since trace start (ms)"))
