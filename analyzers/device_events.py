"""A rank's device events on their streams, and the runtime call that launched each one.

What the per-stream reports of profiler traces (``idle``, ``launches``, ``queue``,
``memory_bw``) share, decoded once per partition:

- **device events** are the store's compute, communication and memory events that sit on a GPU
  stream (``stream`` not null): Kineto's ``kernel``, ``gpu_memcpy``, ``gpu_memset`` and MTIA's
  ``mtia_ccp_events``, which is what HTA selects (``stream != -1`` and a kernel category;
  ``gpu_user_annotation`` is host in the store and is left out, as HTA leaves it out);
- **the launch** of a device event is the CPU event (category host) with the same
  ``correlation`` (Kineto's ``args.correlation``: the ``cuda_runtime`` / ``hip_runtime`` /
  ``mtia_runtime`` call that enqueued it), found by one sort and a binary search, as HTA's
  ``transform_correlation_to_index`` (``hta/common/trace.py``) links them; when several CPU
  events share a correlation the last one wins there and here;
- with ``--hta-compatible`` the events first go through HTA's selection
  (:func:`~sohuprof.analyzers.hta_selection.hta_select`: the last ProfilerStep and kernels
  with no recorded launch dropped, times rounded inward to whole microseconds), shared with
  ``temporal`` through the partition's cache.

:func:`check_applies` gives every one of these reports the same reasons not to run, read once
per store from its device events (a scan that stops as soon as it has seen enough).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.hta_selection import GPU_CATEGORIES, hta_select
from sohuprof.analyzers.partition import Partition, as_partition
from sohuprof.analyzers.spans import launch_calls

__all__ = ["COLUMNS", "DeviceProfile", "Streams", "analysed", "check_applies", "device_profile", "device_streams",
           "quantiles", "rows"]

#: Event columns every one of these reports reads (``name`` and ``correlation`` also feed HTA's selection).
COLUMNS = ("rank", "ts", "dur", "name", "category", "stream", "correlation")
_SOURCES = ("kineto", "chrome")
_NO_LAUNCH = -1


@dataclass(frozen=True)
class DeviceProfile:
    """What a store's device events offer (read once per store)."""

    device: bool      # some event of category compute, communication or memory
    on_stream: bool   # some such event has a GPU stream
    linked: bool      # some such event on a stream has a correlation id
    memory: bool      # some memory event (memcpy, memset, DMA) on a stream


def device_profile(ctx: AnalysisContext) -> DeviceProfile:
    """:class:`DeviceProfile` of ``ctx``'s store, memoized in ``ctx.memo``: one scan of the
    device events' ``category``, ``stream`` and ``correlation``, stopped once all is known."""
    out = ctx.memo.get("device_profile")
    if out is not None:
        return out
    device = on_stream = linked = memory = False
    batches = ctx.store.scan(columns=["category", "stream", "correlation"],
                             filters=pc.field("category").isin(list(GPU_CATEGORIES)))
    for batch in batches:       # a loop over record batches, stopped early
        if not batch.num_rows:
            continue
        device = True
        stream = batch.column("stream")
        if stream.null_count == len(stream):
            continue
        on_stream = True
        valid = pc.is_valid(stream)
        linked = linked or bool(pc.any(pc.and_(valid, pc.is_valid(batch.column("correlation")))).as_py())
        memory = memory or bool(pc.any(pc.and_(valid, pc.equal(batch.column("category").cast(pa.string()),
                                                                "memory"))).as_py())
        if linked and memory:
            break
    out = ctx.memo["device_profile"] = DeviceProfile(device, on_stream, linked, memory)
    return out


def check_applies(ctx: AnalysisContext, report: str, what: str, *, linked: bool = True,
                  memory: bool = False) -> str | None:
    """None when ``report`` (HTA's ``what``) applies to ``ctx``'s store, else the reason it does not.

    ``linked``: the report needs kernels linked to their launches by correlation;
    ``memory``: it needs memcpy/memset events.
    """
    if ctx.is_sohu:
        return f"{report} is HTA's {what} of GPU profiler traces; use `stalls` for Sohu runs"
    if ctx.source not in _SOURCES:
        return f"{report} needs a GPU profiler trace (kineto or chrome), this store's source is '{ctx.source}'"
    if ctx.wall_ns <= 0:
        return "the store has no events"
    profile = device_profile(ctx)
    if not profile.device:
        return "the trace has no device kernels (a CPU-only profile): nothing ran on a GPU stream"
    if not profile.on_stream:
        return ("the trace's device events carry no stream id (a store collected before sohuprof kept "
                "args.stream, or a trace without it): re-collect it with `sohuprof collect`")
    if linked and not profile.linked:
        return (f"{report} needs each kernel's launching runtime call, and the trace links none "
                f"(no correlation ids, as in a plain Chrome trace)")
    if memory and not profile.memory:
        return "the trace has no memory copies or sets (gpu_memcpy / gpu_memset) on a stream"
    return None


def analysed(events: pa.Table | Partition, ctx: AnalysisContext) -> Partition:
    """The partition the reports read: ``events`` itself, or with ``--hta-compatible`` the events
    HTA keeps (the selected table is shared with ``temporal`` under the same cache key)."""
    part = as_partition(events)
    if not ctx.hta_compatible:
        return part
    out = part.cache.get("hta_partition")
    if out is None:
        selected = part.cache.get("hta_selected")
        if selected is None:
            selected = part.cache["hta_selected"] = hta_select(part.table)
        out = part.cache["hta_partition"] = Partition(selected)
    return out


@dataclass(frozen=True)
class Streams:
    """A rank's device events on streams, sorted by ``(stream, ts, end)``.

    Attributes
    ----------
    rows : numpy.ndarray
        Each event's row in the partition's table.
    stream, ts, end : numpy.ndarray
        Its stream id, start and end (ns).
    streams : numpy.ndarray
        The distinct stream ids, ascending; stream ``streams[i]``'s events are
        ``bounds[i]:bounds[i + 1]``.
    bounds : numpy.ndarray
    launch : numpy.ndarray
        Row (in the partition's table) of the CPU event with the same correlation, -1 for none.
    """

    rows: np.ndarray
    stream: np.ndarray
    ts: np.ndarray
    end: np.ndarray
    streams: np.ndarray
    bounds: np.ndarray
    launch: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def slices(self) -> list[tuple[int, slice]]:
        """``(stream id, slice of the sorted events)`` per stream (a loop over streams, not events)."""
        return [(int(s), slice(int(self.bounds[i]), int(self.bounds[i + 1]))) for i, s in enumerate(self.streams)]


def _device_mask(part: Partition) -> np.ndarray:
    codes, values = part.codes("category")
    hits = np.array([v in GPU_CATEGORIES for v in values] + [False])   # decided once per category
    mask = hits[codes]
    if not part.has("stream"):
        return np.zeros(len(mask), bool)
    stream = part.column("stream")
    if stream.null_count:
        mask &= pc.is_valid(stream).to_numpy(zero_copy_only=False)
    return mask


def _launches(part: Partition, device_rows: np.ndarray) -> np.ndarray:
    """Row of the CPU event with each device row's correlation (the last such row), or -1."""
    out = np.full(len(device_rows), _NO_LAUNCH, np.int64)
    if not part.has("correlation") or not len(device_rows):
        return out
    corr = part.ints("correlation", -1)      # a missing id reads as -1: it matches nothing
    host_rows = np.flatnonzero(part.equals("category", "host") & (corr >= 0))
    found = launch_calls(corr[device_rows], corr[host_rows])
    out[found >= 0] = host_rows[found[found >= 0]]
    return out


def device_streams(part: Partition) -> Streams:
    """The partition's device events on streams and their launches (cached on the partition)."""
    out = part.cache.get("device_streams")
    if out is not None:
        return out
    rows = np.flatnonzero(_device_mask(part)) if part.num_rows else np.zeros(0, np.int64)
    stream = part.ints("stream")[rows] if len(rows) else np.zeros(0, np.int64)
    ts, end = part.ts[rows], part.end[rows]
    order = np.lexsort((end, ts, stream))
    rows, stream, ts, end = rows[order], stream[order], ts[order], end[order]
    streams, first = np.unique(stream, return_index=True)
    bounds = np.r_[first, len(rows)].astype(np.int64)
    out = part.cache["device_streams"] = Streams(rows, stream, ts, end, streams, bounds, _launches(part, rows))
    return out


# --- output helpers ------------------------------------------------------------------------

def quantiles(values: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """Linear-interpolated quantiles (pandas' ``describe``), NaN for no values."""
    if not len(values):
        return [math.nan] * len(qs)
    return [float(v) for v in np.quantile(np.asarray(values, dtype=np.float64), qs)]


def rows(frame: pd.DataFrame, columns: tuple[str, ...], ints: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """JSON-ready records: numpy scalars as Python ones, NaN as None, ``ints`` as int (ns, counts)."""
    from sohuprof.analyzers.reports.comm import records

    out = records(frame, list(columns))
    keep = [c for c in ints if c in columns]
    for row in out:   # a loop over result rows, not events
        for c in keep:
            if row[c] is not None:
                row[c] = int(round(row[c]))
    return out
