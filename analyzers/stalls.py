"""Where every nanosecond of every rank went: the stall partition.

Each rank's window (the whole trace's, so ranks compare) is split so the parts sum exactly to
its wall time, every instant going to the first class that covers it:

1. ``compute``: compute ops, minus the memory-stall part each op reports (placed at its end);
2. ``memory_stall``: that part, and memory ops (DMA copies) not hidden under compute;
3. ``comm_transfer``: a collective's transfer (from the last member's arrival to its end) not
   hidden under compute or memory;
4. ``sync_wait``: a collective's wait (from this rank's arrival to the last member's);
5. ``idle``: the rest: host and launch work, dependencies, nothing to do.

Communication that overlaps compute is reported beside the partition (``overlapped_comm_ns``),
as is the part of idle covered by host work (``idle_host_ns``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.intervals import mask_coverage

__all__ = ["STALLS", "StallsResult", "PARTS"]

#: The partition, in priority order; idle is what no class covers.
PARTS = ("compute_ns", "memory_stall_ns", "comm_transfer_ns", "sync_wait_ns", "idle_ns")
_COLUMNS = ("rank", "node", "chip", "wall_ns", *PARTS, "overlapped_comm_ns", "idle_host_ns")


@dataclass(frozen=True)
class StallsResult:
    """One row per rank: the partition (sums exactly to ``wall_ns``) and what lies beside it."""

    ranks: pd.DataFrame

    def to_json(self) -> dict:
        cols = ["rank", "node", "chip", "wall_ns", "compute_ns", "memory_stall_ns", "sync_wait_ns",
                "comm_transfer_ns", "idle_ns", "overlapped_comm_ns", "idle_host_ns"]
        return {"ranks": self.ranks[cols].astype("int64").to_dict(orient="records")}


def _codes(column: pa.ChunkedArray, value: str) -> np.ndarray:
    """Boolean mask of a dictionary column equal to ``value`` (decided once per dictionary)."""
    arr = column.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        hits = np.array([v == value for v in arr.dictionary.to_pylist()] + [False])
        idx = arr.indices.to_numpy(zero_copy_only=False)
        idx = np.where(arr.indices.is_null().to_numpy(zero_copy_only=False), len(hits) - 1, idx)
        return hits[idx]
    return np.asarray(arr.to_numpy(zero_copy_only=False) == value)


# Interval classes of the sweep (bits of the coverage mask).
_BODY, _TAIL, _DMA, _TRANSFER, _WAIT, _HOST = range(6)
_N = 6


def _bits(*classes: int) -> int:
    return sum(1 << c for c in classes)


def _partition_columns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every coverage mask: its part (0..4 = PARTS), whether it is communication hidden
    under compute, and whether it is idle time covered by host work."""
    masks = np.arange(1 << _N)
    has = lambda *c: (masks & _bits(*c)) != 0   # noqa: E731 - a one-line predicate over masks
    part = np.select([has(_BODY), has(_TAIL, _DMA), has(_TRANSFER), has(_WAIT)], [0, 1, 2, 3], default=4)
    overlapped = has(_BODY, _TAIL) & has(_TRANSFER, _WAIT)
    idle_host = (part == 4) & has(_HOST)
    return part, overlapped, idle_host


_PART, _OVERLAPPED, _IDLE_HOST = _partition_columns()


def rank_stalls(events: pa.Table, ctx: AnalysisContext) -> pd.DataFrame:
    """The stall partition of one rank's events (a one-row DataFrame)."""
    rank = int(events.column("rank")[0].as_py())
    ts = events.column("ts").to_numpy()
    end = ts + events.column("dur").to_numpy()
    stall = events.column("stall_mem_ns").fill_null(0).to_numpy() if "stall_mem_ns" in events.column_names \
        else np.zeros(len(ts), np.int64)
    stall = np.clip(stall, 0, end - ts)
    category = events.column("category")
    compute, memory = _codes(category, "compute"), _codes(category, "memory")
    comm, host = _codes(category, "communication"), _codes(category, "host")
    c_ts, c_end = ts[comm], end[comm]
    last = ctx.last_arrival(rank, events.column("coll_id").fill_null(-1).to_numpy()[comm])
    # Without a recorded last arrival (a lone profiler rank), the whole collective is transfer.
    transfer_from = np.clip(np.where(last >= 0, last, c_ts), c_ts, c_end)
    split = end[compute] - stall[compute]
    pieces = [(ts[compute], split, _BODY), (split, end[compute], _TAIL), (ts[memory], end[memory], _DMA),
              (transfer_from, c_end, _TRANSFER), (c_ts, transfer_from, _WAIT), (ts[host], end[host], _HOST)]
    s = np.concatenate([p[0] for p in pieces])
    e = np.concatenate([p[1] for p in pieces])
    c = np.concatenate([np.full(len(p[0]), p[2], np.int64) for p in pieces])
    cover = mask_coverage(s, e, c, np.zeros(len(s), np.int64), n_classes=_N, n_keys=1,
                          window_start=np.array([ctx.wall_start]), window_end=np.array([ctx.wall_end]))[0]
    parts = np.bincount(_PART, weights=cover, minlength=5).round().astype(np.int64)
    info = ctx.ranks[ctx.ranks["rank"] == rank]
    row = {"rank": rank, "node": int(info["node"].iloc[0]) if len(info) else 0,
           "chip": int(info["chip"].iloc[0]) if len(info) else 0, "wall_ns": ctx.wall_ns,
           **dict(zip(PARTS, parts.tolist())), "overlapped_comm_ns": int(cover[_OVERLAPPED].sum()),
           "idle_host_ns": int(cover[_IDLE_HOST].sum())}
    return pd.DataFrame([row], columns=list(_COLUMNS))


class _Stalls:
    name = "stalls"
    columns = ("rank", "ts", "dur", "category", "stall_mem_ns", "coll_id")

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None if ctx.wall_ns > 0 else "the store has no events"

    def chunk(self, events: pa.Table, ctx: AnalysisContext) -> pd.DataFrame:
        if not events.num_rows:
            return pd.DataFrame(columns=list(_COLUMNS))
        return rank_stalls(events, ctx)

    def combine(self, partials: list[pd.DataFrame], ctx: AnalysisContext) -> StallsResult:
        parts = [p for p in partials if len(p)]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(_COLUMNS))
        return StallsResult(table.sort_values("rank").reset_index(drop=True))


STALLS = _Stalls()
