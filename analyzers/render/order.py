"""The order of a table for reading: each table's own ranking, or a column the user names.

A table cut to its first rows (``analyze --top N``) must show the worst rows by the report's own
ranking, never the first ranks: :data:`TABLE_ORDER` gives each table its key (largest first), and
``analyze --sort COLUMN`` overrides it for every table that has that column. Rendering only: the
reports' JSON keeps its order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import pandas as pd

from sohuprof.errors import SohuprofError

__all__ = ["TABLE_ORDER", "SortError", "check_sort", "order_table", "table_sort"]


class SortError(SohuprofError, ValueError):
    """A ``--sort`` column no table has."""


def _column(name: str) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: df[name]


#: Table title -> its ranking key (largest first). Tables not named keep the report's order.
TABLE_ORDER: dict[str, Callable[[pd.DataFrame], pd.Series]] = {
    "roofline · ops": _column("headroom_ns"),
    "roofline · collectives": _column("headroom_ns"),
    # The rank losing most time to anything but compute: what the stall split is for.
    "stalls · ranks": lambda df: df["wall_ns"] - df["compute_ns"],
    "comm · collectives": _column("exposed_ns"),
    "comm · stragglers": _column("root_cost_ns"),
    "comm · links": _column("time_ns"),
    "comm · overlap": lambda df: df["comm_ns"] - df["overlapped_ns"],
}

#: The ``--sort`` column of the current rendering (None: each table's own ranking).
_SORT: ContextVar[str | None] = ContextVar("sohuprof_table_sort", default=None)


@contextmanager
def table_sort(column: str | None) -> Iterator[None]:
    """Render the tables inside the block sorted by ``column`` (largest first) where they have it."""
    token = _SORT.set(column)
    try:
        yield
    finally:
        _SORT.reset(token)


def _resolve(df: pd.DataFrame, column: str) -> str | None:
    """``column`` as the table names it: a shown ``*_ms`` (or unit-less ``delay_cost``) column is
    a ``*_ns`` one underneath."""
    if column in df.columns:
        return column
    if column.endswith("_ms") and column[:-3] + "_ns" in df.columns:
        return column[:-3] + "_ns"
    if column + "_ns" in df.columns:   # the name a table header shows, without its unit
        return column + "_ns"
    return None


def order_table(title: str, df: pd.DataFrame, *, cut: bool, sort: str | None = None) -> pd.DataFrame:
    """``df`` in reading order: by ``sort`` (default: the current :func:`table_sort`) where it has
    that column, else, when it is about to be ``cut``, by its :data:`TABLE_ORDER` key; numbers
    largest first, text A to Z, ties keeping the report's order, missing values last."""
    sort = sort if sort is not None else _SORT.get()
    name = _resolve(df, sort) if sort is not None else None
    if name is not None:
        key = df[name]
    elif cut and title in TABLE_ORDER:
        try:
            key = TABLE_ORDER[title](df)
        except KeyError:      # a table whose columns changed: keep the report's order
            return df
    else:
        return df
    numeric = pd.api.types.is_numeric_dtype(key)   # names read A to Z, numbers largest first
    key = key if numeric else key.astype(str)
    order = key.reset_index(drop=True).sort_values(ascending=not numeric, kind="stable", na_position="last").index
    return df.iloc[order.to_numpy()].reset_index(drop=True)


def check_sort(column: str, tables: Iterable[tuple[str, pd.DataFrame]]) -> None:
    """Refuse a ``--sort`` column no table has, naming the columns there are.

    Raises
    ------
    SortError
        No table in ``tables`` has ``column`` (or its ``*_ns`` form for a ``*_ms`` name).
    """
    seen: dict[str, None] = {}
    for _, df in tables:
        if _resolve(df, column) is not None:
            return
        seen.update(dict.fromkeys(c[:-3] + "_ms" if str(c).endswith("_ns") else str(c) for c in df.columns))
    raise SortError(f"'--sort' column {column!r} is in none of the tables; pick one of: {', '.join(seen)}")
