"""Tables that fit the terminal: one unit per column, named in its header, and no number cut.

``render_table`` (in :mod:`sohuprof.analyzers.render`) hands each report table here after
:func:`~sohuprof.analyzers.render.units.format_frame` has turned it into strings. What this
module decides is the layout:

- **width** from the terminal: ``COLUMNS`` when set, else the terminal's, else 160;
- **one-row tables** (summary, serving, a report's scalars) read as ``field / value`` pairs;
- **a table wider than the terminal** is split into column groups that each fit, the leading
  key columns (rank, node, kind, name, ...) repeated in every group, rather than letting rich
  squeeze columns: a number is never cut (numeric columns keep their full width and never
  wrap); only text wraps, folded onto more lines, never ellipsized.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pandas as pd

__all__ = ["terminal_width", "layout", "print_table", "without_aliases", "rank_sums"]

#: Report tables whose times add up the ranks' (a 100 ms run on 8 ranks can show 800 ms of an
#: op): (report, list key) -> the columns that are such sums.
RANK_SUMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("roofline", "ops"): ("time_ns", "headroom_ns"),
    ("roofline", "collectives"): ("time_ns", "headroom_ns"),
    ("comm", "collectives"): ("exposed_ns", "overlapped_ns", "wait_ns"),
    ("kernels", "types"): ("sum_ns",),
    ("kernels", "names"): ("sum_ns",),
}

#: Columns that name a row: repeated in every column group of a split table.
KEY_COLUMNS = ("rank", "node", "chip", "src_node", "dst_node", "kind", "op", "phase", "name", "group", "stream",
               "track", "direction", "kernel_type", "scenario", "step", "cpu_op", "title", "field")
#: Room a column takes beyond its text (rich's padding and the vertical rule).
_PAD = 3
#: Narrowest a folded text column gets.
_MIN_TEXT = 12


def terminal_width(default: int = 160) -> int:
    """The width to lay tables out in: ``COLUMNS``, else the terminal's, else ``default``."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) >= 20:
        return int(env)
    size = shutil.get_terminal_size((default, 24))
    return size.columns if size.columns >= 20 else default


def _is_number_text(series: pd.Series) -> bool:
    """Do the formatted cells read as numbers (right-aligned, never wrapped)?"""
    values = [v for v in series.tolist() if v not in ("", None)]
    if not values:
        return False
    return all(isinstance(v, str) and v[:1] in "-0123456789+i" and any(c.isdigit() for c in v) or v == "inf"
               for v in values)


def without_aliases(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` without the µs aliases of its ns columns (temporal keeps HTA's ``idle_us`` beside
    ``idle_ns`` in its JSON; a table shows each time once)."""
    names = {str(c) for c in df.columns}
    alias = [c for c in df.columns if str(c).endswith("_us") and str(c)[:-3] + "_ns" in names]
    return df.drop(columns=alias) if alias else df


#: Tables whose sums are of another kind, said in their caption.
SUM_NOTES: dict[tuple[str, str], str] = {
    ("comm", "stragglers"): "delay_cost, root_cost: the waiting a rank caused, summed over the ranks that "
                            "waited (it can exceed the wall)",
}


def rank_sums(report: str, title: str, df: pd.DataFrame, ranks: int) -> tuple[pd.DataFrame, str | None]:
    """A table whose times are sums over ranks, with a per-rank mean beside each (``*_per_rank``)
    and the caption that says so; other tables as they are."""
    key = title.split(" · ", 1)[1] if " · " in title else ""
    if (report, key) in SUM_NOTES:
        return df, SUM_NOTES[(report, key)]
    cols = [c for c in RANK_SUMS.get((report, key), ()) if c in df.columns]
    if not cols or ranks <= 1:
        return df, None
    out = df.copy()
    for c in cols:   # a few columns
        at = list(out.columns).index(c) + 1
        out.insert(at, c[:-3] + "_per_rank_ns", out[c] / ranks)
    names = ", ".join(c[:-3] for c in cols)
    return out, f"{names}: summed over {ranks} ranks; *_per_rank is that sum / {ranks}"


def key_value(df: pd.DataFrame) -> pd.DataFrame:
    """A one-row table as ``field / value`` rows."""
    row = df.iloc[0]
    return pd.DataFrame({"field": [str(c) for c in df.columns], "value": [str(v) for v in row.tolist()]})


def layout(df: pd.DataFrame, width: int) -> list[list[str]]:
    """The column groups a formatted table is printed in: every group fits ``width`` (as far as
    its key columns and one other do), key columns first in each."""
    cols = [str(c) for c in df.columns]
    widths = {c: max([len(c)] + [len(str(v)) for v in df[c].tolist()]) + _PAD for c in cols}
    numeric = {c: _is_number_text(df[c]) for c in cols}
    for c in cols:                 # text folds: it needs only its header's width or a little
        if not numeric[c]:
            widths[c] = min(widths[c], max(_MIN_TEXT, len(c)) + _PAD)
    keys = []
    for c in cols[:3]:             # the leading columns that name a row
        if c not in KEY_COLUMNS:
            break
        keys.append(c)
    rest = [c for c in cols if c not in keys]
    budget = width - 1 - sum(widths[k] for k in keys)
    if sum(widths[c] for c in rest) <= budget or not rest:
        return [cols]
    groups: list[list[str]] = []
    current: list[str] = []
    used = 0
    for c in rest:                 # greedy: a loop over columns
        if current and used + widths[c] > budget:
            groups.append(keys + current)
            current, used = [], 0
        current.append(c)
        used += widths[c]
    if current:
        groups.append(keys + current)
    return groups


def print_table(console: Any, title: str, df: pd.DataFrame, caption: str | None, width: int) -> None:
    """Print one formatted (all-string) table on ``console``, split as :func:`layout` says."""
    from rich.table import Table

    if len(df) == 1 and len(df.columns) > 3:
        df = key_value(df)
    groups = layout(df, width)
    for i, cols in enumerate(groups):
        part = title if len(groups) == 1 else f"{title} ({i + 1}/{len(groups)})"
        table = Table(title=part, title_justify="left", caption=caption if i == len(groups) - 1 else None,
                      caption_justify="left")
        for c in cols:
            if _is_number_text(df[c]):
                w = max([len(c)] + [len(str(v)) for v in df[c].tolist()])
                table.add_column(c, justify="right", no_wrap=True, min_width=w, overflow="fold")
            else:
                table.add_column(c, justify="left", overflow="fold")
        for row in df[cols].itertuples(index=False):   # the rows of one report table
            table.add_row(*(str(v) for v in row))
        console.print(table)
