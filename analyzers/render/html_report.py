"""The HTML report: one self-contained page that opens offline.

A title block (what was run: model, hardware, parallel plan, workload, faults, source and store,
sohuprof version, when), a table of contents, the findings, then each report with its figure
first and its tables after, numbers in SI units with the unit in the column header (see
:mod:`sohuprof.analyzers.render.units`). plotly.js is inlined once, with the first figure.
Nothing here computes an analysis: it reads the reports' JSON form and their figures.
"""

from __future__ import annotations

import datetime as _dt
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from sohuprof.analyzers.render.units import duration, format_frame, si

__all__ = ["report_html", "title_facts", "EMPTY_NOTES"]

#: One line for a table with no rows where having none says something; other empty tables are left out.
EMPTY_NOTES = {
    "comm · links": "no cross-node traffic",
    "comm · stragglers": "no straggler: no rank held its peers back",
    "comm · collectives": "no collectives in this trace",
    "comm · nics": "no NIC traffic recorded",
    "comm · overlap": "no communication to overlap",
}

#: Tables longer than this are folded (a click opens them): the figures and short tables come first.
FOLD_ROWS = 40

_CSS = """
body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;padding:1.5em 2em;max-width:1400px;color:#222}
header.title{border-bottom:2px solid #333;margin-bottom:1em;padding-bottom:.5em}
header.title h1{margin:.2em 0 .4em}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1.2em;margin:0;font-size:14px}
dl.facts dt{font-weight:600;color:#555}dl.facts dd{margin:0}
nav.toc{background:#f7f7f7;border:1px solid #e3e3e3;padding:.4em 1.2em;margin:1em 0;font-size:14px}
nav.toc ol{margin:.3em 0;padding-left:1.4em}nav.toc ol ol{list-style:none;padding-left:1em;color:#555}
table{border-collapse:collapse;margin:.4em 0 1.4em;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td.text,th.text{text-align:left}
h2{margin-top:1.8em;border-bottom:1px solid #ccc}h3{margin:1.2em 0 .3em;font-size:15px}
ol.findings li{margin:.5em 0}.note{color:#666}.empty{color:#666;font-style:italic}
details{color:#555;font-size:13px}code{font-size:12px}div.scroll{overflow-x:auto;max-width:100%}
"""


def _fmt_spec(d: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k} {d[k]}" for k in keys if d.get(k) not in (None, "", [], {}))


def title_facts(manifest: dict[str, Any], *, store_path: Path | str | None = None,
                generated: _dt.datetime | None = None) -> list[tuple[str, str]]:
    """(label, text) facts of the title block from a store's manifest: model, hardware, parallel
    plan, workload and faults of a Sohu run; source files, devices and world size of a profiler
    trace; the source and store paths, the sohuprof version and when the page was made."""
    facts: list[tuple[str, str]] = []
    source = manifest.get("source") or {}
    model = manifest.get("model") or {}
    if model:
        extra = _fmt_spec(model, ["dtype", "layers", "hidden", "heads", "kv_heads", "experts", "top_k"])
        facts.append(("Model", f"{model.get('name', '?')}" + (f" ({extra})" if extra else "")))
    hw = manifest.get("hardware") or {}
    if hw.get("name") or hw.get("description"):
        roofs = [f"{si(hw[k], 'FLOP/s')} {k.removeprefix('peak_flops_')}" for k in sorted(hw)
                 if k.startswith("peak_flops") and hw[k]]
        if hw.get("hbm_bandwidth"):
            roofs.append(f"HBM {si(hw['hbm_bandwidth'], 'B/s')}")
        if hw.get("hbm_bytes"):
            roofs.append(f"{si(hw['hbm_bytes'], 'B')} HBM")
        if hw.get("intra_node_bandwidth"):
            roofs.append(f"intra-node {si(hw['intra_node_bandwidth'], 'B/s')}")
        if hw.get("inter_node_bandwidth"):
            roofs.append(f"inter-node {si(hw['inter_node_bandwidth'], 'B/s')}")
        facts.append(("Hardware", f"{hw.get('description') or hw.get('name')}" + (f" · {', '.join(roofs)}" if roofs else "")))
    if hw.get("devices"):
        facts.append(("Devices", ", ".join(map(str, hw["devices"]))))
    par = manifest.get("parallel") or {}
    if par:
        plan = " × ".join(f"{k} {par[k]}" for k in ("tp", "pp", "dp") if par.get(k) is not None)
        rest = [f"{k} {par[k]}" for k in ("ep",) if par.get(k)]
        world = par.get("world", par.get("world_size"))
        rest += [f"world size {world:,}"] if isinstance(world, int) else []
        rest += [f"{par['chips_per_node']} chips a node"] if par.get("chips_per_node") else []
        facts.append(("Parallel plan", ", ".join([plan, *rest] if plan else rest)))
    ranks = manifest.get("ranks") or []
    nodes = manifest.get("nodes") or []
    if ranks:
        facts.append(("Ranks", f"{len(ranks):,} rank{'s' * (len(ranks) != 1)}"
                               + (f" on {len(nodes):,} node{'s' * (len(nodes) != 1)}" if nodes else "")))
    work = manifest.get("workload") or {}
    if work:
        parts = []
        if work.get("requests") is not None:
            parts.append(f"{work['requests']:,} requests" + (f" at {work['rate']:g}/s" if work.get("rate") else ""))
        for key in ("prompt", "output"):
            # A length distribution other than fixed is named by its spec (e.g. lognormal:sigma=1).
            dist = (work.get(f"{key}_dist") or {}).get("spec", "fixed")
            if work.get(f"{key}_len") is not None:
                parts.append(f"{key} {work[f'{key}_len']:,} tokens" + (f" ({dist})" if dist != "fixed" else ""))
        if work.get("prefix_len"):
            parts.append(f"shared prefix {work['prefix_len']:,} tokens")
        if work.get("spec_tokens"):
            parts.append(f"speculative decoding {work['spec_tokens']} drafts at {work.get('spec_accept', 0):g}")
        if work.get("prefill_replicas"):
            parts.append(f"{work['prefill_replicas']} prefill replicas (disaggregated)")
        if work.get("max_batch_tokens") is not None:
            parts.append(f"batches up to {work['max_batch_tokens']:,} tokens")
        if work.get("max_seqs") is not None:
            parts.append(f"{work['max_seqs']:,} sequences")
        if work.get("two_batch_overlap") is not None:
            parts.append(f"two-batch overlap {'on' if work['two_batch_overlap'] else 'off'}")
        if work.get("seed") is not None:
            parts.append(f"seed {work['seed']}")
        facts.append(("Workload", ", ".join(p for p in parts if p)))
    if work or source.get("format") == "sohu-raw-trace":
        faults = work.get("faults") or []
        facts.append(("Faults injected", "; ".join(map(str, faults)) if faults else "none"))
    src = source.get("format", "unknown")
    if source.get("path"):
        src = f"{source['path']} ({src})"
    facts.append(("Source", src))
    files = source.get("files") or {}
    if files:
        shown = [f"rank {r}: {f}" for r, f in list(files.items())[:8]]
        more = f" … and {len(files) - 8:,} more" if len(files) > 8 else ""
        facts.append(("Source files", "; ".join(shown) + more))
    if store_path is not None:
        facts.append(("Store", str(store_path)))
    facts.append(("sohuprof", _version() + (f" (store written by {manifest['written_by']})"
                                            if manifest.get("written_by") else "")))
    when = generated or _dt.datetime.now(_dt.timezone.utc)
    facts.append(("Generated", when.strftime("%Y-%m-%d %H:%M:%S %Z").strip()))
    return facts


def _version() -> str:
    try:
        import sohuprof

        return str(sohuprof.__version__)
    except (ImportError, AttributeError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sohuprof")
        except PackageNotFoundError:
            return "unknown"


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _table_html(df: pd.DataFrame) -> str:
    """A reading table: numbers scaled once per column, text columns left-aligned."""
    text_cols = {str(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])
                 or pd.api.types.is_bool_dtype(df[c])}
    shown = format_frame(df)
    left = [c in text_cols for c in df.columns.astype(str)]
    head = "".join(f"<th class='text'>{html.escape(str(c))}</th>" if is_text else f"<th>{html.escape(str(c))}</th>"
                   for c, is_text in zip(shown.columns, left))
    rows = []
    for row in shown.itertuples(index=False):
        rows.append("<tr>" + "".join(f"<td class='text'>{html.escape(v)}</td>" if is_text else f"<td>{html.escape(v)}</td>"
                                     for v, is_text in zip(row, left)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _from_start(df: pd.DataFrame, origin: int | None) -> pd.DataFrame:
    """Timestamp columns (``ts``, ``*_ts``: ns on the trace's clock, 19 digits) as ns since the
    trace's first event, renamed ``*_at_ns`` so they read in ms like every other time."""
    cols = [c for c in df.columns if isinstance(c, str) and (c == "ts" or c.endswith("_ts"))
            and pd.api.types.is_numeric_dtype(df[c])]
    if origin is None or not cols:
        return df
    out = df.copy()
    for c in cols:
        out[c] = df[c] - origin
    return out.rename(columns={c: ("at" if c == "ts" else c[:-3] + "_at") + "_ns" for c in cols})


def _report_title(name: str) -> str:
    return {"critical_path": "Critical path", "whatif": "What-if", "comm": "Communication"}.get(
        name, name.replace("_", " ").capitalize())


def _count(n: Any, noun: str) -> str:
    return "" if n is None else f"{n:,} {noun}{'s' * (n != 1)}"


def _summary_line(name: str, data: dict[str, Any]) -> str | None:
    """One sentence in place of a one-row overview table, where a report's scalars read better so."""
    if name == "summary":
        bits = [f"wall {duration(data.get('wall_ns'))}" if data.get("wall_ns") is not None else "",
                f"{data['events']:,} events" if data.get("events") is not None else "",
                _count(data.get("ranks"), "rank"), _count(data.get("nodes"), "node")]
        return ", ".join(b for b in bits if b)
    return None


def report_html(reports: Any, *, generated: _dt.datetime | None = None) -> str:
    """The whole page for ``reports`` (see the module docstring), as a string."""
    from sohuprof.analyzers.render import reading_tables
    from sohuprof.analyzers.render.diagnosis import findings_html
    from sohuprof.analyzers.render.figures import figures_by_report

    ctx = reports.ctx
    store = getattr(ctx, "store", None)
    manifest = dict(getattr(store, "manifest", None) or {})
    facts = title_facts(manifest, store_path=getattr(store, "path", None), generated=generated)
    model = (manifest.get("model") or {}).get("name")
    hw = (manifest.get("hardware") or {}).get("name")
    source = (manifest.get("source") or {}).get("format")
    heading = "sohuprof report" + (f": {model}" if model else f": {source} trace" if source else "") + (
        f" on {hw}" if hw else "")
    results = reports.to_json()
    figures = figures_by_report(reports)
    origin = getattr(ctx, "wall_start", None)

    body: list[str] = []
    toc: list[tuple[str, str, list[tuple[str, str]]]] = []
    if "findings" in results:
        body.append(findings_html(results["findings"]))
        toc.append(("findings", "Findings", []))
    first = True
    for name, data in results.items():
        if name == "findings":   # shown first
            continue
        section_id = f"report-{_anchor(name)}"
        parts = [f"<section id='{section_id}'><h2>{html.escape(_report_title(name))}</h2>"]
        subs: list[tuple[str, str]] = []
        for title, fig in figures.get(name, []):
            fig_id = f"fig-{_anchor(title)}"
            parts.append(f"<div class='figure' id='{fig_id}'>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first, div_id=f"plot-{_anchor(title)}",
                                     config={"displaylogo": False}))
            parts.append("</div>")
            subs.append((fig_id, f"figure: {title}"))
            first = False
        line = _summary_line(name, data)
        if line:
            parts.append(f"<p>{html.escape(line)}</p>")
        for title, df, caption in reading_tables(name, data, max_rows=None):
            if line and title == name:   # its overview said in a sentence above
                continue
            table_id = f"{section_id}-{_anchor(title)}"
            if not len(df) or not len(df.columns):
                note = EMPTY_NOTES.get(title)
                if note:
                    parts.append(f"<h3 id='{table_id}'>{html.escape(title)}</h3><p class='empty'>{html.escape(note)}</p>")
                continue
            parts.append(f"<h3 id='{table_id}'>{html.escape(title)}</h3>")
            if title.endswith("· notes") and list(df.columns) == ["value"]:   # sentences, not a table
                parts.append("<ul class='note'>" + "".join(f"<li>{html.escape(str(v))}</li>" for v in df["value"])
                             + "</ul>")
                subs.append((table_id, title))
                continue
            shifted = _from_start(df, origin)
            table = f"<div class='scroll'>{_table_html(shifted)}</div>"
            if len(df) > FOLD_ROWS:
                table = f"<details><summary>{len(df):,} rows (click to show)</summary>{table}</details>"
            parts.append(table)
            if caption:
                parts.append(f"<p class='note'>{html.escape(caption)}</p>")
            if shifted is not df:
                parts.append("<p class='note'>*_at: time since the trace's first event.</p>")
            subs.append((table_id, title))
        parts.append("</section>")
        body.append("\n".join(parts))
        toc.append((section_id, _report_title(name), subs))

    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts)
    items = []
    for sid, label, subs in toc:
        inner = "".join(f"<li><a href='#{s}'>{html.escape(t)}</a></li>" for s, t in subs)
        items.append(f"<li><a href='#{sid}'>{html.escape(label)}</a>" + (f"<ol>{inner}</ol>" if inner else "") + "</li>")
    head = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(heading)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<header class='title' id='title'><h1>{html.escape(heading)}</h1><dl class='facts'>{dl}</dl></header>",
            f"<nav class='toc' id='toc'><b>Contents</b><ol>{''.join(items)}</ol></nav>"]
    return "\n".join([*head, *body, "</body></html>"])
