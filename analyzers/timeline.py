"""Timeline views at any zoom: exact segments when few, per-pixel busy and op class otherwise.

A browser cannot draw a million segments, so a view is computed per pixel column: for each lane
(rank x engine or stream x category) the fraction of the column the lane was busy, and for each
displayed row the op class that kept it busiest. The index makes any view cheap: per lane, and
per lane and op class, the merged busy intervals and their cumulative length, so the busy time
before any instant is one ``searchsorted`` away and a view of ``W`` pixels costs
``O(lanes x classes x W x log n)`` whatever the number of events in it.

Collective events are split at their transfer start (``collectives.start``, the last member's
arrival): the part before it is the class ``<kind>:wait``, so waiting and moving data are told
apart at any zoom. Rows group lanes: a collapsed node is one row (the mean over its chips of each
chip's busiest engine), a collapsed chip one row, an expanded chip one row per lane.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.store import TraceStore

__all__ = ["TimelineIndex", "TimelineView", "Expand", "layout_rows", "counter_tracks", "WAIT_SUFFIX"]

_COLUMNS = ["ts", "dur", "rank", "node", "chip", "track", "category", "name", "op", "coll_id"]
#: Suffix of the op class of a collective's waiting part (before the last member arrived).
WAIT_SUFFIX = ":wait"
#: Counters whose samples are levels (memory in use), averaged per column; the others count
#: something per step (bytes, tokens) and are shown as a rate.
_GAUGE_PREFIXES = ("memory", "cpu_memory")


@dataclass(frozen=True)
class Expand:
    """Which nodes show their chips and which chips (ranks) show their engines.

    ``None`` is every one; a node left out is one row, a rank left out (of an expanded node) is one.
    """

    nodes: frozenset[int] | None = None
    ranks: frozenset[int] | None = None

    def node_open(self, node: np.ndarray) -> np.ndarray:
        return np.ones(len(node), bool) if self.nodes is None else np.isin(node, list(self.nodes))

    def rank_open(self, rank: np.ndarray) -> np.ndarray:
        return np.ones(len(rank), bool) if self.ranks is None else np.isin(rank, list(self.ranks))


@dataclass(frozen=True)
class TimelineView:
    """What to draw for one window.

    ``mode`` is ``exact`` (``segments``: one row per event of an expanded lane, with its lane and
    row) or ``density`` (zoom in for ops). Either way ``rows`` describes each displayed row and
    ``row_busy[row, column]`` / ``row_class[row, column]`` (a code into ``classes``, -1 where idle)
    what fills each pixel column between ``edges``; ``density[lane, column]`` is each lane's own
    busy fraction (``lanes`` in display order).
    """

    mode: str
    start: int
    end: int
    lanes: pd.DataFrame
    segments: pd.DataFrame | None = None
    density: np.ndarray | None = None
    edges: np.ndarray | None = None
    events_in_view: int = 0
    rows: pd.DataFrame | None = None
    row_busy: np.ndarray | None = None
    row_class: np.ndarray | None = None
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    lane_row: np.ndarray | None = None

    def rank_rows(self) -> pd.Series:
        """Each shown rank's first row (its node's row when the node is collapsed)."""
        frame = pd.DataFrame({"rank": self.lanes["rank"].to_numpy(), "row": self.lane_row})
        return frame.groupby("rank")["row"].min()


def _dictionary(table: pa.Table, column: str) -> tuple[np.ndarray, list[str]]:
    """Integer codes and values of a (dictionary) string column of a one-chunk table."""
    arr = table.column(column).chunk(0)
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    values = [str(v) for v in arr.dictionary.to_pylist()] + ["?"]
    return arr.indices.fill_null(len(values) - 1).to_numpy().astype(np.int64), values


class _Busy:
    """Merged busy intervals of many keys (events sorted by key, then start) and their running
    total, laid end to end on one axis (key ``k`` on ``[k * span, (k + 1) * span)``) so one
    ``searchsorted`` answers every key at once. Holds 16 bytes an interval: the shifted start
    and the running total (an interval's end is its start plus its own length)."""

    def __init__(self, key: np.ndarray, ts: np.ndarray, end: np.ndarray, nkeys: int, origin: int, t_end: int) -> None:
        """``end`` (int64) is overwritten: the index is built at a few bytes an interval over
        what it keeps, the dashboard's peak memory (10M events: ~0.2 GB less)."""
        self.origin, self.t_end = origin, t_end
        self.span = max(t_end - origin, 1) + 1
        if nkeys * self.span >= 1 << 62:
            raise ValueError(f"timeline of {nkeys:,} lanes over {self.span:,} ns does not fit the index's int64 axis")
        shift = key.astype(np.int64)
        shift *= self.span
        shift -= origin
        reach = end
        reach += shift
        np.maximum.accumulate(reach, out=reach)
        new = np.empty(len(ts), bool)
        if len(new):
            new[0] = True
            step = 1 << 20              # bounded temporaries: a chunk of shifted starts at a time
            for a in range(1, len(ts), step):
                b = min(a + step, len(ts))
                np.greater(ts[a:b] + shift[a:b], reach[a - 1:b - 1], out=new[a:b])
        first = np.flatnonzero(new)
        del new
        last = np.r_[first[1:] - 1, len(ts) - 1] if len(first) else first
        self.shifted = ts[first]
        self.shifted += shift[first]
        length = reach[last]
        del reach
        length -= shift[last]
        del shift, last
        length -= ts[first]
        self.cum = np.zeros(len(length) + 1, np.int64)
        np.cumsum(length, out=self.cum[1:])
        del length
        # Key k's shifted starts lie in [k * span, (k + 1) * span).
        self.bounds = np.searchsorted(self.shifted, np.arange(nkeys + 1, dtype=np.int64) * self.span)

    def _start(self, idx: np.ndarray, keys: np.ndarray) -> np.ndarray:
        return self.shifted[idx] - keys * self.span + self.origin

    def before(self, keys: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Busy time of key ``keys[i]`` before each instant ``t[i, j]`` (ns)."""
        keys = np.asarray(keys, dtype=np.int64)
        q = np.clip(t, self.origin, self.t_end) - self.origin + keys[:, None] * self.span
        idx = np.searchsorted(self.shifted, q, side="right") - 1       # last interval starting <= t
        lo = self.bounds[keys][:, None]
        safe = np.maximum(idx, 0)
        start = self._start(safe, keys[:, None])
        within = np.clip(t - start, 0, self.cum[safe + 1] - self.cum[safe])
        return np.where(idx >= lo, self.cum[safe] - self.cum[lo] + within, 0)

    def fraction(self, keys: np.ndarray, edges: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Busy fraction of each key in each column between ``edges`` (``[keys, len(edges) - 1]``).

        Two ways to the same numbers, whichever touches less: with fewer intervals in the window
        than queries, each interval adds its overlap to the columns it covers (a difference
        array for the columns it spans whole); otherwise the running total at every edge."""
        keys = np.asarray(keys, dtype=np.int64)
        width = len(edges) - 1
        t0, t1 = int(edges[0]), int(edges[-1])
        base = keys * self.span - self.origin
        lo = np.maximum(np.searchsorted(self.shifted, np.clip(t0, self.origin, self.t_end) + base, side="right") - 1,
                        self.bounds[keys])
        hi = np.minimum(np.searchsorted(self.shifted, np.clip(t1, self.origin, self.t_end) + base, side="left"),
                        self.bounds[keys + 1])
        counts = np.maximum(hi - lo, 0)
        n = int(counts.sum())
        w = np.maximum(np.diff(edges), 1).astype(np.float64)
        if n >= len(keys) * (width + 1):
            cum = self.before(keys, np.broadcast_to(edges, (len(keys), len(edges))))
            return np.clip(np.diff(cum, axis=1) / w, 0, 1).astype(dtype, copy=False)
        idx = np.repeat(lo, counts) + (np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts))
        row = np.repeat(np.arange(len(keys)) * width, counts)
        start = self._start(idx, np.repeat(keys, counts))
        e = np.clip(start + (self.cum[idx + 1] - self.cum[idx]), t0, t1)
        s = np.clip(start, t0, t1)
        del start
        keep = e > s
        row, s, e = row[keep], s[keep], e[keep]
        cs = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, width - 1)
        ce = np.clip(np.searchsorted(edges, e, side="left") - 1, 0, width - 1)
        size = len(keys) * width
        same = cs == ce
        first = np.where(same, e - s, edges[cs + 1] - s) / w[cs]
        out = np.bincount(row + cs, weights=first, minlength=size)
        m = ~same
        if m.any():
            rm, cm, em = row[m], ce[m], e[m]
            out += np.bincount(rm + cm, weights=(em - edges[cm]) / w[cm], minlength=size)
            # Columns strictly between the first and the last are covered whole.
            full = np.bincount(rm + cs[m] + 1, minlength=size + 1)[:size] - np.bincount(rm + cm, minlength=size + 1)[:size]
            out += np.cumsum(full.reshape(len(keys), width), axis=1).ravel()
        return np.clip(out.reshape(len(keys), width), 0, 1).astype(dtype, copy=False)


def _narrow(values: np.ndarray) -> np.ndarray:
    """``values`` as int16 or int32 when they fit (codes, durations): the index is held for as
    long as the dashboard runs."""
    if not len(values):
        return values
    lo, hi = int(values.min()), int(values.max())
    for dtype in (np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return values.astype(dtype)
    return values


def _return_freed_memory() -> None:
    """Hand the heap pages freed while building back to the OS (glibc keeps them otherwise:
    the per-batch arrays are below its raised mmap threshold). A no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _by_key_then_time(key: np.ndarray, ts: np.ndarray, origin: int, t_end: int) -> np.ndarray:
    """The order sorting events by key, then start: one stable sort of a packed int64 (the
    store's events are nearly in that order already, which a stable sort exploits)."""
    span = max(t_end - origin, 1) + 1
    if (int(key.max()) + 1 if len(key) else 0) * span >= 1 << 62:
        return np.lexsort((ts, key))
    packed = key.astype(np.int64)
    packed *= span
    packed += ts
    packed -= origin
    return np.argsort(packed, kind="stable")


def _transfer_starts(store: TraceStore) -> tuple[np.ndarray, np.ndarray, int]:
    """Sorted ``coll_id * stride + rank`` keys of every collective member and its transfer start."""
    table = store.read("collectives", columns=["coll_id", "rank", "start"])
    if not table.num_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 1
    rank = table.column("rank").to_numpy().astype(np.int64)
    stride = int(rank.max()) + 1
    key = table.column("coll_id").to_numpy().astype(np.int64) * stride + rank
    order = np.argsort(key, kind="stable")
    return key[order], table.column("start").to_numpy().astype(np.int64)[order], stride


class TimelineIndex:
    """Per lane and per (lane, op class): sorted events and merged busy intervals.

    Built once per store, one batch at a time; holds about 60 bytes per event.
    """

    def __init__(self, store: TraceStore) -> None:
        keys, starts, stride = _transfer_starts(store)
        lane_ids: dict[tuple[int, int, int, str, str], int] = {}
        names: dict[str, int] = {}
        ops: dict[str, int] = {}
        classes: dict[str, int] = {}
        sub_ids: dict[tuple[int, int], int] = {}
        parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ts", "dur", "lane", "name", "op", "sts", "send", "sub")}
        for batch in store.stream_events(columns=_COLUMNS):   # no read-ahead: memory is one row group
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
                              for f in first], dtype=np.int64)   # one lookup per lane, not per event
            lane = local[inverse]
            codes = {}
            for col, vocab in (("name", names), ("op", ops)):
                c, values = _dictionary(table, col)
                codes[col] = np.array([vocab.setdefault(v, len(vocab)) for v in values], dtype=np.int32)[c]
            ts = table.column("ts").to_numpy().astype(np.int64)
            dur = table.column("dur").to_numpy().astype(np.int64)
            parts["lane"].append(lane.astype(np.int32))
            parts["name"].append(codes["name"])
            parts["op"].append(codes["op"])
            parts["ts"].append(ts)
            parts["dur"].append(dur)
            # The waiting part of each collective event: up to its instance's transfer start.
            wait = np.zeros(len(ts), np.int64)
            if len(keys):
                coll = table.column("coll_id")
                comm = np.asarray(category[1], dtype=object)[category[0]] == "communication"
                has = comm & ~np.asarray(coll.is_null().to_numpy(zero_copy_only=False))
                if has.any():
                    want = coll.fill_null(0).to_numpy().astype(np.int64)[has] * stride + rank[has]
                    at = np.clip(np.searchsorted(keys, want), 0, len(keys) - 1)
                    found = keys[at] == want
                    w = np.where(found, np.clip(starts[at] - ts[has], 0, dur[has]), 0)
                    wait[has] = w
            op_names = list(ops)
            cls_of_op = np.array([classes.setdefault(o, len(classes)) for o in op_names], dtype=np.int64)
            cls_wait = np.array([classes.setdefault(o + WAIT_SUFFIX, len(classes)) for o in op_names], dtype=np.int64)
            op_code = codes["op"].astype(np.int64)
            # An instant op (dur 0) counts as 1 ns here, so its column is painted; busy
            # fractions come from the lanes' own intervals, where it adds nothing.
            main = (dur > wait) | (dur == 0)
            waits = wait > 0
            s_ts = np.concatenate([ts[main] + wait[main], ts[waits]])
            s_end = np.concatenate([ts[main] + np.maximum(dur[main], 1), ts[waits] + wait[waits]])
            s_lane = np.concatenate([lane[main], lane[waits]])
            s_cls = np.concatenate([cls_of_op[op_code[main]], cls_wait[op_code[waits]]])
            skey = s_lane * (1 << 20) + s_cls
            _, sfirst, sinv = np.unique(skey, return_index=True, return_inverse=True)
            slocal = np.array([sub_ids.setdefault((int(s_lane[f]), int(s_cls[f])), len(sub_ids)) for f in sfirst],
                              dtype=np.int64)
            parts["sts"].append(s_ts)
            parts["send"].append(s_end)
            parts["sub"].append(slocal[sinv].astype(np.int32) if len(slocal) else np.zeros(0, np.int32))
            del table, batch, rank, node, chip, track, category, key, first, inverse, lane, ts, dur, wait
        arrays: dict[str, np.ndarray] = {}
        for name in list(parts):       # one column at a time: its pieces and the whole never all coexist
            pieces = parts.pop(name)
            arrays[name] = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
            del pieces
        lanes = pd.DataFrame(list(lane_ids), columns=["rank", "node", "chip", "track", "category"])
        display = lanes.sort_values(["node", "chip", "rank", "track", "category"]).index.to_numpy()
        relabel = np.empty(len(display), np.int64)
        relabel[display] = np.arange(len(display))
        lanes = lanes.loc[display].reset_index(drop=True)
        for col in ("track", "category"):     # plain objects: views read them often, per lane
            lanes[col] = np.asarray(lanes[col].to_numpy(dtype=object), dtype=object)
        lanes["lane"] = np.arange(len(lanes))
        lane = relabel[arrays.pop("lane")] if len(relabel) else np.zeros(0, np.int64)
        ts, dur = arrays.pop("ts"), arrays.pop("dur")
        self.start = int(ts.min()) if len(ts) else 0
        self.end = int((ts + dur).max()) if len(ts) else 0
        order = _by_key_then_time(lane, ts, self.start, self.end)
        self.lane_of = lane[order].astype(np.int32)
        del lane
        self.ts = ts[order]
        del ts
        self.dur = _narrow(dur[order])
        del dur
        self._name_codes, self._names = _narrow(arrays.pop("name")[order]), np.array(list(names), dtype=object)
        self._op_codes, self._ops = _narrow(arrays.pop("op")[order]), np.array(list(ops), dtype=object)
        del order
        self.bounds = np.searchsorted(self.lane_of, np.arange(len(lanes) + 1))
        # Busy time is a union: overlapping events of one lane (several streams' worth) count once.
        ends = self.ts + self.dur
        self._busy = _Busy(self.lane_of, self.ts, ends, len(lanes), self.start, self.end)
        del ends
        # Per (lane, class): the same, for the colour of each column.
        subs = pd.DataFrame(list(sub_ids), columns=["lane", "cls"])
        subs["lane"] = relabel[subs["lane"].to_numpy()] if len(subs) else subs["lane"]
        sub_order = np.lexsort((subs["cls"].to_numpy(), subs["lane"].to_numpy()))
        sub_relabel = np.empty(len(subs), np.int64)
        sub_relabel[sub_order] = np.arange(len(subs))
        self.sublanes = subs.iloc[sub_order].reset_index(drop=True)
        s_id = sub_relabel[arrays.pop("sub")] if len(subs) else np.zeros(0, np.int64)
        s_ts = arrays.pop("sts")
        order = _by_key_then_time(s_id, s_ts, self.start, self.end)
        s_id, s_ts = s_id[order], s_ts[order]
        s_end = arrays.pop("send")[order]
        del order
        self._sub_busy = _Busy(s_id, s_ts, s_end, len(subs), self.start, self.end)
        del s_id, s_ts, s_end
        arrays.clear()
        _return_freed_memory()
        self.classes = np.array(list(classes), dtype=object)
        self.lanes = lanes
        self.sub_bounds = np.searchsorted(self.sublanes["lane"].to_numpy(), np.arange(len(lanes) + 1))

    # -- queries -----------------------------------------------------------------------------

    def busy_before(self, lane: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Busy time of lane ``lane[i]`` before each instant ``t[i, j]`` (ns; vectorized)."""
        return self._busy.before(np.asarray(lane, dtype=np.int64), t)

    @property
    def names(self) -> np.ndarray:
        """Op names (the codes of :meth:`find` index into it)."""
        return self._names

    def visible_lanes(self, ranks: list[int] | None = None) -> pd.DataFrame:
        """The lanes of ``ranks`` (every lane for ``None``, or when none of them has a lane)."""
        if ranks is None:
            return self.lanes
        lanes = self.lanes[self.lanes["rank"].isin(ranks)]
        return lanes if len(lanes) else self.lanes

    def view(self, start: int | None = None, end: int | None = None, *, width: int = 1200,
             max_segments: int = 20_000, ranks: list[int] | None = None, expand: Expand | None = None) -> TimelineView:
        """The view of ``[start, end)`` (ns; default the whole trace) at ``width`` pixel columns,
        rows grouped by ``expand`` (default: every lane its own row)."""
        t0 = self.start if start is None else int(start)
        t1 = self.end if end is None else int(end)
        if t1 <= t0:
            raise ValueError(f"empty window: 'start' {t0} must be before 'end' {t1}")
        lanes = self.lanes if ranks is None else self.lanes[self.lanes["rank"].isin(ranks)]
        ids = lanes["lane"].to_numpy()
        rows, lane_row = layout_rows(lanes, expand or Expand())
        open_lane = rows["kind"].to_numpy()[lane_row] == "lane" if len(ids) else np.zeros(0, bool)
        # Events overlapping the window: from the last one starting before t0 to the last
        # starting before t1, per lane (lanes are sequential, so start order bounds them).
        first = self._first_in(ids, t0)
        last = self._last_in(ids, t1)
        count = int(np.maximum(last - first, 0)[open_lane].sum())
        edges = np.linspace(t0, t1, width + 1).round().astype(np.int64)
        density = self._busy.fraction(ids, edges, np.float64) if len(ids) else np.zeros((0, width))
        row_busy, row_class = self._rows(ids, lane_row, rows, density, edges)
        common = dict(lanes=lanes, density=density, edges=edges, rows=rows, row_busy=row_busy, row_class=row_class,
                      classes=self.classes, lane_row=lane_row)
        if count <= max_segments and open_lane.any():
            sel = np.flatnonzero(open_lane)
            idx = (np.concatenate([np.arange(a, b) for a, b in zip(first[sel], last[sel])])
                   if len(sel) else np.zeros(0, np.int64))
            idx = idx[self.ts[idx] + self.dur[idx] > t0]
            lane_pos = np.empty(len(self.lanes), np.int64)
            lane_pos[ids] = lane_row
            seg = pd.DataFrame({"lane": self.lane_of[idx], "row": lane_pos[self.lane_of[idx]], "ts": self.ts[idx],
                                "dur": self.dur[idx],
                                "name": self._names[self._name_codes[idx]] if len(self._names) else [],
                                "op": self._ops[self._op_codes[idx]] if len(self._ops) else []})
            return TimelineView("exact", t0, t1, segments=seg, events_in_view=len(seg), **common)
        return TimelineView("density", t0, t1, events_in_view=int(np.maximum(last - first, 0).sum()), **common)

    def _rows(self, ids: np.ndarray, lane_row: np.ndarray, rows: pd.DataFrame, density: np.ndarray,
              edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's busy fraction per column (the mean over its chips of each chip's busiest
        lane) and the class busiest there (the sum over its lanes, ties to the lower code)."""
        n, width = len(rows), len(edges) - 1
        if not len(ids):
            return np.zeros((n, width), np.float32), np.full((n, width), -1, np.int16)
        rank = self.lanes["rank"].to_numpy()[ids]
        # Lanes come in display order, so each (row, rank) group and each row is one run.
        gstart = np.flatnonzero(np.r_[True, (lane_row[1:] != lane_row[:-1]) | (rank[1:] != rank[:-1])])
        chip_busy = _reduce_runs(np.maximum, density, gstart)
        grow = lane_row[gstart]
        rstart = np.flatnonzero(np.r_[True, grow[1:] != grow[:-1]])
        row_busy = _reduce_runs(np.add, chip_busy, rstart) / np.diff(np.r_[rstart, len(gstart)])[:, None]
        # Classes: every sub-lane of the shown lanes, summed per (row, class).
        lo, hi = self.sub_bounds[ids], self.sub_bounds[ids + 1]
        counts = hi - lo
        subs = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        row_class = np.full((n, width), -1, np.int16)
        if len(subs):
            sub_row = np.repeat(lane_row, counts)
            sub_cls = self.sublanes["cls"].to_numpy()[subs]
            order = np.lexsort((sub_cls, sub_row))
            sub_row, sub_cls, subs = sub_row[order], sub_cls[order], subs[order]
            frac = self._sub_busy.fraction(subs, edges)
            gs = np.flatnonzero(np.r_[True, (sub_row[1:] != sub_row[:-1]) | (sub_cls[1:] != sub_cls[:-1])])
            total = _reduce_runs(np.add, frac, gs)
            g_row, g_cls = sub_row[gs], sub_cls[gs]
            rs = np.flatnonzero(np.r_[True, g_row[1:] != g_row[:-1]])
            best = _reduce_runs(np.maximum, total, rs)
            hit = (total >= np.repeat(best, np.diff(np.r_[rs, len(gs)]), axis=0)) & (total > 0)
            code = np.where(hit, g_cls[:, None].astype(np.int32), np.iinfo(np.int32).max)
            pick = _reduce_runs(np.minimum, code, rs)
            row_class[g_row[rs]] = np.where(pick == np.iinfo(np.int32).max, -1, pick).astype(np.int16)
        return row_busy.astype(np.float32), row_class

    def find(self, codes: np.ndarray, lanes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions (into :attr:`ts`) of the events with a name in ``codes`` on ``lanes``, in
        time order, and their lanes: one pass over the name codes."""
        hit = np.isin(self._name_codes, codes) & np.isin(self.lane_of, lanes)
        pos = np.flatnonzero(hit)
        pos = pos[np.argsort(self.ts[pos], kind="stable")]
        return pos, self.lane_of[pos]

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


def _reduce_runs(ufunc: np.ufunc, a: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``ufunc.reduceat(a, starts, axis=0)``, faster: runs of one row are copied, longer runs
    reduced slice by slice (a loop over runs of rows; numpy's reduceat along axis 0 is ~20x
    slower than reducing contiguous slices)."""
    ends = np.r_[starts[1:], len(a)]
    if len(starts) == len(a):
        return a.copy()
    out = a[starts].copy()
    for i in np.flatnonzero(ends - starts > 1):
        ufunc.reduce(a[starts[i]:ends[i]], axis=0, out=out[i])
    return out


def layout_rows(lanes: pd.DataFrame, expand: Expand) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows drawn for ``lanes`` (display order) and each lane's row.

    Rows: ``kind`` (``node``: a collapsed node; ``chip``: a collapsed chip of an expanded node;
    ``lane``), ``node``, ``rank`` and ``chip`` (-1 on node rows), ``track`` and ``category``
    (lane rows only), ``chips`` (how many chips it stands for) and ``label``.
    """
    node = lanes["node"].to_numpy(np.int64)
    rank = lanes["rank"].to_numpy(np.int64)
    node_open = expand.node_open(node)
    rank_open = node_open & expand.rank_open(rank)
    kind = np.where(rank_open, 2, np.where(node_open, 1, 0))
    ident = np.where(kind == 2, lanes["lane"].to_numpy(np.int64), np.where(kind == 1, rank, node))
    key = kind * (1 << 40) + ident
    change = np.r_[True, key[1:] != key[:-1]] if len(key) else np.zeros(0, bool)
    lane_row = np.cumsum(change) - 1
    heads = np.flatnonzero(change)
    chips = pd.Series(rank).groupby(lane_row).nunique().to_numpy() if len(rank) else np.zeros(0, np.int64)
    kinds = np.array(["node", "chip", "lane"], dtype=object)[kind[heads]]
    head = lanes.iloc[heads]
    rows = pd.DataFrame({"row": np.arange(len(heads)), "kind": kinds, "node": node[heads],
                         "rank": np.where(kind[heads] == 0, -1, rank[heads]),
                         "chip": np.where(kind[heads] == 0, -1, head["chip"].to_numpy(np.int64)),
                         "track": np.where(kind[heads] == 2, head["track"].astype(str).to_numpy(), ""),
                         "category": np.where(kind[heads] == 2, head["category"].astype(str).to_numpy(), ""),
                         "chips": chips})
    rows["label"] = _labels(rows, lanes.iloc[heads])
    return rows, lane_row


def _labels(rows: pd.DataFrame, heads: pd.DataFrame) -> list[str]:
    """``r5 n1·c1 matrix`` per lane row (the category too when an engine has several), ``▸ node 3
    (8 chips)`` and ``▸ r5 n1·c1`` for collapsed ones: rows, not events."""
    track_cats = heads.groupby(["rank", "track"], observed=True)["category"].transform("size").to_numpy() \
        if len(heads) else np.zeros(0)
    out = []
    for kind, node, rank, chip, track, cat, chips, n in zip(rows["kind"], rows["node"], rows["rank"], rows["chip"],
                                                            rows["track"], rows["category"], rows["chips"], track_cats):
        if kind == "node":
            out.append(f"▸ node {node} ({chips} chip{'s' if chips != 1 else ''})")
        elif kind == "chip":
            out.append(f"▸ r{rank} n{node}·c{chip}")
        else:
            out.append(f"r{rank} n{node}·c{chip} {track}" + (f" ({cat})" if n > 1 else ""))
    return out


def counter_tracks(counters: pd.DataFrame, names: list[str], ranks: list[int] | None, edges: np.ndarray) -> pd.DataFrame:
    """Counter ``names`` over the selected ranks, one value per column between ``edges``.

    Levels (``memory*``) are the mean of the samples in a column, summed over ranks; counts per
    step (bytes, tokens, ns) are a rate: their sum in the column per second. Columns without a
    sample are NaN (a gap, not a zero). Returns ``counter``, ``t_ns`` (column middle) and ``value``.
    """
    out = []
    mid = (edges[:-1] + edges[1:]) / 2
    width = np.maximum(np.diff(edges), 1)
    if not len(counters):
        return pd.DataFrame({"counter": [], "t_ns": [], "value": []})
    sel = counters[counters["counter"].astype(str).isin(names)]
    if ranks is not None:
        sel = sel[sel["rank"].isin(ranks)]
    ts = sel["ts"].to_numpy(np.int64)
    col = np.searchsorted(edges, ts, side="right") - 1
    inside = (col >= 0) & (col < len(mid))
    sel, col = sel[inside], col[inside]
    for name in names:                         # a loop over counter names, not samples
        mine = (sel["counter"].astype(str) == name).to_numpy()
        c, v = col[mine], sel["value"].to_numpy(float)[mine]
        total = np.bincount(c, weights=v, minlength=len(mid))
        n = np.bincount(c, minlength=len(mid))
        if name.startswith(_GAUGE_PREFIXES):
            r = sel["rank"].to_numpy()[mine]
            ranks_in = np.bincount(c, weights=np.ones(len(c)), minlength=len(mid))
            per_rank = pd.DataFrame({"c": c, "r": r}).drop_duplicates().groupby("c").size() if len(c) else pd.Series(dtype=float)
            k = np.zeros(len(mid))
            k[per_rank.index.to_numpy(np.int64)] = per_rank.to_numpy(float)
            value = np.where(n > 0, total / np.maximum(ranks_in, 1) * k, np.nan)
        else:
            value = np.where(n > 0, total / (width / 1e9), np.nan)
        out.append(pd.DataFrame({"counter": name, "t_ns": mid, "value": value}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame({"counter": [], "t_ns": [], "value": []})
