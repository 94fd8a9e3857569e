"""README.md stays true: its commands on the committed sample store run, and the output and
figures it quotes are what those commands print."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from sohuprof.cli import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SAMPLE = "sample_traces/mixtral-2node/store"


def _commands() -> list[str]:
    """Every `sohuprof ...` command in the README that reads the sample store (inline code or a
    fenced line), ``$S`` expanded; the dashboard (a server) left out."""
    found = re.findall(r"`(sohuprof [^`]+)`", README)
    found += [line.strip() for line in README.splitlines() if line.strip().startswith("sohuprof ")]
    out = []
    for cmd in found:
        cmd = cmd.split("  #")[0].strip().replace("$S", SAMPLE)
        if SAMPLE in cmd and " dashboard " not in f" {cmd} " and cmd not in out:
            out.append(cmd)
    return out


def _run(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args, catch_exceptions=False, terminal_width=120)
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "120")


def test_the_readme_names_commands_on_the_sample() -> None:
    assert len(_commands()) >= 5


@pytest.mark.parametrize("command", _commands())
def test_every_readme_command_on_the_sample_store_runs(command: str) -> None:
    _run(shlex.split(command)[1:])


def _words(text: str) -> str:
    return " ".join(text.split())


def test_the_findings_example_is_what_analyze_prints() -> None:
    block = README.split("**findings**", 1)[1].split("```", 2)[1]
    out = _words(_run(["analyze", SAMPLE, "--report", "findings"]))
    for sentence in block.strip().split("next:"):
        assert _words(sentence) in out
    assert "next: sohuprof dashboard sample_traces/mixtral-2node/store (Stalls page, rank 5)" in out


def test_the_figures_the_diagnosis_section_quotes() -> None:
    data = json.loads(_run(["analyze", SAMPLE, "--report", "critical_path,comm", "--format", "json"]))
    cp = data["critical_path"]
    assert f"is {cp['path_ns'] / 1e6:.1f} ms, the wall" in README
    share = {r["kind"]: r["share"] for r in cp["by_kind"]}
    assert f"{100 * share['transfer']:.0f} % transfer, {100 * share['memory']:.0f} % memory" in README
    top = data["comm"]["stragglers"][0]
    assert top["rank"] == 5 and f"`root_cost_ns` {top['root_cost_ns'] / 1e6:.1f} ms" in README
    assert f'`cause` "{top["cause"]}", `peer_ratio` {top["peer_ratio"]:.2f}' in README
    w = json.loads(_run(["whatif", SAMPLE, "rank=5:compute=0.77", "comm=free", "--format", "json"]))["whatif"]
    by = {s["spec"]: s for s in w["scenarios"]}
    fix, free = by["rank=5:compute=0.77"], by["comm=free"]
    assert (f"saves {fix['saving_ns'] / 1e6:.1f} ms ({w['measured']['wall_ns'] / 1e6:.1f} -> "
            f"{fix['wall_ns'] / 1e6:.1f} ms, {w['measured']['tokens_per_s'] / 1e3:.1f}k -> "
            f"{fix['tokens_per_s'] / 1e3:.1f}k tokens/s)") in _words(README)
    assert f"free communication {free['saving_ns'] / 1e6:.1f} ms" in _words(README)
