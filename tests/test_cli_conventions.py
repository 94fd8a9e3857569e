"""CLI conventions every command keeps: "wrote PATH" on stderr, `-o -` and `-o DIR/`, a quiet Dask
engine, human byte counts in progress bars, "did you mean", a missing input said first, and CSV
tables that pandas can read back even when empty."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sohuprof.cli import cli

ROOT = Path(__file__).resolve().parents[1]
STORE = str(ROOT / "sample_traces" / "mixtral-2node" / "store")
EMULATE = ["emulate", "--model", "llama3-8b", "--nodes", "1", "--chips-per-node", "4", "--tp", "4",
           "--requests", "4", "--prompt-len", "64", "--output-len", "4"]


def _run(args: list[str]) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(cli, args)


def _wrote_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("wrote ")]


def _writing_commands(tmp: Path) -> list[list[str]]:
    return [
        [*EMULATE, "-o", str(tmp / "run")],
        ["collect", str(tmp / "run"), "-o", str(tmp / "store")],
        ["analyze", STORE, "--report", "summary", "--format", "json", "-o", str(tmp / "a.json")],
        ["analyze", STORE, "--report", "summary", "--format", "csv", "-o", str(tmp / "csv")],
        ["whatif", STORE, "comm=free", "--format", "json", "-o", str(tmp / "w.json")],
        ["export", "chrome", STORE, "-o", str(tmp / "t.json.gz"), "--ranks", "0"],
        ["diff", STORE, STORE, "--format", "json", "-o", str(tmp / "d.json")],
    ]


def test_wrote_goes_to_stderr_and_q_silences_it(tmp_path: Path) -> None:
    for args in _writing_commands(tmp_path / "loud"):
        (tmp_path / "loud").mkdir(exist_ok=True)
        result = _run(args)
        assert result.exit_code == 0, (args, result.output)
        assert not _wrote_lines(result.stdout), args
        assert _wrote_lines(result.stderr), args
    (tmp_path / "quiet").mkdir()
    for args in _writing_commands(tmp_path / "quiet"):
        result = _run(["-q", *args])
        assert result.exit_code == 0, (args, result.output)
        assert not _wrote_lines(result.stdout + result.stderr), args


def test_demo_says_wrote_on_stderr(tmp_path: Path) -> None:
    result = _run(["demo", "-o", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert not _wrote_lines(result.stdout)
    assert len(_wrote_lines(result.stderr)) == 2   # the run and the store


@pytest.mark.parametrize("args", [
    ["analyze", STORE, "--report", "summary", "--format", "json", "-o", "-"],
    ["whatif", STORE, "comm=free", "--format", "json", "-o", "-"],
    ["diff", STORE, STORE, "--format", "json", "-o", "-"],
])
def test_dash_is_stdout_for_streams(args: list[str]) -> None:
    result = _run(args)
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().startswith("{")
    assert not _wrote_lines(result.stderr)


@pytest.mark.parametrize("args", [
    ["export", "chrome", STORE, "-o"],
    ["analyze", STORE, "--report", "summary", "--format", "json", "-o"],
    ["diff", STORE, STORE, "-o"],
])
def test_trailing_slash_is_a_directory_never_a_file(tmp_path: Path, args: list[str]) -> None:
    result = _run([*args, str(tmp_path / "outdir") + "/"])
    assert result.exit_code != 0
    assert "ends in '/'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outdir").exists()


def test_dask_engine_is_quiet_under_q() -> None:
    # A fresh process: distributed installs its own stderr handler at import.
    proc = subprocess.run([sys.executable, "-m", "sohuprof", "-q", "analyze", STORE, "--report", "summary",
                           "--engine", "dask", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.lstrip().startswith("{")


def test_byte_progress_is_human() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from sohuprof.progress import _columns

    buffer = io.StringIO()
    console = Console(file=buffer, width=120)
    bar = Progress(*_columns("bytes"), console=console)
    task = bar.add_task("collecting", total=3e9)
    bar.update(task, completed=1.5e9)
    console.print(bar.make_tasks_table(bar.tasks))
    assert "1.5/3.0 GB" in buffer.getvalue()
    assert "1500000000" not in buffer.getvalue()


@pytest.mark.parametrize("args, guess", [
    (["analyze", STORE, "--report", "stall"], "did you mean 'stalls'"),
    ([*EMULATE[:1], "--hw", "sohu2", "-o", "x"], "did you mean 'sohu'"),
    ([*EMULATE[:1], "--model", "llama3-70", "-o", "x"], "did you mean 'llama3-70b'"),
])
def test_did_you_mean(args: list[str], guess: str) -> None:
    result = _run(args)
    assert result.exit_code != 0
    assert guess in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_collecting_a_store_says_analyze_it(tmp_path: Path) -> None:
    result = _run(["collect", STORE, "-o", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert result.stderr.strip() == (f"Error: {STORE!r} is already a trace store: analyze it "
                                     f"(`sohuprof analyze {STORE}`)")


def _missing_cases(missing: str, existing: str) -> list[list[str]]:
    return [
        ["analyze", missing, "-o", existing],
        ["whatif", missing, "comm=free", "-o", existing],
        ["diff", STORE, missing, "-o", existing],
        ["diff", missing, STORE],
        ["collect", missing, "-o", existing],
        ["export", "chrome", missing, "-o", existing],
        ["dashboard", missing],
        ["check", missing],
        ["query", missing, "SELECT 1", "-o", existing],
    ]


def test_missing_input_is_said_first(tmp_path: Path) -> None:
    existing = tmp_path / "exists.json"
    existing.write_text("{}")   # an output that would be refused too: the missing input wins
    missing = str(tmp_path / "nope")
    for args in _missing_cases(missing, str(existing)):
        result = _run(args)
        assert result.exit_code != 0, args
        assert result.stderr.startswith(f"Error: {missing!r} does not exist"), (args, result.stderr)


def test_empty_tables_have_a_header(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    result = _run(["-q", "analyze", STORE, "--report", "comm,critical_path", "--format", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    files = sorted(out.glob("*.csv"))
    assert files
    for path in files:
        pd.read_csv(path)   # raises EmptyDataError on a file without a header
    assert list(pd.read_csv(out / "comm_notes.csv").columns) == ["value"]
    assert os.path.getsize(out / "comm_notes.csv") > 1


@pytest.mark.parametrize("dashboard, address", [(False, "127.0.0.1:0"), (True, "127.0.0.1:8787")])
def test_local_cluster_serves_no_dashboard_unless_asked(monkeypatch: pytest.MonkeyPatch, dashboard: bool,
                                                        address: str) -> None:
    import dask.distributed

    from sohuprof.analyzers.dask_engine import run_analyses_dask
    from sohuprof.analyzers.engine import build_context
    from sohuprof.store import open_store

    seen: dict = {}

    class Stop(Exception):
        pass

    def fake_cluster(**kwargs: object) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(dask.distributed, "LocalCluster", fake_cluster)
    with pytest.raises(Stop):
        run_analyses_dask(build_context(open_store(STORE)), [], dashboard=dashboard)
    # dashboard_address=None would still bind the scheduler's HTTP server to 0.0.0.0:8787
    assert seen["dashboard_address"] == address and seen["host"] == "127.0.0.1"
    assert seen["scheduler_kwargs"] == {"dashboard": dashboard}
