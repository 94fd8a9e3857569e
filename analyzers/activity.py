"""What a rank is doing at every instant of the trace window: one sweep over its activity classes.

Six classes, each a chain of boundaries per event (see :func:`~sohuprof.analyzers.intervals.chain_sweep`):

- a compute op is ``BODY`` then ``TAIL`` (the memory-stall part it reports, placed at its end);
- a memory op (a DMA copy) is ``DMA``;
- a collective is ``WAIT`` (from this rank's arrival to the last member's, from
  collectives.parquet) then ``TRANSFER`` (to its end); without a recorded last arrival (a lone
  profiler rank) it is all transfer;
- host work is ``HOST``.

The stall partition is a function of this sweep's coverage; communication hidden under compute is
the compute coverage between the collectives' starts and ends (:func:`compute_covered_before`, from
the compute stream's own prefix sums when it is sequential). What they derive is cached on the
:class:`~sohuprof.analyzers.partition.Partition` every report shares.
"""

from __future__ import annotations

import numpy as np

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.intervals import Sweep, chain_sweep, covered_before_sequential, is_sequential
from sohuprof.analyzers.partition import Partition

__all__ = ["BODY", "TAIL", "DMA", "TRANSFER", "WAIT", "HOST", "N_CLASSES", "COLUMNS", "bits", "activity",
           "compute_covered_before"]

BODY, TAIL, DMA, TRANSFER, WAIT, HOST = range(6)
N_CLASSES = 6
#: Event columns the sweep reads.
COLUMNS = ("rank", "ts", "dur", "category", "stall_mem_ns", "coll_id")


def bits(*classes: int) -> int:
    """The bitmask of ``classes``."""
    return sum(1 << c for c in classes)


def _chains(part: Partition, ctx: AnalysisContext) -> list[tuple[list[np.ndarray], list[int]]]:
    """The rank's activity chains (computed once per partition)."""
    chains = part.cache.get("chains")
    if chains is not None:
        return chains
    # Each category's events are a slice of one gather by category (each in time order).
    order, where = part.grouped("category")
    nothing = slice(0, 0)
    compute, memory = where.get("compute", nothing), where.get("memory", nothing)
    comm, host = where.get("communication", nothing), where.get("host", nothing)
    ts, end = part.ts[order], part.end[order]
    p_ts, p_end = ts[compute], end[compute]
    if part.has("stall_mem_ns"):
        stall = part.ints("stall_mem_ns")[order[compute]]
        np.clip(stall, 0, p_end - p_ts, out=stall)
        split = np.subtract(p_end, stall, out=stall)
    else:
        split = p_end
    c_ts, c_end = ts[comm], end[comm]
    last = (ctx.last_arrival(part.rank, part.ints("coll_id", -1)[order[comm]]) if part.has("coll_id")
            else np.full(len(c_ts), -1, np.int64))
    transfer_from = np.clip(np.where(last >= 0, last, c_ts), c_ts, c_end)
    chains = part.cache["chains"] = [([p_ts, split, p_end], [BODY, TAIL]), ([ts[memory], end[memory]], [DMA]),
                                     ([c_ts, transfer_from, c_end], [WAIT, TRANSFER]), ([ts[host], end[host]], [HOST])]
    return chains


def activity(part: Partition, ctx: AnalysisContext) -> Sweep:
    """The activity sweep of one rank's events over the trace window (computed once per partition)."""
    sweep = part.cache.get("activity")
    if sweep is None:
        sweep = part.cache["activity"] = chain_sweep(_chains(part, ctx), N_CLASSES, ctx.wall_start, ctx.wall_end)
    return sweep


def compute_covered_before(part: Partition, ctx: AnalysisContext, x: np.ndarray) -> np.ndarray:
    """For each absolute time in ``x``: the compute time (``BODY`` or ``TAIL``) in ``[window start,
    x)``. A compute stream that never overlaps itself (a chip's, usually) is answered from its own
    prefix sums, without a sweep; otherwise from the full sweep."""
    p_ts, _, p_end = _chains(part, ctx)[0][0]
    sequential = part.cache.get("compute_sequential")
    if sequential is None:
        sequential = part.cache["compute_sequential"] = is_sequential(p_ts, p_end)
    if not sequential:
        return activity(part, ctx).covered_before(x, bits(BODY, TAIL))
    lo, hi = ctx.wall_start, ctx.wall_end
    if len(p_ts) and (p_ts[0] < lo or p_end[-1] > hi):   # sequential: the first start and last end bound them
        p_ts, p_end = np.clip(p_ts, lo, hi), np.clip(p_end, lo, hi)
    return covered_before_sequential(p_ts, p_end, np.clip(x, lo, hi))
