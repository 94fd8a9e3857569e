"""HTA's launch queue length: how many launched kernels each GPU stream had not started yet.

Holistic Trace Analysis' queue length (``hta/analyzers/trace_counters.py``:
``TraceCounters._get_queue_length_time_series_for_rank``, ``get_queue_length_summary_from_time_series``
and ``get_time_spent_blocked_on_full_queue``), per rank and stream, on the device events of
:mod:`sohuprof.analyzers.device_events`:

- the queue length is a step function: **+1 at the start of the runtime call** that enqueues a
  device event (linked by correlation), **-1 at the start of that event** on its stream (HTA
  joins the runtime call to its kernel's stream and decrements at the kernel's ``ts``); device
  events with no recorded launch take no part, as in HTA. Where a +1 and a -1 fall on the same
  ns the +1 comes first (the launch precedes the start; HTA's unstable sort leaves it open);
- the summary is HTA's ``describe`` of the series' points (``count`` of change points, ``mean``,
  ``std``, ``min``, quartiles, ``max``), plus ``time_mean``, the mean weighted by how long each
  value lasted, ``at_max_ns`` (time at the stream's own maximum) and ``full_queue_ns``: time with
  at least ``max_queue_length`` launches outstanding (HTA's ``CUDA_MAX_LAUNCH_QUEUE_PER_STREAM``,
  1024, ``hta/common/constants.py``), when the CPU blocks on a full queue (CUDA's depth: HIP
  queues deeper, the MI300 trace reaches 1840, so there it is time beyond CUDA's bound);
  ``full_queue_pct`` is that over the rank's trace duration (HTA's
  ``relative_duration_at_max_queue_length``, x100; here the duration runs to the last event's end,
  HTA's to the last event's start);
- a graph launch enqueues all its kernels at once (+k at the launch, -1 at each kernel), which is
  what HTA's join does too; HTA's list of launch calls (``get_runtime_launch_events_mask``)
  leaves out graph launches and ``hipExtLaunchKernel``, which count here (see ``launches``).

``series`` is the step function cut to at most :data:`MAX_POINTS` points per stream so the JSON
stays small: the stream's span is divided into equal buckets and each bucket reports, at its start
``ts``, the **largest** queue length reached in it (so a burst of launches is never averaged
away). With ``--hta-compatible`` the events are HTA's selection (see ``device_events``).
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

__all__ = ["QUEUE", "QueueResult", "MAX_QUEUE_LENGTH", "MAX_POINTS", "SUMMARY_COLUMNS", "SERIES_COLUMNS",
           "queue_length"]

#: HTA's ``CUDA_MAX_LAUNCH_QUEUE_PER_STREAM``: launches a stream queues before the CPU blocks.
MAX_QUEUE_LENGTH = 1024
#: Most points per stream in ``series``.
MAX_POINTS = 1000
SUMMARY_COLUMNS = ("rank", "stream", "launches", "count", "mean", "std", "min", "p25", "p50", "p75", "max",
                   "time_mean", "window_ns", "at_max_ns", "full_queue_ns", "full_queue_pct")
SERIES_COLUMNS = ("rank", "stream", "ts", "queue_length")
_SUMMARY_INTS = ("rank", "stream", "launches", "count", "min", "max", "window_ns", "at_max_ns", "full_queue_ns")


def _series(t: np.ndarray, q: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The step function ``q`` (value from ``t[i]`` until ``t[i + 1]``) as at most ``max_points``
    equal buckets over ``[t[0], t[-1]]``: each bucket's start and the largest value in it."""
    span = int(t[-1] - t[0]) + 1
    n = max(1, min(max_points, len(t)))
    width = -(-span // n)                      # ceil: n buckets cover the span
    edges = t[0] + width * np.arange(n, dtype=np.int64)
    bucket = (t - t[0]) // width
    first = np.searchsorted(bucket, np.arange(n), side="left")
    peak = np.full(n, np.iinfo(np.int64).min)
    has = first < np.r_[first[1:], len(t)]
    peak[has] = np.maximum.reduceat(q, first[has])
    # The value carried into each bucket from the last change before it (none when a change
    # falls on the bucket's first ns: the old value then lasts no time in it).
    before = np.searchsorted(t, edges, side="left") - 1
    on_edge = t[np.minimum(before + 1, len(t) - 1)] == edges
    carry = np.where((before >= 0) & ~on_edge, q[np.maximum(before, 0)], np.iinfo(np.int64).min)
    return edges, np.maximum(peak, carry)


def _rank_queue(part: Partition, rank: int, max_queue: int, max_points: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One rank's summary rows and downsampled series, one per stream."""
    s = device_streams(part)
    duration = int(part.end.max() - part.ts.min()) if part.num_rows else 0
    summary: list[dict[str, Any]] = []
    series: list[pd.DataFrame] = []
    for stream, sl in s.slices():              # a loop over streams
        launch = s.launch[sl]
        linked = launch >= 0
        k = int(linked.sum())
        if not k:
            continue
        t = np.concatenate([part.ts[launch[linked]], s.ts[sl][linked]])
        d = np.concatenate([np.ones(k, np.int64), -np.ones(k, np.int64)])
        order = np.lexsort((-d, t))            # at one instant, enqueue before dequeue
        t, q = t[order], np.cumsum(d[order])
        w = np.diff(t)                         # how long each value but the last lasted
        window = int(t[-1] - t[0])
        top = int(q.max())
        qs = quantiles(q, (0.25, 0.5, 0.75))
        full = int(w[q[:-1] >= max_queue].sum())
        summary.append({"rank": rank, "stream": stream, "launches": k, "count": len(q), "mean": float(q.mean()),
                        "std": float(q.std(ddof=1)) if len(q) > 1 else np.nan, "min": int(q.min()),
                        "p25": qs[0], "p50": qs[1], "p75": qs[2], "max": top,
                        "time_mean": float((q[:-1] * w).sum() / window) if window > 0 else np.nan,
                        "window_ns": window, "at_max_ns": int(w[q[:-1] == top].sum()), "full_queue_ns": full,
                        "full_queue_pct": round(100.0 * full / duration, 2) if duration > 0 else np.nan})
        edges, peak = _series(t, q, max_points)
        series.append(pd.DataFrame({"rank": rank, "stream": stream, "ts": edges, "queue_length": peak}))
    return (pd.DataFrame(summary, columns=list(SUMMARY_COLUMNS)),
            pd.concat(series, ignore_index=True) if series else pd.DataFrame(columns=list(SERIES_COLUMNS)))


def _finish(partials: list[tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = []
    for i, columns in enumerate((SUMMARY_COLUMNS, SERIES_COLUMNS)):
        parts = [p[i] for p in partials if len(p[i])]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(columns))
        out.append(frame.sort_values(["rank", "stream"], kind="stable").reset_index(drop=True))
    return out[0], out[1]


def queue_length(events: pd.DataFrame | pa.Table, *, max_queue_length: int = MAX_QUEUE_LENGTH,
                 max_points: int = MAX_POINTS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """HTA's queue length summary and a downsampled series per rank and stream (see the module
    docstring).

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        Events of one or more ranks: ``ts``, ``dur`` (ns), ``category``, ``stream`` and
        ``correlation`` (``rank`` absent: one rank, 0).
    max_queue_length : int, default 1024
        Queue length at which the CPU blocks (``full_queue_ns``).
    max_points : int, default 1000
        Most points per stream in the series.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        :data:`SUMMARY_COLUMNS` rows and :data:`SERIES_COLUMNS` rows.

    Raises
    ------
    ValueError
        A needed column is missing.
    """
    table = events_table(events, ("ts", "dur", "category", "stream", "correlation"))
    return _finish([_rank_queue(p, p.rank, max_queue_length, max_points) for p in rank_partitions(table)])


@dataclass(frozen=True)
class QueueResult:
    """Per rank and stream: the queue length ``summary`` and its downsampled ``series``."""

    summary: pd.DataFrame
    series: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {"summary": rows(self.summary, SUMMARY_COLUMNS, _SUMMARY_INTS),
                "series": rows(self.series, SERIES_COLUMNS, SERIES_COLUMNS)}


class _Queue:
    """``queue``: HTA's launch queue length per GPU stream."""

    name = "queue"
    columns = COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return check_applies(ctx, self.name, "launch queue length")

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
        part = as_partition(events)
        if not part.num_rows:
            return pd.DataFrame(columns=list(SUMMARY_COLUMNS)), pd.DataFrame(columns=list(SERIES_COLUMNS))
        return _rank_queue(analysed(part, ctx), part.rank, int(ctx.options.get("max_queue_length", MAX_QUEUE_LENGTH)),
                           int(ctx.options.get("max_points", MAX_POINTS)))

    def combine(self, partials: list[tuple[pd.DataFrame, pd.DataFrame]], ctx: AnalysisContext) -> QueueResult:
        return QueueResult(*_finish(partials))


QUEUE = _Queue()
