"""Collective instances: ``collectives.parquet`` (one row per instance x member) folded to one row
per instance, in O(n) passes over the table's ``(coll_id, rank)`` order.

Built once per context (``AnalysisContext.instances``) and shared by the comm and roofline
reports: a 50M-event run has millions of member rows, and a pandas group-by over them costs more
than every per-rank kernel together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["collective_instances", "INSTANCE_COLUMNS"]

INSTANCE_COLUMNS = ("coll_id", "kind", "group", "n", "size", "start", "end", "time", "n_nodes", "local_max",
                    "node_min", "wait", "last_rank", "last_wait")


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="int64") for c in INSTANCE_COLUMNS})
    return frame.assign(kind=pd.Series(dtype=object))


def _kind_strings(kind: pd.Series | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The ``kind`` of the given rows as Python strings (decoded once per category)."""
    if isinstance(kind, pd.Series) and isinstance(kind.dtype, pd.CategoricalDtype):
        names = np.asarray([str(v) for v in kind.cat.categories] + [None], dtype=object)
        return names[kind.cat.codes.to_numpy()[rows]]
    return np.asarray(kind, dtype=object)[rows].astype(str).astype(object)


def collective_instances(coll: pd.DataFrame, group_sizes: dict[int, int] | None = None) -> pd.DataFrame:
    """One row per collective instance.

    Parameters
    ----------
    coll : pandas.DataFrame
        ``collectives.parquet`` rows (instance x member), as the store writes them: sorted by
        ``(coll_id, rank)`` (other orders are sorted first); not modified.
    group_sizes : dict of int to int, optional
        Declared group sizes; they override ``n`` where a trace holds fewer members than the
        group has (a profiler trace of some of the ranks).

    Returns
    -------
    pandas.DataFrame
        ``coll_id, kind, group, n`` (members), ``size`` (the largest member buffer: nccl-tests'
        "size"), ``start`` (last arrival), ``end``, ``time`` (transfer: end - start),
        ``n_nodes`` (nodes spanned), ``local_max`` / ``node_min`` (most / fewest members on one
        node), ``wait`` (the members' recorded sync wait: ``min(start, end) - arrive``, summed),
        ``last_rank`` (the last arriver, lowest rank on ties) and ``last_wait`` (Scalasca's
        wait at N x N it caused: every member's ``min(last arrival, end) - arrive``, summed).
    """
    if not len(coll):
        return _empty()
    cid = coll["coll_id"].to_numpy(np.int64)
    rank = coll["rank"].to_numpy(np.int64)
    order = None
    same = cid[1:] == cid[:-1]
    if not ((cid[1:] > cid[:-1]) | (same & (rank[1:] > rank[:-1]))).all():   # not as the writer sorts it
        order = np.lexsort((rank, cid))
        cid, rank = cid[order], rank[order]
        same = cid[1:] == cid[:-1]

    def col(name: str, fill: int = 0) -> np.ndarray:
        values = coll[name].fillna(fill).to_numpy(np.int64) if coll[name].hasnans else coll[name].to_numpy(np.int64)
        return values if order is None else values[order]

    arrive, start, end, node = col("arrive"), col("start"), col("end"), col("node")
    first = np.flatnonzero(np.r_[True, ~same])
    n = np.diff(np.r_[first, len(cid)])
    last_arrival = np.maximum.reduceat(arrive, first)
    last_of_row = np.repeat(last_arrival, n)
    inst_end = np.maximum.reduceat(end, first)
    # Members per node: runs of one node within an instance (rows are by rank, so a node's
    # members are usually one run; when they are not, sort each instance by node first).
    by_node = node
    if (same & (node[1:] < node[:-1])).any():
        by_node = node[np.lexsort((node, np.repeat(np.arange(len(first)), n)))]
    run = np.flatnonzero(np.r_[True, ~same | (by_node[1:] != by_node[:-1])])
    run_len = np.diff(np.r_[run, len(cid)])
    run_first = np.searchsorted(run, first)
    # The last arriver: the first row (lowest rank) of its instance arriving at the maximum.
    last_row = np.minimum.reduceat(np.where(arrive == last_of_row, np.arange(len(cid)), len(cid)), first)
    kind_rows = first if order is None else order[first]
    out = pd.DataFrame({
        "coll_id": cid[first], "kind": _kind_strings(coll["kind"], kind_rows), "group": col("group")[first],
        "n": n.astype(np.int64), "size": np.maximum.reduceat(col("bytes"), first),
        "start": last_arrival, "end": inst_end,
        "n_nodes": np.add.reduceat(np.ones(len(run), np.int64), run_first),
        "local_max": np.maximum.reduceat(run_len, run_first), "node_min": np.minimum.reduceat(run_len, run_first),
        "wait": np.add.reduceat(np.clip(np.minimum(start, end) - arrive, 0, None), first),
        "last_rank": rank[last_row],
        "last_wait": np.add.reduceat(np.clip(np.minimum(last_of_row, end) - arrive, 0, None), first),
    })
    if group_sizes:
        declared = out["group"].map(group_sizes).fillna(0).to_numpy(np.int64)
        out["n"] = np.maximum(out["n"].to_numpy(), declared)
    out["time"] = np.clip(out["end"].to_numpy() - out["start"].to_numpy(), 0, None)
    return out[list(INSTANCE_COLUMNS)]
