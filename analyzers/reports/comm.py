"""Communication: per collective kind and group, the wait it cost, who caused it, and the links.

Built on ``collectives.parquet`` (one row per instance x member) and each rank's events:

- ``collectives``: per ``(kind, group)``: instances, buffer bytes (nccl-tests "size", the
  largest member buffer of an instance), transfer time (from the last member's arrival to the
  end), ``algbw = bytes / time`` and ``busbw = algbw x factor`` with the nccl-tests factors
  (all-reduce ``2(n-1)/n``; all-gather, reduce-scatter, all-to-all ``(n-1)/n``; broadcast and
  send/recv 1). ``exposed_ns`` / ``overlapped_ns`` split the members' communication time (their
  collective events, arrival to end, summed over ranks) into the part not hidden under the
  rank's compute and the part hidden; ``wait_ns`` is the members' total sync wait.
- ``notes``: why parts are missing or null on a profiler trace: collectives of groups some
  of whose members are not in the input (no wait, straggler or root cause is derived from
  those: who was waited for is unknown), NCCL kernels without a message size (``algbw`` and
  ``busbw`` null: unknown, not 0). Empty for a Sohu run.
- ``stragglers``: Scalasca's wait at N x N: in every instance each member waits
  ``min(last_arrival, end) - arrive``; the whole instance's wait is charged to its last arriver
  (ties: the lowest rank), whose ``delay_cost_ns`` sums it; ``late_count`` counts the instances
  where it arrived last and someone waited.
- ``links``: the node-to-node traffic of collectives whose groups span nodes. Each member's
  bytes to each other node follow nccl's conventions (ring all-reduce ``2(n-1)/n x S`` and ring
  all-gather ``(n-1)/n x S`` to the ring neighbour, all-to-all ``S/n`` to every peer, send
  ``S``). An instance's transfer time is split over each sending chip's NIC share in proportion
  to the bytes it sends each way, so ``bandwidth = bytes / time`` is per chip and compares with
  ``expected_bandwidth`` (the spec's per-chip NIC share x ``comm_efficiency``). Where the trace
  has NIC port counters (``nics``), a link is ``slow`` when either end's NIC is. Without them (a
  profiler trace) a link is ``slow`` when its latency-corrected bandwidth is below 0.6 x the
  median of the other cross-node links (or, with fewer than two others, of the expected
  bandwidth).
- ``intra_node``: per node, the bytes its chips sent each other by collectives, by the same nccl
  conventions as ``links`` (the flows whose two ends are on one node, a spanning ring's hops
  inside a node included): ``node, bytes, instances``. Empty when no collective has two members
  on one node.
- ``nics`` (:func:`nic_table`): per node, what its chips' NIC shares moved across nodes, from the
  ``nic_*`` counters of counters.parquet. Collective timing alone cannot name a slow NIC (a
  two-node pipeline has one link, and an all-to-all's members all leave when the slowest NIC is
  done); the port counters can: ``rate`` is the bytes moved over the time the ports were busy
  moving them at their own line rate, ``ratio`` that rate over the median of the other nodes'
  (over ``expected_rate`` when no other node moved anything), ``slow`` a ratio below 0.6.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.activity import collective_rows, comm_under_compute, compute_covered_before
from sohuprof.analyzers.activity import COLUMNS as ACTIVITY_COLUMNS
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.diagnosis.graph import GRAPH_COLUMNS
from sohuprof.analyzers.instances import CollectiveIndex
from sohuprof.analyzers.intervals import is_sequential, merge
from sohuprof.analyzers.partition import Partition, as_partition
from sohuprof.hardware import HardwareSpec
from sohuprof.store import TraceStore

__all__ = [
    "COMM",
    "SLOW_RATIO",
    "CommResult",
    "busbw_factor",
    "selected_instances",
    "group_sizes",
    "transfer_latency",
    "kind_is",
    "nic_table",
    "records",
]

#: A link is slow below this fraction of its reference bandwidth.
SLOW_RATIO = 0.6
_COLL_COLS = ["kind", "group", "count", "bytes", "time_ns", "algbw", "busbw", "exposed_ns", "overlapped_ns",
              "wait_ns"]
_STRAG_COLS = ["rank", "node", "chip", "delay_cost_ns", "late_count"]
#: With the dependency graph (every store the comm report reads it on): root causes beside.
_ROOT_COLS = ["root_cost_ns", "cause", "peer_ratio", "peers"]
_LINK_COLS = ["src_node", "dst_node", "bytes", "time_ns", "bandwidth", "expected_bandwidth", "slow"]
_INTRA_COLS = ["node", "bytes", "instances"]
_NIC_COLS = ["node", "tx_bytes", "tx_ns", "wait_ns", "rx_bytes", "rx_ns", "rate", "expected_rate", "ratio", "slow"]
#: counters.parquet's NIC port counters, by the ``nics`` column each sums into.
_NIC_COUNTERS = {"nic_tx_bytes": "tx_bytes", "nic_tx_ns": "tx_ns", "nic_wait_ns": "wait_ns",
                 "nic_rx_bytes": "rx_bytes", "nic_rx_ns": "rx_ns"}
_RING = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "broadcast": 1.0, "send_recv": 1.0,
         "send": 1.0}


def kind_is(kind: np.ndarray | pd.Series | pd.Categorical, *names: str) -> np.ndarray:
    """Boolean mask: is each row's collective kind one of ``names``? A categorical column (the
    instance table's) is decided once per category, not once per row."""
    if isinstance(kind, pd.Series) and isinstance(kind.dtype, pd.CategoricalDtype):
        kind = kind.array
    if isinstance(kind, pd.Categorical):
        hit = np.isin(np.asarray(kind.categories, dtype=object), list(names))
        return np.r_[hit, False][kind.codes]       # code -1 (missing) is the appended False
    return np.isin(np.asarray(kind, dtype=object), list(names))


def busbw_factor(kind: np.ndarray | pd.Series, n: np.ndarray | pd.Series) -> np.ndarray:
    """nccl-tests' bus-bandwidth factor of each (kind, group size)."""
    n = np.asarray(n, dtype=float)
    frac = np.where(n > 0, (n - 1) / np.maximum(n, 1), 0.0)
    return np.select([kind_is(kind, "all_reduce"), kind_is(kind, "all_gather", "reduce_scatter", "all_to_all")],
                     [2 * frac, frac], default=1.0)


def records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """JSON-ready rows: numpy scalars become Python ones, NaN and infinities become None."""
    out: list[dict[str, Any]] = [{str(k): v for k, v in r.items()}
                                 for r in frame[columns].astype(object).to_dict(orient="records")]
    for row in out:   # a loop over result rows (one per op or link), not events
        for k, v in row.items():
            if isinstance(v, (np.generic,)):
                v = v.item()
            row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
    return out


def group_sizes(ctx: AnalysisContext) -> dict[int, int]:
    """Declared process-group sizes of a profiler trace, keyed by the store's group ids: what the
    collector judged each group by (the manifest's ``collectives.group_sizes``), or for a store
    written before it kept them, ``pg_config``'s sizes by process-group name."""
    matched = (ctx.store.manifest.get("collectives") or {}).get("group_sizes")
    if isinstance(matched, dict):
        return {int(g): int(n) for g, n in matched.items()}
    groups = ((ctx.store.manifest.get("parallel") or {}).get("process_groups")) or []
    out: dict[int, int] = {}
    for pg in groups:   # a handful of process groups
        name, size = str(pg.get("pg_name", "")), pg.get("pg_size")
        if size is None:
            continue
        key = int(name) if name.isdigit() and int(name) < 2**31 else zlib.crc32(name.encode()) & 0x7FFFFFFF
        out[key] = int(size)
    return out


@dataclass(frozen=True)
class CommResult:
    """Per (kind, group) collective statistics, stragglers by delay cost, node-to-node links,
    and per node its NIC's traffic from the port counters (empty without them)."""

    collectives: pd.DataFrame
    stragglers: pd.DataFrame
    links: pd.DataFrame
    nics: pd.DataFrame = field(default_factory=lambda: _empty_nics())
    #: Per node, the bytes its chips sent each other (empty when nothing stays inside a node).
    intra_node: pd.DataFrame = field(default_factory=lambda: pd.DataFrame({c: pd.Series(dtype="int64")
                                                                            for c in _INTRA_COLS}))
    #: Why cross-rank parts are missing or fields null (partial groups, unknown sizes).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"notes": list(self.notes), "collectives": records(self.collectives, _COLL_COLS),
                "stragglers": records(self.stragglers, _STRAG_COLS + [c for c in _ROOT_COLS
                                                                      if c in self.stragglers.columns]),
                "links": records(self.links, _LINK_COLS),
                "nics": records(self.nics, _NIC_COLS),
                "intra_node": records(self.intra_node, _INTRA_COLS)}


def _empty_nics() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float if c in ("rate", "expected_rate", "ratio") else
                                      bool if c == "slow" else "int64") for c in _NIC_COLS})


def _rank_nodes(ctx: AnalysisContext) -> pd.Series:
    """Node of every rank: the manifest's list (every chip of a Sohu run, even one whose events
    were lost), else the ranks with events."""
    listed = ctx.store.manifest.get("ranks")
    frame = pd.DataFrame(listed) if isinstance(listed, list) and listed else ctx.ranks
    if not len(frame) or not {"rank", "node"} <= set(frame.columns):
        frame = ctx.ranks
    return pd.Series(frame["node"].to_numpy(np.int64), index=frame["rank"].to_numpy(np.int64)).groupby(level=0).first()


def _median_of_others(x: np.ndarray) -> np.ndarray:
    """For each element, the median of all the others (NaN where there are none): from one sort,
    the median of the sorted values with that element's slot left out."""
    n = len(x)
    if n < 2:
        return np.full(n, np.nan)
    order = np.argsort(x, kind="stable")
    srt = x[order]
    slot = np.empty(n, np.int64)
    slot[order] = np.arange(n)
    m = n - 1                                                # values left

    def kth(k: int) -> np.ndarray:                           # k-th of the rest, per element
        return np.where(k < slot, srt[k], srt[min(k + 1, n - 1)])

    return kth(m // 2) if m % 2 else (kth(m // 2 - 1) + kth(m // 2)) / 2


def nic_table(ctx: AnalysisContext) -> pd.DataFrame:
    """Per node, what its chips' NIC shares moved across nodes, and whether its NIC is slow.

    Sums counters.parquet's ``nic_*`` port counters over the node's chips and the whole trace.
    One row per node that sent or received anything across nodes; empty (the same columns) when
    the trace has no NIC counters, as profiler traces do not.

    Parameters
    ----------
    ctx : AnalysisContext
        Its ``counters`` are read (and its hardware spec, for ``expected_rate``).

    Returns
    -------
    pandas.DataFrame
        ``node``; ``tx_bytes``, ``tx_ns``, ``wait_ns``, ``rx_bytes``, ``rx_ns``: the counters'
        sums (bytes sent, time the ports spent sending them at their own line rate, transfer
        time beyond that the far end or the slowest NIC held them back, bytes received, time
        spent receiving them); ``rate``: bytes moved per second the ports were busy moving
        them, ``(tx_bytes + rx_bytes) / (tx_ns + rx_ns) x 1e9``, which is a chip's NIC share's
        line rate (a node that only receives, as a pipeline's last stage, is measured by what
        it received); ``expected_rate``: the spec's ``inter_node_bandwidth`` (per chip's share)
        x ``comm_efficiency``, NaN without a spec; ``ratio``: ``rate`` over the median rate of
        the other nodes in the table, over ``expected_rate`` when there is no other; ``slow``:
        ``ratio`` below :data:`SLOW_RATIO`. Sorted by node.
    """
    counters = ctx.counters
    if not len(counters):
        return _empty_nics()
    name = counters["counter"]
    mine = name.isin(list(_NIC_COUNTERS)).to_numpy(bool)
    if not mine.any():
        return _empty_nics()
    nic = counters[mine]
    node = _rank_nodes(ctx).reindex(nic["rank"].to_numpy(np.int64)).to_numpy(float)
    known = ~np.isnan(node)                                  # a rank the store does not list is left out
    sums = (pd.DataFrame({"node": node[known].astype(np.int64), "counter": nic["counter"].to_numpy()[known],
                          "value": nic["value"].to_numpy(float)[known]})
            .groupby(["node", "counter"], observed=True)["value"].sum().unstack("counter")
            .reindex(columns=list(_NIC_COUNTERS)).fillna(0.0).rename(columns=_NIC_COUNTERS))
    sums = sums[(sums["tx_bytes"] > 0) | (sums["rx_bytes"] > 0)]
    if not len(sums):
        return _empty_nics()
    out = pd.DataFrame({"node": sums.index.to_numpy(np.int64)})
    for col in _NIC_COUNTERS.values():
        out[col] = np.rint(sums[col].to_numpy(float)).astype(np.int64)
    hw = ctx.hardware
    moved = sums["tx_bytes"].to_numpy(float) + sums["rx_bytes"].to_numpy(float)
    busy = sums["tx_ns"].to_numpy(float) + sums["rx_ns"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(busy > 0, moved / busy * 1e9, np.nan)
    expected = hw.inter_node_bandwidth * hw.comm_efficiency if hw is not None else np.nan
    out["rate"] = rate
    out["expected_rate"] = float(expected)
    finite = np.isfinite(rate)
    ref = np.full(len(rate), np.nan)
    ref[finite] = _median_of_others(rate[finite])
    ref = np.where(np.isnan(ref), expected, ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = np.where(ref > 0, rate / ref, np.nan)
    out["slow"] = (out["ratio"] < SLOW_RATIO).to_numpy(bool)     # NaN compares False
    return out.sort_values("node").reset_index(drop=True)[_NIC_COLS]


_PART_COLS = ["kind", "group", "union_ns", "overlapped_ns"]


def _empty_partial() -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.DataFrame({"kind": pd.Series(dtype=object), "group": pd.Series(dtype="int64"),
                          "union_ns": pd.Series(dtype="int64"), "overlapped_ns": pd.Series(dtype="int64")}),
            pd.DataFrame({"coll_id": pd.Series(dtype="int64"), "rank": pd.Series(dtype="int64")}))


def _rank_comm(events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One rank's communication time per (kind, group) (its union, and the part under compute),
    and the collectives it sent point to point (``coll_id, rank``)."""
    part = as_partition(events)
    order, where = part.grouped("category")
    rows = order[where.get("communication", slice(0, 0))]     # communication events, in time order
    if not len(rows):
        return _empty_partial()
    rank = part.rank
    op, op_values = part.codes("op")
    op = op[rows]
    cid, mine, pos, found = collective_rows(part, ctx)
    ids = mine["coll_id"]
    # Key every communication event by (kind, group): codes over the small vocabularies; the
    # table's kind where the instance is recorded, else the event's own op.
    table_kinds = ctx.collective_kinds
    kinds = list(dict.fromkeys([*sorted(table_kinds), *(v for v in op_values if v is not None)])) + ["?"]
    kind_index = {v: i for i, v in enumerate(kinds)}
    own = np.array([kind_index.get(v, len(kinds) - 1) for v in op_values] + [len(kinds) - 1])[op]
    if len(ids):
        table_kind = np.array([kind_index[v] for v in table_kinds] + [len(kinds) - 1])[mine["kind"]]
        kind_code = np.where(found, table_kind[pos], own)
        group = np.where(found, mine["group"][pos], -1)
    else:
        kind_code, group = own, np.full(len(cid), -1)
    width = int(group.max(initial=0)) + 2
    pair = kind_code.astype(np.int64) * width + (group + 1)
    uniq_pair, code = np.unique(pair, return_inverse=True)
    k = len(uniq_pair)
    c_ts, c_end = part.ts[rows], part.end[rows]
    if is_sequential(c_ts, c_end):
        # One stream that never overlaps itself (a chip's collectives): a key's union is its
        # events' total, and the part under compute is its events' (shared with stalls).
        union = np.bincount(code, weights=c_end - c_ts, minlength=k)
        hidden = np.bincount(code, weights=comm_under_compute(part, ctx), minlength=k)
    else:
        # Each key's events in time order (a stable sort of small integers is a radix sort),
        # merged; the part under compute is the coverage over each merged interval.
        order = np.argsort(code.astype(np.int16 if k < 2**15 else np.int64), kind="stable")
        m = merge(c_ts[order], c_end[order], code[order])
        union = np.bincount(m.key, weights=m.end - m.start, minlength=k)
        cov = compute_covered_before(part, ctx, np.concatenate([m.start, m.end]))
        hidden = np.bincount(m.key, weights=cov[len(m.start):] - cov[:len(m.start)], minlength=k)
    union, hidden = union.round().astype(np.int64), hidden.round().astype(np.int64)
    is_send = np.array([v == "send" for v in op_values] + [False])[op]
    sent = cid[is_send & (cid >= 0)]
    return (pd.DataFrame({"kind": np.asarray(kinds, dtype=object)[uniq_pair // width],
                          "group": (uniq_pair % width - 1).astype("int64"), "union_ns": union,
                          "overlapped_ns": hidden}),
            pd.DataFrame({"coll_id": sent.astype(np.int64), "rank": np.full(len(sent), rank, np.int64)}))


def selected_instances(ctx: AnalysisContext) -> pd.DataFrame:
    """``ctx.instances`` under the analysis's selection (``analyze --ranks/--start-ms/--end-ms``):
    the instances a selected rank is a member of, with its transfer starting in the window (its
    collective event starts there too). Every instance when nothing is left out."""
    inst = ctx.instances
    if not ctx.options.get("selected"):
        return inst
    window = ctx.options.get("window_ns")
    kept = []
    for rank in ctx.ranks["rank"].tolist():   # a loop over the selected ranks, not rows
        rows = ctx.member_index.of_rank(int(rank))
        ok = np.ones(len(rows["coll_id"]), bool) if window is None else \
            (rows["start"] >= window[0]) & (rows["start"] < window[1])
        kept.append(rows["coll_id"][ok])
    ids = np.unique(np.concatenate(kept)) if kept else np.empty(0, np.int64)
    return inst[np.isin(inst["coll_id"].to_numpy(), ids)].reset_index(drop=True)


def _stragglers(index: CollectiveIndex, ranks: pd.DataFrame, partial: np.ndarray | None = None) -> pd.DataFrame:
    """Delay cost per rank (Scalasca wait at N x N, charged to each instance's last arriver),
    over the instances every member of which is present (``partial``: sorted ids of the others)."""
    inst = index.instances
    multi = inst["n"].to_numpy() > 1          # members recorded (``inst`` is before declared sizes)
    if partial is not None and len(partial):
        multi &= ~np.isin(inst["coll_id"].to_numpy(), partial)
    if not multi.any():
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in _STRAG_COLS})
    present = index.member_ranks
    culprit, cost = inst["last_rank"].to_numpy()[multi], inst["last_wait"].to_numpy()[multi]
    slot = np.searchsorted(present, culprit)
    out = pd.DataFrame({"rank": present, "delay_cost_ns": np.bincount(slot, weights=cost, minlength=len(present))
                        .round().astype(np.int64),
                        "late_count": np.bincount(slot, weights=cost > 0, minlength=len(present)).astype(np.int64)})
    out = out.merge(ranks[["rank", "node", "chip"]].astype("int64"), on="rank", how="left")
    out[["node", "chip"]] = out[["node", "chip"]].fillna(-1).astype("int64")
    return out.sort_values(["delay_cost_ns", "rank"], ascending=[False, True])[_STRAG_COLS].reset_index(drop=True)


def _any_complete(ctx: AnalysisContext) -> bool:
    """Does some collective instance have every member in the analysis (so waits mean something)?"""
    if ctx.options.get("ranks_selected"):
        return False       # the other members' events are not read: root causes need them
    if ctx.is_sohu:
        return True
    from sohuprof.analyzers.diagnosis.graph import incomplete_collectives

    return len(incomplete_collectives(ctx)[0]) < len(ctx.instances)


def _with_root_causes(stragglers: pd.DataFrame, graphs: list, ctx: AnalysisContext) -> pd.DataFrame:
    """Stragglers with ``root_cost_ns`` (the waiting this rank's own excess caused, directly and
    through propagation: :mod:`sohuprof.analyzers.diagnosis.root_causes`), its main ``cause`` and
    how far it sits from its peers (``peer_ratio``: its time per op class over its stage peers'
    median), ranked by root cost; a rank others waited for only because it waited is not a cause."""
    from sohuprof.analyzers.diagnosis.critical_path import baseline
    from sohuprof.analyzers.diagnosis.findings import rank_speed, roles
    from sohuprof.analyzers.diagnosis.root_causes import root_causes_of

    g, rep = baseline(graphs, ctx)
    rc = root_causes_of(g, rep, ctx)
    ratio, _, peers = rank_speed(g, roles(ctx, g.ranks))
    mine = rc.causes[rc.causes["rank"] >= 0]
    top = (mine.groupby(["rank", "kind", "op"], dropna=False, as_index=False)["cost_ns"].sum()
           .sort_values(["rank", "cost_ns"], ascending=[True, False]).drop_duplicates("rank"))
    cause = {int(r): (k if o is None or (isinstance(o, float) and np.isnan(o)) else f"{k}: {o}")
             for r, k, o in zip(top["rank"], top["kind"], top["op"])}
    extra = pd.DataFrame({"rank": g.ranks.astype("int64"), "peer_ratio": np.round(ratio, 3),
                          "peers": peers.astype("int64")})
    extra = extra.merge(rc.by_rank.astype({"rank": "int64"}), on="rank", how="left")
    out = stragglers.merge(extra, on="rank", how="outer")
    info = ctx.ranks[["rank", "node", "chip"]].astype("int64").set_index("rank")
    for c in ("node", "chip"):
        out[c] = out[c].fillna(out["rank"].map(info[c])).fillna(-1).astype("int64")
    for c in ("delay_cost_ns", "late_count", "root_cost_ns"):
        out[c] = out[c].fillna(0).round().astype("int64")
    out["cause"] = out["rank"].map(cause)
    out = out[(out["delay_cost_ns"] > 0) | (out["root_cost_ns"] > 0) | (out["late_count"] > 0)]
    return out.sort_values(["root_cost_ns", "delay_cost_ns", "rank"], ascending=[False, False, True]).reset_index(drop=True)


def transfer_latency(inst: pd.DataFrame, hw: HardwareSpec | None) -> np.ndarray:
    """Alpha-beta latency part of each spanning instance (ns), as the emulator's timing model
    runs it: an all-reduce hierarchically (each chip's 1/l shard over the ``m`` nodes by ring or
    tree, whichever nccl would pick, and an intra-node latency each side), an all-to-all with its
    latencies in parallel (DeepEP), an all-gather as a ring, a send once."""
    if hw is None:
        return np.zeros(len(inst))
    n, s, kind = inst["n"].to_numpy(float), inst["size"].to_numpy(float), inst["kind"]
    m = inst["n_nodes"].to_numpy(float) if "n_nodes" in inst else n
    m = np.clip(m, 1, np.maximum(n, 1))
    shard = s / np.maximum(n / m, 1)
    a, bw = hw.inter_node_latency_ns, hw.inter_node_bandwidth * hw.comm_efficiency / 1e9
    ring, tree = 2 * (m - 1) * a, 2 * np.ceil(np.log2(m)) * a
    ring_wins = 2 * (m - 1) / m * shard / bw + ring <= 2 * shard / bw + tree
    all_reduce = np.where(ring_wins, ring, tree) + 2 * hw.intra_node_latency_ns
    return np.select([kind_is(kind, "all_reduce"), kind_is(kind, "send_recv", "send"), kind_is(kind, "all_to_all")],
                     [all_reduce, a, a], default=(n - 1) * a)


def _increasing(major: np.ndarray, minor: np.ndarray | None = None) -> bool:
    """Are the rows strictly increasing by ``major`` (then ``minor``)? (Two array passes.)"""
    if len(major) < 2:
        return True
    step = np.diff(major)
    if minor is None:
        return bool((step > 0).all())
    return bool(((step > 0) | ((step == 0) & (np.diff(minor) > 0))).all())


def _distinct_per(group: np.ndarray, value: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each of ``groups`` (values of ``group``), how many distinct ``value``s its rows have:
    ``groupby(group)[value].nunique()`` by one hash pass over (group, value) pairs, no sort."""
    if not len(group):
        return np.zeros(len(groups), np.int64)
    g0, v0 = int(group.min()), int(value.min())
    width = int(group.max()) - g0 + 1
    pairs = pd.unique((value - v0) * width + (group - g0))
    return np.bincount(pairs % width, minlength=width)[groups - g0].astype(np.int64)


def _links(store: TraceStore, inst: pd.DataFrame, senders: pd.DataFrame, hw: HardwareSpec | None
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Node-to-node traffic of spanning collectives, with per-chip bandwidth and the slow verdict,
    and per node the bytes that stayed inside it (the member rows of every instance with two
    members or more are read from the store)."""
    empty = pd.DataFrame({c: pd.Series(dtype="int64") for c in _LINK_COLS})
    no_intra = pd.DataFrame({c: pd.Series(dtype="int64") for c in _INTRA_COLS})
    multi = inst[inst["n"] > 1]
    if not len(multi):
        return empty, no_intra
    span = multi.set_index("coll_id")
    span = span.assign(latency=transfer_latency(span, hw))
    ids = span.index.to_numpy()
    # Most instances have several members: read the whole (small) table and keep theirs.
    table = store.read("collectives", columns=["coll_id", "rank", "node", "bytes"])
    cid = table.column("coll_id").to_numpy()
    # The instance table and the collectives table come sorted (by coll_id, then rank): then
    # the lookup needs no sorter and the rows no sort.
    order = np.arange(len(ids)) if _increasing(ids) else np.argsort(ids, kind="stable")
    step = np.diff(cid)
    if len(cid) > 1 and (step >= 0).all():      # one search a run of one instance's rows
        run = np.flatnonzero(np.r_[True, step != 0])
        at = np.repeat(np.searchsorted(ids[order], cid[run]), np.diff(np.r_[run, len(cid)]))
    else:
        at = np.searchsorted(ids[order], cid)
    at = np.minimum(at, max(len(ids) - 1, 0))
    hit = ids[order[at]] == cid
    keep = np.flatnonzero(hit)
    rank_all = table.column("rank").to_numpy()
    if not _increasing(cid[keep], rank_all[keep]):
        keep = keep[np.lexsort((rank_all[keep], cid[keep]))]      # by (coll_id, rank), stable
    cid, rank, pos = cid[keep], rank_all[keep], order[at[keep]]   # pos: each row's instance in ``span``
    node = table.column("node").to_numpy()[keep].astype(np.int64)
    size = table.column("bytes").fill_null(0).to_numpy()[keep].astype(float)
    # The kind as codes into its few categories (one lookup per kind, not per member row).
    kinds = span["kind"].array if isinstance(span["kind"].dtype, pd.CategoricalDtype) else \
        pd.Categorical(span["kind"].to_numpy(object))
    names = [str(c) for c in kinds.categories]
    code = np.asarray(kinds.codes)[pos]
    of_kind = lambda *want: np.r_[np.isin(np.asarray(names, dtype=object), list(want)), False][code]  # noqa: E731
    n = span["n"].to_numpy(float)[pos]
    # Ring kinds: every member sends to the next member (by rank, wrapping) of its instance.
    head = np.r_[True, cid[1:] != cid[:-1]]
    start = np.maximum.accumulate(np.where(head, np.arange(len(cid)), 0))
    tail = np.r_[cid[1:] != cid[:-1], True]
    nxt = np.where(tail, start, np.arange(len(cid)) + 1)
    # A spanning all-reduce is hierarchical (the emulator's and nccl's): each of a node's l
    # members sends 2(m-1)/m of its 1/l shard to its same-index peer on the next of the m nodes.
    inst_no = np.cumsum(head) - 1
    members = np.bincount(inst_no)[inst_no]
    pos_in = np.arange(len(cid)) - start
    n_nodes = span["n_nodes"].to_numpy(float)[pos] if "n_nodes" in span else n
    n_nodes = np.clip(n_nodes, 1, members)
    local = np.maximum(np.round(members / n_nodes), 1).astype(np.int64)
    is_ar = of_kind("all_reduce")
    span_ar = is_ar & (n_nodes > 1)         # inside one node an all-reduce stays the ring above
    nxt = np.where(span_ar, start + (pos_in + local) % members, nxt)
    factor = np.r_[[_RING.get(k, np.nan) for k in names], np.nan][code]     # a few kinds
    a2a = of_kind("all_to_all")
    ring = ~np.isnan(factor) & ~a2a
    is_p2p = of_kind("send_recv", "send")
    if len(senders):
        sender_key = senders["coll_id"].to_numpy(np.int64), senders["rank"].to_numpy(np.int64)
        is_sender = pd.MultiIndex.from_arrays([cid, rank]).isin(pd.MultiIndex.from_arrays(sender_key))
        known = np.maximum.reduceat(is_sender, np.flatnonzero(head))[inst_no] if len(cid) else is_sender
    else:
        is_sender = known = np.zeros(len(cid), bool)
    lowest = head                                       # without a recorded send, the lower rank sends
    ring &= ~is_p2p | np.where(known, is_sender, lowest)
    ring_bytes = np.where(span_ar, 2 * (n_nodes - 1) / n_nodes / local,
                          np.where(is_ar, 2 * (n - 1) / n, np.where(is_p2p, 1.0, (n - 1) / n))) * size
    parts = [pd.DataFrame({"coll_id": cid[ring], "rank": rank[ring], "src": node[ring],
                           "dst": node[nxt][ring], "bytes": ring_bytes[ring]})]
    # ... and its reduce-scatter and all-gather inside each node: 2(l-1)/l of S to the node's ring.
    inner = span_ar & (local > 1)
    if inner.any():
        parts.append(pd.DataFrame({"coll_id": cid[inner], "rank": rank[inner], "src": node[inner],
                                   "dst": node[inner], "bytes": (2 * (local - 1) / local * size)[inner]}))
    # All-to-all: S/n to every peer, i.e. S/n x (members on node d, less self) to node d.
    if a2a.any():
        rows = pd.DataFrame({"coll_id": cid, "rank": rank, "node": table.column("node").to_numpy()[keep],
                             "bytes": table.column("bytes").to_pandas().to_numpy()[keep]})
        counts = rows[a2a].groupby(["coll_id", "node"]).size().rename("m").reset_index()
        pairs = rows[a2a].assign(n=n[a2a]).merge(counts.rename(columns={"node": "dst"}), on="coll_id")
        pairs["bytes"] = pairs["bytes"].fillna(0) / pairs["n"] * (pairs["m"] - (pairs["dst"] == pairs["node"]))
        parts.append(pairs.rename(columns={"node": "src"})[["coll_id", "rank", "src", "dst", "bytes"]])
    flows = pd.concat(parts, ignore_index=True)
    flows = flows[flows["bytes"] > 0]
    inside = flows[flows["src"] == flows["dst"]]
    intra = inside.groupby("src", as_index=False)["bytes"].sum().rename(columns={"src": "node"})
    intra["instances"] = _distinct_per(inside["src"].to_numpy(np.int64), inside["coll_id"].to_numpy(np.int64),
                                       intra["node"].to_numpy(np.int64))
    intra = pd.DataFrame({"node": intra["node"].astype("int64"), "bytes": intra["bytes"].round().astype("int64"),
                          "instances": intra["instances"].astype("int64")})[_INTRA_COLS]
    flows = flows[flows["src"] != flows["dst"]]
    if not len(flows):
        return empty, intra
    # Each sender's NIC time splits across destinations in proportion to its bytes.
    sent = flows.groupby(["coll_id", "rank"])["bytes"].transform("sum").to_numpy()
    share = flows["bytes"].to_numpy() / sent
    t = span["time"].reindex(flows["coll_id"]).to_numpy(float)
    lat = span["latency"].reindex(flows["coll_id"]).to_numpy(float)
    flows = flows.assign(nic=t * share, busy=np.clip(t - lat, 0, None) * share)
    link = flows.groupby(["src", "dst"], as_index=False)[["bytes", "nic", "busy"]].sum()
    out = pd.DataFrame({"src_node": link["src"].astype("int64"), "dst_node": link["dst"].astype("int64"),
                        "bytes": link["bytes"].round().astype("int64"),
                        "time_ns": link["nic"].round().astype("int64")})
    with np.errstate(divide="ignore", invalid="ignore"):
        out["bandwidth"] = link["bytes"] / link["nic"] * 1e9
        out["effective_bandwidth"] = np.where(link["busy"] > 0, link["bytes"] / link["busy"] * 1e9, np.inf)
    out["expected_bandwidth"] = (hw.inter_node_bandwidth * hw.comm_efficiency) if hw is not None else np.nan
    eff = out["effective_bandwidth"].to_numpy(float)
    # Reference: the median of the other links; with fewer than two others, the expected bandwidth.
    others = np.where(np.eye(len(eff), dtype=bool), np.nan, eff[None, :])
    ref = np.nanmedian(others, axis=1) if len(eff) >= 3 else out["expected_bandwidth"].to_numpy(float)
    out["slow"] = np.nan_to_num(eff, posinf=np.finfo(float).max) < SLOW_RATIO * ref
    return out.sort_values(["src_node", "dst_node"]).reset_index(drop=True), intra


class _Comm:
    """The ``comm`` report (see the module docstring)."""

    name = "comm"
    # The dependency graph's columns too: stragglers are ranked by the root causes of waiting.
    columns = tuple(dict.fromkeys((*ACTIVITY_COLUMNS, "op", *GRAPH_COLUMNS)))

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None if ctx.has_collectives else "the trace has no collectives (no communication was recorded)"

    def prepare(self, ctx: AnalysisContext) -> None:
        """Build the collective instance table (shared, cached on ``ctx``) beside the chunks."""
        _ = ctx.instances

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Per (kind, group): the rank's communication time and the part under compute; its sends."""
        if not events.num_rows:
            return (*_empty_partial(), None)
        # Imported here: the diagnosis layer builds on this report (its NIC table, its records).
        from sohuprof.analyzers.diagnosis.critical_path import diagnosis_chunk

        part = as_partition(events)
        # The graph is for the root causes of waiting; where no collective has every member in
        # the trace (one rank of a profiled job) nobody waits for anybody known.
        return (*_rank_comm(part, ctx), diagnosis_chunk(part, ctx) if _any_complete(ctx) else None)

    def combine(self, partials: list[tuple[pd.DataFrame, pd.DataFrame]], ctx: AnalysisContext) -> CommResult:
        """Collective statistics, stragglers and links from every rank's partial and the collectives."""
        empty = _empty_partial()
        per_rank = pd.concat([empty[0], *(p[0] for p in partials)], ignore_index=True)
        senders = pd.concat([empty[1], *(p[1] for p in partials)], ignore_index=True)
        hidden = per_rank.groupby(["kind", "group"], as_index=False)[["union_ns", "overlapped_ns"]].sum()
        inst = selected_instances(ctx)
        declared = group_sizes(ctx)
        if declared:
            inst = inst.assign(n=np.maximum(inst["n"].to_numpy(), inst["group"].map(declared).fillna(0).to_numpy(np.int64)))
        # Bandwidth over the instances whose size is known (a trace may give some and not others).
        inst = inst.assign(busbytes=inst["size"] * busbw_factor(inst["kind"], inst["n"]),
                           sized_time=np.where(inst["size"].to_numpy() > 0, inst["time"].to_numpy(), 0))
        table = inst.groupby(["kind", "group"], as_index=False).agg(
            count=("coll_id", "size"), bytes=("size", "sum"), time_ns=("time", "sum"), busbytes=("busbytes", "sum"),
            wait_ns=("wait", "sum"), sized_time=("sized_time", "sum"))
        table = table.merge(hidden, on=["kind", "group"], how="outer")
        table = table.fillna({"count": 0, "bytes": 0, "time_ns": 0, "busbytes": 0, "union_ns": 0,
                              "overlapped_ns": 0, "wait_ns": 0})
        with np.errstate(divide="ignore", invalid="ignore"):
            base = table["sized_time"].fillna(0).to_numpy() if not ctx.is_sohu else table["time_ns"].to_numpy()
            table["algbw"] = np.where(base > 0, table["bytes"] / base * 1e9, np.nan)
            table["busbw"] = np.where(base > 0, table["busbytes"] / base * 1e9, np.nan)
        if not ctx.is_sohu:
            # NCCL kernels that carry no message size (older PyTorch) give no bytes: bandwidth
            # unknown (null), not 0.
            unknown = table["bytes"].to_numpy() <= 0
            table.loc[unknown, ["algbw", "busbw"]] = np.nan
        table["exposed_ns"] = table["union_ns"] - table["overlapped_ns"]
        for c in ("count", "bytes", "time_ns", "exposed_ns", "overlapped_ns", "wait_ns"):
            table[c] = table[c].round().astype("int64")
        table["group"] = table["group"].astype("int64")
        table = table.sort_values(["kind", "group"]).reset_index(drop=True)[_COLL_COLS]
        nics = nic_table(ctx)
        links, intra = _links(ctx.store, inst, senders, ctx.hardware)
        if len(nics) and len(links):
            # The port counters name the slow NIC; a link is slow when either end's is.
            slow = nics.loc[nics["slow"], "node"].to_numpy()
            links = links.assign(slow=np.isin(links["src_node"], slow) | np.isin(links["dst_node"], slow))
        from sohuprof.analyzers.diagnosis.graph import incomplete_collectives

        left_out = incomplete_collectives(ctx)[0]
        if ctx.options.get("selected"):   # the selection's instances only, its ranks' rows only
            outside = np.setdiff1d(ctx.instances["coll_id"].to_numpy(), inst["coll_id"].to_numpy())
            left_out = np.union1d(left_out, outside)
        stragglers = _stragglers(ctx.collective_index, ctx.ranks, left_out)
        if ctx.options.get("selected"):
            stragglers = stragglers[stragglers["rank"].isin(ctx.ranks["rank"])].reset_index(drop=True)
        graphs = [p[2] for p in partials if len(p) > 2 and p[2] is not None]
        if graphs:
            from sohuprof.analyzers.diagnosis.replay import ReplayError

            try:
                stragglers = _with_root_causes(stragglers, graphs, ctx)
            except ReplayError:    # clocks that put the collectives in a cycle: delay cost only
                pass
        notes = [n for n in [(ctx.store.manifest.get("collectives") or {}).get("note")] if n]
        if not ctx.is_sohu and (table["bytes"] <= 0).any():
            notes.append("algbw/busbw are null where the NCCL kernels carry no message size (In msg nelems)")
        return CommResult(collectives=table, stragglers=stragglers, links=links, nics=nics, intra_node=intra,
                          notes=notes)


COMM = _Comm()
