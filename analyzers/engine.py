"""The local engine: read the store one rank at a time and run every chosen analysis on it.

The trace window and the ranks come from the manifest's rank index (a store written before it
existed gets a streamed first pass over ``ts``, ``dur`` and the rank columns). Then the events
are streamed once, with the union of the columns the chosen analyses need, and cut into ranks
where the (rank-sorted) files change rank; each rank's :class:`Partition` goes to every
analysis's ``chunk``. Memory is bounded by one rank's events plus the reader's read-ahead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.analysis import Analysis, AnalysisContext, ReportError
from sohuprof.analyzers.partition import Partition
from sohuprof.errors import StoreError
from sohuprof.hardware import HardwareSpec
from sohuprof.store import TraceStore

__all__ = ["Selection", "build_context", "plan_columns", "rank_partitions", "read_rank", "run_analyses", "MAX_SPAN_NS"]

#: Longest trace window the interval kernels take: their sweep packs times with a 5-bit tag into
#: int64 (``intervals.chain_sweep``), with a bit to spare.
MAX_SPAN_NS = 1 << 57


@dataclass(frozen=True)
class Selection:
    """The events every report computes on: some ranks, and those starting in ``[start_ms, end_ms)``
    ms from the trace start (its first event or counter sample), as ``export chrome`` selects.

    None is everything. Resolved by :func:`build_context` into ``ctx.options["window_ns"]``
    (absolute ns, or None) and ``ctx.ranks`` (only the selected ranks); ``options["selected"]``
    says whether anything was left out.
    """

    ranks: Sequence[int] | None = None
    start_ms: float | None = None
    end_ms: float | None = None


def build_context(store: TraceStore, *, hta_compatible: bool = False, options: dict | None = None,
                  selection: Selection | None = None) -> AnalysisContext:
    """The context of ``store``: small tables, hardware, trace window and ranks (streamed).

    With a ``selection``, ``ranks`` holds the selected ones and a time window becomes the wall
    (the selected events' extent); partitions then hold only the selected events.

    Raises
    ------
    ReportError
        The selection names ranks the store lacks, or a window outside the trace.
    """
    manifest = store.manifest
    source = manifest.get("source", {}).get("format", "unknown")
    hw = manifest.get("hardware")
    # Only a Sohu run's manifest carries a full spec; profiler traces describe devices loosely.
    hardware = (HardwareSpec.from_dict(hw, source="in the store's manifest")
                if source == "sohu-raw-trace" and isinstance(hw, dict) else None)
    index = manifest.get("rank_index")
    if isinstance(index, list):
        ranks, lo, hi = _from_index(index)
    else:
        ranks, lo, hi = _scan_window(store)
    if hi < lo or hi - lo >= MAX_SPAN_NS:
        raise StoreError(f"trace store '{store.path}': its events span {hi - lo:,} ns, which no trace does "
                         f"(the analyses take up to 2**57 ns, 4.5 years): a damaged timestamp, or ranks "
                         f"recorded on different clock bases; `sohuprof check {store.path}` says more")
    counters = store.read("counters").to_pandas()
    chosen = _select(store, selection, ranks, int(lo), int(hi), counters)
    window = chosen.pop("window_ns", None)
    return AnalysisContext(store=store, source=source, hardware=hardware,
                           requests=store.read("requests").to_pandas(), counters=counters, **chosen,
                           hta_compatible=hta_compatible,
                           options={**(options or {}), "window_ns": window, "selected": chosen["ranks"] is not ranks
                                    or window is not None, "ranks_selected": chosen["ranks"] is not ranks})


def _select(store: TraceStore, selection: Selection | None, ranks: pd.DataFrame, lo: int, hi: int,
            counters: pd.DataFrame) -> dict[str, Any]:
    """``wall_start``, ``wall_end`` and ``ranks`` of the context, for ``selection`` (checked as
    ``export chrome`` checks it); the resolved window goes into ``options`` by the caller."""
    if selection is None or (selection.ranks is None and selection.start_ms is None and selection.end_ms is None):
        return {"wall_start": lo, "wall_end": hi, "ranks": ranks}
    start_ms, end_ms = selection.start_ms, selection.end_ms
    if start_ms is not None and start_ms < 0:
        raise ReportError(f"'start_ms' must be >= 0 (ms from the trace start); got {start_ms:g}")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise ReportError(f"'end_ms' ({end_ms:g}) must be greater than 'start_ms' ({start_ms:g})")
    if selection.ranks is not None:
        wanted = np.unique(np.asarray(selection.ranks, dtype=np.int64))
        have = ranks["rank"].to_numpy(np.int64)
        missing = np.setdiff1d(wanted, have)
        if len(missing) or not len(wanted):
            from sohuprof.export.selection import fmt_ranks as _fmt_ranks
            raise ReportError(f"ranks {_fmt_ranks(missing.tolist()) or '(none)'} are not in the store, which has "
                              f"ranks {_fmt_ranks(have.tolist())}")
        ranks = ranks[np.isin(have, wanted)].reset_index(drop=True)
    if start_ms is None and end_ms is None:
        return {"wall_start": lo, "wall_end": hi, "ranks": ranks}
    # The trace start as export takes it, so one window names the same events in both.
    t0 = min(lo, int(counters["ts"].min())) if len(counters) else lo
    start_ns = t0 + int(round((start_ms or 0.0) * 1e6))
    end_ns = t0 + int(round(end_ms * 1e6)) if end_ms is not None else hi + 1
    # The wall: the extent of the selected events (those starting in the window), one filtered pass.
    first, last = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for batch in store.scan(columns=["ts", "dur"], filters=_window_filter(start_ns, end_ns, ranks)):
        if batch.num_rows:
            first = min(first, pc.min(batch.column("ts")).as_py())
            last = max(last, pc.max(pc.add(batch.column("ts"), batch.column("dur"))).as_py())
    if last < first:
        span = (hi - t0) / 1e6
        shown = f"{start_ms or 0:g}-{end_ms:g} ms" if end_ms is not None else f"from {start_ms:g} ms"
        raise ReportError(f"window {shown} holds no events of the selected ranks (the trace spans "
                          f"0-{span:,.3f} ms); pick --start-ms/--end-ms inside it")
    return {"wall_start": int(first), "wall_end": int(last), "ranks": ranks, "window_ns": (start_ns, end_ns)}


def _window_filter(start_ns: int, end_ns: int, ranks: pd.DataFrame) -> pc.Expression:
    """Events of ``ranks`` starting in ``[start_ns, end_ns)`` (export's selection)."""
    return ((pc.field("ts") >= start_ns) & (pc.field("ts") < end_ns)
            & pc.field("rank").isin(pa.array(ranks["rank"].to_numpy(np.int32))))


def _empty_ranks() -> pd.DataFrame:
    return pd.DataFrame({"rank": pd.Series(dtype="int32"), "node": pd.Series(dtype="int32"),
                         "chip": pd.Series(dtype="int32")})


def _from_index(index: list[dict]) -> tuple[pd.DataFrame, int, int]:
    """Ranks and window from the manifest's ``rank_index`` (one entry per rank with events)."""
    if not index:
        return _empty_ranks(), 0, 0
    frame = pd.DataFrame(index)
    ranks = frame[["rank", "node", "chip"]].astype("int32").sort_values("rank").reset_index(drop=True)
    return ranks, int(frame["start_ns"].min()), int(frame["end_ns"].max())


def _scan_window(store: TraceStore) -> tuple[pd.DataFrame, int, int]:
    """Ranks and window of a store without a rank index: one streamed pass."""
    lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    seen: list[pd.DataFrame] = []
    for batch in store.scan(columns=["ts", "dur", "rank", "node", "chip"]):
        if not batch.num_rows:
            continue
        ts = batch.column("ts")
        lo = min(lo, pc.min(ts).as_py())
        hi = max(hi, pc.max(pc.add(ts, batch.column("dur"))).as_py())
        seen.append(pa.Table.from_batches([batch]).select(["rank", "node", "chip"])
                    .group_by(["rank", "node", "chip"]).aggregate([]).to_pandas())
    if not seen:
        return _empty_ranks(), 0, 0
    ranks = pd.concat(seen).drop_duplicates().sort_values("rank").reset_index(drop=True)
    return ranks, lo, hi


def read_rank(ctx: AnalysisContext, columns: list[str], rank: int, node: int) -> pa.Table:
    """One rank's events (the given columns; only those in the selection's window if any): a
    filtered read (Parquet statistics prune the rest)."""
    where = (pc.field("node") == node) & (pc.field("rank") == rank)
    window = ctx.options.get("window_ns")
    if window is not None:
        where = where & (pc.field("ts") >= window[0]) & (pc.field("ts") < window[1])
    return ctx.store.read("events", columns=columns, filters=where)


def rank_partitions(ctx: AnalysisContext, columns: list[str]) -> Iterator[pa.Table]:
    """Each rank's events (the given columns), one table at a time.

    With one file per node partition (what the store writer makes unless a collector handed it
    rows out of order), each rank's rows are contiguous: the events are streamed once and cut
    where the rank changes, with no filter to evaluate. Otherwise (or with a selection: some
    ranks, a time window) each rank is a filtered read.
    """
    columns = list(dict.fromkeys([*columns, "rank"]))
    files = ctx.store.dataset().files
    # A selection reads only its ranks (and window): filtered reads skip the rest unread.
    if ctx.options.get("selected") or len(files) != len({Path(f).parent for f in files}):
        for rank, node in zip(ctx.ranks["rank"].tolist(), ctx.ranks["node"].tolist()):
            yield read_rank(ctx, columns, rank, node)
        return
    pending: list[pa.RecordBatch] = []
    current = None
    done: set[int] = set()
    for batch in ctx.store.stream_events(columns):
        if not batch.num_rows:
            continue
        rank = batch.column("rank").to_numpy()
        cuts = np.flatnonzero(rank[1:] != rank[:-1]) + 1
        if current is not None and rank[0] != current:
            cuts = np.r_[0, cuts]
        # Each rank's rows come in one run (the layout sorts by rank, ts): a rank met again means
        # rows out of order, which would split it into partial ranks with wrong numbers.
        runs = rank[np.r_[0, np.flatnonzero(rank[1:] != rank[:-1]) + 1]].tolist()   # one per rank run
        if current is not None and runs[0] == current:
            runs = runs[1:]                      # continues the previous batch's run
        if runs:
            if current is not None:
                done.add(int(current))
            again = done.intersection(runs) or (set() if len(set(runs)) == len(runs) else set(runs))
            if again:
                raise StoreError(f"trace store '{ctx.store.path}': its events are not sorted by (rank, ts) "
                                 f"(rank {min(again)} comes back after other ranks); re-run `sohuprof "
                                 f"collect` to rebuild the store")
            done.update(runs[:-1])
        start = 0
        for cut in cuts.tolist():       # a loop over rank changes (one per rank), not events
            if cut > start:
                pending.append(batch.slice(start, cut - start))
            if pending:
                yield pa.Table.from_batches(pending)
            pending, start = [], cut
        pending.append(batch.slice(start))
        current = rank[-1]
    if pending:
        yield pa.Table.from_batches(pending)


def plan_columns(ctx: AnalysisContext, analyses: list[Analysis]) -> list[str]:
    """Check every analysis applies (else :class:`ReportError` saying why) and return the union
    of the event columns they read."""
    for a in analyses:
        reason = a.applies(ctx)
        if reason:
            raise ReportError(f"report '{a.name}' does not apply to this store: {reason}")
    return sorted({c for a in analyses for c in columns_of(a, ctx)} | {"rank"})


def columns_of(analysis: Analysis, ctx: AnalysisContext) -> tuple[str, ...]:
    """The event columns ``analysis`` reads on ``ctx``'s store (``columns_for(ctx)`` where an
    analysis's needs depend on the options, else its ``columns``)."""
    pick = getattr(analysis, "columns_for", None)
    return tuple(pick(ctx)) if pick is not None else tuple(analysis.columns)


def run_analyses(ctx: AnalysisContext, analyses: Iterable[Analysis], *,
                 partitions: Callable[[AnalysisContext, list[str]], Iterable[pa.Table]] = rank_partitions,
                 advance: Callable[[float], None] | None = None, workers: int | None = None,
                 timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Run ``analyses`` over ``ctx``'s store; returns ``{name: result}`` in the order given.

    Partitions are read and chunked on ``workers`` threads (default: the machine's cores, at most
    4; numpy and pyarrow release the GIL in their kernels), at most ``workers`` partitions in
    memory at once (plus the one being read); partials are combined in partition order, so results do not depend on it.
    ``timings``, when given, receives the wall seconds of the read-and-chunk phase (``"chunks"``)
    and of each analysis's combine (``"combine:NAME"``): where a run's time goes.

    Raises
    ------
    ReportError
        An analysis does not apply to this store (the message says why).
    """
    analyses = list(analyses)
    columns = plan_columns(ctx, analyses)
    workers = workers or min(os.cpu_count() or 1, 4)

    def work(events: pa.Table) -> list[Any]:
        part = Partition(events)     # one partition, shared: columns decoded once for all
        return [a.chunk(part, ctx) for a in analyses]

    partials: dict[str, list[Any]] = {a.name: [] for a in analyses}
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sohuprof-analyze") as pool:
        # One task for every prepare, so work they share (cached on ctx) is done once.
        preparers = [a for a in analyses if hasattr(a, "prepare")]
        prepared = [pool.submit(lambda: [a.prepare(ctx) for a in preparers])] if preparers else []
        pending: deque[Future[list[Any]]] = deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                for a, part in zip(analyses, pending.popleft().result()):
                    partials[a.name].append(part)
                if advance is not None:
                    advance(1)

        for events in partitions(ctx, columns):
            pending.append(pool.submit(work, events))
            # At most ``workers`` partitions in memory: the next is read while the last runs.
            drain(workers - 1)
        drain(0)
        for done in prepared:
            done.result()
    # The partitions are gone: hand the Arrow pool's cached pages back before combine allocates.
    pa.default_memory_pool().release_unused()
    clock = {"chunks": time.perf_counter() - started}
    results = {}
    for a in analyses:      # a loop over analyses
        t = time.perf_counter()
        results[a.name] = a.combine(partials[a.name], ctx)
        clock[f"combine:{a.name}"] = time.perf_counter() - t
    if timings is not None:
        timings.update(clock)
    return results
