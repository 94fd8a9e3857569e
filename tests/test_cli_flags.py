"""Absurd flag values: each is one clear line naming the flag and a non-zero exit, before any work."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from sohuprof.cli import cli

ROOT = Path(__file__).resolve().parent.parent
STORE = str(ROOT / "sample_traces" / "mixtral-2node" / "store")
#: A small valid emulation; each case appends one absurd value (click keeps an option's last value).
EMULATE = ["emulate", "--model", "llama3-8b", "--nodes", "1", "--chips-per-node", "4", "--tp", "4",
           "--requests", "4", "--prompt-len", "64", "--output-len", "4"]
#: Every case is refused before work starts: far below what any emulation or export takes.
FAST_S = 5.0

# (command line after the output, the flag the message must name)
EMULATE_CASES: list[tuple[list[str], str]] = [
    *[(["--rate", v], "--rate") for v in ("1e-300", "0", "-1", "nan", "inf", "-inf", "abc", "1e-9")],
    *[(["--clock-skew-us", v], "--clock-skew-us") for v in ("nan", "inf", "-1", "1e7", "x")],
    *[(["--inject", v], "--inject") for v in (
        "straggler:rank=1,slowdown=nan", "straggler:rank=1,slowdown=inf", "straggler:rank=1,slowdown=0.5",
        "straggler:rank=1,slowdown=1e9", "straggler:rank=-1,slowdown=2", "straggler:rank=99,slowdown=2",
        f"straggler:rank={2**70},slowdown=2", "straggler:rank=1.5,slowdown=2", "straggler:rank=1,rank=2,slowdown=2",
        "slow-link:node=5,factor=0.5", "slow-link:node=0,factor=nan", "slow-link:node=0,factor=0",
        "slow-link:node=0,factor=1e-300", "slow-link:node=0,factor=2", "meteor:rank=1")],
    *[(["--seed", v], "--seed") for v in ("-1", str(2**70), str(2**63), "1.5", "abc")],
    *[(["--nodes", v], "--nodes") for v in ("0", "-1", "1000000000", "65536")],
    (["--model", "llama3-70b", "--nodes", "65535", "--chips-per-node", "8", "--tp", "8"], "--nodes"),  # ~100 GB
    *[(["--chips-per-node", v], "--chips-per-node") for v in ("0", "65536", "9")],
    *[(["--tp", v], "--tp") for v in ("0", "3", str(2**40))],
    *[(["--ep", v], "--ep") for v in ("0", "2")],
    *[(["--pp", v], "--pp") for v in ("0", "1000")],
    *[(["--requests", v], "--requests") for v in ("0", "10000000", str(2**40))],
    *[(["--prompt-len", v], "--prompt-len") for v in ("0", "-5", "1e3", "2000000000")],
    *[(["--output-len", v], "--output-len") for v in ("0", "1000000", str(2**40))],
    *[(["--max-batch-tokens", v], "--max-batch-tokens") for v in ("0", "-5", str(2**40))],
    (["--dtype", "fp4"], "--dtype"),
]

EXPORT_CASES: list[tuple[list[str], str]] = [
    *[(["--start-ms", v], "--start-ms") for v in ("nan", "inf", "-1", "1e300", "abc", "1e6")],
    *[(["--end-ms", v], "--end-ms") for v in ("nan", "inf", "-inf", "0", "-1", "1e300")],
    (["--start-ms", "50", "--end-ms", "10"], "--end-ms"),
    *[(["--ranks", v], "--ranks") for v in ("0-999999999999", "-1", "5-3", "abc", "0-1048576", "99", "")],
]

ANALYZE_CASES: list[tuple[list[str], str]] = [
    *[(["--engine", "dask", "--scheduler", v], "--scheduler")
      for v in ("not-an-address", "tcp://host:0", "tcp://host:99999", "ucx://host:8786", "tcp://:8786", "")],
    (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler"),                   # without --engine dask
    (["--engine", "spark"], "--engine"),
    (["--format", "xml"], "--format"),
    (["--report", "nope"], "report"),
]

SERVE_CASES: list[tuple[list[str], str]] = [
    *[(["dashboard", STORE, "--port", v], "--port") for v in ("0", "70000", "-1", "abc")],
    *[(["demo", "--port", v], "--port") for v in ("0", "70000")],
]


class _RanAway(Exception):
    pass


@contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    """Fail a case that runs away (instead of hanging the suite): SIGALRM after ``seconds``."""
    def ring(signum: int, frame: object) -> None:
        raise _RanAway(f"still running after {seconds:g} s: a flag value was not refused up front")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_one_clear_line(args: list[str], flag: str) -> None:
    t0 = time.monotonic()
    with _bounded(4 * FAST_S):
        result = CliRunner().invoke(cli, args)
    elapsed = time.monotonic() - t0
    out = result.output
    assert result.exit_code != 0, out
    assert isinstance(result.exception, SystemExit), (result.exception, out)   # no uncaught exception
    assert "internal error" not in out and "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, out
    # Library messages name a flag by its parameter ('end_ms'); click by its option ('--end-ms').
    assert flag.lstrip("-") in errors[0].replace("_", "-"), out
    assert elapsed < FAST_S, f"{args} took {elapsed:.1f} s: it must be refused before any work"


@pytest.mark.parametrize("extra,flag", EMULATE_CASES, ids=[" ".join(c[0]) for c in EMULATE_CASES])
def test_emulate_absurd_flags(tmp_path: Path, extra: list[str], flag: str) -> None:
    out = tmp_path / "run"
    _check_one_clear_line([*EMULATE, "-o", str(out), *extra], flag)
    assert not out.exists()   # refused before anything touched the disk


@pytest.mark.parametrize("extra,flag", EXPORT_CASES, ids=[" ".join(c[0]) or "empty" for c in EXPORT_CASES])
def test_export_chrome_absurd_flags(tmp_path: Path, extra: list[str], flag: str) -> None:
    out = tmp_path / "trace.json"
    _check_one_clear_line(["export", "chrome", STORE, "-o", str(out), *extra], flag)
    assert not out.exists()


@pytest.mark.parametrize("extra,flag", ANALYZE_CASES, ids=[" ".join(c[0]) for c in ANALYZE_CASES])
def test_analyze_absurd_flags(extra: list[str], flag: str) -> None:
    _check_one_clear_line(["analyze", STORE, *extra], flag)


@pytest.mark.parametrize("args,flag", SERVE_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in SERVE_CASES])
def test_serving_absurd_flags(args: list[str], flag: str) -> None:
    _check_one_clear_line(args, flag)


def test_unreachable_scheduler_is_one_line_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import sohuprof.analyzers.dask_engine as dask_engine

    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT_S", 1)
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, ["analyze", STORE, "--report", "summary", "--engine", "dask",
                                      "--scheduler", "127.0.0.1:9"])
    assert result.exit_code == 1, result.output
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert time.monotonic() - t0 < 15


def test_scheduler_without_workers_is_an_error_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("dask.distributed")
    from dask.distributed import LocalCluster

    import sohuprof.analyzers.dask_engine as dask_engine

    monkeypatch.setattr(dask_engine, "CONNECT_TIMEOUT_S", 1)
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        result = CliRunner().invoke(cli, ["analyze", STORE, "--report", "summary", "--engine", "dask",
                                          "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 1, result.output
    assert "has no workers" in result.output


def test_a_large_run_says_so_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sohuprof.emulator.estimate as estimate

    monkeypatch.setattr(estimate, "LARGE_RECORDS", 1000)   # make this small run count as large
    result = CliRunner().invoke(cli, [*EMULATE, "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    first, *_ = result.output.splitlines()
    assert first.startswith("large run: about ") and "records" in first and "on disk" in first


def test_allow_large_lifts_the_ceiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sohuprof.emulator.estimate as estimate

    monkeypatch.setattr(estimate, "MAX_RECORDS", 1000)
    refused = CliRunner().invoke(cli, [*EMULATE, "-o", str(tmp_path / "a")])
    assert refused.exit_code == 1 and "--allow-large" in refused.output, refused.output
    allowed = CliRunner().invoke(cli, [*EMULATE, "-o", str(tmp_path / "b"), "--allow-large"])
    assert allowed.exit_code == 0, allowed.output


@pytest.mark.parametrize("args", [
    ["--nodes", "1", "--chips-per-node", "2", "--tp", "1", "--hw", "h100"],   # the pure-DP plan
    ["--nodes", "1", "--chips-per-node", "1", "--tp", "1"],
    ["--seed", str(2**63 - 1), "--clock-skew-us", "1e5", "--rate", "1e-3"],   # the bounds themselves are valid
])
def test_edge_values_that_are_valid_run(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(cli, [*EMULATE, "-o", str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output


def test_analyze_help_names_every_report() -> None:
    """The --report help is written out (importing the reports costs a fresh process); it must
    keep naming every report there is."""
    from click.testing import CliRunner

    from sohuprof.analyzers.report import REPORTS
    from sohuprof.cli import cli

    text = " ".join(CliRunner().invoke(cli, ["analyze", "--help"], terminal_width=400).output.split())
    assert [name for name in REPORTS if name not in text] == []
