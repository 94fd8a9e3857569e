"""HTA's idle-time breakdown: why each GPU stream sat idle between its kernels.

Holistic Trace Analysis' ``get_idle_time_breakdown`` (``hta/analyzers/breakdown_analysis.py``,
``BreakdownAnalysis.get_idle_time_breakdown`` and ``_analyze_idle_time_for_stream``; categories
``IdleTimeType`` in ``hta/utils/utils.py``), per rank and stream, on the device events of
:mod:`sohuprof.analyzers.device_events`. A stream's kernels are taken in start order; the gap
before each kernel but the first is one idle interval, and it is

- ``host_wait`` when the kernel's launching runtime call (by correlation) started after the
  previous kernel ended: the CPU had not enqueued it yet (HTA: ``ts_runtime > prev_end_ts``);
- ``kernel_wait`` otherwise, when the gap is shorter than ``consecutive_kernel_delay``
  (HTA's default 30, in its trace unit, microseconds, though its docstring says ns: here
  30 000 ns): the overhead of launching back-to-back kernels;
- ``other`` otherwise (a kernel waiting on an event from another stream, say); a kernel with no
  recorded launch can only be kernel wait or other, as in HTA.

Where sohuprof deliberately differs: HTA measures the gap from the previous kernel's end
(``ts - end.shift(1)``), which goes negative when events on one stream overlap (MTIA's DMA
transfers run inside its kernels) and then subtracts from the stream's idle time; here the gap
is measured from the latest end so far (the running maximum) and is never negative, so a stream's
idle time is exactly its window (first start to last end) minus the union of its events, and
``idle_ns + busy_ns == window_ns``. Where a stream's events never overlap (CUDA streams, as a rule)
the two agree. HTA rounds its ``idle_time_ratio`` to 2 decimals; ``*_pct`` here is 100 times it.
With ``--hta-compatible`` the events are HTA's selection (see ``device_events``).

JSON: ``streams`` (one row per rank and stream: ``kernels, window_ns, busy_ns, idle_ns``, the three
parts in ns and as % of ``idle_ns``, and ``idle_pct`` of the window) and ``intervals`` (HTA's
``show_idle_interval_stats``: per rank, stream and idle category with intervals, their count,
total, mean, min, quartiles, p90 and max; zero-length gaps between back-to-back kernels count, as
in HTA's ``describe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.device_events import COLUMNS, analysed, check_applies, device_streams, quantiles, rows
from sohuprof.analyzers.partition import Partition, as_partition, events_table, rank_partitions

__all__ = ["IDLE", "IdleResult", "CATEGORIES", "CONSECUTIVE_KERNEL_DELAY_NS", "STREAM_COLUMNS", "INTERVAL_COLUMNS",
           "idle_breakdown"]

#: HTA's default ``consecutive_kernel_delay`` (30 in its microsecond trace unit).
CONSECUTIVE_KERNEL_DELAY_NS = 30_000
#: Idle categories, in HTA's ``IdleTimeType`` order.
CATEGORIES = ("host_wait", "kernel_wait", "other")
STREAM_COLUMNS = ("rank", "stream", "kernels", "window_ns", "busy_ns", "idle_ns", "host_wait_ns", "kernel_wait_ns",
                  "other_ns", "idle_pct", "host_wait_pct", "kernel_wait_pct", "other_pct")
INTERVAL_COLUMNS = ("rank", "stream", "idle_category", "count", "total_ns", "mean_ns", "min_ns", "p25_ns", "p50_ns",
                    "p75_ns", "p90_ns", "max_ns")
_QS = (0.25, 0.5, 0.75, 0.9)
_STREAM_INTS = tuple(c for c in STREAM_COLUMNS if c.endswith("_ns") or c in ("rank", "stream", "kernels"))
_INTERVAL_INTS = tuple(c for c in INTERVAL_COLUMNS if c.endswith("_ns") or c in ("rank", "stream", "count"))


def _pct(part: np.ndarray | float, whole: np.ndarray | float) -> Any:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.round(np.where(np.asarray(whole) > 0, 100.0 * np.asarray(part, float) / whole, np.nan), 2)


def _rank_idle(part: Partition, rank: int, delay_ns: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One rank's stream rows and interval rows."""
    s = device_streams(part)
    launch_ts = np.where(s.launch >= 0, part.ts[np.maximum(s.launch, 0)], np.iinfo(np.int64).min)
    stream_rows: list[dict[str, Any]] = []
    interval_rows: list[dict[str, Any]] = []
    for stream, sl in s.slices():          # a loop over streams
        ts, end = s.ts[sl], s.end[sl]
        reach = np.maximum.accumulate(end)
        prev = reach[:-1]                  # latest end before each kernel but the first
        gap = np.maximum(ts[1:] - prev, 0)
        host = launch_ts[sl][1:] > prev    # no launch: int64 min, never after anything
        kind = np.where(host, 0, np.where(gap < delay_ns, 1, 2))
        totals = np.array([gap[kind == i].sum() for i in range(3)], np.int64)   # int64 sums: exact
        window = int(reach[-1] - ts[0])
        idle = int(totals.sum())
        stream_rows.append({"rank": rank, "stream": stream, "kernels": int(len(ts)), "window_ns": window,
                            "busy_ns": window - idle, "idle_ns": idle,
                            **{f"{c}_ns": int(totals[i]) for i, c in enumerate(CATEGORIES)},
                            "idle_pct": float(_pct(idle, window)),
                            **{f"{c}_pct": float(_pct(totals[i], idle)) for i, c in enumerate(CATEGORIES)}})
        for i, c in enumerate(CATEGORIES):    # three categories
            g = gap[kind == i]
            if not len(g):
                continue
            q = quantiles(g, _QS)
            interval_rows.append({"rank": rank, "stream": stream, "idle_category": c, "count": int(len(g)),
                                  "total_ns": int(g.sum()), "mean_ns": float(g.mean()), "min_ns": int(g.min()),
                                  "p25_ns": q[0], "p50_ns": q[1], "p75_ns": q[2], "p90_ns": q[3],
                                  "max_ns": int(g.max())})
    return (pd.DataFrame(stream_rows, columns=list(STREAM_COLUMNS)),
            pd.DataFrame(interval_rows, columns=list(INTERVAL_COLUMNS)))


def idle_breakdown(events: pd.DataFrame | pa.Table, *, consecutive_kernel_delay_ns: int = CONSECUTIVE_KERNEL_DELAY_NS
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """HTA's idle-time breakdown per rank and stream (see the module docstring).

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        Events of one or more ranks: ``ts``, ``dur`` (ns), ``category``, ``stream`` and, for host
        wait, ``correlation`` (``rank`` absent: one rank, 0).
    consecutive_kernel_delay_ns : int, default 30 000
        Gaps shorter than this that are not host wait are kernel wait.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        :data:`STREAM_COLUMNS` rows and :data:`INTERVAL_COLUMNS` rows.

    Raises
    ------
    ValueError
        A needed column is missing.

    Examples
    --------
    >>> ev = pd.DataFrame({"ts": [0, 10, 100_000, 5], "dur": [10, 20, 10, 1], "stream": [7, 7, 7, None],
    ...                    "category": ["compute", "compute", "compute", "host"], "correlation": [1, 2, 3, 3]})
    >>> streams, _ = idle_breakdown(ev)
    >>> streams[["idle_ns", "host_wait_ns", "kernel_wait_ns", "other_ns"]].iloc[0].tolist()
    [99970, 0, 0, 99970]
    """
    table = events_table(events, ("ts", "dur", "category", "stream"))
    parts = [_rank_idle(p, p.rank, consecutive_kernel_delay_ns) for p in rank_partitions(table)]
    return _finish([s for s, _ in parts], [i for _, i in parts])


def _finish(streams: list[pd.DataFrame], intervals: list[pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    s = [p for p in streams if len(p)]
    i = [p for p in intervals if len(p)]
    out_s = (pd.concat(s, ignore_index=True) if s else pd.DataFrame(columns=list(STREAM_COLUMNS)))
    out_i = (pd.concat(i, ignore_index=True) if i else pd.DataFrame(columns=list(INTERVAL_COLUMNS)))
    out_s = out_s.sort_values(["rank", "stream"], kind="stable").reset_index(drop=True)
    order = {c: k for k, c in enumerate(CATEGORIES)}
    out_i = (out_i.assign(_k=out_i["idle_category"].map(order)).sort_values(["rank", "stream", "_k"], kind="stable")
             .drop(columns="_k").reset_index(drop=True))
    return out_s, out_i


@dataclass(frozen=True)
class IdleResult:
    """Per rank and stream: the idle breakdown (:data:`STREAM_COLUMNS`) and its intervals
    (:data:`INTERVAL_COLUMNS`)."""

    streams: pd.DataFrame
    intervals: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {"streams": rows(self.streams, STREAM_COLUMNS, _STREAM_INTS),
                "intervals": rows(self.intervals, INTERVAL_COLUMNS, _INTERVAL_INTS)}


class _Idle:
    """``idle``: HTA's idle-time breakdown per GPU stream (host wait, kernel wait, other)."""

    name = "idle"
    columns = COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return check_applies(ctx, self.name, "per-stream idle-time breakdown")

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
        part = as_partition(events)
        if not part.num_rows:
            return pd.DataFrame(columns=list(STREAM_COLUMNS)), pd.DataFrame(columns=list(INTERVAL_COLUMNS))
        delay = int(ctx.options.get("consecutive_kernel_delay_ns", CONSECUTIVE_KERNEL_DELAY_NS))
        return _rank_idle(analysed(part, ctx), part.rank, delay)

    def combine(self, partials: list[tuple[pd.DataFrame, pd.DataFrame]], ctx: AnalysisContext) -> IdleResult:
        return IdleResult(*_finish([p[0] for p in partials], [p[1] for p in partials]))


IDLE = _Idle()
