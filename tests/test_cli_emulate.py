"""The ``sohuprof emulate`` command line: help, success, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import sohuprof
from sohuprof.cli import cli

SMALL = ["--model", "llama3-8b", "--nodes", "1", "--chips-per-node", "4", "--tp", "4", "--requests", "2",
         "--prompt-len", "32", "--output-len", "3"]


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)   # click < 8.2
    except TypeError:
        return CliRunner()                   # click >= 8.2 keeps stderr apart


def invoke(*args: str):
    return _runner().invoke(cli, list(args), catch_exceptions=False)


def assert_one_line_error(result, *needles: str, usage_ok: bool = False) -> str:
    """Non-zero exit, no traceback, and exactly one ``Error:`` line on stderr naming the problem;
    click's own parameter errors may add their ``Usage:`` / ``Try`` preamble."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    if usage_ok:
        assert all(line.startswith(("Usage:", "Try ", "Error:")) for line in lines), result.stderr
    else:
        assert lines == errors, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sohuprof, version {sohuprof.__version__}"


def test_help_of_every_command_has_an_example() -> None:
    result = invoke("--help")
    assert result.exit_code == 0 and "emulate" in result.stdout
    assert cli.commands
    for name in cli.commands:
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        assert "Example" in result.stdout, f"{name} --help has no example"
        assert f"sohuprof {name}" in result.stdout


def _examples(command: str) -> list[list[str]]:
    """The example command lines of ``sohuprof <command> --help`` (continuations joined)."""
    text = invoke(command, "--help").stdout.replace("\\\n", " ")
    return [shlex.split(line.split("#")[0])[1:] for line in text.splitlines()
            if line.strip().startswith(f"sohuprof {command} ")]


EMULATE_EXAMPLES = _examples("emulate")


@pytest.mark.parametrize("example", [pytest.param(args, id=" ".join(args[:3])) for args in EMULATE_EXAMPLES])
def test_emulate_help_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example: list[str]) -> None:
    """What --help shows works as typed (here with a tiny workload appended, the last value wins)."""
    monkeypatch.chdir(tmp_path)
    result = invoke("-q", *example, "--requests", "2", "--prompt-len", "64", "--output-len", "2")
    assert result.exit_code == 0, result.output


def test_emulate_help_has_examples() -> None:
    assert len(EMULATE_EXAMPLES) >= 2


def test_emulate_help_lists_every_option() -> None:
    text = invoke("emulate", "-h").stdout
    for option in ("--model", "--hw", "--nodes", "--chips-per-node", "--tp", "--ep", "--pp", "--requests", "--rate",
                   "--prompt-len", "--output-len", "--seed", "--inject", "--force", "--clock-skew-us", "-o"):
        assert option in text


def test_emulate_writes_a_run_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("emulate", *SMALL, "-o", str(out))
    assert result.exit_code == 0, result.output
    summary = result.stderr.strip()   # "wrote PATH" is a message, not output
    assert summary.startswith(f"wrote {out}:") and "records from 4 chips" in summary and "tokens/s" in summary
    assert result.stdout == ""
    meta = json.loads((out / "run.json").read_text())
    assert meta["model"]["name"] == "llama3-8b" and meta["parallel"]["tp"] == 4
    assert meta["workload"]["requests"] == 2 and meta["workload"]["output_len"] == 3
    records = sum(c["records"] for c in meta["chips"])
    assert f"{records:,} records" in summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    result = invoke("-q", "emulate", *SMALL, "-o", str(tmp_path / "run"))
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_options_reach_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke("emulate", *SMALL, "--seed", "5", "--clock-skew-us", "0", "--dtype", "bf16", "--rate", "100",
                    "--hw", "h100", "--inject", "straggler:rank=1,slowdown=1.2", "-o", str(out))
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["hardware"]["name"] == "h100" and meta["model"]["dtype"] == "bf16"
    assert meta["workload"]["seed"] == 5 and meta["workload"]["rate"] == 100
    assert meta["workload"]["faults"] == ["straggler:rank=1,slowdown=1.2"]
    assert {c["offset_ns"] for c in meta["truth"]["clock"]} == {1e9}


def _llama_without(tmp_path: Path, key: str) -> Path:
    cfg = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
           "num_key_value_heads": 8, "vocab_size": 128256}
    del cfg[key]
    path = tmp_path / "mine" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(cfg))
    return path


BAD = {
    "unknown model": (["--model", "llama9-1t"], ["llama9-1t", "llama3-8b"], False),
    "unknown hardware": (["--hw", "tpu9"], ["tpu9", "sohu"], False),
    "tp not dividing heads": (["--model", "llama3-8b", "--tp", "3"], ["--tp", "3", "32 attention heads"], False),
    "tp not dividing chips": (["--model", "llama3-8b", "--nodes", "1", "--tp", "16"], ["--tp", "does not divide the 8 chips"], False),
    "ep on a dense model": (["--model", "llama3-8b", "--ep", "2"], ["--ep", "dense"], False),
    "model does not fit": (["--model", "llama3-405b", "--nodes", "1", "--tp", "1"], ["GB", "--tp"], False),
    "malformed inject": (["--model", "llama3-8b", "--inject", "straggler:rank=two,slowdown=2"], ["--inject", "rank"], True),
    "unknown fault": (["--model", "llama3-8b", "--inject", "meteor:node=1"], ["--inject", "straggler"], True),
    "fault outside the cluster": (["--model", "llama3-8b", "--inject", "straggler:rank=99,slowdown=2"], ["rank 99"], False),
    "too many chips per node": (["--model", "llama3-8b", "--chips-per-node", "16", "--tp", "8"], ["--chips-per-node", "16"], False),
    "pp beyond the layers": (["--model", "llama3-8b", "--nodes", "5", "--tp", "1", "--pp", "40"], ["--pp", "40", "32 layers"], False),
    "zero nodes": (["--model", "llama3-8b", "--nodes", "0"], ["--nodes"], True),
    "zero rate": (["--model", "llama3-8b", "--rate", "0"], ["--rate"], True),
    "bad dtype": (["--model", "llama3-8b", "--dtype", "int3"], ["--dtype"], True),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_line_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    args, needles, usage_ok = BAD[case]
    out = tmp_path / "run"
    result = invoke("emulate", *args, "-o", str(out))
    assert_one_line_error(result, *needles, usage_ok=usage_ok)
    assert list(tmp_path.iterdir()) == []


def test_config_json_missing_a_field_is_named(tmp_path: Path) -> None:
    config = _llama_without(tmp_path, "hidden_size")
    before = sorted(tmp_path.rglob("*"))
    result = invoke("emulate", "--model", str(config), "--nodes", "1", "--tp", "8", "-o", str(tmp_path / "run"))
    assert_one_line_error(result, "hidden_size")
    assert sorted(tmp_path.rglob("*")) == before


def test_hardware_toml_missing_a_field_is_named(tmp_path: Path) -> None:
    hw = tmp_path / "chip.toml"
    hw.write_text('name = "chip"\n')
    result = invoke("emulate", "--model", "llama3-8b", "--hw", str(hw), "-o", str(tmp_path / "run"))
    assert_one_line_error(result, "hbm_bandwidth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.toml"]


def test_unwritable_output_parent(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as a user chmod does not restrict (root)")
        result = invoke("emulate", *SMALL, "-o", str(parent / "run"))
        assert_one_line_error(result, str(parent))
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o700)


def test_unwritable_output_parent_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where chmod cannot lock root out, the access check is made to answer as for a user."""
    parent = tmp_path / "locked"
    parent.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == parent and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    result = invoke("emulate", *SMALL, "-o", str(parent / "run"))
    assert_one_line_error(result, str(parent), "not writable")
    assert list(parent.iterdir()) == []


def test_output_under_a_file_or_missing_parent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke("emulate", *SMALL, "-o", str(blocker / "run"))
    assert_one_line_error(result, str(blocker))
    result = invoke("emulate", *SMALL, "-o", str(blocker))
    assert_one_line_error(result, str(blocker))
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_existing_output_needs_force_and_force_replaces(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = invoke("emulate", *SMALL, "-o", str(out))
    assert_one_line_error(result, "already exists", "--force")
    assert (out / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    # --force replaces a previous run, never a directory of other files (`-o ~ --force`).
    result = invoke("emulate", *SMALL, "--force", "-o", str(out))
    assert_one_line_error(result, "holds other files")
    assert (out / "old.txt").read_text() == "old"
    (out / "run.json").write_text("{}")
    result = invoke("emulate", *SMALL, "--force", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert not (out / "old.txt").exists() and (out / "run.json").stat().st_size > 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_internal_error_is_one_line_unless_verbose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sohuprof.emulator

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sohuprof.emulator, "emulate", boom)
    result = invoke("emulate", *SMALL, "-o", str(tmp_path / "run"))
    assert_one_line_error(result, "internal error", "RuntimeError", "boom", "-v")
    result = _runner().invoke(cli, ["-v", "emulate", *SMALL, "-o", str(tmp_path / "run")])
    assert isinstance(result.exception, RuntimeError)


def _sohuprof() -> list[str]:
    exe = shutil.which("sohuprof")
    return [exe] if exe else [sys.executable, "-m", "sohuprof"]


def test_installed_command_error_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([*_sohuprof(), "emulate", "--model", "llama3-8b", "--tp", "3", "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--tp" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_installed_command_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([*_sohuprof(), "-v", "emulate", "--model", "llama9-1t", "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "SpecError" in proc.stderr and "llama9-1t" in proc.stderr


def test_installed_command_runs(tmp_path: Path) -> None:
    proc = subprocess.run([*_sohuprof(), "emulate", *SMALL, "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # no progress bar off a terminal: the one line is "wrote PATH", a message (stderr)
    assert proc.stdout == "" and proc.stderr.startswith("wrote ") and proc.stderr.count("\n") == 1


def test_demo(tmp_path: Path) -> None:
    result = invoke("demo", "-o", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    run = tmp_path / "demo" / "run"
    meta = json.loads((run / "run.json").read_text())
    assert meta["workload"]["faults"] == ["straggler:rank=5,slowdown=1.3"] and meta["parallel"]["world"] == 8
    assert str(run) in result.stdout
