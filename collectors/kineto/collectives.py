"""Collectives from NCCL kernels: their args, instance ids across ranks, arrival and start."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from sohuprof.collectors.kineto.checks import (
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
    for key in ("collective", "group", "dtype"):  # three columns, not a loop over events
        values = _field(args, key)
        if loose:
            bad = wrong_type(values, (str,))
            verdict.flag(_scatter(bad, rows, verdict.code.size), key)
            values = blank(values, bad)
        out[key] = pa.array(values, pa.string())
    out["nelems"], bad = int_column(_field(args, "nelems"), lenient=loose, high=MAX_NELEMS)
    verdict.flag(_scatter(bad, rows, verdict.code.size), "nelems")
    return out


def _collectives(rank: int, rows: np.ndarray, ts: np.ndarray, dur: np.ndarray, kind: np.ndarray,
                 pg: pa.Array, nelems: pa.Array, dtype: pa.Array) -> tuple[pa.Array, pa.Table]:
    """``coll_id`` per event, and this rank's collective rows (``start`` still missing).

    ``rows`` are the NCCL kernels' event indices; ``kind`` (their op codes), ``pg`` (process
    group names), ``nelems`` and ``dtype`` hold what belongs to them, in the same order.
    """
    n = len(ts)
    if rows.size == 0:
        return pa.nulls(n, pa.int64()), COLLECTIVES.empty().drop_columns(["start"])
    pg_enc = pg.fill_null("0").dictionary_encode()
    group_of = np.array([_group_id(g) for g in pg_enc.dictionary.to_pylist()], dtype=np.int64)
    group = group_of[_codes(pg_enc)]
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
    })
    return pa.array(coll_id, pa.int64(), mask=mask), table


def _group_id(name: str) -> int:
    """A process group's id, the same on every rank: its name if numeric, else a CRC32."""
    if name.isdigit() and int(name) < 2**31:
        return int(name)
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _finish_collectives(parts: list[pa.Table]) -> pa.Table:
    """Join every rank's collective rows and set ``start`` to each instance's last arrival."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return COLLECTIVES.empty()
    table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
    ids = table.column("coll_id").to_numpy()
    arrive = table.column("arrive").to_numpy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    last = np.full(uniq.size, np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, arrive)
    table = table.append_column("start", pa.array(last[inverse], pa.int64()))
    table = COLLECTIVES.conform(table)
    return table.sort_by([(c, "ascending") for c in COLLECTIVES.sort_by])
