"""Collectives from NCCL kernels: their args, instance ids across ranks, arrival and start."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.collectors.kineto.checks import (
    MAX_ID,
    MAX_NELEMS,
    Verdict,
    blank,
    int_column,
    wrong_type,
)
from sohuprof.collectors.kineto.columns import _codes, _field, _scatter
from sohuprof.collectors.kineto.decode import _Args, _LooseArgs

from sohuprof.schema import COLLECTIVES, OP_CLASSES

#: Bytes per element of the c10 dtype names Kineto writes in the ``dtype`` arg.
_DTYPE_BYTES = {"Float": 4, "Half": 2, "BFloat16": 2, "Double": 8, "Int": 4, "Long": 8,
                "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8,
                "ComplexDouble": 16, "ComplexHalf": 4, "Float8_e4m3fn": 1, "Float8_e5m2": 1,
                "Float8_e4m3fnuz": 1, "Float8_e5m2fnuz": 1, "UInt16": 2, "UInt32": 4,
                "UInt64": 8}


def _nccl_args(args: Sequence[_Args | _LooseArgs], rows: np.ndarray, verdict: Verdict,
               loose: bool) -> dict[str, pa.Array]:
    """The NCCL kernels' collective args (``rows``: their record indices), checked when the
    file was decoded loosely; a bad one sets its kernel aside."""
    out = {}
    for key in ("collective", "group", "dtype", "group_ranks"):  # columns, not a loop over events
        values = _field(args, key)
        if loose:
            bad = wrong_type(values, (str,))
            verdict.flag(_scatter(bad, rows, verdict.code.size), key)
            values = blank(values, bad)
        out[key] = pa.array(values, pa.string())
    out["nelems"], bad = int_column(_field(args, "nelems"), lenient=loose, high=MAX_NELEMS)
    verdict.flag(_scatter(bad, rows, verdict.code.size), "nelems")
    out["group_size"], bad = int_column(_field(args, "group_size"), lenient=loose, low=-MAX_ID, high=MAX_ID - 1)
    verdict.flag(_scatter(bad, rows, verdict.code.size), "group_size")
    for key in ("src", "dst"):
        out[key], bad = int_column(_field(args, key), lenient=loose, low=-MAX_ID, high=MAX_ID - 1)
        verdict.flag(_scatter(bad, rows, verdict.code.size), key)
    return out


def _collectives(rank: int, rows: np.ndarray, ts: np.ndarray, dur: np.ndarray, kind: np.ndarray,
                 fields: dict[str, pa.Array], world: int | None = None) -> tuple[pa.Array, pa.Table]:
    """``coll_id`` per event, and this rank's collective rows (``start`` still missing).

    ``rows`` are the NCCL kernels' event indices; ``kind`` (their op codes) and ``fields`` (their
    args: process group name, ``In msg nelems``, dtype, ``Group size``, ``Process Group Ranks``)
    hold what belongs to them, in the same order. The rows carry ``group_size`` (the size the
    kernel declares, -1 unknown) beside the store's columns, for :func:`_finish_collectives`.
    """
    pg, nelems, dtype = fields["group"], fields["nelems"], fields["dtype"]
    n = len(ts)
    if rows.size == 0:
        return pa.nulls(n, pa.int64()), COLLECTIVES.empty().drop_columns(["start"])
    group = _group_ids(pg, fields["group_ranks"], world)
    group, p2p = _pairs(group, fields.get("src"), fields.get("dst"), _local_rank(rank, fields["group_ranks"]))
    # The n-th NCCL kernel of a group, by ts: a running count within each group.
    order = np.lexsort((ts[rows], group))
    g_sorted = group[order]
    run_start = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1]
    seq_sorted = np.arange(order.size) - np.repeat(run_start, np.diff(np.r_[run_start, order.size]))
    seq = np.empty_like(seq_sorted)
    seq[order] = seq_sorted
    ids = group * np.int64(2**32) + seq
    coll_id = np.zeros(n, dtype=np.int64)
    coll_id[rows] = ids
    mask = np.ones(n, dtype=bool)
    mask[rows] = False

    dtype_enc = dtype.dictionary_encode()
    size_of = np.array([_DTYPE_BYTES.get(d, -1) for d in dtype_enc.dictionary.to_pylist()] + [-1])
    elem_bytes = size_of[_codes(dtype_enc, null_code=len(size_of) - 1)]
    nel = nelems.fill_null(-1).to_numpy(zero_copy_only=False)  # below MAX_NELEMS: no wrap
    valid = (elem_bytes >= 0) & (nel >= 0)
    nbytes = pa.array(np.where(valid, nel * elem_bytes, 0), pa.int64(), mask=~valid)
    table = pa.table({
        "coll_id": ids, "kind": pa.array(np.asarray(OP_CLASSES)[kind]).dictionary_encode(),
        "group": group, "rank": np.full(rows.size, rank, np.int32),
        "node": np.zeros(rows.size, np.int32),
        "arrive": ts[rows], "end": ts[rows] + dur[rows], "bytes": nbytes,
        "group_size": np.where(p2p, 2, _declared_sizes(fields["group_size"], fields["group_ranks"])),
    })
    return pa.array(coll_id, pa.int64(), mask=mask), table


def _group_ids(pg: pa.Array, ranks: pa.Array, world: int | None) -> np.ndarray:
    """Each NCCL kernel's group id, the same on every member. Process-group names are numbered
    per rank (rank 0's group "1" may be ranks [0, 1] and rank 2's group "1" ranks [2, 3]), so a
    group that is not the whole world is named by its members too (``Process Group Ranks``):
    the name when numeric and whole, else a CRC32 of name and members."""
    names = pg.fill_null("0")
    members = pc.fill_null(ranks, "")
    whole = "[" + ", ".join(map(str, range(world))) + "]" if world is not None and world <= 4096 else None
    pairs = pc.binary_join_element_wise(names, members, "|").dictionary_encode()
    ids = []
    for key in pairs.dictionary.to_pylist():     # once per distinct (group, members)
        name, _, listed = key.partition("|")
        numbers = re.findall(r"-?\d+", listed)
        normal = "[" + ", ".join(numbers) + "]"
        ids.append(_group_id(name) if not numbers or normal == whole else _group_id(f"{name}|{','.join(numbers)}"))
    return np.array(ids, dtype=np.int64)[_codes(pairs)]


def _local_rank(rank: int, ranks: pa.Array) -> np.ndarray:
    """This rank's number within each kernel's group: its place in ``Process Group Ranks``
    (parsed once per distinct list), else its global rank (the world group)."""
    enc = ranks.dictionary_encode()
    place = []
    for listed in enc.dictionary.to_pylist():     # a few distinct groups
        members = [int(m) for m in re.findall(r"-?\d+", listed)]
        place.append(members.index(rank) if rank in members else rank)
    return np.array(place + [rank], np.int64)[_codes(enc, null_code=len(place))]


def _pairs(group: np.ndarray, src: pa.Array | None, dst: pa.Array | None,
           me: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A send / recv is an instance of its pair within its group, numbered apart from the
    group's other traffic: rank 0 -> 1 and rank 2 -> 3 in one pipeline group are different
    transfers. PyTorch writes the peer only (``Dst Rank`` on a send, ``Src Rank`` on a recv, in
    the group's numbering); the other end is this rank (``me``, its number in the group).
    Returns the group ids with the pairs' own ids, and which kernels are such pairs."""
    if src is None or dst is None:
        return group, np.zeros(len(group), bool)
    s = src.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    d = dst.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    s = np.where((s < 0) & (d >= 0), me, s)
    d = np.where((d < 0) & (s >= 0), me, d)
    p2p = (s >= 0) & (d >= 0) & (s != d)
    if not p2p.any():
        return group, p2p
    keys = np.stack([group[p2p], np.minimum(s, d)[p2p], np.maximum(s, d)[p2p]], axis=1)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    ids = np.array([_group_id(f"{g}|p2p {a}-{b}") for g, a, b in uniq.tolist()], np.int64)   # per pair
    out = group.copy()
    out[p2p] = ids[inverse.reshape(-1)]
    return out, p2p


def _declared_sizes(size: pa.Array, ranks: pa.Array) -> np.ndarray:
    """Each kernel's group size: ``Group size``, else the length of ``Process Group Ranks``
    (``"[0, 1, ...]"``, counted once per distinct string), else -1."""
    out = size.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    enc = ranks.dictionary_encode()
    listed = np.array([len(re.findall(r"-?\d+", r)) or -1 for r in enc.dictionary.to_pylist()] + [-1], np.int64)
    from_list = listed[_codes(enc, null_code=len(listed) - 1)]
    return np.where(out >= 1, out, from_list)


def _group_id(name: str) -> int:
    """A process group's id, the same on every rank: its name if numeric, else a CRC32."""
    if name.isdigit() and int(name) < 2**31:
        return int(name)
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class Matching(NamedTuple):
    """Every rank's collectives joined: the store's table, the manifest's ``collectives``
    summary, and the instances every member of which is in the input (sorted ids)."""

    table: pa.Table
    summary: dict[str, Any]
    complete: np.ndarray


def _finish_collectives(parts: list[pa.Table], declared: dict[int, int] | None = None,
                        world: int | None = None) -> Matching:
    """Join every rank's collective rows and set ``start`` to each instance's last arrival,
    where every member of the instance's group is in the input.

    An instance's group size is what its kernels declare (``Group size``, ``Process Group
    Ranks``), else its process group's ``pg_size`` in ``distributedInfo`` (``declared``), else,
    for the default group, the world size. An instance with fewer members than that is partial:
    who was waited for is unknown, so each member's ``start`` is its own arrival (no wait is
    invented) and the matching summary (the manifest's ``collectives``) says which groups lack
    whom (its ``group_sizes`` are what the analyzers judge completeness by, the same way). With
    nothing declared every instance counts as whole, as before.
    """
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return Matching(COLLECTIVES.empty(), {"instances": 0, "matched": 0, "partial": 0, "groups": [],
                                              "group_sizes": {}}, np.zeros(0, np.int64))
    table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
    ids = table.column("coll_id").to_numpy()
    arrive = table.column("arrive").to_numpy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    last = np.full(uniq.size, np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, arrive)
    members = np.bincount(inverse, minlength=uniq.size)
    size = np.full(uniq.size, -1, np.int64)
    if "group_size" in table.column_names:
        np.maximum.at(size, inverse, table.column("group_size").to_numpy(zero_copy_only=False))
    group_of = uniq // np.int64(2**32)
    if declared:   # per instance, through its group's (few) distinct ids
        groups, at = np.unique(group_of, return_inverse=True)
        of_group = np.array([declared.get(int(g), -1) for g in groups], np.int64)
        size = np.where(size < 1, of_group[at], size)
    if world is not None:
        size = np.where((size < 1) & (group_of == 0), world, size)
    partial = (size >= 1) & (members < size)
    start = np.where(partial[inverse], arrive, last[inverse])
    table = table.append_column("start", pa.array(start, pa.int64()))
    table = COLLECTIVES.conform(table)
    summary = _matching_summary(group_of, members, size, partial)
    return Matching(table.sort_by([(c, "ascending") for c in COLLECTIVES.sort_by]), summary,
                    uniq[~partial & (members > 1)])


def _matching_summary(group: np.ndarray, members: np.ndarray, size: np.ndarray,
                      partial: np.ndarray) -> dict[str, Any]:
    """The manifest's ``collectives``: instances, how many were matched across every member,
    and per group with partial instances its size and the members the input holds."""
    groups = []
    for g in np.unique(group[partial]).tolist():   # a loop over process groups
        sel = partial & (group == g)
        groups.append({"group": int(g), "size": int(size[sel].max()), "instances": int(sel.sum()),
                       "members_present": int(members[sel].max())})
    known = size >= 1
    sizes = pd.Series(size[known]).groupby(group[known]).max() if known.any() else pd.Series(dtype="int64")
    out: dict[str, Any] = {"instances": int(group.size), "matched": int((~partial).sum()),
                           "partial": int(partial.sum()), "groups": groups,
                           "group_sizes": {str(int(g)): int(v) for g, v in sizes.items()}}
    if groups:
        g = groups[0]
        out["note"] = (f"{out['partial']:,} of {out['instances']:,} collectives lack members (group {g['group']}: "
                       f"{g['members_present']} of its {g['size']} ranks are in the input"
                       f"{'; and more groups' if len(groups) > 1 else ''}): their waits, stragglers and "
                       f"root causes are not computed, per-rank times are")
    return out
