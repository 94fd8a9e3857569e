"""`sohuprof whatif` and the diagnosis reports in `sohuprof analyze`: JSON shape, formats, and
one-line errors for bad SPECs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sohuprof.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "mixtral-2node"
STORE = SAMPLE / "store"
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args: str) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture(scope="module")
def whatif_json() -> dict:
    return json.loads(ok("whatif", STORE, "comm=free", "rank=0:compute=1", "rank=5:compute=0.77+comm=free",
                         "--format", "json"))


def test_whatif_json_shape(whatif_json: dict) -> None:
    assert list(whatif_json) == ["whatif"]
    data = whatif_json["whatif"]
    wall = data["measured"]["wall_ns"]
    assert wall > 0 and data["measured"]["tokens_per_s"] > 0
    specs = [s["spec"] for s in data["scenarios"]]
    assert specs == ["comm=free", "rank=0:compute=1", "rank=5:compute=0.77+comm=free"]
    free, same, both = data["scenarios"]
    assert free["wall_ns"] < wall and free["saving_ns"] == wall - free["wall_ns"] and free["speedup"] > 1
    assert free["tokens_per_s"] > data["measured"]["tokens_per_s"]
    assert both["wall_ns"] <= free["wall_ns"]
    assert abs(same["wall_ns"] - wall) <= 1 and abs(same["saving_ns"]) <= 1
    for sc in data["scenarios"]:
        assert sc["steps"] and set(sc["steps"][0]) == {"step", "measured_ns", "predicted_ns"}
    assert all(abs(st["predicted_ns"] - st["measured_ns"]) <= 1 for st in same["steps"])
    assert sum(st["predicted_ns"] for st in free["steps"]) < sum(st["measured_ns"] for st in free["steps"])


def test_critical_path_json() -> None:
    data = json.loads(ok("analyze", STORE, "--report", "critical_path", "--format", "json"))["critical_path"]
    assert abs(data["path_ns"] - data["wall_ns"]) <= 1e-3 * data["wall_ns"]
    assert {k["kind"] for k in data["by_kind"]} == {"compute", "memory", "transfer", "host", "idle"}
    assert sum(k["share"] for k in data["by_kind"]) == pytest.approx(1, abs=1e-3)
    assert sum(k["time_ns"] for k in data["by_kind"]) == pytest.approx(data["path_ns"], abs=5)
    assert data["by_rank"] and all(0 <= r["rank"] < 8 for r in data["by_rank"])
    assert data["steps"] and all(s["start_ns"] <= s["end_ns"] for s in data["steps"])


def test_analyze_what_if_adds_the_report(whatif_json: dict) -> None:
    data = json.loads(ok("analyze", STORE, "--report", "summary", "--what-if", "comm=free",
                         "--what-if", "rank=0:compute=1", "--what-if", "rank=5:compute=0.77+comm=free",
                         "--format", "json"))
    assert list(data) == ["summary", "whatif"]
    assert data["whatif"] == whatif_json["whatif"]


def test_whatif_collects_a_raw_run_on_the_fly(whatif_json: dict) -> None:
    data = json.loads(ok("whatif", SAMPLE / "raw", "comm=free", "rank=0:compute=1",
                         "rank=5:compute=0.77+comm=free", "--format", "json"))
    assert data == whatif_json


def test_whatif_table_and_csv(tmp_path: Path) -> None:
    text = ok("whatif", STORE, "comm=free", "rank=5:compute=0.77")
    assert "whatif · predicted wall time" in text and "whatif · steps (ms)" in text
    for word in ("measured", "comm=free", "rank=5:compute=0.77", "wall (ms)", "saving (ms)", "speedup",
                 "tokens/s"):
        assert word in text
    assert "first and last 3 of" in text      # a short per-step comparison, not every step
    out = tmp_path / "csv"
    ok("whatif", STORE, "comm=free", "rank=5:compute=0.77", "--format", "csv", "-o", out)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".csv") == \
        ["whatif.csv", "whatif_scenarios.csv", "whatif_steps.csv"]
    scenarios = list(csv.DictReader((out / "whatif_scenarios.csv").open()))
    assert [r["spec"] for r in scenarios] == ["comm=free", "rank=5:compute=0.77"]
    steps = list(csv.DictReader((out / "whatif_steps.csv").open()))
    assert set(steps[0]) == {"spec", "step", "measured_ns", "predicted_ns"} and len(steps) > 2
    ok("whatif", STORE, "comm=free", "--format", "csv", "-o", out)   # an earlier csv output is replaced
    assert [r["spec"] for r in csv.DictReader((out / "whatif_scenarios.csv").open())] == ["comm=free"]


def test_whatif_output_file_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "w.json"
    ok("whatif", STORE, "comm=free", "--format", "json", "-o", out)
    assert json.loads(out.read_text())["whatif"]["scenarios"][0]["spec"] == "comm=free"
    again = run("whatif", STORE, "rank=5:compute=0.5", "--format", "json", "-o", out)
    assert again.exit_code != 0 and "--force" in again.stderr
    ok("whatif", STORE, "rank=5:compute=0.5", "--format", "json", "-o", out, "--force")
    assert json.loads(out.read_text())["whatif"]["scenarios"][0]["spec"] == "rank=5:compute=0.5"


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "html"])
def test_diagnosis_reports_in_every_format(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / ("out" if fmt == "csv" else f"r.{fmt}")
    ok("analyze", STORE, "--report", "critical_path,whatif", "--what-if", "comm=free", "--format", fmt, "-o", out)
    if fmt == "csv":
        names = {p.name for p in out.iterdir()}
        assert {"critical_path.csv", "critical_path_by_kind.csv", "critical_path_by_op.csv",
                "critical_path_by_rank.csv", "critical_path_steps.csv", "whatif_scenarios.csv"} <= names
        assert (out / "critical_path_by_kind.csv").read_text().startswith("kind,time_ns,share")
        return
    text = out.read_text()
    if fmt == "json":
        assert list(json.loads(text)) == ["critical_path", "whatif"]
    else:
        for title in ("critical_path · by_kind", "critical_path · by_op", "critical_path · by_rank",
                      "critical_path · steps", "whatif · predicted wall time"):
            assert title in text
        assert ("share (%)" in text and "time (ms)" in text) if fmt == "table" else "share" in text
    if fmt == "html":
        assert "what the critical path is made of" in text and "what-if: predicted wall time" in text


def _one_line_error(*args: str) -> str:
    result = run(*args)
    assert result.exit_code != 0, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (("whatif", STORE, "rank=5:cmpute=0.5"), ["'rank=5:cmpute=0.5'", "not a SPEC"]),
    (("whatif", STORE, "comm=free", "rank=5:compute=-1"), ["rank=5:compute=-1", "> 0"]),
    (("whatif", STORE, "rank=5:compute=0"), ["> 0"]),
    (("whatif", STORE, "hw:hbm=2"), ["unknown hardware figure"]),
    (("whatif", STORE, ""), ["empty"]),
    (("whatif", STORE, "rank=42:compute=0.5"), ["rank 42 is not in the store", "0..7"]),
    (("whatif", STORE, "link=node7:bandwidth=2"), ["node 7 is not in the store", "0, 1"]),
    (("whatif", STORE), ["at least one SPEC"]),
    (("whatif", KINETO, "hw:peak_flops=2"), ["hardware"]),
    (("whatif", KINETO, "op=gemm:roof"), ["hardware"]),
    (("analyze", STORE, "--what-if", "nonsense"), ["'nonsense'", "not a SPEC"]),
    (("analyze", STORE, "--report", "whatif"), ["--what-if"]),
    (("analyze", STORE, "--report", "stalls", "--what-if", "rank=99:memory=0.5"), ["rank 99"]),
])
def test_bad_input_is_one_line(args: tuple, words: list[str]) -> None:
    line = _one_line_error(*args)
    for word in words:
        assert word in line, line
