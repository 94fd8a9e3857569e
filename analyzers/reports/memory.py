"""``memory``: the memory timeline of a PyTorch profiler trace recorded with ``profile_memory=True``.

Kineto writes one ``[memory]`` instant event per allocation and free of the caching allocator
(``Bytes`` > 0 an allocation, < 0 a free, at ``Addr``, with the allocator's ``Total Allocated``
and ``Total Reserved`` after it); the collector keeps them as the counters ``memory.allocated``,
``memory.reserved``, ``memory.bytes`` and ``memory.addr`` (``cpu_memory.*`` for host memory), the
four series of one event adjacent (:mod:`sohuprof.collectors.kineto.events`). What PyTorch's
``export_memory_timeline`` and HTA's ``MemoryAnalysis`` show from the same events, per rank and
memory (``memory`` for the rank's GPU, ``memory.devN`` for another GPU of the same process,
``cpu_memory`` for the host):

- ``ranks``: samples, allocations, frees, ``peak_allocated_bytes`` and when (``peak_ts``, store
  ns), ``peak_reserved_bytes``, the allocated bytes at the first and last sample, and
  ``alive_at_peak_bytes``: what the allocations this trace saw made, and that were still held
  at the peak, sum to (the rest of the peak was allocated before the trace began);
- ``alive_at_peak``: the largest of those allocations (``--top``-like ``top`` option, default
  20): ``addr``, ``bytes``, ``alloc_ts``, ``free_ts`` (null: never freed in the trace) and
  ``age_ns`` at the peak;
- ``timeline``: allocated and reserved bytes over time, at most :data:`POINTS` points per rank
  and kind (each the largest sample of its slice of the window, so the peak is never lost).

An allocation's free is the next event at its address with negative bytes (the allocator
hands an address out again only after it was freed). Everything is a sort and a few passes of
numpy per rank; the counters are a small table read once, so the report has no event chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext

__all__ = ["MEMORY", "MemoryResult", "memory_timeline", "POINTS"]

#: Points per rank and kind in ``timeline``.
POINTS = 500
_KINDS = ("memory", "cpu_memory")
_SERIES = ("allocated", "reserved", "bytes", "addr")
_RANK_COLS = ("rank", "kind", "samples", "allocations", "frees", "peak_allocated_bytes", "peak_ts",
              "peak_reserved_bytes", "first_allocated_bytes", "last_allocated_bytes", "alive_at_peak_bytes")
_ALIVE_COLS = ("rank", "kind", "addr", "bytes", "alloc_ts", "free_ts", "age_ns")
_TIMELINE_COLS = ("rank", "kind", "ts", "allocated_bytes", "reserved_bytes")


@dataclass(frozen=True)
class MemoryResult:
    """Per rank and kind: the peak and its make-up, and the downsampled timeline."""

    ranks: pd.DataFrame
    alive_at_peak: pd.DataFrame
    timeline: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def rec(df: pd.DataFrame, cols: tuple[str, ...]) -> list[dict[str, Any]]:
            return [{k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v) for k, v in r.items()}
                    for r in df[list(cols)].astype(object).to_dict(orient="records")]
        return {"notes": list(self.notes), "ranks": rec(self.ranks, _RANK_COLS),
                "alive_at_peak": rec(self.alive_at_peak, _ALIVE_COLS), "timeline": rec(self.timeline, _TIMELINE_COLS)}


def _one(rank: int, kind: str, s: dict[str, np.ndarray], top: int) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """One rank and kind: ``s`` holds ``ts`` and the four series, in event order."""
    ts, alloc, reserved, nbytes, addr = s["ts"], s["allocated"], s["reserved"], s["bytes"], s["addr"].astype(np.int64)
    n = len(ts)
    peak = int(np.argmax(alloc))
    # Each allocation's free: the next event at its address, if it frees.
    order = np.lexsort((np.arange(n), addr))
    nxt = np.full(n, -1, np.int64)
    same = addr[order[1:]] == addr[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    is_alloc = nbytes > 0
    freed_by = np.where(is_alloc & (nxt >= 0), nxt, -1)
    freed_by = np.where((freed_by >= 0) & (nbytes[np.maximum(freed_by, 0)] < 0), freed_by, -1)
    alive = is_alloc & (np.arange(n) <= peak) & ((freed_by < 0) | (freed_by > peak))
    idx = np.flatnonzero(alive)
    idx = idx[np.argsort(-nbytes[idx], kind="stable")][:top]
    free_ts = np.where(freed_by[idx] >= 0, ts[np.maximum(freed_by[idx], 0)], -1)
    alive_df = pd.DataFrame({"rank": rank, "kind": kind, "addr": addr[idx], "bytes": nbytes[idx].astype(np.int64),
                             "alloc_ts": ts[idx], "free_ts": pd.array(np.where(free_ts >= 0, free_ts, 0), "Int64"),
                             "age_ns": ts[peak] - ts[idx]})
    alive_df.loc[free_ts < 0, "free_ts"] = pd.NA
    # The timeline: the largest sample of each of POINTS slices of the window (the peak kept).
    span = max(int(ts[-1] - ts[0]), 1)
    bucket = np.minimum(((ts - ts[0]) * POINTS) // span, POINTS - 1)
    best = np.lexsort((-alloc, bucket))
    first = best[np.r_[True, bucket[best][1:] != bucket[best][:-1]]]
    line = pd.DataFrame({"rank": rank, "kind": kind, "ts": ts[first], "allocated_bytes": alloc[first].astype(np.int64),
                         "reserved_bytes": reserved[first].astype(np.int64)})
    row = {"rank": rank, "kind": kind, "samples": n, "allocations": int(is_alloc.sum()), "frees": int((nbytes < 0).sum()),
           "peak_allocated_bytes": int(alloc[peak]), "peak_ts": int(ts[peak]), "peak_reserved_bytes": int(reserved.max()),
           "first_allocated_bytes": int(alloc[0]), "last_allocated_bytes": int(alloc[-1]),
           "alive_at_peak_bytes": int(nbytes[alive].sum())}
    return row, alive_df, line


def memory_timeline(counters: pd.DataFrame, *, top: int = 20) -> MemoryResult:
    """The memory report from a store's counters (``ts, rank, counter, value``; see the module
    docstring). Ranks without ``[memory]`` samples have no rows."""
    rows, alive, lines = [], [], []
    # Counter names are a few categories: split them once, not per row.
    names = counters["counter"].astype("category")
    cats = pd.Index(names.cat.categories.astype(str))
    kind_of = cats.str.rsplit(".", n=1).str[0]
    series_of = cats.str.rsplit(".", n=1).str[-1]
    is_memory = np.asarray(kind_of.str.fullmatch(r"(?:cpu_)?memory(?:\.dev\d+)?") & series_of.isin(_SERIES), bool)
    codes = names.cat.codes.to_numpy()
    take = (codes >= 0) & is_memory[np.maximum(codes, 0)]
    mem = pd.DataFrame({"rank": counters["rank"].to_numpy()[take], "kind": np.asarray(kind_of)[codes[take]],
                        "series": np.asarray(series_of)[codes[take]], "ts": counters["ts"].to_numpy()[take],
                        "value": counters["value"].to_numpy()[take]})
    for (rank, kind), frame in mem.groupby(["rank", "kind"], sort=True):   # a loop over ranks and memories
        series = {}
        for name in _SERIES:
            sel = frame[frame["series"] == name]
            series[name] = sel["value"].to_numpy(np.float64)
            series["ts"] = sel["ts"].to_numpy(np.int64)
        if len({len(v) for v in series.values()}) != 1 or not len(series["ts"]):
            continue      # not four aligned series: not the collector's [memory] samples
        row, a, line = _one(int(rank), str(kind), series, top)
        rows.append(row)
        alive.append(a)
        lines.append(line)

    def frame_of(parts: list[pd.DataFrame], cols: tuple[str, ...]) -> pd.DataFrame:
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in cols})
    alive_df = frame_of(alive, _ALIVE_COLS)
    if len(alive_df):
        alive_df = alive_df.sort_values(["rank", "kind", "bytes"], ascending=[True, True, False]).reset_index(drop=True)
    return MemoryResult(pd.DataFrame(rows, columns=list(_RANK_COLS)), alive_df, frame_of(lines, _TIMELINE_COLS))


class _Memory:
    """``memory``: allocated and reserved over time, the peak, and what was alive at it."""

    name = "memory"
    columns: tuple[str, ...] = ("rank",)

    def applies(self, ctx: AnalysisContext) -> str | None:
        if ctx.is_sohu:
            return "memory reads the profiler's [memory] events; a Sohu run's HBM use is in roofline and stalls"
        counters = ctx.counters
        names = pd.Index(counters["counter"].astype("category").cat.categories.astype(str)) if len(counters) else None
        if names is None or not names.str.startswith(("memory.", "cpu_memory.")).any():
            return ("the trace has no [memory] events: record them with torch.profiler.profile(profile_memory=True)")
        return None

    def chunk(self, events: pa.Table, ctx: AnalysisContext) -> None:
        return None

    def combine(self, partials: list[Any], ctx: AnalysisContext) -> MemoryResult:
        return memory_timeline(ctx.counters, top=int(ctx.options.get("top") or 20))


MEMORY = _Memory()
