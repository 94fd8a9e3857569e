"""sohuprof.atomic as a library: temp names carry the writer's pid, failures leave nothing,
marked directories keep unlisted files even when a merge is interrupted, overlap by hard link."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sohuprof import atomic
from sohuprof.errors import OutputError

MARK = ".test-kind"


def test_temp_names_carry_the_pid_and_failures_leave_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_file(target) as tmp:
            assert re.fullmatch(rf"\.out\.json\.tmp-{os.getpid()}-[0-9a-f]{{8}}", tmp.name)
            tmp.write_text("half")
            raise RuntimeError("crash")
    with pytest.raises(RuntimeError):
        with atomic.atomic_directory(tmp_path / "store") as tmp:
            assert re.fullmatch(rf"\.store\.tmp-{os.getpid()}-[0-9a-f]{{8}}", tmp.name)
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_open_output_refuses_an_existing_file_by_default(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_bytes(b"mine")
    with pytest.raises(OutputError, match="already exists; pass --force"):
        with atomic.open_output(target) as fh:
            fh.write(b"theirs")
    assert target.read_bytes() == b"mine"
    with atomic.open_output(target, force=True) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out"]


def test_output_kind() -> None:
    assert atomic.output_kind("-") == "stdout"
    assert atomic.output_kind("/nonexistent/x") == "path"


def test_overlap_by_hard_link(tmp_path: Path) -> None:
    (tmp_path / "trace.json").write_text("{}")
    os.link(tmp_path / "trace.json", tmp_path / "alias.json")
    with pytest.raises(OutputError, match="is the input"):
        atomic.refuse_overlap(tmp_path / "alias.json", [tmp_path / "trace.json"])
    atomic.refuse_overlap(tmp_path / "other.json", [tmp_path / "trace.json"])
    atomic.refuse_overlap("-", [tmp_path])


def _write_marked(target: Path, names: list[str], *, force: bool = False) -> None:
    with atomic.marked_directory(target, marker=MARK, force=force) as tmp:
        for name in names:
            (tmp / name).write_text(name)


def test_interrupted_merge_leaves_files_the_next_run_still_owns(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out"
    _write_marked(target, ["a.csv"])
    (target / "user.txt").write_text("mine")   # makes the next write a merge, not a swap
    real_replace = os.replace
    moved: list[str] = []

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "c.csv":
            raise OSError(28, "No space left on device")
        moved.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="No space left"):
        _write_marked(target, ["a.csv", "b.csv", "c.csv"])
    monkeypatch.undo()
    assert "b.csv" in moved and (target / "b.csv").is_file()
    _write_marked(target, ["a.csv"])   # b.csv was claimed before it arrived: ours, and stale now
    assert sorted(os.listdir(target)) == [MARK, "a.csv", "user.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_store_writer_finishes_a_dead_runs_replacement(tmp_path: Path) -> None:
    from sohuprof.store import StoreWriter

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    new = tmp_path / f".store.new-{proc.pid}-0123abcd"
    new.mkdir()
    (new / "manifest.json").write_text("{}")
    with pytest.raises(OutputError, match="already exists"):   # recovered first, then refused
        StoreWriter(tmp_path / "store").__enter__()
    assert (tmp_path / "store" / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_a_directory_under_a_listed_name_is_never_removed(tmp_path: Path) -> None:
    target = tmp_path / "out"
    _write_marked(target, ["a.csv", "b.csv"])
    (target / "b.csv").unlink()
    (target / "b.csv").mkdir()   # the user's directory, under a name the marker lists
    (target / "b.csv" / "notes.txt").write_text("mine")
    _write_marked(target, ["a.csv"])   # not a swap (which would delete it), and not stale
    assert (target / "b.csv" / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(target)) == [MARK, "a.csv", "b.csv"]
