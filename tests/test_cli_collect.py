"""`sohuprof collect` from the command line: output, warnings and one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from sohuprof.cli import cli

SAMPLE_RAW = Path(__file__).resolve().parent.parent / "sample_traces" / "mixtral-2node" / "raw"
KINETO = Path(__file__).resolve().parent / "data" / "kineto" / "nccl_data.json.gz"


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_collect_raw_run(tmp_path: Path) -> None:
    result = run("collect", str(SAMPLE_RAW), "-o", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    assert " events from 8 file(s)" in result.stderr   # "wrote PATH" is a message, not output
    assert (tmp_path / "store" / "manifest.json").is_file()


def test_collect_kineto_file(tmp_path: Path) -> None:
    result = run("collect", str(KINETO), "-o", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    assert "(kineto)" in result.stderr


def test_damaged_chunk_warns_once_and_keeps_the_rest(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(SAMPLE_RAW, raw)
    path = raw / "node0" / "chip2.strace"
    data = bytearray(path.read_bytes())
    data[200:204] = b"\x00\x01\x02\x03"
    path.write_bytes(bytes(data))
    result = run("collect", str(raw), "-o", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    warnings = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("wrote ")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: kept ")
    assert "quarantined" in warnings[0] and "node0/chip2.strace" in warnings[0]
    assert "1 piece(s) set aside" in warnings[0] and "quarantine.parquet" in warnings[0]


def _one_line_error(result) -> str:
    assert result.exit_code != 0
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "empty" in _one_line_error(run("collect", str(tmp_path / "empty"), "-o", str(tmp_path / "s")))
    assert "does not exist" in _one_line_error(run("collect", str(tmp_path / "nope"), "-o", str(tmp_path / "s")))
    (tmp_path / "junk.json").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    _one_line_error(run("collect", str(tmp_path / "junk.json"), "-o", str(tmp_path / "s")))
    (tmp_path / "s").mkdir()
    assert "--force" in _one_line_error(run("collect", str(SAMPLE_RAW), "-o", str(tmp_path / "s")))
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sohuprof", "collect", str(tmp_path), "-o", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "sohuprof", "-v", "collect", str(tmp_path), "-o", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
