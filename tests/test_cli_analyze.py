"""`sohuprof analyze`: formats, on-the-fly collection, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from sohuprof.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "mixtral-2node"
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.stderr
    return lines[-1]


def test_json_has_one_key_per_report() -> None:
    result = run("analyze", str(SAMPLE / "store"), "--report", "summary,stalls", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["summary", "stalls"]
    assert data["summary"]["ranks"] == 8 and data["summary"]["source"] == "sohu-raw-trace"
    for row in data["stalls"]["ranks"]:
        parts = row["compute_ns"] + row["memory_stall_ns"] + row["sync_wait_ns"] + row["comm_transfer_ns"] + row["idle_ns"]
        assert parts == row["wall_ns"]


def test_raw_run_is_collected_on_the_fly() -> None:
    a = json.loads(run("analyze", str(SAMPLE / "raw"), "--report", "stalls", "--format", "json").stdout)
    b = json.loads(run("analyze", str(SAMPLE / "store"), "--report", "stalls", "--format", "json").stdout)
    assert a == b


def test_table_csv_html(tmp_path: Path) -> None:
    table = run("analyze", str(SAMPLE / "store"), "--report", "summary,stalls")
    assert table.exit_code == 0 and "stalls · ranks" in table.stdout and "compute (ms)" in table.stdout
    csv = run("analyze", str(SAMPLE / "store"), "--report", "stalls", "--format", "csv", "-o", str(tmp_path / "csv"))
    assert csv.exit_code == 0, csv.output
    assert (tmp_path / "csv" / "stalls_ranks.csv").read_text().startswith("rank,node,chip,wall_ns")
    html = run("analyze", str(SAMPLE / "store"), "--report", "stalls", "--format", "html", "-o", str(tmp_path / "r.html"))
    assert html.exit_code == 0, html.output
    page = (tmp_path / "r.html").read_text()
    assert page.count("* plotly.js v") == 1 and "<script src=" not in page   # inlined once: readable offline
    assert "where each rank" in page and "<table" in page


def test_bad_inputs(tmp_path: Path) -> None:
    assert "unknown report 'nope'" in _error(run("analyze", str(SAMPLE / "store"), "--report", "nope"))
    (tmp_path / "empty").mkdir()
    assert "empty" in _error(run("analyze", str(tmp_path / "empty")))
    store = tmp_path / "future"
    shutil.copytree(SAMPLE / "store", store)
    manifest = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    assert "upgrade" in _error(run("analyze", str(store)))
    assert "-o" in _error(run("analyze", str(SAMPLE / "store"), "--format", "csv"))


def test_report_that_does_not_apply(tmp_path: Path) -> None:
    msg = _error(run("analyze", str(KINETO), "--report", "stalls,summary,serving"))
    assert "serving" in msg and "does not apply" in msg
