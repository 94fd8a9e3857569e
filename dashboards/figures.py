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
from sohuprof.dashboards.palette import CATEGORY_COLORS, OP_CLASS_COLORS, class_color

__all__ = ["TEMPLATE", "CATEGORY_COLORS", "OP_CLASS_COLORS", "op_class_color",
           "roofline_figure", "stalls_figure", "traffic_figure", "link_bandwidth_figure", "nic_figure",
           "busbw_figure", "stragglers_figure", "rank_grid_figure", "kernel_types_figure", "kernel_names_figure",
           "idle_figure", "latency_figure", "throughput_figure", "message_figure"]

#: A small template: plain white plots, readable fonts (plotly's default adds ~8 KB a figure).
TEMPLATE = go.layout.Template(layout=dict(
    font=dict(family="Inter, Helvetica, Arial, sans-serif", size=12, color="#222"),
    paper_bgcolor="white", plot_bgcolor="white", colorway=["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51",
                                                             "#457b9d", "#8338ec", "#6a994e", "#bc4749", "#577590"],
    # "allow": plotly's default ("hide past div") measures every tick label's box on every redraw,
    # ~2/3 of a Plotly.react of the 80-row timeline in Chromium (144 -> 48 ms).
    xaxis=dict(gridcolor="#eee", zerolinecolor="#ddd", linecolor="#999", showline=True, ticks="outside",
               ticklabeloverflow="allow"),
    yaxis=dict(gridcolor="#eee", zerolinecolor="#ddd", linecolor="#999", showline=True, ticks="outside",
               ticklabeloverflow="allow"),
    margin=dict(l=70, r=20, t=100, b=60), hoverlabel=dict(font_size=12),
    title=dict(x=0.5, xanchor="center", yref="container", y=1, yanchor="top", pad=dict(t=14), font=dict(size=15)),
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0, itemsizing="constant")))

#: Anything without a colour of its own.
_FALLBACK_COLOR = "#8d99ae"


def op_class_color(op: str) -> str:
    """The op class's fixed colour (:mod:`sohuprof.dashboards.palette`, as on the timeline)."""
    return class_color(str(op))


def _style(fig: go.Figure, **layout: Any) -> go.Figure:
    fig.update_layout(template=TEMPLATE, **layout)
    return fig


def message_figure(text: str, *, height: int = 300) -> go.Figure:
    """An empty plot that says why there is nothing to draw."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=14, color="#666"))
    return _style(fig, height=height, xaxis=dict(visible=False), yaxis=dict(visible=False))


def roofline_figure(sample: pd.DataFrame, peak_flops: float, hbm_bandwidth: float, *, title: str = "") -> go.Figure:
    """The report's roofline, drawn in WebGL (``Scattergl``: ~20k markers paint in one canvas,
    not one SVG node each), every op class in its own :data:`OP_CLASS_COLORS` colour, the ridge
    labelled inside the plot. The hover is the report's: name, phase, rank, layer, duration,
    attained FLOP/s and B/s."""
    base = report_figures.roofline_figure(sample, peak_flops, hbm_bandwidth)
    fig = go.Figure()
    roof_x: np.ndarray = np.zeros(0)
    for trace in base.data:
        if trace.mode != "markers":
            roof_x = np.asarray(trace.x, dtype=float)
            fig.add_trace(go.Scatter(x=roof_x, y=np.asarray(trace.y, dtype=float), mode="lines", name="roof",
                                     line=dict(color="#111", width=2), hoverinfo="skip"))
            continue
        op = str(trace.name)
        size = np.asarray(trace.marker.size, dtype=float)
        custom = trace.customdata
        fig.add_trace(go.Scattergl(
            x=np.asarray(trace.x, dtype=float), y=np.asarray(trace.y, dtype=float), mode="markers", name=op,
            marker=dict(size=size, opacity=0.6, color=op_class_color(op), line=dict(width=0)),
            text=trace.text, customdata=None if custom is None else np.asarray(custom, dtype=float),
            hovertemplate=(f"<b>{op}</b> %{{text}}<br>intensity %{{x:.3g}} FLOP/B<br>attained %{{y:.3s}}FLOP/s"
                           + (", %{customdata:.3s}B/s" if custom is not None else "") + "<extra></extra>")))
    ridge = peak_flops / hbm_bandwidth
    lo, hi = (float(roof_x.min()), float(roof_x.max())) if len(roof_x) else (ridge / 100, ridge * 100)
    # The x range is the roof line's, which always spans the ridge: the label cannot fall off.
    right = np.log10(ridge) > (np.log10(lo) + np.log10(hi)) / 2
    fig.add_vline(x=ridge, line=dict(color="#999", dash="dot"))
    fig.add_annotation(x=np.log10(ridge), xref="x", y=0.02, yref="paper", showarrow=False,
                       text=f"ridge {ridge:,.0f} FLOP/B", xanchor="right" if right else "left", xshift=-4 if right else 4,
                       yanchor="bottom", font=dict(size=11, color="#555"), bgcolor="rgba(255,255,255,0.8)")
    return _style(fig, height=560, title=title or base.layout.title.text,
                  yaxis=dict(type="log", title="attained FLOP/s", exponentformat="SI"),
                  xaxis=dict(type="log", title="arithmetic intensity (FLOP / HBM byte)",
                             range=[float(np.log10(lo)), float(np.log10(hi))]),
                  legend=dict(title_text="op class (marker area ∝ duration) "), hovermode="closest")


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


def traffic_figure(links: pd.DataFrame, nodes: int, intra: pd.DataFrame | None = None) -> go.Figure:
    """Node-to-node traffic (GB sent) of the comm report's ``links``, the diagonal each node's
    intra-node traffic (``intra_node``: bytes its chips sent each other). The colour bar starts
    at 0; cells are written in up to 12 nodes (a 32-node grid reads by colour and hover)."""
    grid = np.zeros((nodes, nodes))
    if len(links):
        src, dst = links["src_node"].to_numpy(int), links["dst_node"].to_numpy(int)
        ok = (src < nodes) & (dst < nodes)
        np.add.at(grid, (src[ok], dst[ok]), links["bytes"].to_numpy(float)[ok])
    has_intra = intra is not None and len(intra) > 0
    if has_intra:
        node = intra["node"].to_numpy(int)
        ok = node < nodes
        grid[node[ok], node[ok]] += intra["bytes"].to_numpy(float)[ok]
    z = grid / 1e9
    labels = [f"node {i}" for i in range(nodes)]
    kind = np.where(np.eye(nodes, dtype=bool), "inside the node", "across nodes")
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0, zmax=max(float(z.max()), 1e-9), colorscale="Blues",
        colorbar=dict(title="GB"), customdata=kind,
        text=np.vectorize(lambda v: f"{v:,.2f} GB")(z) if nodes <= 12 else None,
        texttemplate="%{text}" if nodes <= 12 else None,
        hovertemplate="%{y} → %{x}: %{z:.3f} GB (%{customdata})<extra></extra>"))
    what = ("diagonal: traffic between chips of one node" if has_intra
            else "no collective traffic stays inside a node")
    return _style(fig, height=max(420, min(900, 22 * nodes + 160)),
                  title=f"collective traffic, node to node (GB sent; {what})",
                  yaxis=dict(title="from", autorange="reversed", showgrid=False),
                  xaxis=dict(title="to", side="bottom", showgrid=False))


def link_bandwidth_figure(links: pd.DataFrame, *, top: int = 24) -> go.Figure:
    """Each cross-node link's measured bandwidth (per chip's NIC share) against what the hardware
    should give (``expected_bandwidth``, a marker on each bar); slow links loud. Beyond ``top``
    links, the ``top`` with the lowest measured ÷ expected are drawn."""
    if not len(links) or "bandwidth" not in links:
        return message_figure("no traffic crosses nodes: every collective stays inside one node")
    frame = links.assign(ratio=links["bandwidth"].astype(float) / links["expected_bandwidth"].astype(float))
    frame = frame.sort_values(["ratio", "src_node", "dst_node"], na_position="last").head(top)
    label = [f"node {a} → node {b}" for a, b in zip(frame["src_node"], frame["dst_node"])]
    slow = frame["slow"].astype(bool).to_numpy() if "slow" in frame else np.zeros(len(frame), bool)
    measured = frame["bandwidth"].to_numpy(float) / 1e9
    expected = frame["expected_bandwidth"].to_numpy(float) / 1e9
    fig = go.Figure()
    fig.add_trace(go.Bar(x=measured, y=label, orientation="h", name="measured",
                         marker_color=np.where(slow, "#d62828", "#457b9d"),
                         customdata=np.column_stack([expected, frame["ratio"].to_numpy(float),
                                                     frame["bytes"].to_numpy(float) / 1e9]),
                         text=[f"{'SLOW · ' if s else ''}{r:.2f}× expected" if r == r else ("SLOW" if s else "")
                               for s, r in zip(slow, frame["ratio"].to_numpy(float))], textposition="auto",
                         hovertemplate="%{y}: %{x:.2f} GB/s measured, %{customdata[0]:.2f} GB/s expected "
                                       "(%{customdata[1]:.2f}×)<br>%{customdata[2]:.3f} GB sent<extra></extra>"))
    fig.add_trace(go.Scatter(x=expected, y=label, mode="markers", name="expected (hardware × comm efficiency)",
                             marker=dict(symbol="line-ns-open", size=22, color="#111", line=dict(width=2)),
                             hovertemplate="%{y}: %{x:.2f} GB/s expected<extra></extra>"))
    shown = f"the {len(frame)} slowest of {len(links)} links" if len(links) > len(frame) else f"{len(links)} links"
    return _style(fig, height=max(300, 28 * len(frame) + 150), barmode="overlay",
                  title=f"bandwidth per link, measured vs expected ({shown}; red: slow)",
                  xaxis=dict(title="GB/s per chip's NIC share", rangemode="tozero"),
                  yaxis=dict(autorange="reversed"), margin=dict(l=150))


def nic_figure(nics: pd.DataFrame, *, top: int = 32) -> go.Figure:
    """Per node, its NIC's rate from the port counters against the expected rate; slow NICs loud
    (the ``top`` lowest ratios beyond that many nodes)."""
    if not len(nics):
        return message_figure("no NIC port counters in this trace (counters.parquet has no nic_* samples)")
    frame = nics.sort_values(["ratio", "node"], na_position="last").head(top)
    label = [f"node {n}" for n in frame["node"]]
    slow = frame["slow"].astype(bool).to_numpy()
    fig = go.Figure()
    fig.add_trace(go.Bar(x=frame["rate"].to_numpy(float) / 1e9, y=label, orientation="h", name="measured rate",
                         marker_color=np.where(slow, "#d62828", "#457b9d"),
                         customdata=np.column_stack([frame["ratio"].to_numpy(float),
                                                     (frame["tx_bytes"].to_numpy(float) + frame["rx_bytes"].to_numpy(float)) / 1e9,
                                                     frame["wait_ns"].to_numpy(float) / 1e6]),
                         text=[f"{'SLOW · ' if s else ''}{r:.2f}× peers" for s, r in zip(slow, frame["ratio"].to_numpy(float))],
                         textposition="auto",
                         hovertemplate="%{y}: %{x:.2f} GB/s while moving (%{customdata[0]:.2f}× the other nodes)"
                                       "<br>%{customdata[1]:.3f} GB moved, %{customdata[2]:.3f} ms held back"
                                       "<extra></extra>"))
    fig.add_trace(go.Scatter(x=frame["expected_rate"].to_numpy(float) / 1e9, y=label, mode="markers",
                             name="expected", marker=dict(symbol="line-ns-open", size=22, color="#111",
                                                          line=dict(width=2)),
                             hovertemplate="%{y}: %{x:.2f} GB/s expected<extra></extra>"))
    return _style(fig, height=max(260, 28 * len(frame) + 150), barmode="overlay",
                  title="NIC rate per node, from the port counters (red: slow)",
                  xaxis=dict(title="GB/s per chip's NIC share", rangemode="tozero"),
                  yaxis=dict(autorange="reversed"), margin=dict(l=90))


def busbw_figure(collectives: pd.DataFrame, roofs: dict[str, float] | None = None,
                 spec: dict[str, float] | None = None, *, top: int = 24) -> go.Figure:
    """Bus bandwidth per collective kind and group (GB/s), each bar with its link roof (``roofs``:
    the busbw the links it crosses allow, per kind, from the roofline report) and the hardware's
    link bandwidths (``spec``: label -> B/s) as lines; the exposed time in the hover. Beyond
    ``top`` (kind, group) rows, the ``top`` with the most exposed time."""
    if not len(collectives):
        return message_figure("no collectives in this trace")
    total = len(collectives)
    if total > top:      # hundreds of groups at 256 ranks: the ones that cost the most exposed time
        collectives = collectives.sort_values("exposed_ns", ascending=False).head(top).sort_values(["kind", "group"])
    label = (collectives["kind"].astype(str) + " · group " + collectives["group"].astype(str)).to_numpy()
    busbw = pd.to_numeric(collectives["busbw"], errors="coerce").to_numpy(float) / 1e9
    roof = (collectives["kind"].astype(str).map(roofs or {}).to_numpy(float) / 1e9)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(roof > 0, busbw / roof, np.nan)
    fig = go.Figure(go.Bar(
        x=busbw, y=label, orientation="h", marker_color="#d62828", name="busbw",
        text=[f"{s:.0%} of roof" if s == s else ("size unknown" if b != b else "") for s, b in zip(share, busbw)],
        textposition="auto",
        customdata=np.column_stack([collectives["count"].to_numpy(float), collectives["exposed_ns"].to_numpy(float) / 1e6,
                                    pd.to_numeric(collectives["algbw"], errors="coerce").to_numpy(float) / 1e9, roof]),
        hovertemplate="%{y}: busbw %{x:.1f} GB/s, algbw %{customdata[2]:.1f} GB/s, roof %{customdata[3]:.1f} GB/s"
                      "<br>%{customdata[0]:,.0f} calls, %{customdata[1]:.3f} ms exposed<extra></extra>"))
    if np.isfinite(roof).any():
        fig.add_trace(go.Scatter(x=roof, y=label, mode="markers", name="link roof (busbw the links allow)",
                                 marker=dict(symbol="line-ns-open", size=22, color="#111", line=dict(width=3)),
                                 hovertemplate="%{y}: roof %{x:.1f} GB/s<extra></extra>"))
    positive = np.r_[busbw, roof][np.isfinite(np.r_[busbw, roof]) & (np.r_[busbw, roof] > 0)]
    lines = {name: bw / 1e9 for name, bw in (spec or {}).items() if bw and bw > 0}
    span = np.r_[positive, list(lines.values())]
    log = len(span) > 1 and span.min() < span.max() / 50
    for i, (name, gbps) in enumerate(lines.items()):
        # Shapes take data values on a log axis, annotations its log: placed by hand, not add_vline's.
        fig.add_shape(type="line", x0=gbps, x1=gbps, xref="x", y0=0, y1=1, yref="paper",
                      line=dict(color="#777", dash="dot" if i else "dash", width=1))
        fig.add_annotation(x=np.log10(gbps) if log else gbps, xref="x", y=1, yref="paper", yanchor="bottom",
                           text=f"{name} {gbps:,.0f} GB/s", showarrow=False, font=dict(size=10, color="#555"))
    return _style(fig, height=max(300, 30 * len(collectives) + 150),
                  title="bus bandwidth per collective (nccl-tests busbw) against its link roof"
                        + (f" ({len(collectives)} of {total} with the most exposed time)" if total > len(collectives) else ""),
                  xaxis=dict(title="busbw (GB/s)", type="log" if log else "linear"),
                  yaxis=dict(autorange="reversed"), margin=dict(l=170))


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


def rank_grid_figure(values: pd.DataFrame, ranks: pd.DataFrame, column: str, *, title: str,
                     unit_ns: bool = True, selected: Sequence[int] | None = None) -> go.Figure:
    """One cell per rank, node down and chip across, coloured by ``values[column]`` (ms when
    ``unit_ns``; ranks without a row are 0): 256 ranks in one readable 32 x 8 grid instead of
    256 bars. Selected ranks are outlined; a click gives the rank (``customdata``)."""
    if not len(ranks):
        return message_figure("no ranks in this trace")
    nodes, chips = int(ranks["node"].max()) + 1, int(ranks["chip"].max()) + 1
    grid = np.full((nodes, chips), np.nan)
    rank_at = np.full((nodes, chips), -1, dtype=np.int64)
    node, chip = ranks["node"].to_numpy(int), ranks["chip"].to_numpy(int)
    rank_at[node, chip] = ranks["rank"].to_numpy(np.int64)
    grid[node, chip] = 0.0
    if len(values) and column in values:
        v = values.set_index("rank")[column].astype(float)
        v = v[~v.index.duplicated()].reindex(ranks["rank"].to_numpy()).fillna(0.0).to_numpy(float)
        grid[node, chip] = v / 1e6 if unit_ns else v
    fig = go.Figure(go.Heatmap(
        z=grid, x=[f"chip {c}" for c in range(chips)], y=[f"node {n}" for n in range(nodes)], zmin=0,
        zmax=max(float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0, 1e-9), colorscale="OrRd",
        customdata=rank_at, hoverongaps=False, xgap=1, ygap=1, colorbar=dict(title="ms" if unit_ns else ""),
        hovertemplate="r%{customdata} (%{y} · %{x}): %{z:.3f}" + (" ms" if unit_ns else "") + "<extra></extra>"))
    for r in (selected or ()):
        at = np.argwhere(rank_at == r)
        if len(at):
            n, c = at[0]
            fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=n - 0.5, y1=n + 0.5, line=dict(color="#111", width=3))
    return _style(fig, height=max(260, min(900, 22 * nodes + 140)), title=title,
                  yaxis=dict(autorange="reversed", showgrid=False), xaxis=dict(showgrid=False, side="bottom"))


_KERNEL_TYPE_COLORS = {"COMPUTATION": "#2a9d8f", "COMMUNICATION": "#d62828", "MEMORY": "#e9a23b", "OTHER": "#8d99ae"}


def kernel_types_figure(types: pd.DataFrame) -> go.Figure:
    """HTA's kernel-type table as horizontal bars (ms), each set of types running together one bar,
    labelled with its share of the time any type runs (OTHER has no share: outside HTA's base)."""
    if not len(types):
        return message_figure("no device kernels in the analysed events")
    name = types["kernel_type"].astype(str).to_numpy()
    ms = types["sum_ns"].to_numpy(float) / 1e6
    pct = pd.to_numeric(types["pct"], errors="coerce").to_numpy(float)
    colors = [_KERNEL_TYPE_COLORS.get(n, "#6a4c93" if " overlapping " in n else _FALLBACK_COLOR) for n in name]
    fig = go.Figure(go.Bar(x=ms, y=name, orientation="h", marker_color=colors,
                           text=[f"{p:.1f} %" if p == p else "outside HTA's table" for p in pct], textposition="auto",
                           hovertemplate="%{y}: %{x:.3f} ms (%{text})<extra></extra>"))
    return _style(fig, height=max(260, 34 * len(types) + 140), title="GPU kernel time by kernel type (summed over ranks)",
                  xaxis=dict(title="time (ms)", rangemode="tozero"), yaxis=dict(autorange="reversed"),
                  margin=dict(l=330))


def kernel_names_figure(names: pd.DataFrame, *, top: int = 20) -> go.Figure:
    """The kernels with the most time (ms), coloured by type; the hover has count, mean, min, max."""
    if not len(names):
        return message_figure("no device kernels in the analysed events")
    frame = names.sort_values("sum_ns", ascending=False).head(top)
    full = frame["name"].astype(str).to_numpy()
    kind = frame["kernel_type"].astype(str).to_numpy()
    # HTA's "others" row is per type: say which.
    short = [f"others ({k.lower()})" if n == "others" else (n if len(n) <= 60 else n[:57] + "…")
             for n, k in zip(full, kind)]
    # Two kernels can share a shortened label: number the rows so plotly keeps both bars.
    label = [f"{i + 1}. {n}" for i, n in enumerate(short)]
    fig = go.Figure(go.Bar(
        x=frame["sum_ns"].to_numpy(float) / 1e6, y=label, orientation="h",
        marker_color=[_KERNEL_TYPE_COLORS.get(k, _FALLBACK_COLOR) for k in kind],
        customdata=np.column_stack([frame["count"].to_numpy(float), frame["mean_ns"].to_numpy(float) / 1e3,
                                    frame["min_ns"].to_numpy(float) / 1e3, frame["max_ns"].to_numpy(float) / 1e3,
                                    pd.to_numeric(frame["pct"], errors="coerce").to_numpy(float)]),
        hovertext=[f"{k}: {n}" for k, n in zip(kind, full)],
        hovertemplate="%{hovertext}<br>%{x:.3f} ms in %{customdata[0]:,.0f} kernels (%{customdata[4]:.2f} % of its "
                      "type); mean %{customdata[1]:.1f} µs, min %{customdata[2]:.1f}, max %{customdata[3]:.1f}"
                      "<extra></extra>"))
    return _style(fig, height=max(300, 24 * len(frame) + 140), title=f"top {len(frame)} kernels by time (summed over ranks)",
                  xaxis=dict(title="time (ms)", rangemode="tozero"), yaxis=dict(autorange="reversed", tickfont=dict(size=10)),
                  margin=dict(l=420))


_IDLE_COLORS = {"busy": "#2a9d8f", "host_wait": "#e76f51", "kernel_wait": "#e9c46a", "other": "#8d99ae"}


def idle_figure(streams: pd.DataFrame, *, top: int = 32) -> go.Figure:
    """Per rank and GPU stream, its window split into busy time and HTA's three idle kinds (ms):
    host wait, kernel wait, other. The ``top`` streams with the most idle time beyond that many."""
    if not len(streams):
        return message_figure("no GPU streams in the analysed events")
    frame = streams.sort_values(["idle_ns", "rank", "stream"], ascending=[False, True, True]).head(top)
    frame = frame.sort_values(["rank", "stream"])
    label = [f"r{r} · stream {s}" for r, s in zip(frame["rank"], frame["stream"])]
    fig = go.Figure()
    for part, col in (("busy", "busy_ns"), ("host_wait", "host_wait_ns"), ("kernel_wait", "kernel_wait_ns"),
                      ("other", "other_ns")):
        fig.add_trace(go.Bar(x=frame[col].to_numpy(float) / 1e6, y=label, orientation="h", name=part.replace("_", " "),
                             marker_color=_IDLE_COLORS[part], customdata=frame["rank"].to_numpy(),
                             hovertemplate="%{y}: %{x:.3f} ms " + part.replace("_", " ") + "<extra></extra>"))
    shown = f"the {len(frame)} idlest of {len(streams)} streams" if len(streams) > len(frame) else f"{len(streams)} streams"
    return _style(fig, barmode="stack", height=max(280, 30 * len(frame) + 160),
                  title=f"GPU stream time: busy and why idle ({shown}; parts sum to the stream's window)",
                  xaxis=dict(title="time (ms)", rangemode="tozero"), yaxis=dict(autorange="reversed"),
                  legend=dict(title_text="part ", traceorder="normal"), margin=dict(l=130))
