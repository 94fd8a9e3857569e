"""The local engine: read the store one rank at a time and run every chosen analysis on it.

A cheap first pass (``ts``, ``dur`` and the rank columns, streamed) finds the trace window and
the ranks; then each rank's events are read once, with the union of the columns the chosen
analyses need (the store's files are sorted by rank, so Parquet statistics prune the rest), and
handed to every analysis's ``chunk``. Memory is bounded by one rank's events.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.analysis import Analysis, AnalysisContext, ReportError
from sohuprof.hardware import HardwareSpec
from sohuprof.store import TraceStore

__all__ = ["build_context", "plan_columns", "rank_partitions", "run_analyses"]


def build_context(store: TraceStore, *, hta_compatible: bool = False, options: dict | None = None) -> AnalysisContext:
    """The context of ``store``: small tables, hardware, trace window and ranks (streamed)."""
    manifest = store.manifest
    source = manifest.get("source", {}).get("format", "unknown")
    hw = manifest.get("hardware")
    # Only a Sohu run's manifest carries a full spec; profiler traces describe devices loosely.
    hardware = (HardwareSpec.from_dict(hw, source="in the store's manifest")
                if source == "sohu-raw-trace" and isinstance(hw, dict) else None)
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
    ranks = (pd.concat(seen).drop_duplicates().sort_values("rank").reset_index(drop=True) if seen
             else pd.DataFrame({"rank": pd.Series(dtype="int32"), "node": pd.Series(dtype="int32"),
                                "chip": pd.Series(dtype="int32")}))
    if not seen:
        lo = hi = 0
    # Sorted once by (rank, coll_id), kind categorical: per-rank lookups are a searchsorted and
    # the table is held once (it is the largest small table: one row per instance x rank).
    collectives = store.read("collectives").to_pandas()
    collectives = collectives.sort_values(["rank", "coll_id"], kind="stable", ignore_index=True)
    if "kind" in collectives:
        collectives["kind"] = collectives["kind"].astype(str).astype("category")
    return AnalysisContext(store=store, source=source, hardware=hardware, collectives=collectives,
                           requests=store.read("requests").to_pandas(),
                           counters=store.read("counters").to_pandas(),
                           wall_start=int(lo), wall_end=int(hi), ranks=ranks,
                           hta_compatible=hta_compatible, options=dict(options or {}))


def rank_partitions(ctx: AnalysisContext, columns: list[str]) -> Iterator[pa.Table]:
    """Each rank's events (the given columns), one table at a time, in rank order."""
    for rank, node in zip(ctx.ranks["rank"].tolist(), ctx.ranks["node"].tolist()):
        yield ctx.store.read("events", columns=columns,
                             filters=(pc.field("node") == node) & (pc.field("rank") == rank))


def plan_columns(ctx: AnalysisContext, analyses: list[Analysis]) -> list[str]:
    """Check every analysis applies (else :class:`ReportError` saying why) and return the union
    of the event columns they read."""
    for a in analyses:
        reason = a.applies(ctx)
        if reason:
            raise ReportError(f"report '{a.name}' does not apply to this store: {reason}")
    return sorted({c for a in analyses for c in a.columns} | {"rank"})


def run_analyses(ctx: AnalysisContext, analyses: Iterable[Analysis], *,
                 partitions: Callable[[AnalysisContext, list[str]], Iterable[pa.Table]] = rank_partitions,
                 advance: Callable[[float], None] | None = None, workers: int | None = None) -> dict[str, Any]:
    """Run ``analyses`` over ``ctx``'s store; returns ``{name: result}`` in the order given.

    Partitions are read and chunked on ``workers`` threads (default: the machine's cores, at most
    4; numpy and pyarrow release the GIL in their kernels), at most ``workers + 1`` partitions in
    memory at once; partials are combined in partition order, so results do not depend on it.

    Raises
    ------
    ReportError
        An analysis does not apply to this store (the message says why).
    """
    analyses = list(analyses)
    columns = plan_columns(ctx, analyses)
    workers = workers or min(os.cpu_count() or 1, 4)

    def work(events: pa.Table) -> list[Any]:
        return [a.chunk(events, ctx) for a in analyses]

    partials: dict[str, list[Any]] = {a.name: [] for a in analyses}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sohuprof-analyze") as pool:
        pending: deque[Future[list[Any]]] = deque()

        def drain(limit: int) -> None:
            while len(pending) > limit:
                for a, part in zip(analyses, pending.popleft().result()):
                    partials[a.name].append(part)
                if advance is not None:
                    advance(1)

        for events in partitions(ctx, columns):
            pending.append(pool.submit(work, events))
            drain(workers)
        drain(0)
    return {a.name: a.combine(partials[a.name], ctx) for a in analyses}
