"""Root causes of waiting: every nanosecond of sync wait charged to what caused it.

After Scalasca's root-cause analysis (Böhme et al., ACM TOPC 2016): a member waits at a
collective because the last member arrived later; that lateness is the last member's *delay*,
and a delay that was itself waiting propagates to whatever caused that wait. Here the
propagation follows the dependency graph directly: member ``i``'s wait, the window
``[arrive_i, release]``, is laid over the chain of work and transfers that led to the release
(the critical chain into that collective: at every earlier wait it jumps to whoever was waited
for, so waiting itself is never charged). Each piece of the chain that the window covers is
split into

- its **excess** over its peers (the same segment of the other ranks of its pipeline stage, at
  the same place in the program; for a transfer also the part a slow NIC added: its bottleneck
  node's port rate against the other nodes'), charged as a root cause: the piece's rank, op
  class and phase, and kind (compute, memory, host, idle gap), or the slow NIC's node;
- the rest, the work its peers do too: **structural** waiting (a pipeline's stages waiting for
  each other, or imbalance of the work itself), charged to ``pipeline_bubble`` when the wait is
  at a pipeline send/recv and to ``imbalance`` otherwise.

The excess of a piece sits at its end (the time a peer would already be done), so a window that
covers only a piece's tail takes its excess first. The charges of every wait sum to the wait:
root causes + structural = total sync wait, exactly (a test holds it). A rank that is late only
because it waited elsewhere has no excess of its own and is charged nothing.

The walk is vectorized over all waits at once, one hop up the chains per round (the rounds are
the longest chain a window spans, not the number of waits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.diagnosis.critical_path import chain
from sohuprof.analyzers.diagnosis.graph import Graph
from sohuprof.analyzers.diagnosis.replay import Replay

__all__ = ["RootCauses", "root_causes", "root_causes_of", "CAUSE_KINDS"]

#: Kinds a rank's own excess is charged to (a slow NIC's is ``link``).
CAUSE_KINDS = ("compute", "memory", "host", "idle", "transfer", "link")
_MAX_HOPS = 1 << 20


@dataclass(frozen=True)
class RootCauses:
    """Waiting charged to causes.

    Attributes
    ----------
    causes : pandas.DataFrame
        ``rank`` (-1 for a NIC), ``node``, ``kind``, ``op``, ``phase``, ``cost_ns``: one row per
        cause, largest first.
    by_rank : pandas.DataFrame
        ``rank, root_cost_ns``: each rank's own excess's cost, directly and through propagation.
    structural : dict
        ``{"pipeline_bubble": ns, "imbalance": ns}``: waiting no rank's excess explains.
    total_wait_ns : int
        The waiting charged (Scalasca's ``min(release, leave) - arrive`` of every member).
    """

    causes: pd.DataFrame
    by_rank: pd.DataFrame
    structural: dict
    total_wait_ns: int


def root_causes_of(g: Graph, rep: Replay, ctx: AnalysisContext) -> "RootCauses":
    """:func:`root_causes`, computed once per graph and context (comm and findings share it)."""
    key = ("root_causes", id(g))
    out = ctx.memo.get(key)
    if out is None:
        out = ctx.memo[key] = root_causes(g, rep, ctx)
    return out


class _Peers:
    """Groups of peers laid out as the rows of a dense ``rows x cols`` table (``row``, ``col`` per
    element), for :meth:`reference` over several value arrays of one layout."""

    def __init__(self, row: np.ndarray, col: np.ndarray, rows: int, cols: int) -> None:
        self.row, self.rows, self.cols = row, rows, cols
        self.size = np.bincount(row, minlength=rows) if len(row) else np.zeros(rows, np.int64)
        self.n = self.size[row]
        # Column-major: a rank's elements (in order) fill a run of its column, not one cell in
        # every cache line of the table.
        self.flat = col * rows + row
        self.big = self.n > 2

    def reference(self, values: np.ndarray) -> np.ndarray:
        """Per element: the median of the other elements of its group: the other one's value in
        a pair, itself alone, and in larger groups the median of all (one outlier barely moves
        it). Equal to the NaN-padded table's ``nanmedian``: the rows sorted, the middle two's mean."""
        if not len(values):
            return values
        rows, cols, row, n = self.rows, self.cols, self.row, self.n
        # A pair's sum is exact in any order (the table's zeros added nothing to it).
        total = np.bincount(row, weights=values, minlength=rows)
        out = np.where(n == 1, values, total[row] - values)
        if cols > 2 and self.big.any():
            table = np.full(cols * rows, np.inf)       # the gaps sort last, as NaN did
            table[self.flat] = values
            table = np.ascontiguousarray(table.reshape(cols, rows).T)
            table.sort(axis=1)
            k, r = self.size, np.arange(rows)
            median = (table[r, np.maximum(k - 1, 0) // 2] + table[r, np.minimum(k // 2, cols - 1)]) / 2
            out[self.big] = median[row[self.big]]
        return out


def _nic_excess(g: Graph, ctx: AnalysisContext, transfer: np.ndarray, inst_p: np.ndarray,
                has_transfer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per node: the part of its transfer a slow NIC added (the instance's bottleneck node's port
    rate against the median node's) and that node (-1: none)."""
    from sohuprof.analyzers.diagnosis.whatif import node_rates

    N = len(transfer)
    try:
        from sohuprof.analyzers.reports.comm import nic_table
        nics = nic_table(ctx)
    except ImportError:   # pragma: no cover
        nics = pd.DataFrame()
    if not len(nics) or not g.anchors:
        return np.zeros(N), np.full(N, -1)
    rates = node_rates(ctx)
    typical = float(np.median(nics["rate"].to_numpy(float)))
    node_of = ctx.ranks.set_index("rank")["node"]
    member_node = node_of.reindex(g.ranks).fillna(-1).to_numpy(np.int64)[g.rank_of]
    keys = np.array(sorted(rates))
    rate = np.array([rates[k] for k in keys])[np.clip(np.searchsorted(keys, member_node), 0, len(keys) - 1)]
    I = len(g.inst_key)
    slowest = np.full(I, np.inf)
    np.minimum.at(slowest, g.inst, rate)
    first_node = np.full(I, np.iinfo(np.int64).max)
    np.minimum.at(first_node, g.inst, member_node)
    last_node = np.full(I, -1)
    np.maximum.at(last_node, g.inst, member_node)
    spans = first_node != last_node
    # The bottleneck node of each instance: its member on the slowest NIC.
    at_slowest = rate <= slowest[g.inst]
    who = np.full(I, -1)
    np.maximum.at(who, g.inst[at_slowest], member_node[at_slowest])
    frac = np.where(spans & (slowest < typical), 1 - slowest / typical, 0.0)
    ex = np.where(has_transfer, transfer * frac[inst_p], 0.0)
    return ex, np.where(ex > 0, who[inst_p], -1)


def root_causes(g: Graph, rep: Replay, ctx: AnalysisContext) -> RootCauses:
    """Charge every member's wait at every collective to root causes (see the module docstring)."""
    from sohuprof.analyzers.diagnosis.findings import roles

    A, R = g.anchors, len(g.ranks)
    ch = chain(g, rep)
    N = A + R
    t, s = ch.node_time, ch.seg_start
    q = s - ch.transfer
    node_rank = np.r_[g.rank_of, np.arange(R)]
    ordinal = np.r_[np.arange(A) - g.start_of_rank[g.rank_of] if A else np.zeros(0, np.int64), np.full(R, -1)]
    # Peers: the same place in the program (ordinal, the tail last) on the ranks of one stage.
    rank_role = roles(ctx, g.ranks)
    stages, stage_of_rank = np.unique(rank_role, return_inverse=True)
    col_of_rank = np.zeros(R, np.int64)
    for k in range(len(stages)):                      # a loop over pipeline stages
        mine = np.flatnonzero(stage_of_rank == k)
        col_of_rank[mine] = np.arange(len(mine))
    width = np.zeros(len(stages), np.int64)
    np.maximum.at(width, stage_of_rank[node_rank], ordinal + 2)
    base = np.r_[0, np.cumsum(width)[:-1]]
    row = base[stage_of_rank[node_rank]] + ordinal + 1
    n_rows, n_cols = int(width.sum()), int(np.bincount(stage_of_rank).max(initial=1))
    col = col_of_rank[node_rank]
    seg_len = np.clip(t - s, 0, None).astype(float)
    peers = _Peers(row, col, n_rows, n_cols)
    ex_seg = np.clip(seg_len - peers.reference(seg_len), 0, None)
    has_tr = (ch.node_prev >= 0) & ch.via
    tr = np.where(has_tr, ch.transfer, 0.0)
    ex_tr_peer = np.clip(tr - peers.reference(tr), 0, None)
    ex_nic, nic_node = _nic_excess(g, ctx, tr, ch.inst_p, has_tr)
    ex_tr = np.maximum(ex_tr_peer, ex_nic)
    by_nic = ex_nic >= ex_tr_peer
    # The waits: every collective member's Scalasca wait.
    coll = np.flatnonzero(~g.is_barrier)
    rel = ch.release
    wait = np.clip(np.minimum(rel[g.inst[coll]], rep.leave[coll, 0]) - rep.arrive[coll, 0], 0, None)
    keep = wait > 0
    w_anchor = coll[keep]
    w = wait[keep]
    lo = rep.arrive[w_anchor, 0]
    hi = rel[g.inst[w_anchor]]
    x = rep.last[g.inst[w_anchor]]
    # Charges accumulate in place round by round (memory stays O(nodes + waits)). The first
    # round, every wait's own last-arriver piece, is the big one: one bincount; the later rounds
    # are the few waits whose window reaches further back.
    seg_charge, tr_charge, own_per_wait = np.zeros(N), np.zeros(N), np.zeros(len(w))
    active = np.arange(len(w))
    hops = 0
    while len(active) and hops < _MAX_HOPS:   # one hop up every chain per round
        hops += 1
        xa, a, b = x[active], lo[active], hi[active]
        on_seg = np.minimum(np.clip(np.minimum(b, t[xa]) - np.maximum(a, s[xa]), 0, None), ex_seg[xa])
        on_tr = np.minimum(np.clip(np.minimum(b, s[xa]) - np.maximum(a, q[xa]), 0, None), ex_tr[xa])
        if hops == 1:
            seg_charge += np.bincount(xa, weights=on_seg, minlength=N)
            tr_charge += np.bincount(xa, weights=on_tr, minlength=N)
        else:
            np.add.at(seg_charge, xa, on_seg)
            np.add.at(tr_charge, xa, on_tr)
        own_per_wait[active] += on_seg + on_tr
        nxt = ch.pred[xa]
        go = (a < q[xa]) & (nxt >= 0)
        x[active[go]] = nxt[go]
        active = active[go]
    total = float(w.sum())
    own = float(seg_charge.sum() + tr_charge.sum())
    # Structural: what no excess explains, by where the waiting happened.
    pipe = _pipeline_instances(g)
    rest = np.clip(w - own_per_wait, 0, None)
    pipeline = pipe[g.inst[w_anchor]] if len(w_anchor) else np.zeros(0, bool)
    structural = {"pipeline_bubble": int(round(rest[pipeline].sum())),
                  "imbalance": int(round(total - own - rest[pipeline].sum()))}
    causes = _cause_table(g, ctx, seg_charge, tr_charge, by_nic, nic_node, node_rank)
    # Each rank's cost straight from its pieces' charges (not the rounded, op-split rows): the
    # same integers however the store's files split the ranks.
    own_tr = ~by_nic | (nic_node < 0)
    per_rank = (np.bincount(node_rank, weights=seg_charge, minlength=R)
                + np.bincount(node_rank, weights=np.where(own_tr, tr_charge, 0.0), minlength=R))
    by_rank = pd.DataFrame({"rank": g.ranks, "root_cost_ns": per_rank.round().astype("int64")})
    by_rank = by_rank[by_rank["root_cost_ns"] > 0].reset_index(drop=True)
    return RootCauses(causes=causes, by_rank=by_rank, structural=structural, total_wait_ns=int(round(total)))


def _pipeline_instances(g: Graph) -> np.ndarray:
    """[I] is each instance a pipeline send/recv (any member's event is)?"""
    out = np.zeros(len(g.inst_key), bool)
    out[g.inst[g.pipeline]] = True
    return out


def rows_of_segments(g: Graph, segs: np.ndarray) -> np.ndarray:
    """The op rows (indices into ``g.op_seg``, ascending) of the segments ``segs`` (ascending).

    The rows come by rank and each rank's by segment, its tail's last (``Graph.from_ranks``):
    between tail rows the anchors' rows are sorted runs, searched by bisection (a loop over the
    runs, at most one a rank); the tail rows are looked up apart. Without that order, a pass."""
    op_seg, A = g.op_seg, g.anchors
    layout = g.memo.get("op_rows")
    if layout is None:
        is_tail = op_seg >= A
        tail_rows = np.flatnonzero(is_tail)
        # Runs of anchor rows: from the end of one run of tail rows to the start of the next.
        cut = np.flatnonzero(np.diff(is_tail.view(np.int8)) != 0) + 1 if len(op_seg) else np.zeros(0, np.int64)
        edges = np.r_[0, cut, len(op_seg)]
        runs = [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo and not is_tail[lo]]
        # Sorted within each run, and the runs one after another.
        descents = np.count_nonzero(op_seg[1:] < op_seg[:-1]) if len(op_seg) > 1 else 0
        ordered = descents <= len(runs) and all(   # a loop over the runs (ranks)
            int(op_seg[lo]) > int(op_seg[phi - 1]) for (_, phi), (lo, _) in zip(runs[:-1], runs[1:]))
        ordered = ordered and descents == sum(1 for lo, _ in runs if lo > 0 and is_tail[lo - 1])
        layout = g.memo["op_rows"] = (tail_rows, runs, ordered)
    tail_rows, runs, ordered = layout
    if not ordered:
        return np.flatnonzero(np.isin(op_seg, segs))
    parts = []
    inner = segs[segs < A]
    for lo, hi in runs:                # a loop over the runs (at most one a rank)
        run = op_seg[lo:hi]
        # In the rows' own dtype: a mixed one would convert the whole run on every search.
        q = inner[(inner >= run[0]) & (inner <= run[-1])].astype(run.dtype)
        if not len(q):
            continue
        a, b = np.searchsorted(run, q, "left"), np.searchsorted(run, q, "right")
        k = b - a
        parts.append(lo + np.repeat(a - np.r_[0, np.cumsum(k)[:-1]], k) + np.arange(int(k.sum())))
    if len(tail_rows):
        parts.append(tail_rows[np.isin(op_seg[tail_rows], segs[segs >= A])])
    if not parts:
        return np.zeros(0, np.int64)
    rows = np.concatenate(parts).astype(np.int64)
    return np.sort(rows, kind="stable") if len(parts) > 1 else rows


def _cause_table(g: Graph, ctx: AnalysisContext, seg_charge: np.ndarray, tr_charge: np.ndarray,
                 by_nic: np.ndarray, nic_node: np.ndarray, node_rank: np.ndarray) -> pd.DataFrame:
    """Charges by (rank, node, kind, op, phase): a segment's charge split over its ops by their
    exposed time, the rest of it (gaps) idle; a transfer's to its rank or its slow NIC's node."""
    node_of = ctx.ranks.set_index("rank")["node"]
    rank_node = node_of.reindex(g.ranks).fillna(-1).to_numpy(np.int64)
    rows = []
    # Segments: over their op rows, by exposed time; only the charged segments (most are
    # charged nothing) and their op rows, in row order (each sum adds in the same order).
    cs = np.flatnonzero(seg_charge > 0)
    charged = rows_of_segments(g, cs)
    seg = g.op_seg[charged]
    N = len(seg_charge)
    busy = np.bincount(seg, weights=g.op_time[charged], minlength=N) if len(seg) else np.zeros(N)
    span = g.kinds[cs].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share_busy = np.zeros(N)
        share_busy[cs] = np.where(span > 0, np.minimum(busy[cs] / span, 1.0), 0.0)
        per_op = np.where(busy[seg] > 0, seg_charge[seg] * share_busy[seg] * g.op_time[charged] / busy[seg], 0.0)
    idle_charge = seg_charge[cs] * (1 - share_busy[cs])
    if len(charged):
        K = max(len(g.op_keys), 1)
        sums = np.bincount(node_rank[seg] * K + g.op_key[charged], weights=per_op, minlength=len(g.ranks) * K)
        hit = np.flatnonzero(sums > 0)
        frame = pd.DataFrame({"rank_pos": hit // K, "key": hit % K, "cost_ns": sums[hit]})
        ops = [g.op_keys[k] for k in frame["key"]]
        op = [o for o, _ in ops]
        frame = frame.assign(op=op, phase=[f for _, f in ops],
                             kind=["memory" if o == "memcpy" else "host" if o == "host" else "compute" for o in op])
        rows.append(frame.drop(columns="key"))
    idle = pd.DataFrame({"rank_pos": node_rank[cs], "cost_ns": idle_charge})
    idle = idle[idle["cost_ns"] > 0].groupby("rank_pos", as_index=False)["cost_ns"].sum().assign(
        op=None, phase=None, kind="idle")
    rows.append(idle)
    own_tr = ~by_nic | (nic_node < 0)
    paid = own_tr & (tr_charge > 0)
    tr_rank = pd.DataFrame({"rank_pos": node_rank[paid], "cost_ns": tr_charge[paid]})
    tr_rank = tr_rank.groupby("rank_pos", as_index=False)["cost_ns"].sum().assign(
        op=None, phase=None, kind="transfer")
    rows.append(tr_rank)
    table = pd.concat(rows, ignore_index=True)
    table["rank"] = g.ranks[table["rank_pos"].to_numpy(np.int64)] if len(table) else []
    table["node"] = rank_node[table["rank_pos"].to_numpy(np.int64)] if len(table) else []
    nic = pd.DataFrame({"node": nic_node[~own_tr], "cost_ns": tr_charge[~own_tr]})
    nic = nic[(nic["cost_ns"] > 0) & (nic["node"] >= 0)].groupby("node", as_index=False)["cost_ns"].sum().assign(
        rank=-1, op=None, phase=None, kind="link")
    table = pd.concat([table.drop(columns="rank_pos"), nic], ignore_index=True)
    table["cost_ns"] = table["cost_ns"].round().astype("int64")
    table = table[table["cost_ns"] > 0]
    cols = ["rank", "node", "kind", "op", "phase", "cost_ns"]
    return table.sort_values(["cost_ns", "rank"], ascending=[False, True])[cols].reset_index(drop=True)
