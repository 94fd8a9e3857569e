"""Render report results for people and tools: rich tables, JSON, CSV files, one HTML page.

Rendering reads only the reports' JSON form (and, for HTML figures, their DataFrames); it never
computes an analysis. Tables show ``*_ns`` columns in ms for reading; JSON and CSV keep ns.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from sohuprof.analyzers.report import Reports
from sohuprof.atomic import marked_directory, open_output

__all__ = ["report_tables", "reading_tables", "render_json", "render_table", "csv_text", "write_csv", "write_html",
           "FORMATS",
           "CSV_MARKER"]

FORMATS = ("table", "json", "csv", "html")


def _flatten(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}_{sub}"] = v
        else:
            out[key] = value
    return out


def report_tables(name: str, data: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """A report's JSON as titled tables (what CSV writes): scalars in one overview row, each list
    its own table; the what-if's scenarios and their steps as two tidy tables."""
    if name == "whatif":
        from sohuprof.analyzers.render.diagnosis import whatif_tables

        return whatif_tables(data)
    if name == "findings":
        from sohuprof.analyzers.render.diagnosis import findings_tables

        return findings_tables(data)
    tables: list[tuple[str, pd.DataFrame]] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, list)}
    if scalars:
        tables.append((name, pd.DataFrame([_flatten(scalars)])))
    for key, value in data.items():
        if isinstance(value, list):
            tables.append((f"{name} · {key}", pd.DataFrame([_flatten(v) if isinstance(v, dict) else {"value": v}
                                                             for v in value])))
    return tables


def reading_tables(name: str, data: dict[str, Any], *, max_rows: int | None = 20,
                   sort: str | None = None) -> list[tuple[str, pd.DataFrame, str | None]]:
    """A report's tables for a person (table and HTML): (title, table, caption), lists cut to
    ``max_rows`` (None: whole), the diagnosis reports shaped for reading. A cut table keeps its
    worst rows by the table's own ranking; ``sort`` (default: the enclosing
    :func:`~sohuprof.analyzers.render.order.table_sort`) orders every table that has that column
    (see :mod:`sohuprof.analyzers.render.order`)."""
    from sohuprof.analyzers.render.diagnosis import critical_path_view, findings_view, whatif_view
    from sohuprof.analyzers.render.order import order_table

    if name == "findings":
        return findings_view(data, max_rows=max_rows)
    if name == "whatif":
        return whatif_view(data, edge_steps=3 if max_rows is not None else None)
    if name == "critical_path":
        return critical_path_view(data, max_rows=max_rows)
    out = []
    for title, df in report_tables(name, data):
        caption = None
        df = order_table(title, df, cut=max_rows is not None and len(df) > max_rows, sort=sort)
        if max_rows is not None and len(df) > max_rows:   # rendering a bounded table, not events
            caption = f"{len(df) - max_rows} more rows: use --format csv or json for all"
            df = df.head(max_rows)
        out.append((title, df, caption))
    return out


def render_json(reports: Reports) -> bytes:
    return orjson.dumps(reports.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY
                        | orjson.OPT_NON_STR_KEYS) + b"\n"






def render_table(reports: Reports, *, max_rows: int = 20, width: int | None = None) -> str:
    """Rich tables, as text (the longest lists are cut to ``max_rows``, with a note); the findings
    first, as numbered sentences with their saving rather than a table. Each column in one unit
    named in its header, numbers with SI prefixes, laid out to ``width`` (default: the
    terminal's) without cutting a number (:mod:`sohuprof.analyzers.render.tables`)."""
    from rich.console import Console

    from sohuprof.analyzers.render.diagnosis import findings_text
    from sohuprof.analyzers.render.tables import print_table, rank_sums, terminal_width, without_aliases
    from sohuprof.analyzers.render.units import format_frame

    width = width or terminal_width()
    ctx = getattr(reports, "ctx", None)      # a diff's tables come without one
    ranks = len(ctx.ranks) if ctx is not None else 1
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=False, color_system=None)
    for name, data in reports.to_json().items():
        if name == "findings":
            console.file.write(findings_text(data, top=max_rows, width=min(console.width, 120)) + "\n")
            continue
        for title, df, caption in reading_tables(name, data, max_rows=max_rows):
            df, summed = rank_sums(name, title, without_aliases(df), ranks)
            caption = "; ".join(c for c in (summed, caption) if c) or None
            print_table(console, title, format_frame(df), caption, width)   # at most max_rows
    return buffer.getvalue()



#: Marker file of a CSV report directory: lists the files a run wrote, so a re-run may replace
#: them and nothing else.
CSV_MARKER = ".sohuprof-csv"


def csv_text(reports: Reports) -> bytes:
    """The one table of ``reports`` as CSV text (``--format csv -o -``: a stream is one table).

    Raises
    ------
    ReportError
        The reports hold more (or fewer) than one table: name them in a directory instead.
    """
    from sohuprof.analyzers.analysis import ReportError

    tables = [(title, df) for name, data in reports.to_json().items() for title, df in report_tables(name, data)]
    if len(tables) != 1:
        names = ", ".join(t for t, _ in tables[:4]) + (" ..." if len(tables) > 4 else "")
        raise ReportError(f"--format csv -o - writes one table and these reports make {len(tables)} ({names}): "
                          f"give -o DIR, or --report one report with one table (e.g. --report stalls)")
    df = tables[0][1]
    return (df.to_csv(index=False) if len(df.columns) else "value\n").encode()


def write_csv(reports: Reports, out_dir: Path, *, force: bool = False) -> list[Path]:
    """One CSV per table into ``out_dir``, beside a ``.sohuprof-csv`` marker listing them.

    A new directory, or one holding only an earlier run's CSVs, appears whole in one rename;
    otherwise (an empty directory, an earlier output a user added files to, or any other
    directory with ``force``) the files are moved in one at a time and no file this command did
    not write is removed (see :func:`sohuprof.atomic.marked_directory`).

    Parameters
    ----------
    reports : Reports
        The reports to write.
    out_dir : pathlib.Path
        The directory (a symlink to one is followed).
    force : bool, default False
        Write into a non-empty directory that is not an earlier CSV output, replacing files of
        the same names; its other files are kept.

    Returns
    -------
    list of pathlib.Path
        The CSV files written.

    Raises
    ------
    OutputError
        ``out_dir`` is a file, a device or ``-``; a non-empty directory that is not an earlier
        CSV output (without ``force``); or it cannot be written.
    """
    written = []
    with marked_directory(out_dir, marker=CSV_MARKER, force=force) as tmp:
        for name, data in reports.to_json().items():
            for title, df in report_tables(name, data):
                fname = title.replace(" · ", "_") + ".csv"
                if df.columns.empty:   # an empty list: a header-only file pandas can read back
                    df = pd.DataFrame(columns=["value"])
                df.to_csv(tmp / fname, index=False)
                written.append(out_dir / fname)
    return written


def write_html(reports: Reports, out: Path, *, force: bool = False) -> Path:
    """One self-contained page: a title block (model, hardware, plan, workload, faults, source,
    store, version, time), contents, the findings, then each report's figure and tables (numbers
    in SI units); plotly.js inlined once (see :mod:`sohuprof.analyzers.render.html_report`).

    ``out`` may be ``-`` (stdout), a device or FIFO (written through) or a file, which appears
    whole in one rename (a symlink's target is replaced, the link kept); an existing file is
    refused unless ``force`` (see :func:`sohuprof.atomic.open_output`).
    """
    from sohuprof.analyzers.render.html_report import report_html

    page = report_html(reports)
    with open_output(out, force=force) as fh:
        fh.write(page.encode("utf-8"))
    return out
