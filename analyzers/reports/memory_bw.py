"""HTA's memory bandwidth: memcpy and memset traffic by direction, per rank.

Holistic Trace Analysis' memory bandwidth (``hta/analyzers/trace_counters.py``:
``TraceCounters._get_memory_bw_time_series_for_rank`` and ``get_memory_bw_summary``; the
direction from ``get_memory_kernel_type`` in ``hta/utils/utils.py``), per rank, on the memory
events of :mod:`sohuprof.analyzers.device_events` (``gpu_memcpy``, ``gpu_memset``, MTIA's
``dma_*``):

- **direction**: ``Memset`` for a name starting ``Memset``; for ``Memcpy XtoY (...)`` the
  ``XtoY`` (``HtoD``, ``DtoH``, ``DtoD``, ``PtoP``, ...: HTA keeps the name's first 11 characters,
  ``Memcpy DtoH``); ``other`` for the rest (HTA's ``Memcpy Unknown``: MTIA's ``dma_request``).
  A ``hip`` prefix is dropped first (HTA's memory-kernel pattern allows it, its direction rule
  does not);
- **bytes** are the event's ``hbm_bytes`` (Kineto's ``args.bytes`` of memcpy/memset events),
  null where the store does not know them; such events still count in ``count`` and ``time_ns``
  but not in any bandwidth. HTA reads Kineto's own ``memory bandwidth (GB/s)`` arg, which is
  ``bytes / dur``;
- ``busy_ns``: the union of the direction's events (``time_ns`` sums them, overlaps twice);
  ``gbps``: known bytes over the union of the events with known bytes (``busy_ns`` when all
  have them; bytes per ns is GB/s), the direction's average bandwidth while it moves data;
- HTA's time series: each event adds its bandwidth (``bytes / dur``) at its start and removes it
  at its end, summed per direction; ``peak_gbps`` is its maximum (the most bandwidth in flight at
  once) and ``mean_gbps`` / ``p50_gbps`` HTA's summary ``mean`` / ``50%`` of its positive points
  (where an event ends as another starts the end comes first; HTA's unstable sort leaves it open).
  HTA counts a 0-duration event as 1 (its unit, us) to avoid dividing by 0; here 1 ns. With
  ``--hta-compatible`` the events are HTA's selection (see ``device_events``), their intervals
  rounded inward to whole us (a 0 us one lasting 1 us) and their bandwidth Kineto's (bytes over
  the unrounded duration), as HTA has them.

JSON: ``directions``, one row per rank and direction: ``count, bytes_known, bytes, time_ns,
busy_ns, gbps, peak_gbps, mean_gbps, p50_gbps`` (``bytes`` and the bandwidths null where no
event of the row has bytes), and a ``note`` when some events' bytes are unknown.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.device_events import COLUMNS as _DEVICE_COLUMNS
from sohuprof.analyzers.device_events import analysed, check_applies, device_streams, quantiles, rows
from sohuprof.analyzers.hta_selection import hta_selection_mask
from sohuprof.analyzers.intervals import union_length
from sohuprof.analyzers.partition import Partition, as_partition, events_table, rank_partitions

__all__ = ["MEMORY_BW", "MemoryBwResult", "COLUMNS", "DIRECTION_COLUMNS", "direction_of", "memory_bandwidth"]

COLUMNS = (*_DEVICE_COLUMNS, "hbm_bytes")
DIRECTION_COLUMNS = ("rank", "direction", "count", "bytes_known", "bytes", "time_ns", "busy_ns", "gbps", "peak_gbps",
                     "mean_gbps", "p50_gbps")
_INTS = ("rank", "count", "bytes_known", "bytes", "time_ns", "busy_ns")
_MEMCPY = re.compile(r"^(?:hip)?Memcpy (\w+)")
_US = 1000


def direction_of(name: str) -> str:
    """The direction of a memory event's name (HTA's ``get_memory_kernel_type``, without ``Memcpy``).

    >>> [direction_of(n) for n in ("Memcpy DtoH (Device -> Pinned)", "Memset (Device)", "dma_request")]
    ['DtoH', 'Memset', 'other']
    """
    if name.startswith(("Memset", "hipMemset")):
        return "Memset"
    m = _MEMCPY.match(name)
    return m.group(1) if m else "other"


def _peak_series(ts: np.ndarray, end: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """HTA's bandwidth time series (+bw at each start, -bw at each end, summed): its values."""
    t = np.concatenate([ts, end])
    d = np.concatenate([bw, -bw])
    order = np.lexsort((d, t))               # at one instant, ends before starts: no false peaks
    return np.cumsum(d[order])


def _rank_memory(part: Partition, rank: int, min_dur: int, rate_dur: np.ndarray | None = None) -> pd.DataFrame:
    """One rank's rows, one per direction. ``rate_dur``: per row of ``part``, the duration an
    event's bandwidth is taken over (default its own ``dur``)."""
    s = device_streams(part)
    codes, values = part.codes("category")
    memory_rows = np.flatnonzero(np.array([v == "memory" for v in values] + [False])[codes][s.rows])
    if not len(memory_rows):
        return pd.DataFrame(columns=list(DIRECTION_COLUMNS))
    table_rows = s.rows[memory_rows]
    ts, end = s.ts[memory_rows], s.end[memory_rows]
    name_codes, names = part.codes("name")
    direction_names = [direction_of(v) for v in names] + ["other"]             # once per name
    directions, per_name = np.unique(np.array(direction_names, dtype=object), return_inverse=True)
    key = per_name[name_codes[table_rows]]
    if part.has("hbm_bytes"):
        col = part.column("hbm_bytes")
        known = pc.is_valid(col).to_numpy(zero_copy_only=False)[table_rows]
        nbytes = part.ints("hbm_bytes")[table_rows]
    else:
        known, nbytes = np.zeros(len(table_rows), bool), np.zeros(len(table_rows), np.int64)
    n = len(directions)
    count = np.bincount(key, minlength=n)
    time_ns = np.bincount(key, weights=end - ts, minlength=n).astype(np.int64)
    busy = union_length(ts, end, key, n_keys=n)
    busy_known = union_length(ts[known], end[known], key[known], n_keys=n)
    out = []
    for d in np.unique(key):                  # a loop over directions
        m = key == d
        k = m & known
        total = float(nbytes[k].sum()) if k.any() else math.nan     # an int in the JSON
        row = {"rank": rank, "direction": directions[d], "count": int(count[d]), "bytes_known": int(k.sum()),
               "bytes": total, "time_ns": int(time_ns[d]), "busy_ns": int(busy[d]),
               "gbps": total / busy_known[d] if busy_known[d] > 0 else math.nan,
               "peak_gbps": math.nan, "mean_gbps": math.nan, "p50_gbps": math.nan}
        if k.any():
            dur = np.maximum(end[k] - ts[k], min_dur)
            rate = nbytes[k] / (dur if rate_dur is None else np.maximum(rate_dur[table_rows[k]], 1))
            series = _peak_series(ts[k], ts[k] + dur, rate)
            positive = series[series > 1e-9]   # HTA: the points above 0 (float sums leave dust)
            row["peak_gbps"] = float(series.max())
            row["mean_gbps"] = float(positive.mean()) if len(positive) else math.nan
            row["p50_gbps"] = quantiles(positive, (0.5,))[0]
        out.append(row)
    return pd.DataFrame(out, columns=list(DIRECTION_COLUMNS))


def _finish(partials: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in partials if len(p)]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(DIRECTION_COLUMNS))
    return frame.sort_values(["rank", "direction"], kind="stable").reset_index(drop=True)


def memory_bandwidth(events: pd.DataFrame | pa.Table, *, min_dur_ns: int = 1) -> pd.DataFrame:
    """HTA's memory bandwidth summary per rank and direction (see the module docstring).

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        Events of one or more ranks: ``ts``, ``dur`` (ns), ``name``, ``category``, ``stream`` and
        ``hbm_bytes`` (absent or null: unknown) (``rank`` absent: one rank, 0).
    min_dur_ns : int, default 1
        Shortest duration a bandwidth is computed over (HTA: 1 of its unit).

    Returns
    -------
    pandas.DataFrame
        :data:`DIRECTION_COLUMNS` rows.

    Raises
    ------
    ValueError
        A needed column is missing.

    Examples
    --------
    >>> ev = pd.DataFrame({"ts": [0, 50, 0], "dur": [100, 100, 10], "stream": 7, "category": "memory",
    ...                    "name": ["Memcpy HtoD (Pinned -> Device)"] * 2 + ["Memset (Device)"],
    ...                    "hbm_bytes": [1000, 2000, None]})
    >>> memory_bandwidth(ev)[["direction", "bytes", "busy_ns", "gbps", "peak_gbps"]].values.tolist()
    [['HtoD', 3000.0, 150, 20.0, 30.0], ['Memset', nan, 10, nan, nan]]
    """
    table = events_table(events, ("ts", "dur", "name", "category", "stream"))
    return _finish([_rank_memory(p, p.rank, min_dur_ns) for p in rank_partitions(table)])


@dataclass(frozen=True)
class MemoryBwResult:
    """One row per rank and direction (:data:`DIRECTION_COLUMNS`)."""

    directions: pd.DataFrame

    @property
    def note(self) -> str | None:
        """What the bandwidths leave out: events whose bytes the store does not know."""
        d = self.directions
        unknown = int(d["count"].sum() - d["bytes_known"].sum()) if len(d) else 0
        if not unknown:
            return None
        return (f"{unknown:,} of {int(d['count'].sum()):,} memory events have no byte count in the store "
                f"(hbm_bytes: Kineto's args.bytes): they count in count and time_ns, not in any bandwidth")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"directions": rows(self.directions, DIRECTION_COLUMNS, _INTS)}
        if self.note:
            out["note"] = self.note
        return out


class _MemoryBw:
    """``memory_bw``: HTA's memcpy / memset bandwidth by direction."""

    name = "memory_bw"
    columns = COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return check_applies(ctx, self.name, "memory bandwidth", linked=False, memory=True)

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> pd.DataFrame:
        part = as_partition(events)
        if not part.num_rows:
            return pd.DataFrame(columns=list(DIRECTION_COLUMNS))
        if not ctx.hta_compatible:
            return _rank_memory(part, part.rank, 1)
        # HTA's series takes Kineto's own bandwidth arg (bytes over the ns duration) over its
        # whole-us intervals: the rate from the events' durations before the rounding.
        kept = np.flatnonzero(hta_selection_mask(part.table))
        return _rank_memory(analysed(part, ctx), part.rank, _US, rate_dur=part.ints("dur")[kept])

    def combine(self, partials: list[pd.DataFrame], ctx: AnalysisContext) -> MemoryBwResult:
        return MemoryBwResult(_finish(partials))


MEMORY_BW = _MemoryBw()
