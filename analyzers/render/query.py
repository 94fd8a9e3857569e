"""Render a ``sohuprof query`` result (a pyarrow Table) as a rich table, CSV or JSON.

Values keep the units the query gave them (times in the store are ns); nulls are blank in the
table, empty in CSV and ``null`` in JSON. Binary cells (``quarantine.raw``) are base64 in CSV and
JSON and their size in the table.
"""

from __future__ import annotations

import base64
import decimal
import io
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.render.units import fmt

__all__ = ["render_query", "render_frame", "QUERY_FORMATS"]

QUERY_FORMATS = ("table", "csv", "json")


def _binary_as(table: pa.Table, how: str) -> pa.Table:
    """Binary columns as text: ``base64`` of the bytes or their ``size``."""
    for i, field in enumerate(table.schema):
        if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
            values = table.column(i).to_pylist()   # only binary columns, which are rare and small in rows
            text = [None if v is None else base64.b64encode(v).decode() if how == "base64" else f"<{len(v):,} bytes>"
                    for v in values]
            table = table.set_column(i, field.name, pa.array(text, pa.string()))
    return table


def _frame(table: pa.Table) -> pd.DataFrame:
    """The result as a DataFrame whose integer columns stay integers where they hold nulls (numpy
    would make them floats, and a ts like 1.2e12 would print rounded)."""
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_integer(t) else None)


def _missing(value: Any) -> bool:
    """A null cell: None, pandas' NA or NaT, or a NaN (what pandas makes of a null string)."""
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def _unique(names: list[str]) -> list[str]:
    """``x, x`` as ``x, x_2``."""
    seen: dict[str, int] = {}
    out = []
    for n in names:     # a loop over columns
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def render_frame(df: pd.DataFrame, *, max_rows: int | None = 100, width: int | None = None) -> str:
    """A DataFrame as a rich table, as text, laid out as analyze's tables are (to the terminal's
    width, split into column groups rather than cutting a number; one row as field / value); its
    columns as the query named them and exact (no unit scaling), nulls blank; cut to
    ``max_rows`` with a note."""
    from rich.console import Console

    from sohuprof.analyzers.render.tables import print_table, terminal_width

    title = f"{len(df):,} row{'' if len(df) == 1 else 's'}"
    caption = None
    if max_rows is not None and len(df) > max_rows:   # rendering a bounded table, not events
        caption = f"{len(df) - max_rows:,} more rows: use --format csv or json for all"
        df = df.head(max_rows)
    # One cell per value (the rows are cut to max_rows above); names made unique, as a query may
    # repeat one (SELECT 1 AS x, 2 AS x).
    names = _unique([str(c) for c in df.columns])
    text = pd.DataFrame({n: ["" if _missing(v) else fmt(v, None) for v in df.iloc[:, i].tolist()]
                         for i, n in enumerate(names)}, index=df.index, dtype=object)
    width = width or terminal_width()
    buffer = io.StringIO()
    print_table(Console(file=buffer, width=width, force_terminal=False, color_system=None), title, text, caption, width)
    return buffer.getvalue()


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: DuckDB decimals, intervals and the like."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def render_query(table: pa.Table, fmt: str, *, max_rows: int | None = 100) -> bytes:
    """A query result as bytes to print or write.

    Parameters
    ----------
    table : pyarrow.Table
        What :func:`sohuprof.query.run_query` returned.
    fmt : str
        ``table`` (rich text, cut to ``max_rows`` with a note), ``csv`` (a header line, then
        every row) or ``json`` (a list of row objects).
    max_rows : int or None, default 100
        Rows the ``table`` format shows; None: all.
    """
    table = table.rename_columns(_unique(table.column_names))   # one key per column in every format
    if fmt == "table":
        shown = _binary_as(table, "size")
        for i, field in enumerate(shown.schema):   # DECIMAL(2,1) reads as a number, right-aligned
            if pa.types.is_decimal(field.type):
                shown = shown.set_column(i, field.name, shown.column(i).cast(pa.float64()))
        df = _frame(shown)
        return render_frame(df, max_rows=max_rows).encode()
    plain = _binary_as(table, "base64")
    if fmt == "csv":
        return _frame(plain).to_csv(index=False).encode()
    if fmt == "json":
        return orjson.dumps(plain.to_pylist(), default=_json_default,
                            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    raise ValueError(f"'fmt' must be one of {', '.join(QUERY_FORMATS)}; got {fmt!r}")
