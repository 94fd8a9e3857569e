"""Replay the dependency graph with changed durations: when would everything have happened?

The run is a max-plus system: a rank arrives at an anchor when its previous anchor let it go
plus the work between them; an instance is released when its last member arrives (or when
something outside the trace released it, such as a request arriving); every member leaves at
the release plus its transfer. :func:`replay` solves it as a wavefront over the graph: each
round releases every instance whose members have all arrived, then moves each of their members
on to its next anchor. Every round is a handful of whole-array operations over the instances it
releases (vectorized over ranks and over every scenario at once); the rounds are the graph's
depth, the number of synchronisation points one after another, as in the emulator itself.

Replaying the unchanged graph gives back the measured times to the nanosecond (a test holds it
to that), so a changed replay's difference from the measured run is the change's effect alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.analyzers.diagnosis.graph import Graph

from sohuprof import kernels
from sohuprof.errors import SohuprofError

__all__ = ["Replay", "Schedule", "replay", "schedule", "ReplayError", "chain_offsets"]


#: A release this much later than its last member's arrival was set from outside the trace
#: (shorter gaps are the aligned clocks' rounding).
EXTERNAL_NS = 1_000


class ReplayError(SohuprofError):
    """The graph cannot be replayed (its collectives wait on each other in a cycle)."""


@dataclass(frozen=True)
class Replay:
    """Replayed times: per anchor (``arrive``, ``leave``) of the first scenario (the baseline),
    ``[A, 1]``; per instance (``release``, ``[I, S]``), per rank (``end``) and in sum (``wait``)
    of every scenario.

    ``last`` is each instance's last arriver (an anchor index) and ``external`` whether its
    release came from outside the trace rather than its last member; ``via_leave`` whether each
    anchor's arrival was set by its predecessor's leave (else by its arrival: asynchronous);
    those three are of the first scenario (the baseline, for the critical path).
    """

    arrive: np.ndarray
    release: np.ndarray
    leave: np.ndarray
    end: np.ndarray          # [R, S] each rank's last end
    rounds: int
    last: np.ndarray
    external: np.ndarray
    via_leave: np.ndarray
    tail_via_leave: np.ndarray   # [R]
    wait: np.ndarray = None      # [S] total sync wait at collectives

    @property
    def wall_end(self) -> np.ndarray:
        """[S] the last end over ranks."""
        return self.end.max(axis=0) if len(self.end) else np.zeros(self.end.shape[1])

    def sync_wait(self, graph: Graph) -> np.ndarray:
        """[S] the members' total wait at collectives (release - arrival; barriers excluded)."""
        return self.wait


def chain_offsets(g: Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per anchor: the offset of its arrival from its predecessor's leave (``EL``) and from its
    predecessor's arrival (``EA``, -inf unless the predecessor is asynchronous); per rank the
    same for its tail (its last end)."""
    A = g.anchors
    first = g.first_of_rank
    prev = np.arange(A) - 1
    p = np.maximum(prev, 0)
    blocking = ~g.asynchronous[p] | g.joined[p]
    gap = g.arrive - g.leave[p]
    el = np.where(first, 0, np.where(blocking, gap, np.minimum(gap, 0))).astype(float)
    ea = np.where(first | ~g.asynchronous[p], -np.inf, g.arrive - g.arrive[p]).astype(float)
    counts = np.diff(g.start_of_rank)
    lastp = np.maximum(g.start_of_rank[1:] - 1, 0)
    has = counts > 0
    tail_gap = g.last - (g.leave[lastp] if A else 0)
    tail_block = ~g.asynchronous[lastp] | g.joined[lastp] if A else np.ones(len(counts), bool)
    tel = np.where(has, np.where(tail_block, tail_gap, np.minimum(tail_gap, 0)), g.last).astype(float)
    tea = np.where(has & ~(g.asynchronous[lastp] if A else has), -np.inf,
                   np.where(has, g.last - (g.arrive[lastp] if A else 0), -np.inf)).astype(float)
    return el, ea, tel, tea


@dataclass(frozen=True)
class Schedule:
    """Whether the release order is a topological order of the graph (every instance waits only on
    earlier ones): then one pass in that order replays it; else the wavefront does."""

    ordered: bool


def schedule(g: Graph) -> Schedule:
    """The :class:`Schedule` of ``g`` (cached on the graph): ``dep[c]``, the latest instance ``c``
    waits on (its members' previous anchors'), must come before ``c``."""
    out = g.memo.get("schedule")
    if out is None:
        I, A = len(g.inst_key), g.anchors
        dep = np.full(I, -1, np.int64)
        if A:
            prev_inst = np.where(g.first_of_rank, -1, g.inst[np.maximum(np.arange(A) - 1, 0)])
            np.maximum.at(dep, g.inst, prev_inst)
        out = g.memo["schedule"] = Schedule(bool((dep < np.arange(I)).all()))
    return out


@dataclass(frozen=True)
class Lockstep:
    """The graph's lockstep structure: an instance all of whose members come, blocking, straight
    from one earlier instance (a TP group's next all-reduce; most instances) is released a fixed
    offset after it: ``release = parent's release + max over members (transfer + work)``. Only
    the others (merges: step barriers, pipeline send/recv, anything after an asynchronous
    collective) take a maximum over several predecessors. Chains of lockstep instances are summed
    by pointer jumping, and only merges are replayed in order, in batches like :class:`Schedule`'s."""

    lockstep: np.ndarray      # [I]
    parent: np.ndarray        # [I] the one predecessor instance of a lockstep instance, else -1
    merges: np.ndarray        # instance indices of the merges, in release order
    merge_pos: np.ndarray     # [I] position of each merge in ``merges`` (-1 for lockstep)
    bounds: np.ndarray        # batches of ``merges``


def lockstep(g: Graph) -> Lockstep:
    """The :class:`Lockstep` structure of ``g`` (cached on the graph)."""
    out = g.memo.get("lockstep")
    if out is not None:
        return out
    A, I = g.anchors, len(g.inst_key)
    first = g.first_of_rank
    p = np.maximum(np.arange(A) - 1, 0)
    prev_inst = np.where(first, -1, g.inst[p])
    blocking = ~first & (~g.asynchronous[p] | g.joined[p])
    m = g.members
    starts = g.offsets[:-1]
    if I:
        lo = np.minimum.reduceat(prev_inst[m], starts)
        hi = np.maximum.reduceat(prev_inst[m], starts)
        all_blocking = np.minimum.reduceat(blocking[m].astype(np.int8), starts) > 0
    else:
        lo = hi = np.zeros(0, np.int64)
        all_blocking = np.zeros(0, bool)
    rec_release = np.full(I, np.iinfo(np.int64).min)
    max_arrive = np.full(I, np.iinfo(np.int64).min)
    if A:
        np.maximum.at(rec_release, g.inst, g.release)
        np.maximum.at(max_arrive, g.inst, g.arrive)
    inside = rec_release - max_arrive <= EXTERNAL_NS
    step = lo == hi
    is_lock = step & (lo >= 0) & all_blocking & inside
    parent = np.where(is_lock, lo, -1)
    # Each instance's root: the first merge up its lockstep chain (pointer jumping).
    root = np.where(is_lock, parent, np.arange(I))
    while True:            # log2(longest lockstep chain) rounds
        up = is_lock[root]
        if not up.any():
            break
        root = np.where(up, root[root], root)
    merges = np.flatnonzero(~is_lock)
    merge_pos = np.full(I, -1, np.int64)
    merge_pos[merges] = np.arange(len(merges))
    # A merge depends on the roots of its members' previous instances.
    dep_of_member = np.where(prev_inst[m] >= 0, merge_pos[root[np.maximum(prev_inst[m], 0)]], -1)
    dep = np.maximum.reduceat(dep_of_member, starts) if I else np.zeros(0, np.int64)
    dep_m = dep[merges]
    M = len(merges)
    ordered = bool((dep_m < np.arange(M)).all())
    if not ordered:
        raise ReplayError("the collectives wait on each other in a cycle: the ranks' clocks disagree with "
                          "the order they ran in")
    best = np.full(M + 1, M, np.int64)
    has = dep_m >= 0
    np.minimum.at(best, dep_m[has], np.flatnonzero(has))
    cut = np.minimum.accumulate(best[::-1])[::-1]
    bounds = [0]
    s = 0
    while s < M:          # one lookup per batch of merges
        e = int(cut[s])
        bounds.append(min(e if e > s else s + 1, M))
        s = bounds[-1]
    out = g.memo["lockstep"] = Lockstep(is_lock, parent, merges, merge_pos, np.asarray(bounds, np.int64))
    return out


def _ordered(g: Graph, el: np.ndarray, ea: np.ndarray, low: np.ndarray, ext: np.ndarray, transfer: np.ndarray,
             delta: np.ndarray, tscale: np.ndarray, leave: bool = True) -> tuple:
    """The replay as one compiled pass over the instances in release order (``kernels.replay_ordered``);
    the same results as :func:`_compressed` (without ``leave``, no per-anchor leave times)."""
    A, I, S = g.anchors, len(g.inst_key), delta.shape[1]
    arr = np.empty((A, S))
    rel = np.empty((I, S))
    wait = np.zeros(S)
    f64 = lambda x: np.ascontiguousarray(x, dtype=np.float64)   # noqa: E731
    kernels.replay_ordered(np.ascontiguousarray(g.offsets, np.int64), np.ascontiguousarray(g.members, np.int64),
                           g.first_of_rank.view(np.uint8), np.ascontiguousarray(g.inst, np.int64), f64(el), f64(ea),
                           f64(transfer), f64(tscale), f64(delta), f64(g.arrive), f64(low), f64(ext),
                           np.ascontiguousarray(~g.is_barrier).view(np.uint8), arr, rel, wait)
    lv0 = (rel[g.inst, 0] + transfer * tscale[g.inst, 0])[:, None] if leave else None
    lastp = np.maximum(g.start_of_rank[1:] - 1, 0)
    ends = ((arr[lastp], rel[g.inst[lastp]] + transfer[lastp, None] * tscale[g.inst[lastp]]) if A
            else (np.zeros((0, S)), np.zeros((0, S))))
    return arr[:, :1].copy(), lv0, rel, 0, ends, wait


def _compressed(g: Graph, el: np.ndarray, ea: np.ndarray, low: np.ndarray, ext: np.ndarray, transfer: np.ndarray,
                delta: np.ndarray, tscale: np.ndarray) -> tuple:
    """The replay over the :class:`Lockstep` structure: lockstep offsets for every instance at once,
    then the merges batch by batch, then every anchor's arrival and leave from the releases."""
    A, I = g.anchors, len(g.inst_key)
    S = delta.shape[1]
    ls = lockstep(g)
    m = g.members
    starts = g.offsets[:-1]
    first = g.first_of_rank
    p = np.maximum(np.arange(A) - 1, 0)
    tr = transfer[:, None] * tscale                     # [A, S] each member's transfer
    # Lockstep offsets: from the parent's release to this release.
    if I:
        step_m = tr[p[m]] + el[m, None] + delta[m]
        w = np.maximum.reduceat(step_m, starts, axis=0) + low[:, None]
    else:
        w = np.zeros((0, S))
    off = np.where(ls.lockstep[:, None], w, 0.0)
    anc = ls.parent.copy()
    while True:            # pointer jumping: sum each lockstep chain up to its merge
        up = (anc >= 0) & ls.lockstep[np.maximum(anc, 0)]
        if not up.any():
            break
        a = np.maximum(anc, 0)
        off = np.where(up[:, None], off + off[a], off)
        anc = np.where(up, anc[a], anc)
    root = np.where(ls.lockstep, anc, np.arange(I))
    # Every merge member ("slot"), in merge order: a batch of merges is a run of slots.
    sizes = np.diff(g.offsets)
    k = sizes[ls.merges]
    slot_start = np.r_[0, np.cumsum(k)].astype(np.int64)
    J = int(slot_start[-1])
    mm = m[np.repeat(g.offsets[ls.merges] - slot_start[:-1], k) + np.arange(J)]
    is_first = first[mm]
    pp = p[mm]
    q = g.inst[pp]
    dummy = I                                           # rel[dummy] = 0: a first anchor's fixed start
    rq = np.where(is_first, dummy, root[q])
    rel = np.zeros((I + 1, S))
    off_q = off[q]
    base = np.where(is_first[:, None], g.arrive[mm, None].astype(float), off_q + tr[pp] + el[mm, None]) + delta[mm]
    # Slots whose predecessor is asynchronous: the chain may go on from its arrival instead.
    need = np.flatnonzero(~is_first & np.isfinite(ea[mm]))
    slot_of = np.full(A, -1, np.int64)
    slot_of[mm] = np.arange(J)
    pa = pp[need]
    sp = slot_of[pa]                                    # the predecessor's own slot, if a merge member
    q2 = g.inst[p[pa]]
    rq2 = np.where(sp >= 0, dummy, root[q2])
    base2 = np.where((sp >= 0)[:, None], 0.0, off[q2] + tr[p[pa]] + el[pa, None] + delta[pa]) + ea[mm[need], None] + delta[mm[need]]
    need_cut = np.searchsorted(need, slot_start[ls.bounds])
    arr_slot = np.full((J, S), np.nan)
    bounds = ls.bounds
    merges = ls.merges
    for b in range(len(bounds) - 1):       # a loop over the merges' depth, not the events
        s0, e0 = int(bounds[b]), int(bounds[b + 1])
        lo, hi = int(slot_start[s0]), int(slot_start[e0])
        v = rel[rq[lo:hi]] + base[lo:hi]
        n0, n1 = int(need_cut[b]), int(need_cut[b + 1])
        if n1 > n0:
            own = sp[n0:n1]
            prior = np.where((own >= 0)[:, None], arr_slot[np.maximum(own, 0)], rel[rq2[n0:n1]])
            at = need[n0:n1] - lo
            v[at] = np.maximum(v[at], prior + base2[n0:n1])
        arr_slot[lo:hi] = v
        c = merges[s0:e0]
        top = np.maximum.reduceat(v, slot_start[s0:e0] - lo, axis=0)
        rel[c] = np.maximum(top + low[c, None], ext[c, None])
    rel = rel[:I]
    arr_merge = np.full((A, S), np.nan)
    arr_merge[mm] = arr_slot
    inst_of = g.inst
    rel_all = np.where(ls.lockstep[:, None], rel[root] + off, rel)
    lockstep_member = ls.lockstep[inst_of]

    def arrival(a: np.ndarray) -> np.ndarray:
        return np.where(lockstep_member[a, None], rel_all[inst_of[p[a]]] + tr[p[a]] + el[a, None] + delta[a],
                        arr_merge[a])

    # Per-anchor times for the baseline only; for every scenario the sums the reports need.
    everyone = np.arange(A)
    arr0 = np.where(lockstep_member, rel_all[inst_of[p], 0] + tr[p, 0] + el + delta[:A, 0], arr_merge[:, 0])[:, None]
    lv0 = (rel_all[inst_of, 0] + tr[:, 0])[:, None]
    lastp = np.maximum(g.start_of_rank[1:] - 1, 0)
    ends = (arrival(lastp), rel_all[inst_of[lastp]] + tr[lastp]) if A else (np.zeros((0, S)), np.zeros((0, S)))
    coll = ~g.is_barrier
    lock_c = everyone[coll & lockstep_member]
    merge_c = everyone[coll & ~lockstep_member]
    released = np.bincount(inst_of[coll], minlength=I) @ rel_all if A else np.zeros(S)
    arrived = (np.bincount(inst_of[p[lock_c]], minlength=I) @ rel_all + tr[p[lock_c]].sum(axis=0)
               + el[lock_c].sum() + delta[lock_c].sum(axis=0) + arr_merge[merge_c].sum(axis=0)) if A else np.zeros(S)
    return arr0, lv0, rel_all, len(bounds) - 1, ends, released - arrived


def _baseline_links(g: Graph, arr: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each instance's last arriver (lowest anchor on ties) and whether its release came from
    outside (later than its last member), from the first scenario's times."""
    I = len(g.inst_key)
    if not I:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    m = g.members
    am = arr[m, 0]
    starts = g.offsets[:-1]
    top = np.maximum.reduceat(am, starts)
    inst_of = g.inst[m]
    pos = np.where(am == top[inst_of], np.arange(len(m)), len(m))
    first_top = np.minimum.reduceat(pos, starts).clip(max=len(m) - 1)
    return m[first_top], rel[:, 0] > top + EXTERNAL_NS


def replay(g: Graph, delta: np.ndarray | None = None, tscale: np.ndarray | None = None, *,
           use_kernels: bool = True, links: bool = True) -> Replay:
    """Replay ``g`` under scenarios.

    Parameters
    ----------
    delta : array [A + R, S], optional
        Change of each segment's time (ns; the anchors' segments, then each rank's tail).
    tscale : array [I, S], optional
        Factor on each instance's transfers (every member's release to leave).
    links : bool, default True
        Derive the first scenario's ``last``, ``external``, ``via_leave`` and ``tail_via_leave``
        (the critical path's links; None without: a replay of scenarios only).

    Raises
    ------
    ReplayError
        The instances wait on each other in a cycle (ranks' clocks disagree with their order).
    """
    A, I, R = g.anchors, len(g.inst_key), len(g.ranks)
    if delta is None:
        delta = np.zeros((A + R, 1))
    S = delta.shape[1]
    if tscale is None:
        tscale = np.ones((I, S))
    el, ea, tel, tea, low, ext, transfer = _inputs(g)
    n = np.diff(g.offsets)
    heads = np.flatnonzero(g.first_of_rank)
    nxt_same = np.r_[~g.first_of_rank[1:], False] if A else np.zeros(0, bool)
    plan = schedule(g)

    def release_batch(frontier: np.ndarray | slice, m: np.ndarray, grp: np.ndarray, starts: np.ndarray) -> None:
        top = np.maximum.reduceat(arr[m], starts, axis=0)
        r = np.maximum(top + low[frontier, None], ext[frontier, None])
        rel[frontier] = r
        lv[m] = r[grp] + transfer[m, None] * tscale_a[m]
        go = nxt_same[m]
        p = m[go]
        a = p + 1
        arr[a] = np.maximum(lv[p] + el[a, None], arr[p] + ea[a, None]) + delta[a]

    rounds = 0
    if plan.ordered and use_kernels:
        arr, lv, rel, rounds, ends, wait = _ordered(g, el, ea, low, ext, transfer, delta, tscale, links)
    elif plan.ordered:
        arr, lv, rel, rounds, ends, wait = _compressed(g, el, ea, low, ext, transfer, delta, tscale[g.inst])
    if not plan.ordered:
        arr = np.full((A, S), np.nan)
        lv = np.full((A, S), np.nan)
        rel = np.full((I, S), np.nan)
        arr[heads] = g.arrive[heads, None] + delta[heads]
        tscale_a = tscale[g.inst]
        count = np.zeros(I, np.int64)
        touched, arrived = np.unique(g.inst[heads], return_counts=True)
        count[touched] += arrived
        frontier = touched[count[touched] == n[touched]]
        done = 0
        while len(frontier):                  # the wavefront: a loop over the graph's depth
            rounds += 1
            k = n[frontier]
            total = int(k.sum())
            starts = np.r_[0, np.cumsum(k)[:-1]]
            m = g.members[np.repeat(g.offsets[frontier] - starts, k) + np.arange(total)]
            grp = np.repeat(np.arange(len(frontier)), k)
            release_batch(frontier, m, grp, starts)
            done += len(frontier)
            a = m[nxt_same[m]] + 1
            touched, arrived = np.unique(g.inst[a], return_counts=True)
            count[touched] += arrived
            frontier = touched[count[touched] == n[touched]]
        if done < I:
            raise ReplayError(f"the collectives wait on each other in a cycle ({I - done:,} of {I:,} instances "
                              "never released): the ranks' clocks disagree with the order they ran in")
    if not plan.ordered:
        coll = ~g.is_barrier
        wait = (rel[g.inst[coll]] - arr[coll]).sum(axis=0)
        lastp = np.maximum(g.start_of_rank[1:] - 1, 0)
        ends = (arr[lastp], lv[lastp]) if A else (np.zeros((0, S)), np.zeros((0, S)))
        arr, lv = arr[:, :1], lv[:, :1]
    if links:
        last, external = _baseline_links(g, arr, rel)
        prev = np.maximum(np.arange(A) - 1, 0)
        via_leave = ~g.first_of_rank & ((lv[prev, 0] + el) >= (arr[prev, 0] + ea)) if A else np.zeros(0, bool)
    else:
        last = external = via_leave = None
    # Each rank's end: its tail after its last anchor.
    counts = np.diff(g.start_of_rank)
    has = counts > 0
    lastp = np.maximum(g.start_of_rank[1:] - 1, 0)
    tails = delta[A + np.arange(R)]
    if A:
        from_leave = np.where(has[:, None], ends[1], 0.0) + tel[:, None]
        from_arrive = np.where(has[:, None], ends[0], 0.0) + tea[:, None]
    else:
        from_leave, from_arrive = np.zeros((R, S)) + tel[:, None], np.full((R, S), -np.inf)
    end = np.maximum(from_leave, from_arrive) + tails
    return Replay(arrive=arr, release=rel, leave=lv, end=end, rounds=rounds, last=last, external=external,
                  via_leave=via_leave, tail_via_leave=from_leave[:, 0] >= from_arrive[:, 0] if links else None,
                  wait=wait)


def _inputs(g: Graph) -> tuple[np.ndarray, ...]:
    """What every replay of ``g`` starts from (cached on the graph: the baseline and the
    scenarios' replays share it): :func:`chain_offsets`; per instance the fixed offset of its
    release from its last arrival (``low``) or its release from outside the trace (``ext``);
    per anchor its transfer (release to leave)."""
    out = g.memo.get("replay_inputs")
    if out is not None:
        return out
    A, I = g.anchors, len(g.inst_key)
    el, ea, tel, tea = chain_offsets(g)
    rec_release = np.full(I, np.iinfo(np.int64).min)
    max_arrive = np.full(I, np.iinfo(np.int64).min)
    if A:
        np.maximum.at(rec_release, g.inst, g.release)
        np.maximum.at(max_arrive, g.inst, g.arrive)
    # A release later than the last arrival by more than clock rounding came from outside the
    # trace (a request arriving, a step gated on the host); within it, the gap is kept as is.
    offset = rec_release - max_arrive
    outside = offset > EXTERNAL_NS
    low = np.where(outside, 0, offset).astype(float)
    ext = np.where(outside, rec_release, -np.inf).astype(float)
    transfer = (g.leave - rec_release[g.inst]).astype(float) if A else np.zeros(0)
    out = g.memo["replay_inputs"] = (el, ea, tel, tea, low, ext, transfer)
    return out
