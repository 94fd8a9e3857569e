"""The dependency graph of a run (happens-before), as whole arrays.

A rank's events run in program order; what ties ranks together are its **anchors**, the points
where it waits for others:

- every collective it takes part in (collectives.parquet): it arrives at the event's start, the
  transfer starts when the last member arrives (the table's ``start``), and it leaves at the
  event's end. Pipeline send/recv pairs are two-member collectives, so send -> recv is one;
- on a Sohu run, every scheduler step (the host record that opens it): a replica's step starts
  when the last of its ranks finished the previous one (a barrier with no transfer).

Between two anchors a rank does its own **segment** of work. Segment ``j`` of a rank is the work
before its anchor ``j`` (the last segment, after its last anchor, is its tail). Each segment is
summarised by the time it took and what that time was made of (compute, memory stall, DMA, host,
idle gap) and, sparsely, by op class and phase; that is all the replay, the critical path and
the root causes need, so a rank's events are read once (:func:`rank_graph`, a chunk) and the
run's graph is the concatenation (:class:`Graph`, in combine).

A collective during which the rank kept working (an overlapped all-to-all, a two-batch-overlap
all-reduce) is **asynchronous**: the rank goes on from its arrival, and its next anchor waits
for the transfer to end (one collective engine, in order); an op that starts just as it ends,
after an idle gap, is the join that waited for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from sohuprof import kernels
from sohuprof.analyzers.activity import collective_rows
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.intervals import covered_before_sequential, merge
from sohuprof.analyzers.partition import Partition, as_partition

__all__ = ["GRAPH_COLUMNS", "KINDS", "RankGraph", "Graph", "rank_graph", "graph_of", "BARRIER_BASE",
           "incomplete_collectives", "replica_of_rank"]

#: Event columns the graph is built from.
GRAPH_COLUMNS = ("rank", "ts", "dur", "category", "name", "op", "phase", "step", "coll_id", "correlation", "stall_mem_ns", "flops",
                 "hbm_bytes", "track", "layer")
#: What a segment's time is made of (columns of :attr:`RankGraph.kinds`).
KINDS = ("compute", "memory_stall", "memory", "host", "idle")
_COMPUTE, _STALL, _MEMORY, _HOST, _IDLE = range(5)
#: Instance keys of step barriers are below this (collective ids are >= 0).
BARRIER_BASE = -1
_STEP_STRIDE = 1 << 20     # barrier key = BARRIER_BASE - (step * _STEP_STRIDE + replica)


def replica_of_rank(ctx: AnalysisContext) -> dict[int, int] | None:
    """Each rank's data-parallel replica on a Sohu run (from the manifest's plan), else None."""
    plan = ctx.store.manifest.get("parallel") or {}
    if not ctx.is_sohu or not all(isinstance(plan.get(k), int) and plan.get(k) > 0 for k in ("tp", "dp")):
        return None
    tp, dp = int(plan["tp"]), int(plan["dp"])
    ranks = ctx.ranks["rank"].to_numpy(np.int64)
    return dict(zip(ranks.tolist(), ((ranks % (dp * tp)) // tp).tolist()))


@dataclass(frozen=True)
class RankGraph:
    """One rank's anchors and segments (what :func:`rank_graph` derives from its events).

    Per anchor ``j`` (in time order): ``key`` (coll_id, or a step barrier's key below
    :data:`BARRIER_BASE`), ``arrive``, ``release`` (when the last member arrived, as recorded),
    ``leave``, ``asynchronous``, ``joined`` (an op waited for its end), ``step``. Per segment
    ``j`` (``len(key) + 1`` of them, the last the tail): ``kinds`` [J+1, 5] exposed time by
    :data:`KINDS`, and sparse ``op_rows`` (segment, op code, phase code, exposed time, exposed
    time at the roof) over ``op_names`` x ``phase_names``. ``first`` and ``last`` are the rank's
    first event start and last event end.
    """

    rank: int
    key: np.ndarray
    pipeline: np.ndarray        # the anchor is a pipeline send or recv
    arrive: np.ndarray
    release: np.ndarray
    leave: np.ndarray
    asynchronous: np.ndarray
    joined: np.ndarray
    step: np.ndarray
    kinds: np.ndarray
    op_seg: np.ndarray
    op_code: np.ndarray         # op code x phases + phase code (into op_names x phase_names)
    op_time: np.ndarray
    op_roof: np.ndarray
    key_dur: np.ndarray         # [op x phase codes] the rank's total op durations
    name_dur: dict              # (op name, phase) -> the rank's total duration of that op
    name_cat: dict              # (op name, phase) -> its category code (0 compute, 2 memory, 3 host)
    op_names: list
    phase_names: list
    first: int
    last: int
    deltas: np.ndarray          # [S, J+1] change of each segment's time under the chunk-time scenarios

    @property
    def anchors(self) -> int:
        return len(self.key)


def incomplete_collectives(ctx: AnalysisContext) -> tuple[np.ndarray, list[str]]:
    """Collective instances some of whose members are not in the trace (sorted coll_ids) and
    why: they are transfers here, not synchronisation, since who was waited for is unknown.

    A Sohu run records every member. A profiler trace declares its process groups' sizes (or
    only its world size): an instance with fewer members than its group, or any instance of a
    trace holding fewer ranks than its world when group sizes are not declared, is incomplete.
    """
    memo = ctx.memo
    out = memo.get("incomplete")
    if out is not None:
        return out
    if ctx.is_sohu or not ctx.has_collectives:
        out = memo["incomplete"] = (np.zeros(0, np.int64), [])
        return out
    from sohuprof.analyzers.reports.comm import group_sizes

    inst = ctx.instances
    declared = group_sizes(ctx)
    # A store that kept the collector's group sizes was judged by them alone (the world size
    # already stood in for the default group's); an older one falls back on the world size.
    judged = isinstance((ctx.store.manifest.get("collectives") or {}).get("group_sizes"), dict)
    job = (ctx.store.manifest.get("parallel") or {}).get("world_size")
    world = None if judged else job
    present = len(ctx.ranks)
    size = inst["group"].map(declared).to_numpy(dtype=float, na_value=np.nan)
    unknown = np.isnan(size)
    short = np.where(unknown, isinstance(world, int) and present < world, inst["n"].to_numpy() < np.nan_to_num(size))
    ids = np.sort(inst["coll_id"].to_numpy(np.int64)[short])
    notes = []
    if len(ids):
        groups = sorted(set(inst["group"].to_numpy()[short].tolist()))
        what = (f"the trace holds {present} of {world} ranks and declares no group sizes" if unknown[short].any()
                and isinstance(world, int) else f"the trace holds {present} of {job} ranks"
                if isinstance(job, int) and present < job else "some groups' members are missing from the trace")
        notes.append(f"{len(ids):,} collectives of group(s) {', '.join(map(str, groups[:5]))}"
                     f"{' ...' if len(groups) > 5 else ''} lack members ({what}): they count as transfers, "
                     "not synchronisation; waits and root causes need every member")
    out = memo["incomplete"] = (ids, notes)
    return out


def _launch_links(part: Partition, ctx: AnalysisContext, w: np.ndarray, dev: np.ndarray, is_host: np.ndarray,
                  w_ts: np.ndarray, w_end: np.ndarray, exposed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """On a profiler trace, the CPU launch -> kernel links (Kineto's ``correlation``): a kernel or
    copy that starts after its device went idle waited for its launch where the launch (the
    runtime call with its correlation id) ended inside that gap; that part of the gap becomes the
    launch's exposed time (host: launch-bound), and other CPU work under an idle device is off the
    device's chain. Edits ``exposed`` in place; returns the launches (positions in ``w``) and the
    device events they launched, so a launch's time is counted in its kernel's segment."""
    none = np.zeros(0, np.int64)
    if ctx.is_sohu or not part.has("correlation") or not dev.any() or not is_host.any():
        return none, none
    corr = part.ints("correlation", -1)[w]
    h_idx = np.flatnonzero(is_host & (corr >= 0))
    d_idx = np.flatnonzero(dev & (corr >= 0))
    if not len(h_idx) or not len(d_idx):
        return none, none
    by_corr = np.argsort(corr[h_idx], kind="stable")
    keys = corr[h_idx][by_corr]
    pos = np.searchsorted(keys, corr[d_idx], side="right") - 1
    ok = (pos >= 0) & (keys[np.maximum(pos, 0)] == corr[d_idx])
    launch, kernel = h_idx[by_corr[np.maximum(pos, 0)]][ok], d_idx[ok]
    # The device's idle gap before each of its events: from the end of everything before it.
    rank_in_dev = np.cumsum(dev) - 1
    dev_end = w_end[dev]
    before = np.maximum.accumulate(np.r_[np.iinfo(np.int64).min, dev_end])[:-1]
    gap_start = before[rank_in_dev[kernel]]
    gap = np.clip(w_ts[kernel] - gap_start, 0, None)
    waited = np.clip(np.minimum(w_ts[kernel], w_end[launch]) - gap_start, 0, gap)
    exposed[is_host] = 0.0
    exposed[launch] = waited
    return launch, kernel


def _busy_union(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The union of intervals (sorted by start) as disjoint sorted intervals."""
    m = merge(start, end)
    return m.start, m.end


def _roof_ns(part: Partition, ctx: AnalysisContext, rows: np.ndarray) -> np.ndarray:
    """Time of each given event at its roofline roof (ns): max(flops / peak, bytes / bandwidth);
    NaN where the store has no FLOP or byte counts or no hardware spec."""
    hw = ctx.hardware
    if hw is None or not (part.has("flops") and part.has("hbm_bytes")):
        return np.full(len(rows), np.nan)
    from sohuprof.analyzers.reports.roofline import model_peak

    flops = part.ints("flops")[rows].astype(float)
    hbm = part.ints("hbm_bytes")[rows].astype(float)
    peak = np.full(len(rows), model_peak(ctx))
    if part.has("track"):
        peak = np.where(part.equals("track", "vector")[rows], hw.vector_flops, peak)
    return np.maximum(flops / peak, hbm / hw.hbm_bandwidth) * 1e9


def retime(part: Partition, ctx: AnalysisContext, rows: np.ndarray, *, peak: float = 1.0,
           hbm: float = 1.0) -> np.ndarray:
    """Durations of the given (compute or memory) events on hardware with ``peak`` x the FLOP/s
    and ``hbm`` x the HBM bandwidth, re-timed from their roofline terms as the timing model
    does: ``max(compute, memory) + launch`` with the op's own efficiency and jitter kept (its
    compute part is ``dur - stall - launch``; its memory part is that plus the stall when memory
    bound, else its bytes at the spec's bandwidth, scaled like its compute)."""
    hw = ctx.hardware
    dur = part.ints("dur")[rows].astype(float)
    if hw is None:
        return dur
    launch = np.where(dur > 0, hw.launch_overhead_ns, 0.0)
    busy = np.maximum(dur - launch, 0.0)
    stall = np.clip(part.ints("stall_mem_ns")[rows].astype(float), 0, busy) if part.has("stall_mem_ns") else 0 * busy
    is_memory = part.equals("category", "memory")[rows]
    flops = part.ints("flops")[rows].astype(float) if part.has("flops") else np.zeros(len(rows))
    bytes_ = part.ints("hbm_bytes")[rows].astype(float) if part.has("hbm_bytes") else np.zeros(len(rows))
    compute = np.where(is_memory | (flops <= 0), 0.0, busy - stall)
    from sohuprof.analyzers.reports.roofline import model_peak

    rate = np.full(len(rows), model_peak(ctx) * hw.matmul_efficiency)
    if part.has("track"):
        rate = np.where(part.equals("track", "vector")[rows], hw.vector_flops * hw.vector_efficiency, rate)
    nominal = flops / rate * 1e9
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(nominal > 0, compute / nominal, 1.0)
    at_spec = bytes_ / (hw.hbm_bandwidth * hw.memory_efficiency) * 1e9 * scale
    memory = np.where(is_memory | (flops <= 0), busy, np.where(stall > 0, busy, np.minimum(at_spec, busy)))
    return np.maximum(compute / peak, memory / hbm) + launch


def rank_graph(events: Partition, ctx: AnalysisContext, scenarios: tuple = ()) -> RankGraph:
    """One rank's :class:`RankGraph` (cached on the partition: several reports share it).

    ``scenarios`` are the chunk-time what-ifs (re-timing from roofline terms, ``("hw", peak,
    hbm)``) whose per-segment changes go into :attr:`RankGraph.deltas`.
    """
    part = as_partition(events)
    key_ = ("rank_graph", scenarios)
    cached = part.cache.get(key_)
    if cached is not None:
        return cached
    n = part.num_rows
    rank = part.rank
    ts, end = part.ts, part.end
    order, where = part.grouped("category")
    comm_rows = order[where.get("communication", slice(0, 0))]
    cid, mine, pos, found = collective_rows(part, ctx)
    is_anchor_comm = found & (cid >= 0)
    missing, _ = incomplete_collectives(ctx)
    if len(missing):
        is_anchor_comm &= ~np.isin(cid, missing)
    a_rows = comm_rows[is_anchor_comm]
    a_release = mine["start"][pos[is_anchor_comm]] if len(mine["start"]) else np.zeros(0, np.int64)
    a_key = cid[is_anchor_comm]
    # Pipeline transfers (a send and its recv are one instance): what structural waiting is named by.
    if part.has("op"):
        op_codes_all, op_values = part.codes("op")
        pipe_code = np.array([v in ("send", "recv", "send_recv") for v in op_values] + [False])   # the dictionary
        a_pipe = pipe_code[op_codes_all[a_rows]]
    else:
        a_pipe = np.zeros(len(a_rows), bool)
    # Step barriers: a Sohu run's host record opens each of a replica's steps.
    replicas = replica_of_rank(ctx)
    host_rows = order[where.get("host", slice(0, 0))]
    if replicas is not None and len(host_rows) and part.has("step"):
        replica = replicas.get(rank, 0)
        step = part.ints("step", -1)[host_rows]
        b_key = BARRIER_BASE - (np.maximum(step, 0) * _STEP_STRIDE + replica)
        b_rows = host_rows
    else:
        b_rows, b_key = np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.concatenate([b_rows, a_rows])
    keys = np.concatenate([b_key, a_key])
    pipe = np.concatenate([np.zeros(len(b_rows), bool), a_pipe])
    by_time = np.lexsort((np.r_[np.zeros(len(b_rows)), np.ones(len(a_rows))], ts[rows]))
    rows, keys, pipe = rows[by_time], keys[by_time], pipe[by_time]
    is_barrier = keys <= BARRIER_BASE
    # Work: every event that is not an anchor, in time order (the store sorts a rank by ts).
    work = np.ones(n, bool)
    work[rows] = False
    if len(comm_rows):
        work[comm_rows] = False           # unmatched communication is transfer, not the rank's work
    w = np.flatnonzero(work)
    # Each event's exposed time: what it adds to the union of the rank's work (a sequential
    # stream's ops count whole; an op running under another counts only what sticks out).
    # Device work comes first: host (CPU) ops count only where no device op runs, as a
    # profiler trace's CPU thread runs ahead of the GPU streams it feeds.
    cat_codes, cat_values = part.codes("category")
    host_of_code = np.array([v == "host" for v in cat_values] + [False])
    is_host_w = host_of_code[cat_codes[w]]
    dev = ~is_host_w
    exposed = np.empty(len(w))
    prev_end = np.empty(len(w), np.int64)
    kernels.stream_exposed(w, ts, end, is_host_w.view(np.uint8), exposed, prev_end)
    if dev.any() and is_host_w.any():
        w_ts, w_end = ts[w], end[w]
        busy = _busy_union(w_ts[dev], w_end[dev])
        h_lo = np.maximum(w_ts[is_host_w], prev_end[is_host_w])
        h_hi = np.maximum(w_end[is_host_w], h_lo)
        under = covered_before_sequential(busy[0], busy[1], h_hi) - covered_before_sequential(busy[0], busy[1], h_lo)
        exposed[is_host_w] = np.clip(exposed[is_host_w] - under, 0, None)
        launch_of, launch_for = _launch_links(part, ctx, w, dev, is_host_w, w_ts, w_end, exposed)
    else:
        launch_of = np.zeros(0, np.int64)
    a_ts = ts[rows]
    # A barrier's arrival is the end of the rank's previous work (at its first event: its start).
    prior = np.empty(len(rows), np.int64)         # the latest end before each anchor's row
    up = np.argsort(rows, kind="stable") if len(rows) and (np.diff(rows) < 0).any() else None
    kernels.max_before(end, np.ascontiguousarray(rows if up is None else rows[up], np.int64), prior)
    if up is not None:
        prior[up] = prior.copy()
    arrive = np.where(is_barrier & (rows > 0), np.minimum(prior, a_ts), a_ts)
    release = np.zeros(len(rows), np.int64)
    release[~is_barrier] = a_release[by_time[~is_barrier] - len(b_rows)] if len(a_rows) else 0
    release[is_barrier] = a_ts[is_barrier]
    leave = end[rows]      # a barrier's "transfer" is the host's scheduling work that opens the step
    seg = np.empty(len(w), np.int64)                        # segment of each work event
    kernels.searchsorted_right_at(np.ascontiguousarray(arrive, np.int64), ts, w, seg)
    if len(launch_of):
        seg[launch_of] = seg[launch_for]     # a launch's wait is in its kernel's segment
    # One compiled pass over the work events (kernels.segment_composition says what it fuses):
    # - a rank works during an asynchronous collective: some work starts strictly inside it;
    # - joined: after an asynchronous anchor, a work event that starts, after an idle gap, just
    #   as the transfer ends (it waited for it);
    # - each segment's time by kind, and sparsely by (op class, phase) with the time at the roof;
    # - the rank's own time per (op, phase) code (what its speed against its peers is judged
    #   by), and per op name and phase (a straggler is slow in every op; routing imbalance only
    #   in the experts', which an op class like gemm would mix with the dense matmuls).
    J = len(rows) + 1
    cat_of_code = np.array([{"compute": 0, "memory": 2, "host": 3}.get(v, 0) for v in cat_values] + [0], np.int8)
    zeros = np.zeros(n, np.int64)
    op_codes, op_names = part.codes("op") if part.has("op") else (zeros, [None])
    ph_codes, ph_names = part.codes("phase") if part.has("phase") else (zeros, [None])
    nm_codes, nm_values = part.codes("name") if part.has("name") else (zeros, [])
    n_ph, n_op = len(ph_names) + 1, len(op_names) + 1
    hw = ctx.hardware
    roof_model = hw is not None and part.has("flops") and part.has("hbm_bytes")
    if roof_model:
        from sohuprof.analyzers.reports.roofline import model_peak
        peak, vector_peak, bandwidth = model_peak(ctx), hw.vector_flops, hw.hbm_bandwidth
    else:
        peak = vector_peak = bandwidth = 1.0
    track_codes, track_values = part.codes("track") if part.has("track") else (zeros, [])
    vector_of_code = np.array([v == "vector" for v in track_values] + [False], np.uint8)
    inside = np.zeros(len(rows), np.uint8)
    joined = np.zeros(len(rows), np.uint8)
    acc = np.zeros((J, 4))
    uniq = np.empty(len(w), np.int64)
    op_time, op_roof = np.empty(len(w)), np.empty(len(w))
    has_roof = np.empty(len(w), np.uint8)
    key_dur = np.zeros(n_op * n_ph)
    size = (len(nm_values) + 1) * n_ph
    dur_of, cat_tab, nm_count = np.zeros(size), np.zeros(size, np.int64), np.zeros(size, np.int64)
    groups = kernels.segment_composition(
        w, ts, end, seg, exposed, cat_codes, cat_of_code,
        part.ints("stall_mem_ns") if part.has("stall_mem_ns") else zeros, op_codes, ph_codes, nm_codes,
        part.ints("flops") if roof_model else zeros, part.ints("hbm_bytes") if roof_model else zeros,
        track_codes, vector_of_code, peak, vector_peak, bandwidth, roof_model,
        arrive.astype(np.int64), leave.astype(np.int64), is_barrier.view(np.uint8), 2 if ctx.is_sohu else 10_000,
        n_op, n_ph, inside, joined, acc, uniq, op_time, op_roof, has_roof, key_dur, dur_of, cat_tab, nm_count)
    uniq, op_time, op_roof = uniq[:groups], op_time[:groups], op_roof[:groups]
    op_roof = np.where(has_roof[:groups].view(bool), op_roof, np.nan)
    asynchronous = inside.view(bool) & ~is_barrier
    joined = joined.view(bool)
    kinds = np.zeros((J, len(KINDS)), np.float32)      # ns within a segment: float32 is ample
    kinds[:, :_IDLE] = acc
    first = int(ts[0]) if n else 0
    last = int(end.max()) if n else 0
    seg_start = np.r_[first, leave]
    seg_end = np.r_[arrive, last]
    span = np.clip(seg_end - seg_start, 0, None).astype(float)
    # After an asynchronous anchor the segment runs from its arrival.
    span[1:] = np.where(asynchronous, np.clip(seg_end[1:] - arrive, 0, None), span[1:])
    kinds[:, _IDLE] = np.clip(span - kinds[:, :_IDLE].sum(axis=1), 0, None)
    if part.has("name"):
        present = np.flatnonzero(nm_count)
        keys_nm = [(nm_values[k // n_ph] if k // n_ph < len(nm_values) else None,
                    ph_names[k % n_ph] if k % n_ph < len(ph_names) else None) for k in present.tolist()]
        name_dur = dict(zip(keys_nm, dur_of[present].tolist()))
        name_cat = dict(zip(keys_nm, cat_tab[present].tolist()))
    else:
        name_dur, name_cat = {}, {}
    # Chunk-time scenarios: the change of each segment's time.
    deltas = np.zeros((len(scenarios), J))
    if scenarios:
        cat_of = cat_of_code[cat_codes[w]]
        dur_w = (end[w] - ts[w]).astype(float)
        is_work_compute = (cat_of == 0) | (cat_of == 2)
        for s, (kind, peak, hbm) in enumerate(scenarios):     # a loop over scenarios, not events
            new = retime(part, ctx, w, peak=peak, hbm=hbm)
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = np.where(dur_w > 0, new / dur_w, 1.0)
            deltas[s] = np.bincount(seg, weights=np.where(is_work_compute, exposed * (factor - 1), 0.0), minlength=J)
    step_col = part.ints("step", -1)[rows] if part.has("step") else np.full(len(rows), -1, np.int64)
    out = RankGraph(rank=rank, key=keys.astype(np.int64), pipeline=pipe, arrive=arrive.astype(np.int64), release=release,
                    leave=leave.astype(np.int64), asynchronous=asynchronous, joined=joined, step=step_col,
                    kinds=kinds, op_seg=(uniq // n_ph // n_op).astype(np.int32),
                    op_code=(uniq % (n_op * n_ph)).astype(np.int32),
                    op_time=op_time.astype(np.float32),
                    op_roof=op_roof.astype(np.float32), key_dur=key_dur, name_dur=name_dur, name_cat=name_cat, op_names=[*op_names, None], phase_names=[*ph_names, None],
                    first=first, last=last, deltas=deltas)
    part.cache[key_] = out
    return out


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` by a hash pass (kernels.factorize) and a sort
    of the distinct values only: a run's anchors are many, its instances ~an eighth of them."""
    ids, first = np.empty(len(values), np.int64), np.empty(len(values), np.int64)
    n = kernels.factorize(values - values.min(initial=0), ids, first)      # the hash takes values >= 0
    distinct = values[first[:n]]
    by_value = np.argsort(distinct, kind="stable")
    position = np.empty(n, np.int64)
    position[by_value] = np.arange(n)
    return distinct[by_value], position[ids]


@dataclass(frozen=True)
class Graph:
    """The run's dependency graph: every rank's anchors, concatenated rank by rank.

    Anchor arrays are indexed ``0..A-1`` (rank-major, time order within a rank); ``inst`` maps
    each to a dense instance index ``0..I-1`` whose members are listed (CSR) by ``members`` and
    ``offsets``. Segment arrays have one row per anchor (the work before it) plus one tail row
    per rank, at ``A + rank position``.
    """

    ranks: np.ndarray            # [R] rank numbers, in order
    rank_of: np.ndarray          # [A] position of each anchor's rank in ``ranks``
    start_of_rank: np.ndarray    # [R + 1] first anchor of each rank
    key: np.ndarray
    pipeline: np.ndarray         # [A] the anchor is a pipeline send or recv
    inst: np.ndarray
    arrive: np.ndarray
    release: np.ndarray
    leave: np.ndarray
    asynchronous: np.ndarray
    joined: np.ndarray
    step: np.ndarray
    members: np.ndarray          # anchors sorted by instance
    offsets: np.ndarray          # [I + 1]
    inst_key: np.ndarray         # [I]
    kinds: np.ndarray            # [A + R, 5]
    first: np.ndarray            # [R]
    last: np.ndarray             # [R]
    deltas: np.ndarray           # [S, A + R]
    op_seg: np.ndarray           # sparse composition rows: global segment index
    op_key: np.ndarray           #   code into ``op_keys``
    op_time: np.ndarray
    op_roof: np.ndarray
    op_keys: list                # (op, phase) per code
    key_dur: np.ndarray = None   # [R, len(op_keys)] each rank's op durations per code
    name_dur: np.ndarray = None  # [R, len(name_keys)] each rank's op durations per op name and phase
    name_keys: list = None       # (name, phase, category code) per column of name_dur

    @classmethod
    def from_ranks(cls, parts: list[RankGraph]) -> Graph:
        """Concatenate per-rank graphs (in any order: sorted by rank here)."""
        parts = sorted(parts, key=lambda p: p.rank)
        counts = np.array([p.anchors for p in parts], dtype=np.int64)
        start = np.r_[0, np.cumsum(counts)].astype(np.int64)
        A, R = int(start[-1]), len(parts)
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts]) if parts else np.zeros(0)  # noqa: E731
        key = np.ascontiguousarray(cat("key"), dtype=np.int64)
        keys, by_key = _unique_inverse(key)
        # Instances are numbered in the order they were released (a topological order of the
        # graph when the clocks are sound: the replay's batches are then runs of that order).
        release = cat("release").astype(np.int64)
        rec = np.full(len(keys), np.iinfo(np.int64).min)
        np.maximum.at(rec, by_key, release)
        order = np.lexsort((keys, rec))
        rank_in_order = np.empty(len(keys), np.int64)
        rank_in_order[order] = np.arange(len(keys))
        inst_key, inst = keys[order], rank_in_order[by_key]
        # Each instance's members (anchors in order): a counting sort of the dense instance ids.
        members, offsets = np.empty(len(inst), np.int64), np.empty(len(inst_key) + 1, np.int64)
        kernels.counting_order(np.ascontiguousarray(inst, np.int64), offsets, members)
        # Segments: every rank's anchors' rows first (in rank order), then one tail row per rank.
        kinds = np.concatenate([p.kinds[:-1] for p in parts] + [p.kinds[-1:] for p in parts]).astype(np.float32) \
            if parts else np.zeros((0, len(KINDS)), np.float32)
        deltas = (np.concatenate([p.deltas[:, :-1] for p in parts] + [p.deltas[:, -1:] for p in parts], axis=1)
                  if parts else np.zeros((0, 0)))
        # Sparse op rows: local segment -> global row; per-rank dictionary codes -> one table.
        op_keys: dict[tuple, int] = {}
        remaps, bases = [], [0]
        for p in parts:     # a loop over ranks (their small op and phase vocabularies), not events
            local = [(p.op_names[o], p.phase_names[f]) for o in range(len(p.op_names)) for f in range(len(p.phase_names))]
            remaps.append(np.array([op_keys.setdefault(k, len(op_keys)) for k in local], dtype=np.int32))
            bases.append(bases[-1] + len(local))
        rows_per = np.array([len(p.op_seg) for p in parts], dtype=np.int64)
        seg_global = (np.repeat(start[:-1], rows_per) + cat("op_seg")).astype(np.int32 if A + R < 2**31 else np.int64) \
            if parts else np.zeros(0, np.int64)
        # Each rank's rows are by segment, its tail's last: those few rows go to the tail's row.
        row_start = np.r_[0, np.cumsum(rows_per)]
        for i, p in enumerate(parts):       # a loop over ranks
            tail = int(np.searchsorted(p.op_seg, counts[i]))
            seg_global[row_start[i] + tail:row_start[i + 1]] = A + i
        code_local = cat("op_code")
        remap = np.concatenate(remaps) if remaps else np.zeros(0, np.int32)
        op_code = (remap[np.repeat(np.asarray(bases[:-1], np.int64), rows_per) + code_local] if len(code_local)
                   else np.zeros(0, np.int32))
        key_dur = np.zeros((R, max(len(op_keys), 1)))
        for i, (p, rm) in enumerate(zip(parts, remaps)):     # a loop over ranks
            np.add.at(key_dur[i], rm, p.key_dur)
        names = sorted({k for p in parts for k in p.name_dur}, key=str)
        column = {k: j for j, k in enumerate(names)}
        name_dur = np.zeros((R, max(len(names), 1)))
        for i, p in enumerate(parts):                         # ranks x their op names (a few dozen)
            for k, v in p.name_dur.items():
                name_dur[i, column[k]] += v
        name_cat = {k: c for p in parts for k, c in p.name_cat.items()}
        name_keys = [(n, f, name_cat.get((n, f), 0)) for n, f in names]
        empty = np.zeros(0)
        return cls(ranks=np.array([p.rank for p in parts], dtype=np.int64),
                   rank_of=np.repeat(np.arange(R), counts), start_of_rank=start, key=key,
                   pipeline=cat("pipeline").astype(bool) if parts else np.zeros(0, bool),
                   inst=inst.astype(np.int64), arrive=cat("arrive").astype(np.int64),
                   release=release, leave=cat("leave").astype(np.int64),
                   asynchronous=cat("asynchronous").astype(bool), joined=cat("joined").astype(bool),
                   step=cat("step").astype(np.int64), members=members.astype(np.int64),
                   offsets=offsets.astype(np.int64), inst_key=inst_key, kinds=kinds,
                   first=np.array([p.first for p in parts], dtype=np.int64),
                   last=np.array([p.last for p in parts], dtype=np.int64), deltas=deltas,
                   op_seg=seg_global, op_key=op_code,
                   op_time=cat("op_time") if parts else empty.astype(np.float32),
                   op_roof=cat("op_roof") if parts else empty.astype(np.float32), op_keys=list(op_keys),
                   key_dur=key_dur if parts else np.zeros((0, 1)),
                   name_dur=name_dur if parts else np.zeros((0, 1)), name_keys=name_keys if parts else [])

    @property
    def anchors(self) -> int:
        return len(self.key)

    @cached_property
    def memo(self) -> dict:
        """What is derived from the structure alone and reused (the replay's schedule)."""
        return {}

    @cached_property
    def is_barrier(self) -> np.ndarray:
        return self.key <= BARRIER_BASE

    @cached_property
    def first_of_rank(self) -> np.ndarray:
        """[A] is the anchor its rank's first?"""
        out = np.zeros(self.anchors, bool)
        heads = self.start_of_rank[:-1][np.diff(self.start_of_rank) > 0]
        out[heads] = True
        return out


def graph_of(partials: list[RankGraph], ctx: AnalysisContext) -> Graph:
    """The run's :class:`Graph` from every rank's partial, built once per context and shared by
    the reports that read it (comm, critical path, findings, what-if), in whatever order each hands
    the partials over.

    The partials' bulk arrays are released once the graph holds them (the engine keeps every
    report's partials until all have combined: a 50M-event run's op rows would otherwise be held
    twice), so a set of partials builds one graph, in the context it was built for.
    """
    memo = ctx.memo
    parts = [p for p in partials if p is not None]
    key = ("graph", frozenset(id(p) for p in parts))
    graph = memo.get(key)
    if graph is None:
        graph = memo[key] = Graph.from_ranks(parts)
        for p in parts:                    # a loop over ranks
            for name in _BULK:
                object.__setattr__(p, name, None)
    return graph


#: RankGraph arrays copied into the Graph, released from the partials once it is built.
_BULK = ("arrive", "release", "leave", "asynchronous", "joined", "step", "kinds", "op_seg", "op_code", "op_time",
         "op_roof", "deltas", "pipeline")
