"""Tables and text of the diagnosis reports (findings, critical path, what-if), built from their
JSON form.

Two shapes of each: the *data* tables (tidy, one row per record, what CSV writes) and the
*reading* form (what a table or the HTML page shows): the findings as numbered sentences with
their saving, the what-if's measured run as the first row of its scenarios, and its steps side by
side, one column per scenario, cut to the first and last few steps for a terminal. Nothing here
computes an analysis.
"""

from __future__ import annotations

import html
import textwrap
from typing import Any

import orjson
import pandas as pd

__all__ = ["whatif_tables", "whatif_view", "critical_path_view", "findings_tables", "findings_view",
           "findings_text", "findings_html", "finding_naming", "Table", "FINDINGS_COLUMNS"]

#: (title, table, caption or None)
Table = tuple[str, pd.DataFrame, str | None]

_SCENARIO_COLUMNS = ["spec", "wall_ns", "saving_ns", "saving_pct", "speedup", "tokens_per_s"]
_STEP_COLUMNS = ["step", "measured_ns", "predicted_ns"]


def whatif_tables(data: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """The what-if's data tables: the measured run, the scenarios, every step of every scenario."""
    measured = data.get("measured") or {}
    scenarios = data.get("scenarios") or []
    steps = [{"spec": sc["spec"], **st} for sc in scenarios for st in sc.get("steps") or []]
    return [("whatif", pd.DataFrame([{f"measured_{k}": v for k, v in measured.items()}])),
            ("whatif · scenarios", pd.DataFrame([{c: sc.get(c) for c in _SCENARIO_COLUMNS} for sc in scenarios],
                                                columns=_SCENARIO_COLUMNS)),
            ("whatif · steps", pd.DataFrame(steps, columns=["spec", *_STEP_COLUMNS]))]


def whatif_view(data: dict[str, Any], *, edge_steps: int | None = 3) -> list[Table]:
    """The what-if for reading: measured then each scenario (wall, saving, speedup, tokens/s), and
    each step's time measured and predicted by each scenario (ms).

    ``edge_steps`` keeps only the first and last that many steps (None: all).
    """
    measured = data.get("measured") or {}
    scenarios = data.get("scenarios") or []
    wall = measured.get("wall_ns")
    rows = [{"spec": "measured", "wall_ns": wall, "saving_ns": 0, "saving_pct": 0.0, "speedup": 1.0,
             "tokens_per_s": measured.get("tokens_per_s")}]
    rows += [{c: sc.get(c) for c in _SCENARIO_COLUMNS} for sc in scenarios]
    table = pd.DataFrame(rows, columns=_SCENARIO_COLUMNS)
    for col in ("saving_pct", "speedup", "tokens_per_s"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float).round(3 if col == "speedup" else 1)
    out: list[Table] = [("whatif · predicted wall time", table, None)]
    wide = _steps_side_by_side(scenarios)
    if len(wide):
        caption = None
        if edge_steps is not None and len(wide) > 2 * edge_steps + 1:
            means = ", ".join(f"{c.removesuffix(' ms').removesuffix('_ms')} {wide[c].mean():,.3f}"
                              for c in wide.columns[1:])
            caption = (f"first and last {edge_steps} of {len(wide)} steps; mean step (ms): {means} "
                       "(--format csv or json for every step)")
            wide = pd.concat([wide.head(edge_steps), wide.tail(edge_steps)])
        out.append(("whatif · steps (ms)", wide, caption))
    return out


def _steps_side_by_side(scenarios: list[dict[str, Any]]) -> pd.DataFrame:
    """step, measured_ms, then one ``SPEC ms`` column per scenario (the steps are the same
    barriers in every scenario; their measured times agree)."""
    frames = [pd.DataFrame(sc.get("steps") or [], columns=_STEP_COLUMNS).assign(spec=sc["spec"])
              for sc in scenarios]
    long = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["spec", *_STEP_COLUMNS])
    if not len(long):
        return pd.DataFrame(columns=["step", "measured_ms"])
    measured = long.groupby("step", sort=True)["measured_ns"].first() / 1e6
    wide = long.pivot_table(index="step", columns="spec", values="predicted_ns", aggfunc="first", sort=False) / 1e6
    wide = wide.reindex(columns=list(dict.fromkeys(sc["spec"] for sc in scenarios)))
    wide.columns = [f"{c} ms" for c in wide.columns]
    out = pd.concat([measured.rename("measured_ms"), wide], axis=1).sort_index().reset_index()
    return out.rename(columns={"index": "step"})


def critical_path_view(data: dict[str, Any], *, max_rows: int | None = 20) -> list[Table]:
    """The critical path for reading: its length against the wall time, then its time by kind,
    op, rank and step, shares in percent of the path."""
    wall, path = data.get("wall_ns"), data.get("path_ns")
    kinds = pd.DataFrame(data.get("by_kind") or [], columns=["kind", "time_ns", "share"])
    top = kinds.sort_values("time_ns", ascending=False).head(1)
    overview = pd.DataFrame([{"wall_ns": wall, "path_ns": path,
                              "mostly": (f"{top['kind'].iloc[0]} ({100 * float(top['share'].iloc[0]):.1f} %)"
                                         if len(top) and path else "-")}])
    out: list[Table] = [("critical_path", overview, None)]
    for key, columns in (("by_kind", ["kind", "time_ns", "share"]), ("by_op", ["op", "phase", "time_ns", "share"]),
                         ("by_rank", ["rank", "time_ns", "share"]),
                         ("steps", ["step", "start_ns", "end_ns", "top_op"])):
        df = pd.DataFrame(data.get(key) or [], columns=columns)
        if "share" in df:
            df = df.assign(share=pd.to_numeric(df["share"], errors="coerce").astype(float) * 100).rename(
                columns={"share": "share_pct"})
        if key == "steps":
            df.insert(3, "dur_ns", df["end_ns"] - df["start_ns"])
        caption = None
        if max_rows is not None and len(df) > max_rows:
            caption = f"{len(df) - max_rows} more rows: use --format csv or json for all"
            df = df.head(max_rows)
        out.append((f"critical_path · {key}", df, caption))
    return out


#: The columns of ``findings.csv`` (lists joined by spaces, ``evidence`` a JSON object).
FINDINGS_COLUMNS = ["kind", "title", "saving_ns", "saving_pct", "ranks", "nodes", "ops", "next", "evidence"]


def _joined(value: Any) -> str:
    return " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else ("" if value is None else str(value))


def findings_tables(data: dict[str, Any]) -> list[tuple[str, pd.DataFrame]]:
    """The findings' data tables: one row per finding (:data:`FINDINGS_COLUMNS`), and the notes."""
    rows = [{"kind": f.get("kind"), "title": f.get("title"), "saving_ns": f.get("saving_ns"),
             "saving_pct": f.get("saving_pct"), "ranks": _joined(f.get("ranks")), "nodes": _joined(f.get("nodes")),
             "ops": _joined(f.get("ops")), "next": f.get("next"),
             "evidence": orjson.dumps(f.get("evidence") or {}, option=orjson.OPT_SORT_KEYS
                                      | orjson.OPT_SERIALIZE_NUMPY).decode()}
            for f in data.get("findings") or []]
    return [("findings", pd.DataFrame(rows, columns=FINDINGS_COLUMNS)),
            ("findings · notes", pd.DataFrame({"note": list(data.get("notes") or [])}, columns=["note"]))]


def findings_view(data: dict[str, Any], *, max_rows: int | None = 20) -> list[Table]:
    """The findings as one reading table: saving (ms and %), the sentence, where to look."""
    rows = [{"saving_ns": f.get("saving_ns"), "saving_pct": f.get("saving_pct"), "finding": f.get("title"),
             "next": f.get("next")} for f in data.get("findings") or []]
    df = pd.DataFrame(rows, columns=["saving_ns", "saving_pct", "finding", "next"])
    caption = None
    if max_rows is not None and len(df) > max_rows:
        caption = f"{len(df) - max_rows} more rows: use --format csv or json for all"
        df = df.head(max_rows)
    return [("findings", df, caption)]


def _saving(f: dict[str, Any]) -> str:
    ns, pct = f.get("saving_ns") or 0, f.get("saving_pct") or 0.0
    return f"{ns / 1e6:,.2f} ms ({pct:.1f} %)"


def _no_findings_line() -> str:
    from sohuprof.analyzers.diagnosis.findings import MIN_SAVING_PCT, STRAGGLER_RATIO

    return (f"  none above noise: no change the what-if engine tried saves >= {MIN_SAVING_PCT:g} % of the wall "
            f"(and no rank computes >= {STRAGGLER_RATIO:g}x its stage peers' median)")


def findings_text(data: dict[str, Any], *, top: int | None = None, width: int = 120,
                  more_hint: str = "--format json or csv for all") -> str:
    """The findings as numbered sentences for a terminal, largest saving first: each its saving
    (ms and % of the wall), its title wrapped under it, and the command to look further.

    ``top`` keeps the first that many (None: all), saying how many were left out and where they
    are (``more_hint``).
    """
    found = list(data.get("findings") or [])
    wall = data.get("wall_ns")
    head = "findings: what fixing each would save"
    if wall:
        head += f" of the {wall / 1e6:,.1f} ms wall"
    lines = textwrap.wrap(head + " (replayed on the run's dependency graph), largest first", width=width)
    if not found:
        lines += textwrap.wrap(_no_findings_line().strip(), width=width, initial_indent="  ", subsequent_indent="  ")
    shown = found if top is None else found[:top]
    savings = [_saving(f) for f in shown]
    pad = max((len(s) for s in savings), default=0)
    for i, (f, saving) in enumerate(zip(shown, savings), start=1):
        lead = f"{i:>3}. {saving:<{pad}}  "
        indent = " " * len(lead)
        lines += textwrap.wrap(str(f.get("title") or f.get("kind")), width=max(width, len(lead) + 40),
                               initial_indent=lead, subsequent_indent=indent, break_long_words=False,
                               break_on_hyphens=False)
        if f.get("next"):
            # A command is never broken; where it does not fit beside the numbers it starts left.
            nxt = f"next: {f['next']}"
            lines.append(indent + nxt if len(indent) + len(nxt) <= width else "     " + nxt)
    if len(shown) < len(found):
        lines.append(f"  ... {len(found) - len(shown)} more: {more_hint}")
    for note in data.get("notes") or []:
        lines += textwrap.wrap(f"note: {note}", width=width, initial_indent="  ", subsequent_indent="        ")
    return "\n".join(lines) + "\n"


def _evidence_item(key: str, value: Any) -> str:
    """``transfer_on_path = 69.0 ms``: a finding's evidence in the unit its name says."""
    from sohuprof.analyzers.render.units import column_unit, fmt, header

    unit = column_unit(key)
    if unit is None or isinstance(value, (str, bool, list, dict)):
        return f"{key} = {value}"
    return f"{header(key, None) if unit not in ('ns', 'ms', 's', '%') else key.rsplit('_', 1)[0]} = {fmt(value, unit)}"


def finding_naming(data: dict[str, Any], *, rank: int | None = None, node: int | None = None,
                   kind: str | None = None) -> int | None:
    """The number (1-based, as :func:`findings_text` shows it) of the first finding that names
    ``rank`` (or ``node``), of ``kind`` if given; None when none does."""
    for i, f in enumerate(data.get("findings") or [], start=1):
        if kind is not None and f.get("kind") != kind:
            continue
        if (rank is not None and rank in (f.get("ranks") or [])) or (node is not None and node in (f.get("nodes") or [])):
            return i
    return None


def findings_html(data: dict[str, Any]) -> str:
    """The findings section of the HTML report: an ordered list, each finding's saving, its
    sentence, where to look and (folded) its evidence."""
    found = list(data.get("findings") or [])
    wall = data.get("wall_ns")
    parts = ["<section id='findings'><h2>Findings</h2>",
             f"<p>What fixing each would save{f' of the {wall / 1e6:,.1f} ms wall' if wall else ''}, "
             "replayed on the run's dependency graph, largest first.</p>"]
    if not found:
        parts.append(f"<p>{html.escape(_no_findings_line().strip())}</p>")
    else:
        parts.append("<ol class='findings'>")
        for f in found:
            evidence = ", ".join(_evidence_item(k, v) for k, v in (f.get("evidence") or {}).items() if v is not None)
            parts.append(f"<li><b>{html.escape(_saving(f))}</b> {html.escape(str(f.get('title') or f.get('kind')))}"
                         + (f"<br>next: <code>{html.escape(str(f['next']))}</code>" if f.get("next") else "")
                         + (f"<details><summary>evidence</summary>{html.escape(evidence)}</details>"
                            if evidence else "") + "</li>")
        parts.append("</ol>")
    parts += [f"<p class='note'>note: {html.escape(str(n))}</p>" for n in data.get("notes") or []]
    parts.append("</section>")
    return "\n".join(parts)
