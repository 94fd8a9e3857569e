"""Findings in front: `sohuprof demo` names its injected straggler, and `analyze` leads with the
findings in every format (table sentences, findings.csv, the HTML page's first section)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from sohuprof.analyzers.render.diagnosis import FINDINGS_COLUMNS, finding_naming, findings_text
from sohuprof.cli import DEMO_STRAGGLER, cli

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "sample_traces" / "mixtral-2node" / "store"
#: A numbered finding: "  3. 6.29 ms (6.0 %)  rank 5 (node 1, chip 1) computes ..."
FINDING = re.compile(r"^\s*(\d+)\. ([\d,.]+) ms \(([\d.]+) %\)\s+(\S.*)$")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _findings(text: str) -> list[tuple[int, str]]:
    """(number, sentence) of each finding printed, the sentence's wrapped lines joined."""
    out: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = FINDING.match(line)
        if m:
            out.append((int(m.group(1)), m.group(4)))
        elif out and line.startswith(" " * 8) and not line.strip().startswith("next:"):
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        elif out and not line.strip():
            break
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> str:
    result = run("demo", "-o", str(tmp_path_factory.mktemp("demo")))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_demo_names_its_straggler_in_a_finding(demo: str) -> None:
    found = _findings(demo)
    assert 1 <= len(found) <= 5 and [n for n, _ in found] == list(range(1, len(found) + 1))
    naming = [n for n, sentence in found if sentence.startswith(f"rank {DEMO_STRAGGLER} (")]
    assert naming, demo
    assert f"finding {naming[0]} names it" in demo
    # Findings come after collecting and before where to look; every finding says where to look next.
    assert demo.index("raw traces: ") < demo.index("findings:") < demo.index("where to look:")
    assert demo.count("next: sohuprof ") == len(found)


def test_demo_straggler_is_the_only_rank_named(demo: str) -> None:
    ranks = {int(r) for _, sentence in _findings(demo) for r in re.findall(r"\brank (\d+) \(", sentence)}
    assert ranks == {DEMO_STRAGGLER}


def test_analyze_table_starts_with_the_findings() -> None:
    result = run("analyze", str(STORE))
    assert result.exit_code == 0, result.output
    data = json.loads(run("analyze", str(STORE), "--report", "findings", "--format", "json").stdout)["findings"]
    wall = json.loads(run("analyze", str(STORE), "--report", "summary", "--format", "json").stdout)["summary"]
    assert result.stdout.startswith(f"findings: what fixing each would save of the {wall['wall_ns'] / 1e6:.1f} ms wall")
    head = result.stdout.split("\n\n", 1)[0]
    found = _findings(head)
    assert len(found) == len(data["findings"]) >= 3
    for (_, sentence), f in zip(found, data["findings"]):
        assert sentence == f["title"]
    assert "┃" not in head                        # sentences, not a table
    assert "summary" in result.stdout.split("\n\n", 1)[1]   # then the other reports' tables
    one = FINDING.match(head.splitlines()[1])
    assert one and float(one.group(2)) == pytest.approx(data["findings"][0]["saving_ns"] / 1e6, abs=0.01)
    assert float(one.group(3)) == pytest.approx(data["findings"][0]["saving_pct"], abs=0.05)


def test_findings_csv_columns(tmp_path: Path) -> None:
    result = run("analyze", str(STORE), "--report", "findings,summary", "--format", "csv", "-o", str(tmp_path / "c"))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "c" / "findings.csv").open()))
    assert list(rows[0]) == FINDINGS_COLUMNS == ["kind", "title", "saving_ns", "saving_pct", "ranks", "nodes",
                                                 "ops", "next", "evidence"]
    straggler = next(r for r in rows if r["kind"] == "straggler")
    assert straggler["ranks"] == "5" and straggler["nodes"] == "1" and straggler["ops"] == ""
    evidence = json.loads(straggler["evidence"])
    assert evidence["compute_ratio"] >= 1.05 and evidence["root_cost_ns"] > 0
    assert all(json.loads(r["evidence"]) for r in rows)
    assert [int(r["saving_ns"]) for r in rows] == sorted((int(r["saving_ns"]) for r in rows), reverse=True)
    assert not (tmp_path / "c" / "findings_findings.csv").exists()


def test_html_opens_with_the_findings(tmp_path: Path) -> None:
    result = run("analyze", str(STORE), "--format", "html", "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    section = page.index("<section id='findings'><h2>Findings</h2>")
    assert section < page.index("<h2>", section + 10) and section < page.index("plotly")
    assert page.count("<section id='findings'>") == 1
    findings = page[section:page.index("</section>", section)]
    assert findings.count("<li>") >= 3 and "rank 5 (node 1, chip 1)" in findings and "ms (" in findings


def test_findings_text_edges() -> None:
    none = findings_text({"wall_ns": 10_000_000, "findings": [], "notes": ["a note"]})
    assert "none above noise" in none and ">= 1 % of the wall" in none and "note: a note" in none
    many = {"wall_ns": 10**8, "findings": [{"kind": "idle", "title": f"t{i}", "saving_ns": 10**6 * (9 - i),
                                            "saving_pct": 9.0 - i, "ranks": [i], "nodes": [], "ops": [],
                                            "evidence": {}, "next": "x"} for i in range(7)]}
    text = findings_text(many, top=5, more_hint="see json")
    assert len(_findings(text)) == 5 and "2 more: see json" in text
    assert finding_naming(many, rank=6) == 7 and finding_naming(many, rank=6, kind="straggler") is None
