"""Tables of the diagnosis reports (critical path, what-if), built from their JSON form.

Two shapes of each: the *data* tables (tidy, one row per record, what CSV writes) and the
*reading* tables (what a table or the HTML page shows): the what-if's measured run as the first
row of its scenarios, and its steps side by side, one column per scenario, cut to the first and
last few steps for a terminal. Nothing here computes an analysis.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["whatif_tables", "whatif_view", "critical_path_view", "Table"]

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
