"""The critical path: the chain through the dependency graph that sets the run's wall time.

Walking back from the rank that finished last: its tail; at each anchor, the work of the segment
before it; where the rank arrived only once its previous anchor let it go, that transfer, and
then the chain of whichever member arrived last there (that is who everyone waited for). Waiting
is never on the path: at every wait the path jumps to the one being waited for. A release from
outside the trace (a request arriving) ends the walk as idle time.

The path is marked with pointer doubling over each anchor's predecessor (``log2`` rounds of one
gather each), then summed by kind, by op class and phase (the graph's sparse composition), by rank
and by step, so no loop runs along it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.diagnosis.graph import GRAPH_COLUMNS, Graph, graph_of, incomplete_collectives, rank_graph
from sohuprof.analyzers.diagnosis.replay import Replay, ReplayError, replay
from sohuprof.analyzers.partition import Partition

__all__ = ["CRITICAL_PATH", "Chain", "CriticalPath", "chain", "critical_path", "baseline", "diagnosis_chunk", "PATH_KINDS"]

#: What the path's time is made of.
PATH_KINDS = ("compute", "memory", "transfer", "host", "idle")


@dataclass(frozen=True)
class CriticalPath:
    """The path's composition (each table's ``share`` is of ``path_ns``)."""

    wall_ns: int
    path_ns: int
    by_kind: pd.DataFrame
    by_op: pd.DataFrame
    by_rank: pd.DataFrame
    steps: pd.DataFrame
    on_path: np.ndarray = None       # [A + R] nodes on the path (for the findings)
    notes: tuple = ()                # what the path could not follow, and why
    #: The path in time: per piece its rank and ``start_ns`` (its transfer begins), ``work_ns``
    #: (the rank's own work begins) and ``end_ns``, in time order (for timeline overlays).
    segments: pd.DataFrame = None

    def to_json(self) -> dict[str, Any]:
        from sohuprof.analyzers.reports.comm import records

        return {"wall_ns": self.wall_ns, "path_ns": self.path_ns,
                "by_kind": records(self.by_kind, ["kind", "time_ns", "share"]),
                "by_op": records(self.by_op, ["op", "phase", "time_ns", "share"]),
                "by_rank": records(self.by_rank, ["rank", "time_ns", "share"]),
                "steps": records(self.steps, ["step", "start_ns", "end_ns", "top_op"]), "notes": list(self.notes)}


def diagnosis_chunk(part: Partition, ctx: AnalysisContext):
    """What every diagnosis report takes from a rank: its graph (shared through the partition)."""
    from sohuprof.analyzers.diagnosis.whatif import hw_scenarios, requested

    if not part.num_rows:
        return None
    return rank_graph(part, ctx, hw_scenarios(requested(ctx)))


def whole_job(ctx: AnalysisContext) -> str | None:
    """None when the dependency graph may be built: every rank is in the analysis. With
    ``--ranks`` the others' work and waits are missing, so the chain that set the wall time (and
    the findings and what-ifs priced on it) would be made of gaps; a time window is fine."""
    if ctx.options.get("ranks_selected"):
        return ("the critical path, findings and what-if follow waits across every rank of the run: "
                "run them without --ranks (a --start-ms/--end-ms window is fine)")
    return None if ctx.wall_ns > 0 else "the store has no events"


def baseline(partials: list, ctx: AnalysisContext) -> tuple[Graph, Replay]:
    """The graph and its unchanged replay (shared by the reports of one run)."""
    g = graph_of(partials, ctx)
    rep = ctx.memo.get(("baseline", id(g)))
    if rep is None:
        rep = ctx.memo[("baseline", id(g))] = replay(g)
    return g, rep


def _mark(pred: np.ndarray, start: int) -> np.ndarray:
    """Nodes reachable from ``start`` by following ``pred`` (``-1`` ends), by pointer doubling:
    after round k every node within 2**k steps is marked and ``jump`` is the 2**k-th step."""
    N = len(pred)
    jump = np.where(pred < 0, N, pred)
    jump = np.r_[jump, N]
    on = np.zeros(N + 1, bool)
    on[start] = on[N] = True          # N, "the end", counts as marked: it is never reported
    frontier = np.array([start])      # the marked nodes (a chain: no node twice)
    while True:                       # log2(path length) rounds
        reach = jump[frontier]
        fresh = reach[~on[reach]]
        if not len(fresh):
            break
        on[fresh] = True
        frontier = np.r_[frontier, fresh]
        jump = jump[jump]
    return on[:N]


@dataclass(frozen=True)
class Chain:
    """How every node of the graph (each anchor's arrival, then each rank's end) was reached in
    the baseline replay: its predecessor node (-1: none, or released from outside), the segment
    of work before it (``seg_start`` to ``node_time``) and the transfer before that
    (``transfer`` ns ending at ``seg_start``, when it waited for its previous anchor's leave)."""

    pred: np.ndarray
    node_prev: np.ndarray      # the same rank's previous anchor (-1 for its first)
    via: np.ndarray            # reached from the previous anchor's leave (else its arrival)
    p: np.ndarray              # max(node_prev, 0)
    inst_p: np.ndarray         # instance of the previous anchor
    external: np.ndarray       # that instance was released from outside the trace
    node_time: np.ndarray
    seg_start: np.ndarray
    transfer: np.ndarray
    rank_first: np.ndarray
    release: np.ndarray        # [I] baseline releases


def chain(g: Graph, rep: Replay) -> Chain:
    """The :class:`Chain` of ``g``'s baseline replay (vectorized; cached on the graph)."""
    out = g.memo.get("chain")
    if out is not None:
        return out
    A, R = g.anchors, len(g.ranks)
    arr, lv, rel = rep.arrive[:, 0], rep.leave[:, 0], rep.release[:, 0]
    prev = np.arange(A) - 1
    counts = np.diff(g.start_of_rank)
    lastp = g.start_of_rank[1:] - 1
    has = counts > 0
    node_prev = np.r_[np.where(g.first_of_rank, -1, prev), np.where(has, lastp, -1)]
    via = np.r_[rep.via_leave, rep.tail_via_leave & has]
    p = np.maximum(node_prev, 0)
    inst_p = g.inst[p] if A else np.zeros(A + R, np.int64)
    ext = rep.external[inst_p] if A else np.zeros(A + R, bool)
    pred = np.where(node_prev < 0, -1, np.where(via, np.where(ext, -1, rep.last[inst_p] if A else -1), node_prev))
    node_time = np.r_[arr, rep.end[:, 0]]
    rank_first = g.first[np.r_[g.rank_of, np.arange(R)]]
    seg_start = np.where(node_prev < 0, rank_first, np.where(via, lv[p] if A else 0, arr[p] if A else 0))
    transfer = np.where((node_prev >= 0) & via, lv[p] - rel[inst_p], 0.0) if A else np.zeros(A + R)
    out = g.memo["chain"] = Chain(pred=pred, node_prev=node_prev, via=via, p=p, inst_p=inst_p, external=ext,
                                  node_time=node_time, seg_start=seg_start, transfer=transfer,
                                  rank_first=rank_first, release=rel)
    return out


def critical_path(g: Graph, rep: Replay, ctx: AnalysisContext) -> CriticalPath:
    """The baseline replay's critical path and its composition (once per graph and context)."""
    key = ("critical_path", id(g))
    out = ctx.memo.get(key)
    if out is None:
        out = ctx.memo[key] = _critical_path(g, rep, ctx)
    return out


def _critical_path(g: Graph, rep: Replay, ctx: AnalysisContext) -> CriticalPath:
    """:func:`critical_path`'s work (see the module docstring)."""
    A, R = g.anchors, len(g.ranks)
    wall_start = ctx.wall_start
    if not R:
        empty = pd.DataFrame({"kind": [], "time_ns": [], "share": []})
        return CriticalPath(ctx.wall_ns, 0, empty, pd.DataFrame(columns=["op", "phase", "time_ns", "share"]),
                            pd.DataFrame(columns=["rank", "time_ns", "share"]),
                            pd.DataFrame(columns=["step", "start_ns", "end_ns", "top_op"]), np.zeros(0, bool))
    ch = chain(g, rep)
    lastp = g.start_of_rank[1:] - 1
    rel, node_prev, p, inst_p, pred = ch.release, ch.node_prev, ch.p, ch.inst_p, ch.pred
    node_time, rank_first, seg_start, transfer = ch.node_time, ch.rank_first, ch.seg_start, ch.transfer
    terminal = A + int(np.argmax(rep.end[:, 0]))
    on = _mark(pred, terminal)
    idx = np.flatnonzero(on)
    seg_len = np.clip(node_time[idx] - seg_start[idx], 0, None)
    kinds = g.kinds[idx]
    busy = kinds[:, :4].sum(axis=1)
    scale = np.where(busy > seg_len, seg_len / np.maximum(busy, 1), 1.0)
    compute = (kinds[:, 0] * scale).sum()
    memory = ((kinds[:, 1] + kinds[:, 2]) * scale).sum()
    host = (kinds[:, 3] * scale).sum()
    # A step barrier's "transfer" is the host work that opens the step.
    barrier_t = (np.where(g.is_barrier[p[idx]] & (node_prev[idx] >= 0), transfer[idx], 0.0) if A
                 else np.zeros(len(idx)))
    coll_t = transfer[idx] - barrier_t
    # Before the walk's first piece: the rank's start, or a release from outside the trace
    # (everything earlier did not delay the end), counted as idle.
    h = idx[pred[idx] < 0]
    began = np.where(node_prev[h] < 0, rank_first[h], rel[inst_p[h]] if A else rank_first[h])
    idle = (seg_len - busy * scale).sum() + float(np.clip(began - wall_start, 0, None).sum())
    host += barrier_t.sum()
    totals = {"compute": compute, "memory": memory, "transfer": coll_t.sum(), "host": host, "idle": idle}
    path_ns = int(round(sum(totals.values())))
    by_kind = pd.DataFrame({"kind": list(PATH_KINDS), "time_ns": [int(round(totals[k])) for k in PATH_KINDS]})
    by_kind["share"] = by_kind["time_ns"] / max(path_ns, 1)
    # By op class and phase: the sparse composition of the segments on the path.
    rows = on[g.op_seg] if len(g.op_seg) else np.zeros(0, bool)
    seg_scale = np.ones(A + R)
    seg_scale[idx] = scale          # a segment's ops, like its kinds, fit in its piece of the path
    op_t = pd.DataFrame({"key": g.op_key[rows], "time_ns": g.op_time[rows] * seg_scale[g.op_seg[rows]],
                         "seg": g.op_seg[rows]})
    by_op = op_t.groupby("key", as_index=False)["time_ns"].sum()
    by_op["op"] = [g.op_keys[k][0] for k in by_op["key"]]
    by_op["phase"] = [g.op_keys[k][1] for k in by_op["key"]]
    by_op["time_ns"] = by_op["time_ns"].round().astype("int64")
    by_op["share"] = by_op["time_ns"] / max(path_ns, 1)
    by_op = by_op.sort_values(["time_ns", "op"], ascending=[False, True])[["op", "phase", "time_ns", "share"]]
    # By rank: segments to their rank, transfers to the rank whose chain went on.
    node_rank = np.r_[g.rank_of, np.arange(R)]
    rank_t = np.bincount(node_rank[idx], weights=seg_len + transfer[idx], minlength=R)
    by_rank = pd.DataFrame({"rank": g.ranks, "time_ns": rank_t.round().astype("int64")})
    by_rank = by_rank[by_rank["time_ns"] > 0].sort_values(["time_ns", "rank"], ascending=[False, True])
    by_rank["share"] = by_rank["time_ns"] / max(path_ns, 1)
    # By step: the pieces of each step (a barrier's segment is the previous step's end).
    node_step = np.r_[np.where(g.is_barrier, g.step - 1, g.step), g.step[np.maximum(lastp, 0)] if A else
                      np.full(R, -1)]
    st = node_step[idx]
    frame = pd.DataFrame({"step": st, "start": seg_start[idx] - transfer[idx], "end": node_time[idx]})
    frame = frame[frame["step"] >= 0]
    steps = frame.groupby("step", as_index=False).agg(start_ns=("start", "min"), end_ns=("end", "max"))
    if len(op_t) and len(steps):
        seg_step = np.full(A + R, -1)
        seg_step[idx] = st
        op_t["step"] = seg_step[op_t["seg"].to_numpy()]
        top = op_t[op_t["step"] >= 0].groupby(["step", "key"], as_index=False)["time_ns"].sum()
        top = top.sort_values(["step", "time_ns"], ascending=[True, False]).drop_duplicates("step")
        names = {int(s): f"{g.op_keys[k][0]}" + (f" ({g.op_keys[k][1]})" if g.op_keys[k][1] else "")
                 for s, k in zip(top["step"], top["key"])}
        steps["top_op"] = steps["step"].map(names)
    else:
        steps["top_op"] = None
    for c in ("start_ns", "end_ns"):
        steps[c] = steps[c].round().astype("int64")
    return CriticalPath(wall_ns=ctx.wall_ns, path_ns=path_ns, by_kind=by_kind, by_op=by_op.reset_index(drop=True),
                        by_rank=by_rank.reset_index(drop=True), steps=steps.reset_index(drop=True), on_path=on,
                        notes=tuple(incomplete_collectives(ctx)[1]), segments=_segments(g, ch, idx))


def _segments(g: Graph, ch: Chain, idx: np.ndarray) -> pd.DataFrame:
    """The pieces of the path (nodes ``idx``) in time: rank, transfer start, work start, end."""
    node_rank = np.r_[g.rank_of, np.arange(len(g.ranks))]
    work = ch.seg_start[idx]
    frame = pd.DataFrame({"rank": g.ranks[node_rank[idx]], "start_ns": np.round(work - ch.transfer[idx]),
                          "work_ns": np.round(work), "end_ns": np.round(ch.node_time[idx])})
    frame = frame[frame["end_ns"] > frame["start_ns"]]
    for c in ("start_ns", "work_ns", "end_ns"):
        frame[c] = frame[c].astype("int64")
    return frame.sort_values("start_ns", kind="stable").reset_index(drop=True)


class _CriticalPath:
    name = "critical_path"
    columns = GRAPH_COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return whole_job(ctx)

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext):
        from sohuprof.analyzers.partition import as_partition

        return diagnosis_chunk(as_partition(events), ctx)

    def combine(self, partials: list, ctx: AnalysisContext) -> CriticalPath:
        try:
            g, rep = baseline(partials, ctx)
        except ReplayError as exc:      # the other reports still stand: say why this one is empty
            return _unreplayable(ctx, str(exc))
        return critical_path(g, rep, ctx)


def _unreplayable(ctx: AnalysisContext, why: str) -> CriticalPath:
    """An empty critical path whose note says why the graph could not be replayed."""
    return CriticalPath(ctx.wall_ns, 0, pd.DataFrame({"kind": list(PATH_KINDS), "time_ns": 0, "share": 0.0}),
                        pd.DataFrame(columns=["op", "phase", "time_ns", "share"]),
                        pd.DataFrame(columns=["rank", "time_ns", "share"]),
                        pd.DataFrame(columns=["step", "start_ns", "end_ns", "top_op"]), np.zeros(0, bool),
                        notes=(f"no critical path: {why}",))


CRITICAL_PATH = _CriticalPath()
