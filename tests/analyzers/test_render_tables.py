"""Tables that fit (issue 14): every report through ``table`` at 80, 120 and 200 columns, no
cell cut, every header with a unit where its values have one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sohuprof.analyzers.render import reading_tables, render_table
from sohuprof.analyzers.render.units import column_scale, column_unit, header
from sohuprof.analyzers.report import run_reports
from sohuprof.collectors import collect
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "mixtral-2node" / "store"
TRACES = {"a100": ROOT / "tests" / "data" / "kineto", "tiny": ROOT / "tests" / "data" / "kineto-tiny"}


@pytest.fixture(scope="module")
def every_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = {"sohu": run_reports(open_store(SAMPLE), what_if=["comm=free", "rank=5:compute=0.77"])}
    for name, trace in TRACES.items():
        store = tmp_path_factory.mktemp(name) / "store"
        collect(trace, store)
        out[name] = run_reports(open_store(store))
    return out


@pytest.mark.parametrize("width", [80, 120, 200])
@pytest.mark.parametrize("source", ["sohu", "a100", "tiny"])
def test_no_cell_is_cut_and_every_header_has_its_unit(every_report, source: str, width: int) -> None:
    reports = every_report[source]
    text = render_table(reports, width=width)
    assert "…" not in text
    # Only a command may run past the width (it is never broken, to stay copyable).
    assert [line for line in text.splitlines() if len(line) > width and "next: sohuprof" not in line] == []
    for name, data in reports.to_json().items():
        if name == "findings":
            continue
        for _, df, _ in reading_tables(name, data, max_rows=20):
            for col in df.columns:
                unit = column_unit(col)
                if unit is None or not pd.api.types.is_numeric_dtype(df[col]) or df[col].isna().all():
                    continue
                label = column_scale(df[col], unit)[1]
                assert header(col, label) in text, (source, name, col)


def test_a_one_row_table_reads_as_fields_and_values(every_report) -> None:
    text = render_table(every_report["sohu"], width=120)
    summary = text[text.index("summary"):].split("\n\n")[0]
    assert "field" in summary and "value" in summary and "wall (ms)" in summary


def test_width_comes_from_the_terminal(every_report, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "90")
    text = render_table(every_report["sohu"])
    assert [line for line in text.splitlines() if len(line) > 90 and "next: sohuprof" not in line] == []


def test_sums_over_ranks_are_said_and_shown_beside_a_per_rank_mean(every_report) -> None:
    reports = every_report["sohu"]
    ranks = len(reports.ctx.ranks)
    text = render_table(reports, width=200)
    roofline = text[text.index("roofline · ops"):].split("roofline · collectives")[0]
    assert f"summed over {ranks} ranks" in roofline and "time_per_rank (ms)" in roofline
    from sohuprof.analyzers.render.tables import rank_sums

    ops = pd.DataFrame(reports.to_json()["roofline"]["ops"])
    out, caption = rank_sums("roofline", "roofline · ops", ops, ranks)
    assert (out["time_per_rank_ns"] * ranks).round().astype("int64").tolist() == ops["time_ns"].tolist()
    assert rank_sums("stalls", "stalls · ranks", ops, ranks) == (ops, None)
