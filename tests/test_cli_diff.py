"""`sohuprof diff A B`: formats, inputs of any kind, output refusal and --force, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sohuprof.cli import cli

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "sample_traces" / "mixtral-2node" / "store"
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"
SHARED = ROOT.parent / "shared" / "traces" / "kineto-more"


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def ok(*args: object) -> str:
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def _error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_help() -> None:
    assert "B against A" in ok("diff", "--help")


def test_store_against_itself_json() -> None:
    data = json.loads(ok("diff", STORE, STORE, "--format", "json"))
    assert list(data) == ["diff"]
    diff = data["diff"]
    assert diff["wall_delta_ns"] == 0 and diff["top"] == [] and diff["added"] == [] and diff["removed"] == []
    assert all(r["delta_ns"] == 0 for key in ("names", "ranks", "breakdown", "collectives") for r in diff[key])


def test_table_shows_the_tables() -> None:
    text = ok("diff", STORE, STORE, "--top", "5")
    for title in ("diff · ranks", "diff · breakdown", "diff · collectives", "diff · names"):
        assert title in text
    assert "wall_delta (ns)" in text      # a store against itself: 0, shown in ns


def test_trace_files_are_collected_on_the_fly() -> None:
    """A Kineto trace against a Sohu store: different sources, every name added or removed."""
    data = json.loads(ok("diff", KINETO, STORE, "--format", "json", "--top", "3"))["diff"]
    a, b = data["runs"]
    assert a["source"] == "kineto" and b["source"] == "sohu-raw-trace"
    assert a["path"] == str(KINETO)                       # what the user named, not a temporary store
    assert len(data["top"]) == 3 and data["added"] and data["removed"]
    assert any("kineto store and B a sohu-raw-trace" in n for n in data["notes"])
    assert all(r["status"] in ("added", "removed") for r in data["names"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
def test_two_real_profiler_traces_match_short_names() -> None:
    exact = json.loads(ok("diff", KINETO, SHARED / "sampled-2rank-of128", "--format", "json"))["diff"]
    short = json.loads(ok("diff", KINETO, SHARED / "sampled-2rank-of128", "--format", "json",
                          "--match-names", "short"))["diff"]
    assert exact["added"] and exact["removed"]
    assert len(short["names"]) < len(exact["names"])      # template arguments and step numbers dropped
    assert short["match_names"] == "short" and any("matched as 'short'" in n for n in short["notes"])
    assert sum(r["delta_ns"] for r in short["names"]) == sum(r["delta_ns"] for r in exact["names"])


def test_output_refused_unless_force(tmp_path: Path) -> None:
    out = tmp_path / "diff.json"
    out.write_text("mine")
    line = _error(run("diff", STORE, STORE, "--format", "json", "-o", out))
    assert "--force" in line and out.read_text() == "mine"
    result = run("diff", STORE, STORE, "--format", "json", "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["diff"]["wall_delta_ns"] == 0
    assert f"wrote {out}" in result.stderr


def test_html(tmp_path: Path) -> None:
    out = tmp_path / "diff.html"
    ok("diff", STORE, STORE, "--format", "html", "-o", out)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and "<script" not in page and "top changes" in page
    assert "diff · names" in page
    result = run("diff", STORE, STORE, "--format", "html")
    assert result.exit_code == 2 and "-o FILE.html" in result.stderr


def test_bad_inputs_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    _error(run("diff", missing, STORE))
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    _error(run("diff", STORE, junk))
    _error(run("diff", STORE, STORE, "-o", STORE / "manifest.json", "--force"))   # an input is not overwritten
    result = run("diff", STORE, STORE, "--top", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = run("diff", STORE, STORE, "--match-names", "fuzzy")
    assert result.exit_code == 2 and "Traceback" not in result.output
