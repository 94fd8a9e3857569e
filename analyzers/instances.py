"""Collective instances: ``collectives.parquet`` (one row per instance x member) folded to one row
per instance, in O(n) passes over the table's ``(coll_id, rank)`` order, and the compact per-rank
index the per-rank kernels look members up in.

Both are built once per context and shared by the comm, roofline and stall reports: the
:class:`MemberIndex` (``AnalysisContext.member_index``, 21 bytes a member, straight from the member
rows) is what the chunks need, so they start at once; the :class:`CollectiveIndex`
(``AnalysisContext.collective_index``, the instance table) is what ``combine`` needs, and is
folded beside the chunks. A 50M-event run has millions of member rows: a pandas group-by over them
costs more than every per-rank kernel together, and holding them as a DataFrame costs more memory
than the events being analysed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof import kernels
from sohuprof.analyzers.partition import dictionary_codes

__all__ = ["CollectiveIndex", "MemberIndex", "MEMBER_COLUMNS", "collective_instances", "INSTANCE_COLUMNS"]

INSTANCE_COLUMNS = ("coll_id", "kind", "group", "n", "size", "start", "end", "time", "n_nodes", "local_max",
                    "node_min", "wait", "last_rank", "last_wait")


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="int64") for c in INSTANCE_COLUMNS})
    return frame.assign(kind=pd.Categorical([], categories=[]))


def _int_column(coll: pd.DataFrame | pa.Table, name: str, fill: int = 0) -> np.ndarray:
    """Column ``name`` as int64, nulls as ``fill`` (zero-copy from Arrow when it has no nulls)."""
    if isinstance(coll, pa.Table):
        column = coll.column(name)
        if column.null_count:
            column = column.fill_null(fill)
        return np.asarray(column.to_numpy(), dtype=np.int64)
    series = coll[name]
    return (series.fillna(fill) if series.hasnans else series).to_numpy(np.int64)


def _kinds(coll: pd.DataFrame | pa.Table, rows: np.ndarray) -> pd.Categorical:
    """The ``kind`` of the given rows, categorical (its categories: the distinct kinds, sorted)."""
    if isinstance(coll, pa.Table):
        codes, values = dictionary_codes(coll.column("kind"))
        names = [None if v is None else str(v) for v in values]
    else:
        kind = coll["kind"]
        if not isinstance(kind.dtype, pd.CategoricalDtype):
            kind = kind.astype(str).astype("category")
        codes, names = kind.cat.codes.to_numpy(), [str(v) for v in kind.cat.categories]
    present = sorted({n for n in names if n is not None})
    remap = np.array([present.index(n) if n is not None else -1 for n in names] + [-1])   # a few kinds
    return pd.Categorical.from_codes(remap[codes[rows]], categories=present)


def collective_instances(coll: pd.DataFrame | pa.Table, group_sizes: dict[int, int] | None = None) -> pd.DataFrame:
    """One row per collective instance.

    Parameters
    ----------
    coll : pandas.DataFrame or pyarrow.Table
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
    if not len(coll) or (isinstance(coll, pa.Table) and not coll.num_columns):
        return _empty()
    cid = _int_column(coll, "coll_id")
    rank = _int_column(coll, "rank")
    order = None
    same = cid[1:] == cid[:-1]
    if not ((cid[1:] > cid[:-1]) | (same & (rank[1:] > rank[:-1]))).all():   # not as the writer sorts it
        order = np.lexsort((rank, cid))
        cid, rank = cid[order], rank[order]
        same = cid[1:] == cid[:-1]

    def col(name: str) -> np.ndarray:
        values = _int_column(coll, name)
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
        "coll_id": cid[first], "kind": _kinds(coll, kind_rows), "group": col("group")[first],
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


@dataclass(frozen=True)
class CollectiveIndex:
    """The instance table of collectives.parquet and who took part (what ``combine`` needs).

    Attributes
    ----------
    instances : pandas.DataFrame
        :func:`collective_instances` of the table (sorted by ``coll_id``).
    kinds : list of str
        The ``kind`` values (``instances["kind"]``'s categories).
    rows : int
        Member rows in the table.
    member_ranks : numpy.ndarray
        Ranks that are members of some instance with more than one recorded member.
    """

    instances: pd.DataFrame
    kinds: list[str]
    rows: int
    member_ranks: np.ndarray

    @classmethod
    def from_table(cls, table: pa.Table) -> CollectiveIndex:
        """Index a collectives table (as :meth:`TraceStore.read` returns it)."""
        return cls.from_batches(table.to_batches())

    @classmethod
    def from_batches(cls, batches: Iterable[pa.RecordBatch]) -> CollectiveIndex:
        """Index a collectives table streamed in ``coll_id`` order (the writer's): instances are
        folded a batch at a time (an instance cut by a batch boundary waits for the next), so
        memory holds one batch plus what is kept, never the member table.

        Raises
        ------
        ValueError
            The rows are not in ``coll_id`` order.
        """
        parts: list[pd.DataFrame] = []
        members = np.zeros(0, np.int64)   # per rank: members of an instance of more than one
        rows = 0
        for chunk in _instance_chunks(batches):   # a loop over batches, not rows
            inst = collective_instances(chunk)
            if parts and len(inst) and int(inst["coll_id"].iloc[0]) <= int(parts[-1]["coll_id"].iloc[-1]):
                raise ValueError("collectives are not sorted by coll_id")
            cid, rank = _int_column(chunk, "coll_id"), _int_column(chunk, "rank")
            # Rows come in coll_id order, so a row's instance is the count of instance starts up to it.
            owner = np.cumsum(np.r_[False, cid[1:] != cid[:-1]])
            multi = inst["n"].to_numpy()[owner] > 1
            seen = np.bincount(rank[multi], minlength=len(members))
            members = np.r_[members, np.zeros(len(seen) - len(members), np.int64)] + seen
            parts.append(inst)
            rows += len(cid)
        kinds = sorted({str(k) for part in parts for k in part["kind"].cat.categories})
        for part in parts:   # a loop over batches: one kind vocabulary for all
            part["kind"] = part["kind"].cat.set_categories(kinds)
        inst = pd.concat(parts, ignore_index=True) if parts else collective_instances(pa.table({}))
        return cls(inst, kinds, rows, np.flatnonzero(members))


def _instance_chunks(batches: Iterable[pa.RecordBatch]) -> Iterable[pa.Table]:
    """The batches regrouped so no instance is cut: each instance's rows are in one table.

    Raises
    ------
    ValueError
        The rows are not in ``coll_id`` order.
    """
    held: pa.Table | None = None
    for batch in batches:   # a loop over batches, not rows
        if not batch.num_rows:
            continue
        rows = pa.Table.from_batches([batch]) if held is None else pa.concat_tables([held, pa.Table.from_batches([batch])])
        cid = _int_column(rows, "coll_id")
        if (cid[1:] < cid[:-1]).any():
            raise ValueError("collectives are not sorted by coll_id")
        cut = int(np.searchsorted(cid, cid[-1]))     # the last instance may go on in the next batch
        if cut:
            yield rows.slice(0, cut)
        held = rows.slice(cut)
    if held is not None and held.num_rows:
        yield held


def _distinct_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_counts=True)``; by a bincount when the values are small
    non-negative ints (ranks, dictionary codes), which costs one pass instead of a sort."""
    if len(values) and values.min() >= 0 and values.max() < 1 << 20:
        counts = np.bincount(values)
        present = np.flatnonzero(counts)
        return present.astype(values.dtype), counts[present]
    return np.unique(values, return_counts=True)


#: collectives.parquet columns the member index reads.
MEMBER_COLUMNS = ["coll_id", "kind", "group", "rank", "start"]


@dataclass(frozen=True)
class MemberIndex:
    """Each rank's rows of collectives.parquet, sorted by ``coll_id``: what the per-rank kernels look
    their collectives up in (the transfer start, kind and group of each). Built straight from the
    member rows, without folding instances, so chunks need not wait for the instance table
    (21 bytes a member).

    Attributes
    ----------
    kinds : list of str
        The collective kinds, sorted: :meth:`of_rank`'s ``kind`` codes index them.
    rows : int
        Member rows in the table.
    """

    kinds: list[str]
    rows: int
    _rank_values: np.ndarray      # distinct member ranks, sorted
    _rank_offsets: np.ndarray     # their members' span in the arrays below
    _coll_id: np.ndarray          # per member, in (rank, coll_id) order
    _start: np.ndarray            # ... its recorded transfer start (the last member's arrival)
    _kind: np.ndarray             # ... its kind (int8 code into ``kinds``)
    _group: np.ndarray            # ... its group

    @classmethod
    def from_batches(cls, batches: Callable[[list[str]], Iterable[pa.RecordBatch]]) -> MemberIndex:
        """Index member rows streamed by ``batches(columns)`` (called twice: once for the ranks
        and kinds, to size each rank's span, then for :data:`MEMBER_COLUMNS`, scattered batch by
        batch into place), so memory holds the index and one batch, never a second copy of the
        members. Rows in any order; the writer's ``coll_id`` order needs no sort."""
        seen: list[tuple[np.ndarray, np.ndarray]] = []
        kinds: set[str] = set()
        for batch in batches(["rank", "kind"]):   # a loop over batches, not rows
            seen.append(_distinct_counts(batch.column("rank").to_numpy(zero_copy_only=False)))
            codes, batch_kinds = dictionary_codes(batch.column("kind"))
            kinds.update(str(batch_kinds[c]) for c in _distinct_counts(codes)[0].tolist() if c < len(batch_kinds))
        ranks_seen = np.concatenate([u for u, _ in seen]) if seen else np.zeros(0, np.int64)
        values = np.unique(ranks_seen)
        counts = np.bincount(np.searchsorted(values, ranks_seen), minlength=len(values),
                             weights=np.concatenate([c for _, c in seen]) if seen else None).astype(np.int64)
        names = sorted(kinds)
        position = {name: i for i, name in enumerate(names)}
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        rows = int(offsets[-1])
        coll_id, start = np.empty(rows, np.int64), np.empty(rows, np.int64)
        kind_out, group = np.empty(rows, np.int8), np.empty(rows, np.int64)
        cursor = offsets[:-1].copy()
        last_id, ordered = None, True
        for batch in batches(MEMBER_COLUMNS):
            if not batch.num_rows:
                continue
            table = pa.Table.from_batches([batch])
            slot = np.searchsorted(values, table.column("rank").to_numpy()).astype(np.int64, copy=False)
            # Rows by rank slot, stably: a counting sort (compiled), the slots being few.
            order, bounds = np.empty(len(slot), np.int64), np.empty(len(values) + 1, np.int64)
            kernels.counting_order(slot, bounds, order)
            sorted_slot = slot[order]
            n_slot = np.diff(bounds)
            # Row i of the batch (in slot order) goes after what its rank already holds.
            dest = cursor[sorted_slot] + (np.arange(len(order)) - (np.cumsum(n_slot) - n_slot)[sorted_slot])
            cursor += n_slot
            ids = _int_column(table, "coll_id")
            ordered &= bool((ids[1:] >= ids[:-1]).all()) and (last_id is None or ids[0] >= last_id)
            last_id = ids[-1]
            coll_id[dest] = ids[order]
            start[dest] = _int_column(table, "start")[order]
            group[dest] = _int_column(table, "group", fill=-1)[order]
            codes, batch_names = dictionary_codes(table.column("kind"))
            remap = np.array([position.get(str(v), -1) if v is not None else -1 for v in batch_names] + [-1],   # a few kinds
                             np.int8)
            kind_out[dest] = remap[codes[order]]
        if not ordered:
            for lo, hi in zip(offsets[:-1].tolist(), offsets[1:].tolist()):   # a loop over ranks, not rows
                by_id = np.argsort(coll_id[lo:hi], kind="stable") + lo
                coll_id[lo:hi], start[lo:hi] = coll_id[by_id], start[by_id]
                kind_out[lo:hi], group[lo:hi] = kind_out[by_id], group[by_id]
        narrow = np.int32 if not len(group) or int(np.abs(group).max()) < 2**31 else np.int64
        return cls(names, rows, values.astype(np.int64), offsets, coll_id, start, kind_out, group.astype(narrow))

    def of_rank(self, rank: int) -> dict[str, np.ndarray]:
        """``rank``'s member rows sorted by ``coll_id``: ``coll_id``, ``start``, ``kind`` (codes
        into :attr:`kinds`) and ``group``."""
        pos = int(np.searchsorted(self._rank_values, rank))
        if pos == len(self._rank_values) or self._rank_values[pos] != rank:
            empty = np.zeros(0, np.int64)
            return {"coll_id": empty, "start": empty, "kind": empty.astype(np.int8), "group": empty}
        sl = slice(int(self._rank_offsets[pos]), int(self._rank_offsets[pos + 1]))
        return {"coll_id": self._coll_id[sl], "start": self._start[sl], "kind": self._kind[sl],
                "group": self._group[sl].astype(np.int64)}
