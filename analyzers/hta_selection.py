"""Holistic Trace Analysis' event selection, for ``--hta-compatible`` reports.

HTA (facebookresearch/HolisticTraceAnalysis) does not analyse every event of a PyTorch profiler
trace. Before any analysis, its loader changes the events in three ways, and :func:`hta_select`
does the same to a store's events so that sohuprof's temporal breakdown and comm/comp overlap
give HTA's numbers on the same trace:

1. **Whole microseconds, rounded inward** (``hta/common/trace_parser.py``,
   ``_parse_trace_dataframe_json``): Kineto writes ``ts``/``dur`` as float microseconds with ns
   decimals; HTA rounds each event's start *up* and its end *down* to a whole microsecond
   (``ts = ceil(ts)``, ``end = floor(ts + dur)``, ``dur = end - ts``; pytorch/pytorch#122425).
   Every kernel shrinks by up to 2 us, and those shorter than that can vanish. Here: the same
   on the store's ns clock (multiples of 1000 ns); a duration that would turn negative is 0.
2. **The last ProfilerStep is dropped** (``hta/common/trace.py``,
   ``Trace._filter_irrelevant_gpu_kernels``, default ``include_last_profiler_step=False``):
   CPU-side events (HTA: no ``stream`` arg; here: category ``host``) are kept only when they
   start before the start of the last ``ProfilerStep#N`` annotation of their rank, so the last
   step and whatever follows it go. GPU work launched in it goes with rule 3.
3. **GPU kernels need a launching CPU event** (same function): a GPU-side event (HTA:
   ``stream > 0``; here: category compute, communication or memory) is kept only when its
   ``correlation`` equals the correlation of a CPU-side event kept by rule 2: kernels launched
   in the last step, and kernels whose launch the profiler did not record (launched before the
   profiling window opened, or by a thread the profiler did not trace), are dropped. HTA joins
   on ``correlation`` with a missing value read as ``-1``; so does this, so a GPU event without a
   correlation stays whenever some kept CPU event has none (the plain reading of HTA's join; it
   does not arise in Kineto traces, whose device events always carry one).

Rules 2 and 3 apply to a rank only when it has at least two distinct ``ProfilerStep`` names
(HTA skips the filtering with none or one, "the analysis result may not be accurate") and at
least one CPU-side event. HTA decides the step count over all ranks' symbols together; here it
is per rank, which differs only when ranks disagree about having several steps.

Without the selection, every event counts: the window runs over all profiled steps, GPU
kernels with no recorded launch are included, and times keep their ns resolution. On the A100
DDP test trace (``tests/data/kineto``) that moves idle from 77.78 % to 76.16 %, non-compute from
4.97 % to 6.33 % and comm/comp overlap from 14.31 % to 15.61 %.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.partition import require_columns

__all__ = ["GPU_CATEGORIES", "hta_round_us", "hta_select", "hta_selection_mask"]

#: Store categories of device-side events (HTA: ``stream > 0``); ``host`` is the CPU side.
GPU_CATEGORIES = ("compute", "communication", "memory")
_REQUIRED = ("ts", "dur", "name", "category", "correlation")
_US = 1000


def _check(events: pa.Table) -> None:
    if not isinstance(events, pa.Table):
        raise TypeError(f"'events' must be a pyarrow.Table, got {type(events).__name__}")
    require_columns(events, _REQUIRED, " needed for HTA's selection; read them from the store (they are in "
                    "every events table)")


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array; dictionary chunks first share one dictionary (files encode theirs apart)."""
    if isinstance(column, pa.Array):
        return column
    if pa.types.is_dictionary(column.type):
        column = pa.table({"c": column}).unify_dictionaries().column("c")
    return column.combine_chunks()


def _matches(column: pa.ChunkedArray, predicate: Callable[[str], bool]) -> np.ndarray:
    """``predicate(str) -> bool`` over a (dictionary) string column, decided once per value."""
    arr = _combined(column)
    if pa.types.is_dictionary(arr.type):
        values = arr.dictionary.to_pylist()
        hits = np.array([bool(predicate(v)) for v in values] + [False])
        idx = arr.indices.fill_null(len(values)).to_numpy(zero_copy_only=False)
        return hits[idx]
    codes, uniques = pd.factorize(np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object))
    hits = np.array([bool(predicate(v)) if isinstance(v, str) else False for v in uniques] + [False])
    return hits[np.where(codes < 0, len(uniques), codes)]


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    """Integer codes of a string column's values (equal strings, equal codes)."""
    arr = _combined(column)
    if not pa.types.is_dictionary(arr.type):
        arr = pc.dictionary_encode(arr)
    return arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def hta_round_us(ts: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HTA's inward rounding to whole microseconds: start up, end down (ns in, ns out).

    >>> hta_round_us(np.array([1200, 5000]), np.array([2500, 400]))
    (array([2000, 5000]), array([1000,    0]))
    """
    ts = np.asarray(ts, dtype=np.int64)
    end = ts + np.asarray(dur, dtype=np.int64)
    start = -((-ts) // _US) * _US
    stop = (end // _US) * _US
    return start, np.maximum(stop - start, 0)


def hta_selection_mask(events: pa.Table, *, round_us: bool = True) -> np.ndarray:
    """Which of ``events`` HTA keeps (rules 2 and 3 of the module docstring), as a bool array.

    Parameters
    ----------
    events : pyarrow.Table
        Events of one or more ranks, with ``ts``, ``dur``, ``name``, ``category`` and
        ``correlation`` (and ``rank``; without it, one rank).
    round_us : bool, default True
        Compare start times after HTA's rounding to whole microseconds (rule 1), as HTA does.

    Returns
    -------
    numpy.ndarray of bool
        One entry per event.

    Raises
    ------
    ValueError
        A needed column is missing.
    """
    _check(events)
    n = events.num_rows
    if not n:
        return np.zeros(0, bool)
    ts = events.column("ts").to_numpy().astype(np.int64)
    if round_us:
        ts, _ = hta_round_us(ts, events.column("dur").to_numpy())
    if "rank" in events.column_names:
        _, rank = np.unique(events.column("rank").to_numpy(), return_inverse=True)
    else:
        rank = np.zeros(n, np.int64)
    n_ranks = int(rank.max()) + 1
    category = events.column("category")
    gpu = _matches(category, lambda v: v in GPU_CATEGORIES)
    cpu = _matches(category, lambda v: v == "host")
    step = cpu & _matches(events.column("name"), lambda v: "ProfilerStep" in v)

    # Per rank: the last ProfilerStep's start, and how many distinct step names there are.
    last_start = np.full(n_ranks, np.iinfo(np.int64).max)
    n_steps = np.zeros(n_ranks, np.int64)
    if step.any():
        last_start[np.unique(rank[step])] = np.iinfo(np.int64).min
        np.maximum.at(last_start, rank[step], ts[step])
        pairs = np.unique(np.stack([rank[step], _codes(events.column("name"))[step]]), axis=1)
        n_steps = np.bincount(pairs[0], minlength=n_ranks)
    filtered = (n_steps >= 2) & (np.bincount(rank[cpu], minlength=n_ranks) > 0)

    kept_cpu = cpu & (ts < last_start[rank])
    corr = events.column("correlation").fill_null(-1).to_numpy().astype(np.int64)
    launchers = pd.MultiIndex.from_arrays([rank[kept_cpu], corr[kept_cpu]])
    launched = np.zeros(n, bool)
    launched[gpu] = pd.MultiIndex.from_arrays([rank[gpu], corr[gpu]]).isin(launchers)
    return np.where(filtered[rank], kept_cpu | launched, True)


def hta_select(events: pa.Table, *, round_us: bool = True) -> pa.Table:
    """``events`` as Holistic Trace Analysis would analyse them (see the module docstring).

    Drops GPU kernels with no launching CPU event and everything of the last ProfilerStep on
    each rank, and (``round_us``) rounds times inward to whole microseconds as HTA's parser does.

    Parameters
    ----------
    events : pyarrow.Table
        Events of one or more ranks (``ts``, ``dur``, ``name``, ``category``, ``correlation``,
        optionally ``rank``; other columns are carried along).
    round_us : bool, default True
        Apply HTA's rounding of ``ts``/``dur`` to whole microseconds (in ns).

    Returns
    -------
    pyarrow.Table
        A new table: the kept rows, in their original order, with the same schema.

    Raises
    ------
    ValueError
        A needed column is missing.
    """
    keep = hta_selection_mask(events, round_us=round_us)
    out = events.filter(pa.array(keep))
    if round_us and out.num_rows:
        ts, dur = hta_round_us(out.column("ts").to_numpy(), out.column("dur").to_numpy())
        out = out.set_column(out.schema.get_field_index("ts"), out.schema.field("ts"),
                             pa.array(ts, out.schema.field("ts").type))
        out = out.set_column(out.schema.get_field_index("dur"), out.schema.field("dur"),
                             pa.array(dur, out.schema.field("dur").type))
    return out
