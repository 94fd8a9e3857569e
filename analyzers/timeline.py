"""Timeline views at any zoom: exact segments when few are in view, busy density otherwise.

A browser cannot draw a million segments, so a zoomed-out view shows, per lane (rank x engine or
stream) and per pixel column, the fraction of time each category kept the lane busy. The index
makes any view cheap: per lane and category the events' starts and the cumulative sum of their
durations, so the busy time before any instant is one ``searchsorted`` away, and a view of ``W``
pixels costs ``O(lanes x W x log n)`` whatever the number of events in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.intervals import merge
from sohuprof.store import TraceStore

__all__ = ["TimelineIndex", "TimelineView"]

_COLUMNS = ["ts", "dur", "rank", "node", "chip", "track", "category", "name", "op"]


@dataclass(frozen=True)
class TimelineView:
    """What to draw for one window.

    ``mode`` is ``exact`` (``segments``: one row per event, with its lane) or ``density``
    (``density[lane, column]``: busy fraction per category-lane and pixel column between
    ``edges``). ``lanes`` describes every lane drawn, in display order.
    """

    mode: str
    start: int
    end: int
    lanes: pd.DataFrame
    segments: pd.DataFrame | None = None
    density: np.ndarray | None = None
    edges: np.ndarray | None = None
    events_in_view: int = 0


class TimelineIndex:
    """Per (rank, track, category) lane: sorted starts, ends and cumulative busy time.

    Built once per store (one read of nine columns); holds about 40 bytes per event.
    """

    def __init__(self, store: TraceStore) -> None:
        table = store.read("events", columns=_COLUMNS).unify_dictionaries().combine_chunks()
        self.start = int(pc.min(table.column("ts")).as_py()) if table.num_rows else 0
        self.end = int(pc.max(pc.add(table.column("ts"), table.column("dur"))).as_py()) if table.num_rows else 0
        # Lanes from integer codes: rank, then the track and category dictionary indices.
        track, category = table.column("track").chunk(0) if table.num_rows else None, \
            table.column("category").chunk(0) if table.num_rows else None
        rank = table.column("rank").to_numpy().astype(np.int64)
        n_track = len(track.dictionary) if track is not None else 1
        n_cat = len(category.dictionary) if category is not None else 1
        code = ((rank * n_track + (track.indices.to_numpy() if track is not None else 0)) * n_cat
                + (category.indices.to_numpy() if category is not None else 0))
        uniq, first, lane = np.unique(code, return_index=True, return_inverse=True)
        lanes = pd.DataFrame({
            "rank": rank[first], "node": table.column("node").to_numpy()[first],
            "chip": table.column("chip").to_numpy()[first],
            "track": np.asarray(track.dictionary.to_pylist(), dtype=object)[track.indices.to_numpy()[first]]
            if track is not None else [],
            "category": np.asarray(category.dictionary.to_pylist(), dtype=object)[category.indices.to_numpy()[first]]
            if category is not None else []})
        display = lanes.sort_values(["node", "chip", "rank", "track", "category"]).index.to_numpy()
        relabel = np.empty(len(display), np.int64)
        relabel[display] = np.arange(len(display))
        lanes = lanes.loc[display].reset_index(drop=True)
        lanes["lane"] = np.arange(len(lanes))
        lane = relabel[lane] if len(lane) else lane
        ts = table.column("ts").to_numpy()
        dur = table.column("dur").to_numpy()
        order = np.lexsort((ts, lane))
        self.lane_of = lane[order]
        self.ts = ts[order]
        self.dur = dur[order]
        self.names = table.column("name").combine_chunks().take(pa.array(order)).dictionary_encode() \
            if table.num_rows else pa.array([], pa.string())
        self.ops = table.column("op").combine_chunks().take(pa.array(order)) if table.num_rows else pa.array([], pa.string())
        self.bounds = np.searchsorted(self.lane_of, np.arange(len(lanes) + 1))
        # Busy time is a union: overlapping events of one lane (several streams' worth) count once.
        self.busy_start, self.busy_cum, self.busy_bounds = self._busy(lanes)
        self.lanes = lanes

    def _busy(self, lanes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = merge(self.ts, self.ts + self.dur, self.lane_of)
        order = np.lexsort((m.start, m.key))
        key, start, end = m.key[order], m.start[order], m.end[order]
        self._busy_end = end
        # Every lane on its own stretch of the time axis: one searchsorted answers all lanes.
        self._span = max(self.end - self.start, 1) + 1
        self._busy_shifted = start - self.start + key * self._span
        cum = np.concatenate([[0], np.cumsum(end - start)])
        return start, cum, np.searchsorted(key, np.arange(len(lanes) + 1))

    def busy_before(self, lane: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Busy time of lane ``lane[i]`` before each instant ``t[i, j]`` (ns; vectorized)."""
        q = np.clip(t, self.start, self.end) - self.start + lane[:, None] * self._span
        idx = np.searchsorted(self._busy_shifted, q, side="right") - 1            # last interval starting <= t
        lo = self.busy_bounds[lane][:, None]
        valid = idx >= lo
        safe = np.maximum(idx, 0)
        within = np.clip(t - self.busy_start[safe], 0, self._busy_end[safe] - self.busy_start[safe])
        return np.where(valid, self.busy_cum[safe] - self.busy_cum[lo] + within, 0)

    def view(self, start: int | None = None, end: int | None = None, *, width: int = 1200,
             max_segments: int = 20_000, ranks: list[int] | None = None) -> TimelineView:
        """The view of ``[start, end)`` (ns; default the whole trace) at ``width`` pixel columns."""
        t0 = self.start if start is None else int(start)
        t1 = self.end if end is None else int(end)
        if t1 <= t0:
            raise ValueError(f"empty window: 'start' {t0} must be before 'end' {t1}")
        lanes = self.lanes if ranks is None else self.lanes[self.lanes["rank"].isin(ranks)]
        ids = lanes["lane"].to_numpy()
        # Events overlapping the window: from the last one starting before t0 to the last
        # starting before t1, per lane (lanes are sequential, so start order bounds them).
        first = self._first_in(ids, t0)
        last = self._last_in(ids, t1)
        count = int(np.maximum(last - first, 0).sum())
        if count <= max_segments:
            idx = np.concatenate([np.arange(a, b) for a, b in zip(first, last)]) if len(ids) else np.zeros(0, int)
            end_ = self.ts[idx] + self.dur[idx]
            keep = end_ > t0
            idx = idx[keep]
            seg = pd.DataFrame({"lane": self.lane_of[idx], "ts": self.ts[idx], "dur": self.dur[idx],
                                "name": self.names.take(pa.array(idx)).to_pandas().astype(str).to_numpy(),
                                "op": self.ops.take(pa.array(idx)).to_pandas().astype(str).to_numpy()})
            return TimelineView("exact", t0, t1, lanes, segments=seg, events_in_view=len(seg))
        edges = np.linspace(t0, t1, width + 1).round().astype(np.int64)
        cum = self.busy_before(ids, np.broadcast_to(edges, (len(ids), width + 1)))
        density = np.diff(cum, axis=1) / np.maximum(np.diff(edges), 1)
        return TimelineView("density", t0, t1, lanes, density=np.clip(density, 0, 1), edges=edges,
                            events_in_view=count)

    def _first_in(self, ids: np.ndarray, t0: int) -> np.ndarray:
        """Per lane, the first event that may overlap ``t0`` (the last starting before it)."""
        out = np.empty(len(ids), np.int64)
        for i, lane in enumerate(ids):          # a loop over lanes, not events
            lo, hi = self.bounds[lane], self.bounds[lane + 1]
            out[i] = max(lo + np.searchsorted(self.ts[lo:hi], t0, side="right") - 1, lo)
        return out

    def _last_in(self, ids: np.ndarray, t1: int) -> np.ndarray:
        out = np.empty(len(ids), np.int64)
        for i, lane in enumerate(ids):
            lo, hi = self.bounds[lane], self.bounds[lane + 1]
            out[i] = lo + np.searchsorted(self.ts[lo:hi], t1, side="left")
        return out
