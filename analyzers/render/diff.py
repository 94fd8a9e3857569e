"""The diff for people and tools: its JSON, the terminal tables, and one small HTML page.

Everything is read from :meth:`~sohuprof.analyzers.diff.DiffResult.to_json` under the key
``diff``, through the same table and JSON renderers as ``analyze`` (``*_ns`` shown in ms). The
HTML page is self-contained and script-free: the top changes with a bar for each, then every
table whole.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sohuprof.analyzers.diff import DiffResult
from sohuprof.analyzers.render import reading_tables, render_json, render_table
from sohuprof.analyzers.render.units import format_frame
from sohuprof.analyzers.report import Reports
from sohuprof.atomic import open_output

__all__ = ["diff_json", "diff_text", "write_diff_html"]


@dataclass(frozen=True)
class _AsReports:
    """The diff as one report named ``diff``: the renderers read nothing but ``to_json``."""

    result: DiffResult

    def to_json(self) -> dict[str, Any]:
        return {"diff": self.result.to_json()}


def _reports(result: DiffResult) -> Reports:
    return cast(Reports, _AsReports(result))


def diff_json(result: DiffResult) -> bytes:
    """``{"diff": {...}}`` as indented JSON."""
    return render_json(_reports(result))


def diff_text(result: DiffResult, *, max_rows: int = 20) -> str:
    """The diff's tables as text (long lists cut to ``max_rows``, with a note)."""
    return render_table(_reports(result), max_rows=max_rows)


_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
          "table{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:13px}"
          "td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f4f4f4}"
          "td.name{text-align:left;max-width:48em;overflow-wrap:anywhere}h2{margin-top:1.6em}"
          ".bar{display:inline-block;height:10px}.up{background:#d62728}.down{background:#2ca02c}"
          "ul.notes{color:#555}")


def _top_html(rows: list[dict[str, Any]]) -> str:
    """The top changes, each with a bar as long as its |delta| (red slower, green faster)."""
    if not rows:
        return "<p>No change: every name has the same count and time in both.</p>"
    scale = max(abs(r["delta_ns"]) for r in rows) or 1
    head = "<tr><th>rank</th><th>name</th><th>category</th><th>delta_ms</th><th>delta_pct</th><th></th></tr>"
    body = []
    for r in rows:   # at most --top rows
        width = 200 * abs(r["delta_ns"]) / scale
        pct = "-" if r["delta_pct"] is None else f"{r['delta_pct']:+.2f}"
        rank = "" if r["rank"] is None else r["rank"]
        body.append(f"<tr><td>{rank}</td><td class='name'>{html.escape(str(r['name']))}</td>"
                    f"<td>{html.escape(str(r['category']))}</td><td>{r['delta_ns'] / 1e6:+,.3f}</td><td>{pct}</td>"
                    f"<td style='text-align:left'><span class='bar {'up' if r['delta_ns'] > 0 else 'down'}' "
                    f"style='width:{width:.0f}px'></span> {html.escape(r['status'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def write_diff_html(result: DiffResult, out: Path, *, force: bool = False) -> Path:
    """One self-contained page; ``out`` as :func:`sohuprof.atomic.open_output` takes it (``-``, a
    device, or a file written whole, an existing one refused unless ``force``)."""
    data = result.to_json()
    title = f"sohuprof diff: {data['runs'][0]['path']} vs {data['runs'][1]['path']}"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if data["notes"]:
        parts.append("<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in data["notes"]) + "</ul>")
    parts.append("<h2>top changes (B - A)</h2>" + _top_html(data["top"]))
    for name, df, _ in reading_tables("diff", data, max_rows=None):
        if name in ("diff · notes", "diff · top"):
            continue
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(format_frame(df).to_html(index=False, border=0) if len(df.columns) else "<p>none</p>")
    parts.append("</body></html>")
    with open_output(out, force=force) as fh:
        fh.write("\n".join(parts).encode("utf-8"))
    return out
