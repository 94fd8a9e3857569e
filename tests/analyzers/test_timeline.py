"""Timeline views: exact segments when few, busy density otherwise, both checked against brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analyzers_ref import timeline, union_total
from sohuprof.analyzers.timeline import TimelineIndex
from sohuprof.store import open_store

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"


@pytest.fixture(scope="module")
def index() -> TimelineIndex:
    return TimelineIndex(open_store(SAMPLE))


@pytest.fixture(scope="module")
def events():
    return open_store(SAMPLE).read("events", columns=["ts", "dur", "rank", "track", "category"]).to_pandas()


def test_lanes_cover_every_rank_engine_and_category(index: TimelineIndex, events) -> None:
    expected = events.assign(track=events["track"].astype(str), category=events["category"].astype(str)) \
        .groupby(["rank", "track", "category"]).size()
    assert len(index.lanes) == len(expected)
    assert index.lanes["lane"].tolist() == list(range(len(index.lanes)))


def test_zoomed_out_is_density_and_conserves_busy_time(index: TimelineIndex, events) -> None:
    view = index.view(width=300, max_segments=1000)
    assert view.mode == "density" and view.density.shape == (len(index.lanes), 300)
    assert ((view.density >= 0) & (view.density <= 1)).all()
    busy = (view.density * np.diff(view.edges)).sum(axis=1)
    for lane in index.lanes.itertuples():       # a loop over ~40 lanes in a test
        sel = (events["rank"] == lane.rank) & (events["track"].astype(str) == lane.track) & \
              (events["category"].astype(str) == lane.category)
        s = events.loc[sel, "ts"].to_numpy() - index.start
        e = s + events.loc[sel, "dur"].to_numpy()
        assert abs(busy[lane.lane] - union_total(s, e)) <= 1e-6


def test_density_bins_match_brute_force(index: TimelineIndex, events) -> None:
    t0 = index.start + (index.end - index.start) // 3
    t1 = t0 + 2_000_000
    view = index.view(t0, t1, width=50, max_segments=0)
    lane = index.lanes[(index.lanes["rank"] == 5) & (index.lanes["track"] == "matrix")].iloc[0]
    sel = (events["rank"] == 5) & (events["track"].astype(str) == "matrix")
    rel_start = np.clip(events.loc[sel, "ts"].to_numpy() - t0, 0, t1 - t0)
    rel_end = np.clip(events.loc[sel, "ts"].to_numpy() + events.loc[sel, "dur"].to_numpy() - t0, 0, t1 - t0)
    cover = timeline(rel_start, rel_end, t1 - t0) > 0
    edges = view.edges - t0
    want = np.array([cover[a:b].sum() / (b - a) for a, b in zip(edges[:-1], edges[1:])])
    assert np.allclose(view.density[lane["lane"]], want)


def test_zoomed_in_is_exact(index: TimelineIndex, events) -> None:
    t0 = index.start + (index.end - index.start) // 2
    t1 = t0 + 300_000
    view = index.view(t0, t1, max_segments=100_000)
    assert view.mode == "exact"
    want = events[(events["ts"] < t1) & (events["ts"] + events["dur"] > t0)]
    assert len(view.segments) == len(want)
    assert sorted(view.segments["ts"].tolist()) == sorted(want["ts"].tolist())


def test_rank_filter_and_bad_window(index: TimelineIndex) -> None:
    view = index.view(ranks=[3], width=100, max_segments=0)
    assert set(view.lanes["rank"]) == {3} and view.density.shape[0] == len(view.lanes)
    with pytest.raises(ValueError, match="empty window"):
        index.view(10, 10)
