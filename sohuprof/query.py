"""SQL over a trace store: its tables as DuckDB views, one read-only statement at a time.

Views (one per table of the store, see :mod:`sohuprof.schema`, plus ``ranks``)::

    events       every op and kernel; ``node`` from the events/node=N partition directories
    collectives  collective instance x participating rank (arrive, start, end in ns)
    requests     served requests
    counters     counter samples
    quarantine   pieces of input that could not be read
    ranks        rank, node, chip (the manifest's, else the distinct ones in the events)

Times are int64 ns, as stored. The connection is in memory and the store is only read: a
statement other than a query (``SELECT``, ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``, ``SHOW``,
``SUMMARIZE``, ``EXPLAIN``) is refused before it runs.
"""

from __future__ import annotations

import re

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.errors import QueryError
from sohuprof.schema import ALL_TABLES, EVENTS
from sohuprof.store import PathLike, TraceStore, open_store

__all__ = ["run_query", "load_sql", "VIEWS", "VIEWS_HINT"]

#: The views a query sees, in the order the help lists them.
VIEWS = ("events", "collectives", "requests", "counters", "quarantine", "ranks")
#: What to do after a failed query: the views and how to look at one.
VIEWS_HINT = f"the views are {', '.join(VIEWS)}: `sohuprof query STORE 'DESCRIBE events'`"

# Statement types that only read. DESCRIBE, SHOW, SUMMARIZE, FROM-first and VALUES parse as SELECT.
_READ_ONLY = frozenset({"SELECT", "EXPLAIN"})


def _sql_string(text: str) -> str:
    """``text`` as a SQL string literal (a store path may hold a quote)."""
    return "'" + text.replace("'", "''") + "'"


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join(_sql_string(p) for p in paths) + "]"


def _duck_type(arrow: pa.DataType) -> str:
    """The DuckDB type of an events column's Arrow type (those the schema uses)."""
    if pa.types.is_dictionary(arrow) or pa.types.is_string(arrow):
        return "VARCHAR"
    return {pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE"}[arrow]


def _connect() -> "duckdb.DuckDBPyConnection":  # noqa: F821 (imported lazily: ~0.2 s)
    """An in-memory connection that never downloads an extension behind a query's back."""
    try:
        import duckdb
    except ImportError:
        raise QueryError("sohuprof query needs DuckDB: pip install 'duckdb>=1.0'") from None
    return duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})


def _register_views(con: "duckdb.DuckDBPyConnection", store: TraceStore) -> None:  # noqa: F821
    """Create the views over the store's files (read lazily, at query time)."""
    # The part files open_store validated, named one by one: a path with glob characters in it
    # stays literal, and nothing but the store's own parts (no hidden leftovers) is read.
    parts = sorted(os.fspath(p) for p in store.dataset().files)
    if parts:
        source = (f"read_parquet({_sql_list(parts)}, hive_partitioning = true, "
                  f"hive_types = {{'node': INTEGER}}, union_by_name = true)")
        present = [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()]
        # The schema's column order (node third, as everywhere else); an optional column no file
        # has (cat, stream in a Sohu store) as typed nulls, as TraceStore.read gives it.
        cols = ", ".join(f'"{f.name}"' if f.name in present else f'NULL::{_duck_type(f.type)} AS "{f.name}"'
                         for f in EVENTS.schema)
        cols += "".join(f', "{c}"' for c in present if c not in EVENTS.column_names)
        con.execute(f"CREATE VIEW events AS SELECT {cols} FROM {source}")
    else:   # a store with no events: the view still has every column, and no rows
        cols = ", ".join(f'NULL::{_duck_type(f.type)} AS "{f.name}"' for f in EVENTS.schema)
        con.execute(f"CREATE VIEW events AS SELECT {cols} WHERE false")
    for spec in ALL_TABLES:
        if spec.name != EVENTS.name:
            path = _sql_string(os.fspath(Path(store.path) / spec.path))
            con.execute(f'CREATE VIEW "{spec.name}" AS SELECT * FROM read_parquet({path})')
    entries = store.manifest.get("ranks") or []
    if entries and all(isinstance(r, dict) and {"rank", "node", "chip"} <= r.keys() for r in entries):
        # ints (open_store checked them), written out as values: nothing else shows in SHOW TABLES
        rows = ", ".join(f"({int(r['rank'])}, {int(r['node'])}, {int(r['chip'])})"
                         for r in sorted(entries, key=lambda r: int(r["rank"])))
        con.execute(f"CREATE VIEW ranks AS SELECT rank::INTEGER AS rank, node::INTEGER AS node, "
                    f"chip::INTEGER AS chip FROM (VALUES {rows}) AS t(rank, node, chip)")
    else:   # an older manifest lists bare rank numbers: the events say where each one ran
        con.execute("CREATE VIEW ranks AS SELECT DISTINCT rank, node, chip FROM events ORDER BY rank")


def _check_read_only(con: "duckdb.DuckDBPyConnection", sql: str) -> None:  # noqa: F821
    """Refuse anything but one query (COPY, ATTACH, INSTALL, LOAD, CREATE, SET ...)."""
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"{_first_line(exc)}; {VIEWS_HINT}") from None
    if not statements:
        raise QueryError(f"the query is empty; {VIEWS_HINT}")
    if len(statements) > 1:
        raise QueryError(f"the query holds {len(statements)} statements; give one at a time")
    kind = statements[0].type.name
    if kind == "EXPLAIN":
        # EXPLAIN ANALYZE runs what it explains: the statement inside must be a query too.
        inner = re.match(r"\s*EXPLAIN\s+(?:ANALYZE\s+)?(.*)\Z", statements[0].query, flags=re.I | re.S)
        if inner is None or not inner.group(1).strip():
            raise QueryError("EXPLAIN must come first and explain one query; the store is read-only")
        _check_read_only(con, inner.group(1))
        return
    if kind not in _READ_ONLY:
        first = sql.split(None, 1)[0].upper()
        word = first if first.isalpha() else kind   # "-- note" or "(" first: the parser's name
        raise QueryError(f"{word} statements are refused: the store is read-only and a query may only "
                         f"SELECT (also WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) from the views")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _integers(table: pa.Table) -> pa.Table:
    """DuckDB's HUGEINT sums arrive as decimal128(38, 0): as int64 where every value fits."""
    for i, field in enumerate(table.schema):
        if pa.types.is_decimal(field.type) and field.type.scale == 0:
            try:
                table = table.set_column(i, field.name, pc.cast(table.column(i), pa.int64()))
            except pa.ArrowInvalid:   # a value beyond int64: keep the exact decimal
                pass
    return table


def load_sql(text: str) -> str:
    """The SQL a command line gave: ``text`` itself, or the file it names as ``@file.sql``.

    Raises
    ------
    QueryError
        The file cannot be read.
    """
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else _first_line(exc)
        raise QueryError(f"cannot read the query file {str(path)!r}: {why}") from None


def run_query(store: PathLike, sql: str) -> pa.Table:
    """Run one read-only SQL statement over a trace store's tables.

    Parameters
    ----------
    store : str or os.PathLike
        A trace store (``sohuprof collect``); it is validated first, as :func:`open_store` does.
    sql : str
        One DuckDB query over the views ``events``, ``collectives``, ``requests``, ``counters``,
        ``quarantine`` and ``ranks``.

    Returns
    -------
    pyarrow.Table
        The result; integer sums as int64 where they fit.

    Raises
    ------
    StoreError
        ``store`` is not a sound trace store.
    QueryError
        The statement is not a query, or DuckDB rejects it (the message is its first line plus
        what to do).

    Examples
    --------
    >>> run_query("sample_traces/mixtral-2node/store", "SELECT count(*) AS n FROM ranks")  # doctest: +SKIP
    pyarrow.Table
    n: int64
    ----
    n: [[16]]
    """
    opened = open_store(store)
    con = _connect()
    import duckdb

    try:
        _check_read_only(con, sql)
        _register_views(con, opened)
        relation = con.sql(sql)
        if relation is None:   # not reached: only queries pass the check
            raise QueryError(f"the statement returned no rows; {VIEWS_HINT}")
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow   # 1.x names it arrow()
        return _integers(fetch())
    except duckdb.IOException as exc:   # a file changed or damaged since the store was opened
        raise QueryError(f"{_first_line(exc)}; `sohuprof check {store}` verifies the store") from None
    except duckdb.Error as exc:
        raise QueryError(f"{_first_line(exc)}; {VIEWS_HINT}") from None
    finally:
        con.close()
