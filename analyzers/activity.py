"""What a rank is doing at every instant of the trace window, as chains of activity classes.

Six classes, each a chain of boundaries per event (see :func:`~sohuprof.analyzers.intervals.chain_sweep`):

- a compute op is ``BODY`` then ``TAIL`` (the memory-stall part it reports, placed at its end);
- a memory op (a DMA copy) is ``DMA``;
- a collective is ``WAIT`` (from this rank's arrival to the last member's, from
  collectives.parquet) then ``TRANSFER`` (to its end); without a recorded last arrival (a lone
  profiler rank) it is all transfer;
- host work is ``HOST``.

The stall partition and communication under compute (:func:`breakdown`) come two ways with the
same integers. When every chain is sequential (each engine of a chip runs one op at a time: a
Sohu run) they are interval lengths less intersections, each intersection a prefix-sum lookup
of one stream's boundaries in another's busy intervals. Otherwise (a GPU's overlapping streams)
one sweep over every boundary (:func:`activity`) gives the time in each exact set of active
classes, and the parts are sums over those. What they derive is cached on the
:class:`~sohuprof.analyzers.partition.Partition` every report shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.intervals import (Merged, Sweep, chain_sweep, covered_before_sequential, is_sequential,
                                          union_sorted)
from sohuprof.analyzers.partition import Partition

__all__ = ["BODY", "TAIL", "DMA", "TRANSFER", "WAIT", "HOST", "N_CLASSES", "COLUMNS", "Breakdown", "bits",
           "activity", "breakdown", "collective_rows", "comm_under_compute", "compute_covered_before"]

BODY, TAIL, DMA, TRANSFER, WAIT, HOST = range(6)
N_CLASSES = 6
#: Event columns the chains are built from.
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
    _, mine, pos, found = collective_rows(part, ctx)
    last = np.where(found, mine["start"][pos], -1) if len(mine["start"]) else np.full(len(c_ts), -1, np.int64)
    transfer_from = np.clip(np.where(last >= 0, last, c_ts), c_ts, c_end)
    chains = part.cache["chains"] = [([p_ts, split, p_end], [BODY, TAIL]), ([ts[memory], end[memory]], [DMA]),
                                     ([c_ts, transfer_from, c_end], [WAIT, TRANSFER]), ([ts[host], end[host]], [HOST])]
    return chains


def collective_rows(part: Partition, ctx: AnalysisContext) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray,
                                                                   np.ndarray]:
    """The rank's communication events (in time order) matched to its rows of collectives.parquet:
    their ``coll_id`` (-1: none), the rank's member rows (:meth:`AnalysisContext.rank_collectives`),
    and per event the position of its row there and whether it has one. Once per partition:
    the chains read the last arrivals, comm the kinds and groups."""
    out = part.cache.get("collective_rows")
    if out is None:
        order, where = part.grouped("category")
        rows = order[where.get("communication", slice(0, 0))]
        cid = part.ints("coll_id", -1)[rows] if part.has("coll_id") else np.full(len(rows), -1, np.int64)
        mine = ctx.rank_collectives(part.rank) if len(rows) else ctx.rank_collectives(-1)
        ids = mine["coll_id"]
        if len(ids):
            pos = np.minimum(np.searchsorted(ids, cid), len(ids) - 1)
            found = ids[pos] == cid
        else:
            pos, found = np.zeros(len(cid), np.int64), np.zeros(len(cid), bool)
        out = part.cache["collective_rows"] = (cid, mine, pos, found)
    return out


def activity(part: Partition, ctx: AnalysisContext) -> Sweep:
    """The activity sweep of one rank's events over the trace window (computed once per partition)."""
    sweep = part.cache.get("activity")
    if sweep is None:
        sweep = part.cache["activity"] = chain_sweep(_chains(part, ctx), N_CLASSES, ctx.wall_start, ctx.wall_end)
    return sweep


def _sequential(part: Partition, ctx: AnalysisContext) -> bool:
    """Is every chain sequential (sorted, never overlapping itself)? Then each class is active at
    most once at a time and the rank's time splits by prefix sums, without a sweep."""
    out = part.cache.get("sequential")
    if out is None:
        out = part.cache["sequential"] = all(is_sequential(b[0], b[-1]) for b, _ in _chains(part, ctx))
    return out


def _inside(ctx: AnalysisContext, *bounds: np.ndarray) -> tuple[np.ndarray, ...]:
    """A sequential chain's boundary arrays clipped to the trace window (its first start and last
    end bound them all, so most chains need no clip)."""
    lo, hi = ctx.wall_start, ctx.wall_end
    if len(bounds[0]) and (bounds[0][0] < lo or bounds[-1][-1] > hi):
        return tuple(np.clip(b, lo, hi) for b in bounds)
    return bounds


def _busy(start: np.ndarray, end: np.ndarray) -> Merged:
    """A sequential stream's busy intervals: back-to-back events (most of a chip's compute
    stream) joined, so lookups search a few thousand intervals, not every event."""
    if not len(start):
        return Merged(np.zeros(0, np.int64), start, end)
    gap = end[:-1] < start[1:]
    first, last = np.r_[True, gap], np.r_[gap, True]
    return Merged(np.zeros(int(first.sum()), np.int64), start[first], end[last])


def _compute_busy(part: Partition, ctx: AnalysisContext) -> Merged:
    busy = part.cache.get("compute_busy")
    if busy is None:
        p_ts, _, p_end = _chains(part, ctx)[0][0]
        busy = part.cache["compute_busy"] = _busy(*_inside(ctx, p_ts, p_end))
    return busy


def compute_covered_before(part: Partition, ctx: AnalysisContext, x: np.ndarray) -> np.ndarray:
    """For each absolute time in ``x``: the compute time (``BODY`` or ``TAIL``) in ``[window start,
    x)``. A compute stream that never overlaps itself (a chip's, usually) is answered from its
    busy intervals' prefix sums, without a sweep; otherwise from the full sweep."""
    p_ts, _, p_end = _chains(part, ctx)[0][0]
    sequential = part.cache.get("compute_sequential")
    if sequential is None:
        sequential = part.cache["compute_sequential"] = is_sequential(p_ts, p_end)
    if not sequential:
        return activity(part, ctx).covered_before(x, bits(BODY, TAIL))
    busy = _compute_busy(part, ctx)
    return covered_before_sequential(busy.start, busy.end, np.clip(x, ctx.wall_start, ctx.wall_end))


def comm_under_compute(part: Partition, ctx: AnalysisContext) -> np.ndarray:
    """Per collective event (in the chain's order: the rank's communication events by time), its
    time under compute (once per partition; shared by stalls and comm)."""
    out = part.cache.get("comm_under_compute")
    if out is None:
        (c_ts, _, c_end), _ = _chains(part, ctx)[2]
        cov = compute_covered_before(part, ctx, np.concatenate([c_ts, c_end]))
        out = part.cache["comm_under_compute"] = cov[len(c_ts):] - cov[:len(c_ts)]
        out.flags.writeable = False
    return out


@dataclass(frozen=True)
class Breakdown:
    """One rank's trace window (ns, exact integers). ``compute``, ``memory_stall``,
    ``comm_transfer``, ``sync_wait`` and ``idle`` partition it, each instant going to the first
    of them whose classes cover it (``BODY``; ``TAIL`` or ``DMA``; ``TRANSFER``; ``WAIT``; none);
    beside the partition: ``comm`` (communication time, ``WAIT`` or ``TRANSFER``),
    ``overlapped_comm`` (of it, under compute) and ``idle_host`` (idle time covered by ``HOST``)."""

    compute: int
    memory_stall: int
    comm_transfer: int
    sync_wait: int
    idle: int
    comm: int
    overlapped_comm: int
    idle_host: int


def breakdown(part: Partition, ctx: AnalysisContext) -> Breakdown:
    """The rank's :class:`Breakdown` (once per partition).

    When every chain is sequential (a chip's engines: the usual case) the parts are sums of
    interval lengths less intersections, each intersection a prefix-sum lookup of one stream's
    boundaries in another's busy intervals: no sort of every boundary. Otherwise they are sums
    over the full sweep's coverage of every exact set of classes. Both give the same integers.
    """
    out = part.cache.get("breakdown")
    if out is None:
        out = part.cache["breakdown"] = (_sequential_breakdown(part, ctx) if _sequential(part, ctx)
                                         else _swept_breakdown(activity(part, ctx).coverage()))
    return out


def _sequential_breakdown(part: Partition, ctx: AnalysisContext) -> Breakdown:
    """:func:`breakdown` of sequential chains: C = compute (BODY then TAIL), D = DMA, K = a
    collective (WAIT then TRANSFER), H = host; U = C or D. The partition is |BODY|,
    |TAIL| + |D - C|, |TRANSFER - U|, |WAIT - U| (WAIT and TRANSFER never overlap) and the rest."""
    (p_ts, split, p_end), _ = _chains(part, ctx)[0]
    (m_ts, m_end), _ = _chains(part, ctx)[1]
    (c_ts, c_from, c_end), _ = _chains(part, ctx)[2]
    (h_ts, h_end), _ = _chains(part, ctx)[3]
    window = ctx.wall_end - ctx.wall_start
    p_ts, split, p_end = _inside(ctx, p_ts, split, p_end)
    m_ts, m_end = _inside(ctx, m_ts, m_end)
    c_ts, c_from, c_end = _inside(ctx, c_ts, c_from, c_end)
    h_ts, h_end = _inside(ctx, h_ts, h_end)
    compute = _compute_busy(part, ctx)
    body = int((split - p_ts).sum())
    tail = int((p_end - split).sum())
    # Memory stall: the tails, and DMA not under compute.
    m_cov = covered_before_sequential(compute.start, compute.end, np.concatenate([m_ts, m_end]))
    dma_hidden = int(m_cov[len(m_ts):].sum() - m_cov[:len(m_ts)].sum())
    dma = int((m_end - m_ts).sum())
    # Communication: its parts under U = compute or DMA are taken by those.
    busy_u = union_sorted(compute.start, compute.end, m_ts, m_end)
    u_cov = covered_before_sequential(busy_u.start, busy_u.end, np.concatenate([c_ts, c_from, c_end]))
    n = len(c_ts)
    wait_hidden = int(u_cov[n:2 * n].sum() - u_cov[:n].sum())
    transfer_hidden = int(u_cov[2 * n:].sum() - u_cov[n:2 * n].sum())
    wait, transfer = int((c_from - c_ts).sum()), int((c_end - c_from).sum())
    overlapped = int(comm_under_compute(part, ctx).sum())
    memory_stall = tail + dma - dma_hidden
    comm_transfer, sync_wait = transfer - transfer_hidden, wait - wait_hidden
    idle = window - body - memory_stall - comm_transfer - sync_wait
    # Host work in idle time: host time not under compute, DMA or a collective.
    idle_host = 0
    if len(h_ts):
        busy_v = union_sorted(busy_u.start, busy_u.end, c_ts, c_end)
        h_cov = covered_before_sequential(busy_v.start, busy_v.end, np.concatenate([h_ts, h_end]))
        idle_host = int((h_end - h_ts).sum() - (h_cov[len(h_ts):].sum() - h_cov[:len(h_ts)].sum()))
    return Breakdown(compute=body, memory_stall=memory_stall, comm_transfer=comm_transfer, sync_wait=sync_wait,
                     idle=idle, comm=wait + transfer, overlapped_comm=overlapped, idle_host=idle_host)


def _mask_tables() -> dict[str, np.ndarray]:
    """For every exact set of active classes (a bitmask): its part of the partition (0..4), and
    whether it is communication, communication under compute, idle host work."""
    masks = np.arange(1 << N_CLASSES)
    has = lambda *c: (masks & bits(*c)) != 0   # noqa: E731 - a one-line predicate over masks
    part = np.select([has(BODY), has(TAIL, DMA), has(TRANSFER), has(WAIT)], [0, 1, 2, 3], default=4)
    comm = has(TRANSFER, WAIT)
    return {"part": part, "comm": comm, "overlapped": has(BODY, TAIL) & comm, "idle_host": (part == 4) & has(HOST)}


_MASKS = _mask_tables()


def _swept_breakdown(cover: np.ndarray) -> Breakdown:
    """:func:`breakdown` from the sweep's time per exact set of active classes."""
    parts = np.bincount(_MASKS["part"], weights=cover, minlength=5).round().astype(np.int64).tolist()
    return Breakdown(*parts, comm=int(cover[_MASKS["comm"]].sum()),
                     overlapped_comm=int(cover[_MASKS["overlapped"]].sum()),
                     idle_host=int(cover[_MASKS["idle_host"]].sum()))
