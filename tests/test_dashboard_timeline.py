"""The timeline page without a browser: what each pixel of the lane image says, checked against the
store's events by brute force; rows that collapse; search; a collective's peers; counters; the
critical path overlay."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import dash
import numpy as np
import pandas as pd
import pytest

from sohuprof.analyzers.timeline import WAIT_SUFFIX, Expand, counter_tracks
from sohuprof.dashboards import timeline_figure as tf
from sohuprof.dashboards.palette import class_rgb
from sohuprof.dashboards.pages import timeline

from dashboard_support import SAMPLE, app, data  # noqa: F401  (pytest fixtures; tests/dashboard_support.py)



@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    from sohuprof.store import open_store

    frame = open_store(SAMPLE).read("events", columns=["ts", "dur", "rank", "track", "name", "op", "coll_id"]).to_pandas()
    return frame.assign(track=frame["track"].astype(str), name=frame["name"].astype(str), op=frame["op"].astype(str))


def decode_png(uri: str) -> np.ndarray:
    """A data-URI PNG (8-bit RGBA, unfiltered, as :func:`tf.png` writes) back to ``[h, w, 4]``."""
    raw = base64.b64decode(uri.split(",", 1)[1])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", None
    while pos < len(raw):
        n, tag = struct.unpack(">I4s", raw[pos:pos + 8])
        body = raw[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", raw[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    w, h = size
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + 4 * w)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(h, w, 4)


def _image(fig: dict) -> tuple[np.ndarray, int]:
    trace = next(t for t in fig["data"] if t["type"] == "image")
    img = decode_png(trace["source"])
    return img, round(1 / trace["dy"])


def _lane_pixels(img: np.ndarray, k: int, row: int) -> np.ndarray:
    return img[row * k]              # the first image row of a timeline row is painted


def test_every_column_with_an_op_is_painted_and_idle_ones_are_not(data: Any, events: pd.DataFrame) -> None:
    """Rare ops stay visible: a pixel column is painted exactly when some op of the lane overlaps it."""
    index = data.index
    t0 = index.start + (index.end - index.start) // 3
    sel = {"ranks": None, "window": [t0, t0 + 20_000_000]}
    view = timeline.timeline_view(data, sel)
    fig = tf.timeline_figure(view, origin=index.start)
    img, k = _image(fig)
    assert img.shape[0] == k * len(view.rows) and img.shape[1] == timeline.WIDTH
    edges = view.edges
    for row in (0, 1, 3, 7, 12):       # collective, dma, matrix ... lanes of ranks 0-2
        lane = view.lanes.iloc[np.flatnonzero(view.lane_row == row)[0]]
        mine = events[(events["rank"] == lane["rank"]) & (events["track"] == lane["track"])]
        s, e = mine["ts"].to_numpy(), mine["ts"].to_numpy() + mine["dur"].to_numpy()
        # Column j is busy iff some op overlaps [edges[j], edges[j+1]).
        busy = np.array([((s < b) & (e > a)).any() for a, b in zip(edges[:-1], edges[1:])])
        painted = _lane_pixels(img, k, row)[:, 3] > 0
        assert np.array_equal(painted, busy), (row, np.flatnonzero(painted != busy)[:5])
    assert (img[k - 1::k, :, 3] == 0).all()      # a gap between rows


def test_colour_is_the_busiest_class_and_waiting_is_lighter(data: Any, events: pd.DataFrame) -> None:
    index = data.index
    comm = events[events["coll_id"].notna()]
    # A window around a collective whose rank waited a long time, drawn at 100 columns.
    coll = data.store.read("collectives").to_pandas()
    coll["wait"] = coll["start"] - coll["arrive"]
    worst = coll.sort_values("wait").iloc[-1]
    a, b = int(worst["arrive"]), int(worst["end"])
    view = index.view(a, b, width=100, max_segments=0, ranks=[int(worst["rank"])])
    row = int(view.lane_row[np.flatnonzero(view.lanes["track"].to_numpy() == "collective")[0]])
    classes = view.classes[view.row_class[row]]
    op = str(worst["kind"])
    cols_wait = (view.edges[1:] <= int(worst["start"]))
    cols_move = (view.edges[:-1] >= int(worst["start"]))
    assert (classes[cols_wait] == op + WAIT_SUFFIX).all() and (classes[cols_move] == op).all()
    img, k = _image(tf.timeline_figure(view, origin=index.start))
    px = _lane_pixels(img, k, row)[:, :3].astype(int)
    assert tuple(px[np.flatnonzero(cols_wait)[0]]) == class_rgb(op + WAIT_SUFFIX)
    assert tuple(px[np.flatnonzero(cols_move)[-1]]) == class_rgb(op)
    assert sum(class_rgb(op + WAIT_SUFFIX)) > sum(class_rgb(op))        # lighter
    assert len(comm)


def test_collapsed_node_is_the_mean_of_its_chips_busiest_engine(data: Any) -> None:
    index = data.index
    view = index.view(width=200, max_segments=0, expand=Expand(frozenset({1}), frozenset({5})))
    rows = view.rows
    assert rows["kind"].tolist()[:1] == ["node"] and rows["label"].iloc[0].startswith("▸ node 0")
    assert (rows["kind"] == "chip").sum() == 3 and (rows["kind"] == "lane").sum() == 5     # r4, r6, r7; r5 open
    node0 = view.lanes["node"].to_numpy() == 0
    per_rank = pd.DataFrame(view.density[node0]).groupby(view.lanes["rank"].to_numpy()[node0]).max()
    assert np.allclose(view.row_busy[0], per_rank.mean().to_numpy(), atol=1e-6)
    assert "r5" in rows[rows["kind"] == "lane"]["label"].iloc[0]


def test_default_layout_is_short_beyond_sixteen_chips(data: Any) -> None:
    nodes, chips = timeline.default_open(data)       # 8 chips: everything open
    assert nodes == [0, 1] and chips == list(range(8))
    view = timeline.timeline_view(data, None, Expand(frozenset(), frozenset()))
    fig = tf.timeline_figure(view, origin=data.index.start)
    assert len(view.rows) == 2 and fig["layout"]["height"] <= 400


def test_exact_view_has_hover_names_and_labels(data: Any) -> None:
    sel, fig, status = timeline.on_relayout(data, {"xaxis.range[0]": 10.0, "xaxis.range[1]": 10.2}, None)
    assert "drawn exactly" in status
    assert sel["window"] == [data.index.start + 10_000_000, data.index.start + 10_200_000]
    hover = next(t for t in fig["data"] if t.get("name") == "ops")
    assert hover["x"]["dtype"] == "f8" and all("(" in t for t in hover["text"])
    assert fig["layout"]["xaxis"]["range"] == pytest.approx([10.0, 10.2])
    payload = json.dumps(fig)
    assert len(payload) < 2_000_000 and '"bdata"' in payload
    whole, _ = timeline.build_figure(data, None)
    assert not any(t.get("name") == "ops" for t in whole["data"])       # density: no per-op traces


def test_search_steps_through_matches_in_time_order(data: Any, events: pd.DataFrame) -> None:
    want = events[events["name"].str.contains("attn", case=False)].sort_values("ts", kind="stable")
    assert len(want) > 3
    sel, status, box = timeline.search(data, "ATTN", 1, None)
    assert box[2] == int(want["ts"].iloc[0]) and "match 1 of" in status
    sel2, status2, box2 = timeline.search(data, "attn", 1, sel, box)     # the next, even at the same instant
    assert box2[2] == int(want["ts"].iloc[1]) and "match 2 of" in status2
    middle = sum(sel2["window"]) / 2
    _, status3, box3 = timeline.search(data, "attn", 1, sel2)           # without a match: from the window's middle
    assert box3[2] == int(want[want["ts"] > middle]["ts"].iloc[0])
    _, _, back = timeline.search(data, "attn", -1, sel2, box2)
    assert back[2] == int(want["ts"].iloc[0]) and back[1] == box[1]
    lo, hi = sel2["window"]
    assert lo <= box2[2] and box2[3] <= hi
    assert timeline.search(data, "no-such-op-anywhere", 1, None)[0] is dash.no_update


def test_collective_click_names_the_last_arriver_and_highlights_peers(data: Any) -> None:
    coll = data.store.read("collectives").to_pandas()
    coll["wait"] = coll["start"] - coll["arrive"]
    inst = coll[coll["coll_id"] == coll.sort_values("wait").iloc[-1]["coll_id"]]
    victim = inst.sort_values("wait").iloc[-1]
    members = timeline.collective_details(data, int(victim["coll_id"]))
    assert members["last"].sum() >= 1
    assert int(members[members["last"]]["rank"].iloc[0]) == int(inst.sort_values("arrive").iloc[-1]["rank"])
    assert (members["wait_ns"] == members["start"] - members["arrive"]).all()
    # A click on the victim's collective lane, in the middle of its wait.
    sel = {"ranks": None, "window": [int(victim["arrive"]) - 50_000, int(victim["end"]) + 50_000]}
    view = timeline.timeline_view(data, sel)
    row = int(view.lane_row[np.flatnonzero((view.lanes["rank"].to_numpy() == victim["rank"])
                                           & (view.lanes["track"].to_numpy() == "collective"))[0]])
    t_ms = ((int(victim["arrive"]) + int(victim["start"])) / 2 - data.index.start) / 1e6
    panel, node, rank, boxes = timeline.details_panel(data, {"points": [{"x": t_ms, "y": row}]}, sel)
    text = json.dumps(panel.to_plotly_json(), default=lambda o: o.to_plotly_json())
    assert "last arriver" in text and "waited" in text
    assert len(boxes) == len(inst) and boxes["fill"].notna().sum() == members["last"].sum()
    shapes = tf.highlight_shapes(boxes, data.index.start)
    assert len(shapes) == len(inst)


def test_click_on_a_collapsed_row_opens_it(data: Any) -> None:
    closed = Expand(frozenset(), frozenset())
    _, node, rank, _ = timeline.details_panel(data, {"points": [{"x": 1.0, "y": 1}]}, None, closed)
    assert (node, rank) == (1, None)
    half = Expand(frozenset({0}), frozenset())
    _, node, rank, _ = timeline.details_panel(data, {"points": [{"x": 1.0, "y": 2}]}, None, half)
    assert (node, rank) == (0, 2)


def test_counter_tracks_are_rates_per_column(data: Any) -> None:
    counters = data.store.read("counters").to_pandas()
    edges = np.linspace(data.index.start, data.index.end, 51).round().astype(np.int64)
    tracks = counter_tracks(counters, ["nic_tx_bytes"], None, edges)
    mine = counters[counters["counter"].astype(str) == "nic_tx_bytes"]
    col = np.searchsorted(edges, mine["ts"].to_numpy(), side="right") - 1
    inside = (col >= 0) & (col < 50)
    want = np.bincount(col[inside], weights=mine["value"].to_numpy()[inside], minlength=50) / (np.diff(edges) / 1e9)
    got = tracks["value"].to_numpy()
    has = ~np.isnan(got)
    assert has.any() and np.allclose(got[has], want[has])
    assert np.allclose(want[~has], 0)
    fig = timeline.counters_panel(data, None, ["nic_tx_bytes", "decode_tokens"])
    assert len(fig["data"]) == 2 and "yaxis2" in fig["layout"]


def test_critical_path_overlay_follows_the_path(data: Any) -> None:
    path = data.result("critical_path")
    seg = path.segments
    assert int((seg["end_ns"] - seg["start_ns"]).sum()) == pytest.approx(path.path_ns, rel=1e-6)
    fig, _ = timeline.build_figure(data, None, overlay=["path"])
    line = next(t for t in fig["data"] if t.get("name") == "critical path")
    assert line["mode"] == "lines" and line["x"]["dtype"] == "f8"
