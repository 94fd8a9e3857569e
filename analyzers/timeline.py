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


def _dictionary(table: pa.Table, column: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes and values of a (dictionary) string column of a one-chunk table."""
    arr = table.column(column).chunk(0)
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    values = [str(v) for v in arr.dictionary.to_pylist()] + ["?"]
    return arr.indices.fill_null(len(values) - 1).to_numpy().astype(np.int64), values


class TimelineIndex:
    """Per (rank, track, category) lane: sorted starts, ends and cumulative busy time.

    Built once per store, one node partition at a time; holds about 60 bytes per event.
    """

    def __init__(self, store: TraceStore) -> None:
        # A batch at a time: each event keeps only ts, dur and three int32 codes (lane, name,
        # op), so the peak is one batch plus ~28 bytes per event.
        lane_ids: dict[tuple[int, int, int, str, str], int] = {}
        names: dict[str, int] = {}
        ops: dict[str, int] = {}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "dur", "lane", "name", "op")}
        for batch in store.scan(columns=_COLUMNS, batch_size=1 << 20):
            if not batch.num_rows:
                continue
            table = pa.Table.from_batches([batch]).unify_dictionaries().combine_chunks()
            rank = table.column("rank").to_numpy().astype(np.int64)
            node = table.column("node").to_numpy()
            chip = table.column("chip").to_numpy()
            track, category = _dictionary(table, "track"), _dictionary(table, "category")
            key = (rank * len(track[1]) + track[0]) * len(category[1]) + category[0]
            _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
            local = np.array([lane_ids.setdefault((int(rank[f]), int(node[f]), int(chip[f]), track[1][track[0][f]],
                                                   category[1][category[0][f]]), len(lane_ids))
                              for f in first])   # one lookup per lane, not per event
            parts["lane"].append(local[inverse].astype(np.int32))
            for col, vocab, out in (("name", names, parts["name"]), ("op", ops, parts["op"])):
                codes, values = _dictionary(table, col)
                remap = np.array([vocab.setdefault(v, len(vocab)) for v in values], dtype=np.int32)
                out.append(remap[codes])
            parts["ts"].append(table.column("ts").to_numpy())
            parts["dur"].append(table.column("dur").to_numpy())
            del table, batch, rank, node, chip, track, category, key, first, inverse
        arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in parts.items()}
        parts.clear()
        lanes = pd.DataFrame([(r, n, c, t, g) for (r, n, c, t, g) in lane_ids],
                             columns=["rank", "node", "chip", "track", "category"])
        display = lanes.sort_values(["node", "chip", "rank", "track", "category"]).index.to_numpy()
        relabel = np.empty(len(display), np.int64)
        relabel[display] = np.arange(len(display))
        lanes = lanes.loc[display].reset_index(drop=True)
        lanes["lane"] = np.arange(len(lanes))
        lane = relabel[arrays["lane"]] if len(arrays["lane"]) else arrays["lane"].astype(np.int64)
        ts, dur = arrays["ts"], arrays["dur"]
        self.start = int(ts.min()) if len(ts) else 0
        self.end = int((ts + dur).max()) if len(ts) else 0
        order = np.lexsort((ts, lane))
        self.lane_of = lane[order].astype(np.int32)
        del lane
        self.ts = ts[order]
        self.dur = dur[order]
        del ts, dur
        self._name_codes, self._names = arrays.pop("name")[order], np.array(list(names), dtype=object)
        self._op_codes, self._ops = arrays.pop("op")[order], np.array(list(ops), dtype=object)
        arrays.clear()
        del order
        self.bounds = np.searchsorted(self.lane_of, np.arange(len(lanes) + 1))
        # Busy time is a union: overlapping events of one lane (several streams' worth) count once.
        self.busy_start, self.busy_cum, self.busy_bounds = self._busy(lanes)
        self.lanes = lanes

    def _busy(self, lanes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each lane's busy intervals (overlapping events merged), their cumulative length, and
        where each lane's run starts. Events are sorted by (lane, ts), so one pass over the
        lane-shifted ends finds every merge, without sorting or per-lane work."""
        self._span = max(self.end - self.start, 1) + 1
        shift = self.lane_of.astype(np.int64)
        shift *= self._span
        shift -= self.start
        reach = self.ts + self.dur
        reach += shift
        np.maximum.accumulate(reach, out=reach)
        new = np.empty(len(self.ts), bool)
        if len(new):
            new[0] = True
            np.greater(self.ts[1:] + shift[1:], reach[:-1], out=new[1:])
        first = np.flatnonzero(new)
        del new
        start = self.ts[first]
        key = self.lane_of[first].astype(np.int64)
        last = np.r_[first[1:] - 1, len(self.ts) - 1] if len(first) else first
        end = reach[last] - shift[last]
        del reach, shift
        self._busy_end = end
        # Every lane on its own stretch of the time axis: one searchsorted answers all lanes.
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
                                "name": self._names[self._name_codes[idx]] if len(self._names) else [],
                                "op": self._ops[self._op_codes[idx]] if len(self._ops) else []})
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
