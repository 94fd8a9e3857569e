"""One partition of the events as the analyses see it, with what they derive from it decoded once.

The engines hand every analysis's ``chunk`` the same :class:`Partition` (one rank's events): the
columns as numpy arrays, dictionary codes and category masks are computed on first use and kept,
so stalls, comm and roofline, which read the same ``ts``/``dur``/``category`` columns, decode
them once, and stalls and comm share one activity sweep (:mod:`sohuprof.analyzers.activity`).
A ``chunk`` given a bare :class:`pyarrow.Table` wraps it (:func:`as_partition`); the reports'
functions of a DataFrame check what they were given with :func:`events_table` and split a table
of several ranks with :func:`rank_partitions`.

Not thread-safe: one partition is processed by one thread (the engines' unit of work).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof import kernels

__all__ = ["Partition", "as_partition", "dictionary_codes", "events_table", "rank_partitions", "require_columns"]


def dictionary_codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[Any]]:
    """Integer codes of a (dictionary) string column and its values; null is ``len(values)``.

    Chunks with different dictionaries (one per Parquet row group) are unified first.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            column = column.chunk(0)
        elif pa.types.is_dictionary(column.type):
            column = column.unify_dictionaries().combine_chunks()
        else:
            column = column.combine_chunks()
    if not pa.types.is_dictionary(column.type):
        column = column.dictionary_encode()
    values = column.dictionary.to_pylist()
    indices = column.indices
    if indices.null_count:
        indices = indices.fill_null(len(values))
    return indices.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), values


class Partition:
    """Events of one partition (normally one rank's) and arrays derived from them, cached.

    Parameters
    ----------
    table : pyarrow.Table
        The events, with whichever columns the running analyses asked for.
    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self._ints: dict[tuple[str, int], np.ndarray] = {}
        self._codes: dict[str, tuple[np.ndarray, list[Any]]] = {}
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self.cache: dict[str, Any] = {}   # what an analysis derives and another reuses (the sweep)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @cached_property
    def rank(self) -> int:
        """The partition's rank (its first row's): meaningful when it holds one rank."""
        return int(self.table.column("rank")[0].as_py())

    @property
    def column_names(self) -> list[str]:
        return self.table.column_names

    def column(self, name: str) -> pa.ChunkedArray:
        """Column ``name`` as Arrow (what :class:`pyarrow.Table` gives)."""
        return self.table.column(name)

    @cached_property
    def single_rank(self) -> int | None:
        """The rank when every row has the same one (what the engines hand over), else None."""
        if not self.num_rows:
            return None
        span = pc.min_max(self.table.column("rank"))     # no int64 copy of the column
        lo, hi = span["min"].as_py(), span["max"].as_py()
        return int(lo) if lo == hi and lo is not None else None

    def has(self, name: str) -> bool:
        return name in self.table.column_names

    def ints(self, name: str, fill: int = 0) -> np.ndarray:
        """Column ``name`` as int64, nulls as ``fill`` (read-only: shared between analyses)."""
        key = (name, fill)
        out = self._ints.get(key)
        if out is None:
            col = self.table.column(name)
            if col.null_count == len(col):   # all null: pandas' all-None column is of null type, unfillable
                out = np.full(len(col), fill, np.int64)
            else:
                out = np.asarray((col.fill_null(fill) if col.null_count else col).to_numpy(), dtype=np.int64)
            out.flags.writeable = False
            self._ints[key] = out
        return out

    @cached_property
    def ts(self) -> np.ndarray:
        return self.ints("ts")

    @cached_property
    def end(self) -> np.ndarray:
        out = self.ts + self.ints("dur")
        out.flags.writeable = False
        return out

    def codes(self, name: str) -> tuple[np.ndarray, list[Any]]:
        """Dictionary codes of string column ``name`` and its values (null: ``len(values)``)."""
        out = self._codes.get(name)
        if out is None:
            out = self._codes[name] = dictionary_codes(self.table.column(name))
        return out

    def grouped(self, name: str) -> tuple[np.ndarray, dict[Any, slice]]:
        """Rows ordered by string column ``name`` (stably: each value's rows keep their order) and
        each value's slice of that order: one radix sort, then every value's rows of any column
        are a slice of one gather, not a boolean mask and a compress per value."""
        key = f"grouped:{name}"
        out = self.cache.get(key)
        if out is None:
            codes, values = self.codes(name)
            # A counting sort (compiled): the codes are few, so it is O(n), not a radix sort's passes.
            order, bounds = np.empty(len(codes), np.int64), np.empty(len(values) + 2, np.int64)
            kernels.counting_order(codes, bounds, order)
            out = self.cache[key] = (order, {v: slice(int(bounds[i]), int(bounds[i + 1]))
                                             for i, v in enumerate([*values, None])})
        return out

    def equals(self, name: str, value: str) -> np.ndarray:
        """Boolean mask of string column ``name`` equal to ``value`` (decided once per dictionary)."""
        key = (name, value)
        out = self._masks.get(key)
        if out is None:
            codes, values = self.codes(name)
            hits = np.array([v == value for v in values] + [False])   # a loop over the dictionary
            out = self._masks[key] = hits[codes]
        return out


def as_partition(events: pa.Table | Partition) -> Partition:
    """``events`` as a :class:`Partition` (a table is wrapped; a partition is returned as is)."""
    return events if isinstance(events, Partition) else Partition(events)


def events_table(events: pd.DataFrame | pa.Table, need: tuple[str, ...]) -> pa.Table:
    """``events`` as a :class:`pyarrow.Table` (a DataFrame is converted), checked to hold the
    columns ``need``: what a report's function of an events table is given.

    Raises
    ------
    TypeError
        ``events`` is neither a DataFrame nor a Table.
    ValueError
        A column of ``need`` is missing.
    """
    if isinstance(events, pd.DataFrame):
        events = pa.Table.from_pandas(events, preserve_index=False)
    elif not isinstance(events, pa.Table):
        raise TypeError(f"'events' must be a pandas.DataFrame or pyarrow.Table, got {type(events).__name__}")
    require_columns(events, need, "; read them from the store's events table")
    return events


def require_columns(events: pa.Table, need: tuple[str, ...], hint: str) -> None:
    """Raise :class:`ValueError` naming the columns of ``need`` that ``events`` lacks, then ``hint``."""
    missing = [c for c in need if c not in events.column_names]
    if missing:
        raise ValueError(f"'events' lacks column(s) {', '.join(map(repr, missing))}{hint}")


def rank_partitions(events: pa.Table | Partition) -> list[Partition]:
    """``events`` split by rank, ranks ascending (none for no events): a partition of one rank
    (what the engines hand over) is returned as is, its cache kept; a table of several (tests,
    the reports' functions) gives a new partition per rank. No ``rank`` column: all rank 0."""
    part = as_partition(events)
    if not part.num_rows:
        return []
    if not part.has("rank"):
        part = Partition(part.table.append_column("rank", pa.array(np.zeros(part.num_rows, np.int32))))
    if part.single_rank is not None:
        return [part]
    rank = part.ints("rank")
    return [Partition(part.table.filter(pa.array(rank == r))) for r in np.unique(rank).tolist()]   # a loop over ranks
