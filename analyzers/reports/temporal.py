"""HTA's temporal breakdown and comm/comp overlap, per rank, from GPU kernel intervals.

The definitions are Holistic Trace Analysis' (facebookresearch/HolisticTraceAnalysis), applied
to each rank's GPU kernels: events of category compute, communication or memory, on every
stream together (HTA: ``stream != -1``; its ``KernelType`` is COMMUNICATION for NCCL kernels,
MEMORY for memcpy/memset, COMPUTATION for the rest, which is how the Kineto collector sets
``category``).

Temporal breakdown (``hta/analyzers/breakdown_analysis.py``: ``get_temporal_breakdown`` and
``_get_idle_time_for_kernels``; intervals merged as ``hta/utils/utils.py:merge_kernel_intervals``):

- ``kernel_time``: from the first kernel's start to the last kernel's end: one window over the
  whole analysed trace (not per iteration), the same for every part;
- ``idle``: the part of that window where no kernel runs on any stream (window minus the union
  of all kernels);
- ``compute``: the union of computation kernels;
- ``non_compute``: the rest, ``kernel_time - compute - idle``: time when only communication or
  memory kernels run;
- ``*_pct``: ``100 * part / kernel_time``, rounded to 2 decimals as HTA does (so the three sum to
  100 within rounding).

Comm/comp overlap (``hta/analyzers/communication_analysis.py:get_comm_comp_overlap``):
``comm_ns`` is the union of communication kernels, ``overlapped_ns`` the part of it during
which a computation kernel runs, ``overlap_pct = 100 * overlapped_ns / comm_ns`` (2 decimals).

With ``hta_compatible`` (``--hta-compatible``) events first go through
:func:`~sohuprof.analyzers.hta_selection.hta_select` (HTA's event selection: the last
ProfilerStep and GPU kernels with no launching CPU event are dropped, times rounded inward to
whole microseconds), and the numbers are HTA's own; without it every event counts, at ns
resolution. Ranks with no GPU kernels (no communication, for the overlap) have no row: HTA's
ratios are undefined there. Percentages are in the output only because HTA's are (its
``*_pctg`` columns); the ns and us columns carry the same information.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.activity import breakdown
from sohuprof.analyzers.activity import COLUMNS as ACTIVITY_COLUMNS
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.device_events import device_profile
from sohuprof.analyzers.device_events import analysed
from sohuprof.analyzers.hta_selection import GPU_CATEGORIES, _matches, hta_select
from sohuprof.analyzers.intervals import intersection_length, union_length
from sohuprof.analyzers.partition import Partition, as_partition, events_table

__all__ = ["OVERLAP", "OVERLAP_COLUMNS", "TEMPORAL", "TEMPORAL_COLUMNS", "OverlapResult", "TemporalResult",
           "comm_comp_overlap", "temporal_breakdown"]

#: Output columns of :func:`temporal_breakdown` (the ``temporal.ranks`` JSON contract).
TEMPORAL_COLUMNS = ("rank", "idle_ns", "compute_ns", "non_compute_ns", "kernel_time_ns", "idle_pct",
                    "compute_pct", "non_compute_pct", "idle_us", "compute_us", "non_compute_us", "kernel_time_us")
#: The µs fields are HTA's own (its ``*_time(us)`` columns), kept beside the ns ones as aliases.
HTA_ALIASES = ("idle_us", "compute_us", "non_compute_us", "kernel_time_us")
#: Output columns of :func:`comm_comp_overlap` (the ``comm.overlap`` JSON contract).
OVERLAP_COLUMNS = ("rank", "comm_ns", "overlapped_ns", "overlap_pct")
#: Sufficient statistics one rank's chunk returns (ns, exact integers).
_TEMPORAL_NS = ("rank", "idle_ns", "compute_ns", "non_compute_ns", "kernel_time_ns")
_OVERLAP_NS = ("rank", "comm_ns", "overlapped_ns")
_GPU_SOURCES = ("kineto", "chrome")
_EVENT_COLUMNS = ("rank", "ts", "dur", "name", "category", "correlation")


# --- the kernels ---------------------------------------------------------------------------

def _needed(hta_compatible: bool) -> tuple[str, ...]:
    return ("ts", "dur", "category") + (("name", "correlation") if hta_compatible else ())


def _ensure_table(events: pd.DataFrame | pa.Table, *, hta_compatible: bool) -> pa.Table:
    events = events_table(events, _needed(hta_compatible))
    return hta_select(events) if hta_compatible else events


def _gpu_kernels(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GPU kernels only: ``ranks`` (sorted unique), ``key`` (index into it), ``ts``, ``end``,
    and the compute / communication masks."""
    gpu = _matches(events.column("category"), lambda v: v in GPU_CATEGORIES)
    ts = events.column("ts").to_numpy().astype(np.int64)[gpu]
    end = ts + events.column("dur").to_numpy().astype(np.int64)[gpu]
    rank = (events.column("rank").to_numpy()[gpu] if "rank" in events.column_names
            else np.zeros(len(ts), np.int64))
    ranks, key = np.unique(rank, return_inverse=True)
    category = events.column("category")
    compute = _matches(category, lambda v: v == "compute")[gpu]
    comm = _matches(category, lambda v: v == "communication")[gpu]
    return ranks.astype(np.int64), key.astype(np.int64), ts, end, compute, comm


def _temporal_ns(events: pa.Table) -> pd.DataFrame:
    """Per rank: idle, compute, non-compute and kernel time in ns (HTA's definitions)."""
    ranks, key, ts, end, compute, _ = _gpu_kernels(events)
    k = len(ranks)
    first = np.full(k, np.iinfo(np.int64).max)
    last = np.full(k, np.iinfo(np.int64).min)
    np.minimum.at(first, key, ts)
    np.maximum.at(last, key, end)
    window = np.maximum(last - first, 0)
    busy = union_length(ts, end, key, n_keys=k)
    comp = union_length(ts[compute], end[compute], key[compute], n_keys=k)
    out = pd.DataFrame({"rank": ranks, "idle_ns": window - busy, "compute_ns": comp,
                        "non_compute_ns": busy - comp, "kernel_time_ns": window})
    return out[out["kernel_time_ns"] > 0].reset_index(drop=True)


def _overlap_ns(events: pa.Table) -> pd.DataFrame:
    """Per rank with communication: the union of its communication kernels and the part of it
    under a computation kernel, in ns."""
    ranks, key, ts, end, compute, comm = _gpu_kernels(events)
    k = len(ranks)
    comm_ns = union_length(ts[comm], end[comm], key[comm], n_keys=k)
    overlapped = intersection_length(ts[comm], end[comm], ts[compute], end[compute], key[comm], key[compute],
                                     n_keys=k)
    out = pd.DataFrame({"rank": ranks, "comm_ns": comm_ns, "overlapped_ns": overlapped})
    return out[out["comm_ns"] > 0].reset_index(drop=True)


def _pct(part: pd.Series, whole: pd.Series) -> pd.Series:
    return (100.0 * part.astype("float64") / whole.astype("float64")).round(2)


def _finish_temporal(ns: pd.DataFrame) -> pd.DataFrame:
    ns = ns.sort_values("rank").reset_index(drop=True)
    kt = ns["kernel_time_ns"]
    out = pd.DataFrame({"rank": ns["rank"].astype("int64")})
    for part in ("idle", "compute", "non_compute", "kernel_time"):
        out[f"{part}_ns"] = ns[f"{part}_ns"].astype("int64")
        out[f"{part}_us"] = ns[f"{part}_ns"].astype("float64") / 1e3
    for part in ("idle", "compute", "non_compute"):
        out[f"{part}_pct"] = _pct(ns[f"{part}_ns"], kt)
    return out[list(TEMPORAL_COLUMNS)]


def _finish_overlap(ns: pd.DataFrame) -> pd.DataFrame:
    out = ns.sort_values("rank").reset_index(drop=True).astype({c: "int64" for c in _OVERLAP_NS})
    out["overlap_pct"] = _pct(out["overlapped_ns"], out["comm_ns"])
    return out[list(OVERLAP_COLUMNS)]


def temporal_breakdown(events: pd.DataFrame | pa.Table, *, hta_compatible: bool = False) -> pd.DataFrame:
    """HTA's temporal breakdown of each rank's GPU time (see the module docstring).

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        Events of one or more ranks: ``ts``, ``dur`` (ns), ``category`` and ``rank`` (absent:
        one rank, 0); with ``hta_compatible`` also ``name`` and ``correlation``.
    hta_compatible : bool, default False
        Select events as HTA does first (:func:`~sohuprof.analyzers.hta_selection.hta_select`).

    Returns
    -------
    pandas.DataFrame
        One row per rank with GPU kernels: ``rank, idle_ns, compute_ns, non_compute_ns,
        kernel_time_ns, idle_pct, compute_pct, non_compute_pct`` and HTA's µs fields as aliases
        (``idle_us, compute_us, non_compute_us, kernel_time_us``); the three parts sum to the
        kernel time.

    Raises
    ------
    ValueError
        A needed column is missing.

    Examples
    --------
    >>> ev = pd.DataFrame({"rank": 0, "ts": [0, 50, 300], "dur": [100, 100, 100],
    ...                    "category": ["compute", "communication", "memory"]})
    >>> temporal_breakdown(ev)[["idle_ns", "compute_ns", "non_compute_ns", "kernel_time_ns"]].iloc[0].tolist()
    [150, 100, 150, 400]
    """
    return _finish_temporal(_temporal_ns(_ensure_table(events, hta_compatible=hta_compatible)))


def comm_comp_overlap(events: pd.DataFrame | pa.Table, *, hta_compatible: bool = False) -> pd.DataFrame:
    """HTA's comm/comp overlap: how much of each rank's communication kernel time runs under
    a computation kernel (see the module docstring).

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        As for :func:`temporal_breakdown`.
    hta_compatible : bool, default False
        Select events as HTA does first.

    Returns
    -------
    pandas.DataFrame
        One row per rank with communication: ``rank, comm_ns, overlapped_ns, overlap_pct``.

    Raises
    ------
    ValueError
        A needed column is missing.

    Examples
    --------
    >>> ev = pd.DataFrame({"rank": 0, "ts": [0, 50], "dur": [100, 100],
    ...                    "category": ["compute", "communication"]})
    >>> comm_comp_overlap(ev).iloc[0].tolist()
    [0.0, 100.0, 50.0, 50.0]
    """
    return _finish_overlap(_overlap_ns(_ensure_table(events, hta_compatible=hta_compatible)))


# --- the analyses ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TemporalResult:
    """One row per rank with GPU kernels (:data:`TEMPORAL_COLUMNS`)."""

    ranks: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {"ranks": self.ranks[list(TEMPORAL_COLUMNS)].to_dict(orient="records")}


@dataclass(frozen=True)
class OverlapResult:
    """One row per rank with communication (:data:`OVERLAP_COLUMNS`)."""

    ranks: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {"ranks": self.ranks[list(OVERLAP_COLUMNS)].to_dict(orient="records")}


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64") for c in columns})


def _has_communication(ctx: AnalysisContext) -> bool:
    if ctx.has_collectives:
        return True
    batches = ctx.store.scan(columns=["category"], filters=pc.field("category") == "communication")
    return any(b.num_rows for b in batches)


class _PerRankNs:
    """Shared chunk/combine: exact ns totals per rank (after HTA's selection when asked), rounded
    and turned into the contract's columns only in ``combine``, so partition order never matters."""

    columns = _EVENT_COLUMNS
    _ns_columns: tuple[str, ...]

    def _per_rank(self, events: pa.Table) -> pd.DataFrame:
        raise NotImplementedError

    def _finish(self, ns: pd.DataFrame) -> Any:
        raise NotImplementedError

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> pd.DataFrame:
        if not events.num_rows:
            return _empty(self._ns_columns)
        events_table(as_partition(events).table, _needed(ctx.hta_compatible))   # a missing column named
        # Temporal and overlap both read the selected events: selected once per partition.
        return self._per_rank(analysed(events, ctx).table)

    def combine(self, partials: list[pd.DataFrame], ctx: AnalysisContext) -> Any:
        parts = [p for p in partials if len(p)]
        return self._finish(pd.concat(parts, ignore_index=True) if parts else _empty(self._ns_columns))


class _Temporal(_PerRankNs):
    """``temporal``: HTA's idle / compute / non-compute breakdown of GPU profiler traces."""

    name = "temporal"
    _ns_columns = _TEMPORAL_NS

    def applies(self, ctx: AnalysisContext) -> str | None:
        if ctx.is_sohu:
            return "temporal is HTA's GPU breakdown; use `stalls` for Sohu runs"
        if ctx.source not in _GPU_SOURCES:
            return f"temporal needs a GPU profiler trace (kineto or chrome), this store's source is '{ctx.source}'"
        if ctx.wall_ns <= 0:
            return "the store has no events"
        if not device_profile(ctx).device:
            return ("the trace has only CPU events (a CPU-only profile): temporal breaks down GPU time; "
                    "use `stalls` and `critical_path` for the CPU side")
        return None

    def _per_rank(self, events: pa.Table) -> pd.DataFrame:
        return _temporal_ns(events)

    def _finish(self, ns: pd.DataFrame) -> TemporalResult:
        return TemporalResult(_finish_temporal(ns))


class _Overlap(_PerRankNs):
    """``overlap``: HTA's comm/comp overlap (shown under ``comm.overlap``)."""

    name = "overlap"
    _ns_columns = _OVERLAP_NS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None if _has_communication(ctx) else "the store has no communication events"

    def columns_for(self, ctx: AnalysisContext) -> tuple[str, ...]:
        return _EVENT_COLUMNS if ctx.hta_compatible else ACTIVITY_COLUMNS

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> pd.DataFrame:
        if not events.num_rows or ctx.hta_compatible:
            return super().chunk(events, ctx)
        # Every event counts: the rank's activity sweep (shared with stalls and comm) already
        # knows when communication runs and when it runs under compute.
        part = as_partition(events)
        split = breakdown(part, ctx)
        out = pd.DataFrame({"rank": [part.rank], "comm_ns": [split.comm], "overlapped_ns": [split.overlapped_comm]})
        return out[out["comm_ns"] > 0].reset_index(drop=True)

    def _per_rank(self, events: pa.Table) -> pd.DataFrame:
        return _overlap_ns(events)

    def _finish(self, ns: pd.DataFrame) -> OverlapResult:
        return OverlapResult(_finish_overlap(ns))


TEMPORAL = _Temporal()
OVERLAP = _Overlap()
