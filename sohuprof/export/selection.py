"""What an export selects and where each event goes: shared by the Chrome JSON and Perfetto exporters.

:func:`plan_export` resolves the time window and rank selection against the store (one pass over
few columns) and finds the collectives' flows; :func:`rank_events` reads one rank's selected events
sorted by (track, start, longest first) with the overlap lane of each (:func:`assign_lanes`), so
both formats put every event on the same chip, engine and lane.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.errors import SohuprofError
from sohuprof.schema import COUNTERS, EVENTS
from sohuprof.store import TraceStore, open_store

__all__ = ["SelectionError", "Plan", "RankEvents", "parse_ranks", "plan_export", "prepare_export", "no_events", "rank_events",
           "assign_lanes", "selection_filter", "fmt_ranks", "ENGINE_ORDER"]

PathLike = Union[str, "os.PathLike[str]"]

#: Display order of a chip's engines; other tracks (GPU streams, CPU threads) follow, sorted.
ENGINE_ORDER = ("matrix", "vector", "dma", "collective", "host")


# tid = rank * RANK_STRIDE + track_index * LANES + lane + 1, an unsigned 32-bit int that is
# the same for a (rank, track, lane) in every export of a store (0 is avoided: Perfetto reserves it).
LANES = 64
TRACKS = 1024
RANK_STRIDE = TRACKS * LANES
MAX_RANK = (2**32 - 1) // RANK_STRIDE - 1


class SelectionError(SohuprofError, ValueError):
    """The time window or rank selection of an export picks nothing the store holds."""



#: Bounds of a parsed rank selection (see :func:`parse_ranks`).
_MAX_RANK_ID = 2**31 - 1
_MAX_SELECTED_RANKS = 2**20


def parse_ranks(text: str) -> list[int]:
    """Parse a rank list such as ``"0,3,8-15"`` into sorted unique ranks.

    Ranks are bounded before any range is expanded: each is below ``2**31`` (ranks are int32 in
    the store) and a selection spans at most ``2**20`` ranks (more than any cluster has), so a
    typo such as ``0-999999999999`` is one clear error rather than a list of a trillion ints.

    Raises
    ------
    ValueError
        ``text`` is not a comma-separated list of ranks and ``A-B`` ranges, or a rank or the
        selection's size is past those bounds.

    Examples
    --------
    >>> parse_ranks("0,3,8-10")
    [0, 3, 8, 9, 10]
    """
    spans: list[tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"'ranks' must be ranks and ranges like 0,3,8-15; got {text!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"'ranks' range {part!r} is empty or negative; write it low-high, like 8-15")
        if b > _MAX_RANK_ID:
            raise ValueError(f"'ranks' {part!r} names rank {b:,}, past the largest a store holds ({_MAX_RANK_ID:,})")
        spans.append((a, b))
    size = sum(b - a + 1 for a, b in spans)
    if size > _MAX_SELECTED_RANKS:
        raise ValueError(f"'ranks' {text!r} selects {size:,} ranks, more than the {_MAX_SELECTED_RANKS:,} "
                         "a selection may name; list the ranks the store has")
    ranks: set[int] = set()
    for a, b in spans:
        ranks.update(range(a, b + 1))
    return sorted(ranks)


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class Plan:
    t0: int                       # trace start: the store's first event or counter sample (ns)
    start_ns: int                 # window, [start_ns, end_ns)
    end_ns: int
    ranks: list[tuple[int, int, int]]   # (node, rank, chip) selected, in output order
    tracks: dict[str, int]        # track name -> stable index
    flow_coll: np.ndarray         # sorted coll_ids with >= 2 selected members
    flow_src_rank: np.ndarray     # the member each flow starts from (first to arrive)
    flow_src_ts: np.ndarray
    flows: int


def ensure_store(store: TraceStore | PathLike) -> TraceStore:
    return store if isinstance(store, TraceStore) else open_store(store)


def _track_key(name: str) -> tuple[int, str, int]:
    """Engines in ENGINE_ORDER, then other tracks by name with their trailing number as a number."""
    if name in ENGINE_ORDER:
        return (ENGINE_ORDER.index(name), "", 0)
    head, _, tail = name.rpartition(" ")
    if tail.lstrip("-").isdigit():
        return (len(ENGINE_ORDER), head, int(tail))
    return (len(ENGINE_ORDER), name, 0)


def _ms_to_ns(value: float, what: str) -> int:
    if not np.isfinite(value):
        raise SelectionError(f"'{what}' must be a finite number of ms; got {value!r}")
    return int(round(value * 1_000_000))


def plan_export(store: TraceStore, start_ms: float | None, end_ms: float | None,
          ranks: Sequence[int] | None) -> Plan:
    if start_ms is not None and start_ms < 0:
        raise SelectionError(f"'start_ms' must be >= 0 (ms from the trace start); got {start_ms:g}")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise SelectionError(f"'end_ms' ({end_ms:g}) must be greater than 'start_ms' ({start_ms:g})")
    # Pass 1 (few columns): which ranks live where, the tracks, and the trace's extent.
    triples: set[tuple[int, int, int]] = set()
    tracks: set[str] = set()
    t_first, t_last = None, None
    for batch in store.scan(columns=["node", "rank", "chip", "track", "ts", "dur"]):
        if batch.num_rows == 0:
            continue
        keys = pa.table({"node": batch.column("node"), "rank": batch.column("rank"),
                         "chip": batch.column("chip")}).group_by(["node", "rank", "chip"]).aggregate([])
        triples.update(zip(*(keys.column(c).to_pylist() for c in ("node", "rank", "chip"))))
        track = batch.column("track")
        used = pc.unique(track.indices)
        tracks.update(pc.take(track.dictionary, used).to_pylist())
        lo = pc.min(batch.column("ts")).as_py()
        hi = pc.max(pc.add(batch.column("ts"), batch.column("dur"))).as_py()
        t_first = lo if t_first is None else min(t_first, lo)
        t_last = hi if t_last is None else max(t_last, hi)
    if t_first is None:
        raise SelectionError(f"trace store '{store.path}' holds no events; nothing to export")
    counters_ts = store.read(COUNTERS, columns=["ts"]).column("ts")
    t0 = min(t_first, pc.min(counters_ts).as_py()) if len(counters_ts) else t_first
    span_ms = (t_last - t0) / 1e6
    start_ns = t0 + _ms_to_ns(start_ms, "start_ms") if start_ms is not None else t0
    end_ns = t0 + _ms_to_ns(end_ms, "end_ms") if end_ms is not None else max(t_last, t0) + 1
    if start_ns >= t_last or end_ns <= t0:
        raise SelectionError(f"window {_fmt_window(start_ms, end_ms)} is outside the trace, "
                             f"which spans 0-{span_ms:,.3f} ms; pick --start-ms/--end-ms inside it")

    available = sorted(triples, key=lambda t: (t[0], t[1]))
    if ranks is not None:
        wanted = set(int(r) for r in ranks)
        have = {r for _, r, _ in available}
        missing = sorted(wanted - have)
        if missing:
            raise SelectionError(f"ranks {fmt_ranks(missing)} are not in the store, which has ranks "
                                 f"{fmt_ranks(sorted(have))}")
        available = [t for t in available if t[1] in wanted]
    if not available:
        raise SelectionError("the rank selection is empty; pass at least one rank to --ranks")
    if available[-1][1] > MAX_RANK:
        raise SelectionError(f"rank {available[-1][1]} is beyond the {MAX_RANK} ranks a Chrome trace's "
                             f"32-bit thread ids can hold; export fewer with --ranks")
    ordered_tracks = sorted(tracks, key=_track_key)
    if len(ordered_tracks) > TRACKS:
        raise SelectionError(f"the store has {len(ordered_tracks)} tracks per rank, more than the "
                             f"{TRACKS} a Chrome trace export can number")
    track_index = {name: i for i, name in enumerate(ordered_tracks)}

    # Pass 2 (collective members only): the first member of each instance, where its flow starts.
    sel = selection_filter(start_ns, end_ns, [r for _, r, _ in available]) & pc.is_valid(pc.field("coll_id"))
    members = store.read(EVENTS, columns=["coll_id", "rank", "ts", "dur"], filters=sel)
    order_of_rank = {r: i for i, (_, r, _) in enumerate(available)}
    coll = members.column("coll_id").to_numpy()
    rank = members.column("rank").to_numpy()
    ts = members.column("ts").to_numpy()
    if len(coll):
        lut = np.full(max(order_of_rank) + 1, -1, dtype=np.int64)
        lut[list(order_of_rank)] = list(order_of_rank.values())
        emit = lut[rank]
        # The source must be the member Perfetto reads first: its importer orders X events by ts,
        # then longest first, then as written (measured on Perfetto v52).
        dur = members.column("dur").to_numpy()
        order = np.lexsort((emit, -dur, ts, coll))
        coll, rank, ts = coll[order], rank[order], ts[order]
        first = np.ones(len(coll), dtype=bool)
        first[1:] = coll[1:] != coll[:-1]
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, len(coll)))
        keep = starts[sizes >= 2]
        flow_coll, flow_rank, flow_ts = coll[keep], rank[keep], ts[keep]
        flows = int((sizes[sizes >= 2] - 1).sum())
    else:
        flow_coll = flow_rank = flow_ts = np.empty(0, dtype=np.int64)
        flows = 0
    return Plan(t0=t0, start_ns=start_ns, end_ns=end_ns, ranks=available, tracks=track_index,
                 flow_coll=flow_coll, flow_src_rank=flow_rank.astype(np.int64),
                 flow_src_ts=flow_ts, flows=flows)


def selection_filter(start_ns: int, end_ns: int, ranks: Iterable[int]) -> pc.Expression:
    return ((pc.field("ts") >= start_ns) & (pc.field("ts") < end_ns)
            & pc.field("rank").isin(pa.array(sorted(set(ranks)), pa.int32())))


def _fmt_window(start_ms: float | None, end_ms: float | None) -> str:
    if end_ms is None:
        return f"from {start_ms:g} ms"
    return f"{0 if start_ms is None else start_ms:g}-{end_ms:g} ms"


def fmt_ranks(ranks: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(out)


# --------------------------------------------------------------------------- overlap lanes

def assign_lanes(start: np.ndarray, end: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Lane of each interval so that, per ``group`` and lane, intervals are nested or disjoint.

    Intervals are ``[start, end)`` and must be sorted by ``(group, start, end descending)``. Most
    groups are already properly nested (one engine runs one op at a time; CPU ops nest), which
    a vectorized parenthesis check finds without a loop: all of them stay in lane 0. Only the
    clusters of mutually overlapping intervals that contain a crossing are dealt out greedily,
    each interval to the lowest lane where it nests.
    """
    n = len(start)
    lanes = np.zeros(n, dtype=np.int64)
    if n < 2:
        return lanes
    # Clusters: a new one begins where an interval starts at or after every earlier one's end
    # (or in a new group).
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    run_end = _grouped_running_max(end, new_group)
    cluster_start = new_group.copy()
    cluster_start[1:] |= start[1:] >= run_end[:-1]
    if cluster_start.all():
        return lanes
    bad = _crossing(start, end, group)
    if not bad.any():
        return lanes
    cluster = np.cumsum(cluster_start) - 1
    bad_clusters = np.unique(cluster[bad])
    in_bad = np.isin(cluster, bad_clusters)
    idx = np.flatnonzero(in_bad)
    bounds = np.flatnonzero(np.diff(cluster[idx])) + 1
    for part in np.split(idx, bounds):        # loop over the few crossing clusters
        lanes[part] = _greedy_lanes(start[part], end[part])
    return lanes


def _grouped_running_max(values: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` restarting at each ``new_group``."""
    seg = np.cumsum(new_group) - 1
    # Offset each group above every earlier one so one global accumulate restarts per group.
    lo, hi = values.min(), values.max()
    shifted = (values - lo) + seg.astype(values.dtype) * (hi - lo + 1)
    return np.maximum.accumulate(shifted) - seg.astype(values.dtype) * (hi - lo + 1) + lo


def _crossing(start: np.ndarray, end: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Mask of intervals whose open and close disagree in a parenthesis walk (a crossing).

    Every endpoint becomes +1 (open) or -1 (close), sorted by group and time, closes before opens
    at one instant, the longer interval opened first and the later-opened closed first. In a
    properly nested group each interval closes at the depth it opened at; every group is
    balanced, so the depth is back at 0 where the next group begins.
    """
    n = len(start)
    ids = np.arange(n)
    t = np.concatenate([start, end])
    g = np.concatenate([group, group])
    kind = np.concatenate([np.ones(n, dtype=np.int8), np.zeros(n, dtype=np.int8)])  # 0 = close
    tie = np.concatenate([ids, n - ids])     # opens in given order, closes latest-opened first
    order = np.lexsort((tie, kind, t, g))
    depth = np.cumsum(np.where(kind[order] == 1, 1, -1))
    pos = np.empty(2 * n, dtype=np.int64)
    pos[order] = np.arange(2 * n)
    return depth[pos[:n]] != depth[pos[n:]] + 1


def _greedy_lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Deal intervals (sorted by start, end descending) to the lowest lane where they nest."""
    stacks: list[list[int]] = []
    out = np.empty(len(start), dtype=np.int64)
    for i, (s, e) in enumerate(zip(start.tolist(), end.tolist())):
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                out[i] = lane
                break
        else:
            stacks.append([e])
            out[i] = len(stacks) - 1
    return out


def one_batch(table: pa.Table) -> pa.RecordBatch:
    """The table's columns as one record batch (one contiguous array each)."""
    table = table.combine_chunks()
    return pa.RecordBatch.from_arrays([col.chunk(0) if col.num_chunks else pa.array([], col.type)
                                       for col in table.columns], schema=table.schema)


class RankEvents(NamedTuple):
    """One rank's selected events, sorted by (track, start, longest first)."""

    batch: pa.RecordBatch     # the requested columns, one contiguous array each
    track_idx: np.ndarray     # each event's track index (Plan.tracks)
    lanes: np.ndarray         # each event's overlap lane on its track (0 = the track itself)


def rank_events(store: TraceStore, plan: Plan, node: int, rank: int, columns: Sequence[str]) -> RankEvents | None:
    """Read one rank's events in the plan's window with their tracks and overlap lanes (None: none)."""
    flt = (pc.field("node") == node) & selection_filter(plan.start_ns, plan.end_ns, [rank])
    table = store.read(EVENTS, columns=list(columns), filters=flt)
    if table.num_rows == 0:
        return None
    table = table.unify_dictionaries().combine_chunks()
    track = table.column("track").chunk(0) if table.column("track").num_chunks else table.column("track")
    track_lut = np.array([plan.tracks[name] for name in track.dictionary.to_pylist()], dtype=np.int64)
    track_idx = track_lut[track.indices.to_numpy()]
    ts = table.column("ts").to_numpy()
    dur = table.column("dur").to_numpy()
    order = np.lexsort((-dur, ts, track_idx))
    if not (order[1:] > order[:-1]).all():
        table = table.take(pa.array(order))
        track_idx, ts, dur = track_idx[order], ts[order], dur[order]
    batch = one_batch(table)
    lanes = assign_lanes(ts, ts + dur, track_idx)
    if lanes.max(initial=0) >= LANES:
        raise SelectionError(f"rank {rank} has events overlapping {lanes.max() + 1} deep on one track, "
                             f"more than the {LANES} lanes an export numbers")
    return RankEvents(batch, track_idx, lanes)


def prepare_export(store: TraceStore | str | os.PathLike[str], out: str | os.PathLike[str], *, force: bool,
                   start_ms: float | None, end_ms: float | None, ranks: Sequence[int] | None,
                   example: str) -> tuple[TraceStore, Path, Plan]:
    """What every exporter checks before any work: the store opens, ``out`` is a file it may
    write (``example`` names one in the error), and the selection holds something to plan."""
    from sohuprof.atomic import check_file_output
    from sohuprof.errors import OutputError

    store = ensure_store(store)
    path = Path(out)
    if path.is_dir():
        raise OutputError(f"{str(path)!r} is a directory; give a file name such as {example}")
    check_file_output(path, force=force, inputs=[store.path])   # before the work, not after
    return store, path, plan_export(store, start_ms, end_ms, ranks)


def no_events(plan: Plan) -> SelectionError:
    """The error of a selection in which no event starts (raised inside the output's atomic
    write, so no file is left behind)."""
    return SelectionError(f"no events of ranks {fmt_ranks([r for _, r, _ in plan.ranks])} "
                          f"start in the window {plan.start_ns - plan.t0:,}-{plan.end_ns - plan.t0:,} ns; "
                          f"widen --start-ms/--end-ms or pick other --ranks")
