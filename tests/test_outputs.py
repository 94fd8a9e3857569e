"""Outputs never destroy what a user had: CSV directories keep a user's files, existing files need
--force, devices, FIFOs and ``-`` are written through, symlinks are followed, an output may not
overlap its input, and what a killed run left is recovered by the next one (real ``kill -9``)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sohuprof.analyzers.render import CSV_MARKER
from sohuprof.cli import cli
from sohuprof.store import open_store

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_traces" / "mixtral-2node"
STORE = SAMPLE / "store"
IMPORTANT = "do not lose me\n"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return result


def one_line_error(result: Any, *needles: str) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def siblings(path: Path) -> list[str]:
    """The project's hidden journal entries beside ``path`` (temp, new or old copies)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def analyze(*args: str) -> Any:
    return run("analyze", str(STORE), "--report", "summary", *args)


def make_null_device(path: Path) -> Path:
    """A character device like /dev/null, made inside the test's own directory."""
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")


# ---------------------------------------------------------------------------- CSV directories


def test_csv_refuses_a_foreign_directory_and_force_keeps_its_files(tmp_path: Path) -> None:
    out = tmp_path / "dir"
    out.mkdir()
    (out / "important.txt").write_text(IMPORTANT)
    one_line_error(analyze("--format", "csv", "-o", str(out)), "not a previous output", "--force")
    assert sorted(os.listdir(out)) == ["important.txt"]
    ok(analyze("--format", "csv", "-o", str(out), "--force"))
    assert (out / "important.txt").read_text() == IMPORTANT
    assert (out / "summary.csv").is_file() and (out / CSV_MARKER).is_file()
    assert siblings(out) == []
    # now a previous output with a user's file in it: re-runs, with or without --force, keep it
    ok(analyze("--format", "csv", "-o", str(out)))
    ok(analyze("--format", "csv", "-o", str(out), "--force"))
    assert (out / "important.txt").read_text() == IMPORTANT
    assert siblings(out) == []


def test_csv_rerun_replaces_its_own_output_whole(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    ok(run("analyze", str(STORE), "--report", "summary,stalls", "--format", "csv", "-o", str(out)))
    first = set(os.listdir(out))
    assert {"summary.csv", "stalls_ranks.csv", CSV_MARKER} <= first
    listed = json.loads((out / CSV_MARKER).read_text())["files"]
    assert set(listed) == first - {CSV_MARKER}
    inode = out.stat().st_ino
    ok(analyze("--format", "csv", "-o", str(out)))   # no --force needed for our own output
    assert sorted(os.listdir(out)) == [CSV_MARKER, "summary.csv"]   # stalls files were ours
    assert out.stat().st_ino != inode   # swapped in one rename, not rewritten file by file
    assert siblings(out) == []


def test_csv_user_file_added_to_an_output_survives_every_path(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    ok(analyze("--format", "csv", "-o", str(out)))
    (out / "important.txt").write_text(IMPORTANT)
    for extra in ((), ("--force",)):
        ok(run("analyze", str(STORE), "--report", "summary,stalls", "--format", "csv", "-o", str(out), *extra))
        assert (out / "important.txt").read_text() == IMPORTANT
        ok(analyze("--format", "csv", "-o", str(out), *extra))   # stalls files are stale and ours
        assert (out / "important.txt").read_text() == IMPORTANT
        assert not (out / "stalls_ranks.csv").exists()
    assert siblings(out) == []


def test_csv_never_overwrites_an_unlisted_file_without_force(tmp_path: Path) -> None:
    out = tmp_path / "csv"
    ok(analyze("--format", "csv", "-o", str(out)))
    (out / "stalls_ranks.csv").write_text(IMPORTANT)   # the user's, with a name we are about to use
    args = ("analyze", str(STORE), "--report", "summary,stalls", "--format", "csv", "-o", str(out))
    one_line_error(run(*args), "stalls_ranks.csv", "--force")
    assert (out / "stalls_ranks.csv").read_text() == IMPORTANT
    ok(run(*args, "--force"))
    assert (out / "stalls_ranks.csv").read_text().startswith("rank,")


def test_csv_into_an_empty_directory_and_through_a_symlink(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    ok(analyze("--format", "csv", "-o", str(empty)))
    assert (empty / "summary.csv").is_file()
    real = tmp_path / "real"
    ok(analyze("--format", "csv", "-o", str(real)))
    link = tmp_path / "link"
    link.symlink_to("real", target_is_directory=True)
    ok(analyze("--format", "csv", "-o", str(link)))
    assert link.is_symlink() and (real / "summary.csv").is_file()
    assert siblings(real) == [] and siblings(link) == []


def test_csv_to_stdout_is_one_table_and_refuses_files(tmp_path: Path) -> None:
    """``-o -`` is a stream: one report of one table goes there (summary: one row with its
    header); several tables need a directory, said in one line."""
    result = analyze("--format", "csv", "-o", "-")
    assert result.exit_code == 0 and result.stdout.splitlines()[0].startswith("wall_ns,")
    assert len(result.stdout.splitlines()) == 2
    several = run("analyze", str(STORE), "--report", "comm", "--format", "csv", "-o", "-")
    assert several.exit_code == 1 and "-o DIR" in several.stderr and len(several.stderr.strip().splitlines()) == 1
    missing = run("analyze", str(STORE), "--report", "summary", "--format", "csv")
    assert missing.exit_code == 2 and "-o DIR" in missing.stderr
    (tmp_path / "file").write_text(IMPORTANT)
    for extra in ((), ("--force",)):
        one_line_error(analyze("--format", "csv", "-o", str(tmp_path / "file"), *extra), "not a directory")
    assert (tmp_path / "file").read_text() == IMPORTANT


@needs_root
def test_csv_refuses_a_device(tmp_path: Path) -> None:
    node = make_null_device(tmp_path / "null")
    one_line_error(analyze("--format", "csv", "-o", str(node), "--force"), "not a directory")
    assert stat.S_ISCHR(os.lstat(node).st_mode)


# ---------------------------------------------------------------------------- file outputs


def _export(out: Path | str, *extra: str) -> Any:
    return run("export", "chrome", str(STORE), "-o", str(out), "--ranks", "0", *extra)


WRITERS = {
    "json": lambda out, *extra: analyze("--format", "json", "-o", str(out), *extra),
    "table": lambda out, *extra: analyze("--format", "table", "-o", str(out), *extra),
    "html": lambda out, *extra: analyze("--format", "html", "-o", str(out), *extra),
    "chrome": _export,
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_existing_file_needs_force(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out.txt"
    out.write_text(IMPORTANT)
    one_line_error(WRITERS[kind](out), "already exists", "--force")
    assert out.read_text() == IMPORTANT
    ok(WRITERS[kind](out, "--force"))
    assert out.read_text() != IMPORTANT and siblings(out) == []


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_symlink_is_followed_and_kept(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target.out"
    target.write_text(IMPORTANT)
    link = tmp_path / "link.out"
    link.symlink_to("target.out")
    one_line_error(WRITERS[kind](link), "already exists", "--force")
    assert target.read_text() == IMPORTANT
    ok(WRITERS[kind](link, "--force"))
    assert link.is_symlink() and os.readlink(link) == "target.out"
    assert target.stat().st_size > len(IMPORTANT) and target.read_text() != IMPORTANT
    dangling = tmp_path / "dangling.out"
    dangling.symlink_to("made.out")
    ok(WRITERS[kind](dangling))
    assert dangling.is_symlink() and (tmp_path / "made.out").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.out", "link.out", "made.out", "target.out"]


@needs_root
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_device_node_is_written_through_never_replaced(tmp_path: Path, kind: str) -> None:
    node = make_null_device(tmp_path / "null")
    link = tmp_path / "null-link"
    link.symlink_to("null")
    for out in (node, link):
        ok(WRITERS[kind](out))   # no --force: writing a device replaces nothing
        ok(WRITERS[kind](out, "--force"))
    st = os.lstat(node)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null", "null-link"]


def _read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as fh:   # blocks until the writer opens its end
            into.append(fh.read())
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("kind, name", [("json", "fifo"), ("html", "fifo"), ("chrome", "fifo"),
                                        ("chrome", "fifo.json.gz")])
def test_fifo_is_written_through(tmp_path: Path, kind: str, name: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = _read_fifo(fifo, got)
    ok(WRITERS[kind](fifo))
    thread.join(timeout=60)
    assert got and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    data = gzip.decompress(got[0]) if name.endswith(".gz") else got[0]
    if kind == "html":
        assert data.startswith(b"<!doctype html>") and data.rstrip().endswith(b"</html>")
    else:
        assert json.loads(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_dash_means_stdout(tmp_path: Path) -> None:
    assert json.loads(ok(analyze("--format", "json", "-o", "-")).stdout)["summary"]["ranks"] == 8
    assert "summary" in ok(analyze("-o", "-")).stdout
    assert ok(analyze("--format", "html", "-o", "-")).stdout.startswith("<!doctype html>")
    result = ok(_export("-"))
    doc = json.loads(result.stdout)   # plain JSON: pipe it to gzip if wanted
    assert doc["traceEvents"] and "wrote -" in result.stderr
    assert not (Path.cwd() / "-").exists()


# ---------------------------------------------------------------------------- outputs vs inputs


@pytest.fixture()
def raw_copy(tmp_path: Path) -> Path:
    """A copy of the sample run (never risk the committed one)."""
    return Path(shutil.copytree(SAMPLE / "raw", tmp_path / "run"))


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_collect_refuses_an_output_overlapping_its_run(raw_copy: Path) -> None:
    before = _tree(raw_copy)
    for out, how in ((raw_copy, "is the input"), (raw_copy / "node0", "is inside the input"),
                     (raw_copy / "new", "is inside the input"), (raw_copy.parent, "contains the input")):
        one_line_error(run("collect", str(raw_copy), "-o", str(out), "--force"), how)
    link = raw_copy.parent / "link"
    link.symlink_to(raw_copy, target_is_directory=True)
    one_line_error(run("collect", str(link), "-o", str(raw_copy / "node0"), "--force"), "inside the input")
    assert _tree(raw_copy) == before
    assert not (raw_copy / "new").exists() and siblings(raw_copy / "node0") == []


def test_analyze_and_export_refuse_an_output_overlapping_the_store(tmp_path: Path) -> None:
    store = Path(shutil.copytree(STORE, tmp_path / "store"))
    before = _tree(store)
    one_line_error(run("analyze", str(store), "--format", "csv", "-o", str(store), "--force"), "is the input")
    one_line_error(run("analyze", str(store), "--format", "csv", "-o", str(tmp_path), "--force"), "contains the input")
    one_line_error(run("analyze", str(store), "--format", "json", "-o", str(store / "r.json")), "inside the input")
    one_line_error(run("analyze", str(store), "--format", "html", "-o", str(store / "events")), "inside the input")
    one_line_error(run("export", "chrome", str(store), "-o", str(store / "t.json"), "--force"), "inside the input")
    assert _tree(store) == before


def test_collect_through_a_symlink_replaces_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real-store"
    ok(run("collect", str(SAMPLE / "raw"), "-o", str(real)))
    link = tmp_path / "store"
    link.symlink_to("real-store", target_is_directory=True)
    one_line_error(run("collect", str(SAMPLE / "raw"), "-o", str(link)), "already exists", "--force")
    ok(run("collect", str(SAMPLE / "raw"), "-o", str(link), "--force"))
    assert link.is_symlink() and (real / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real-store", "store"]


# ---------------------------------------------------------------------------- killed runs


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_touches_only_dead_writers_own_names(tmp_path: Path) -> None:
    from sohuprof import atomic

    target = tmp_path / "out"
    dead = _dead_pid()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [f".out.tmp-{dead}-0123abcd", f".out.tmp-{os.getpid()}-0123abce"]   # own pid, not active
        kept = [f".out.tmp-{alive.pid}-0123abcd",   # its writer is still running
                ".out.tmp-0123abcd", ".out.tmp-12-zzzzzzzz", ".other.tmp-1-0123abcd", "out.tmp-1-0123abcd"]
        for name in stale + kept:
            (tmp_path / name).mkdir()
            (tmp_path / name / "x").write_text("x")
        atomic.recover(target)
        assert sorted(os.listdir(tmp_path)) == sorted(kept)
    finally:
        alive.kill()
        alive.wait()


def test_recover_puts_the_old_output_back_or_completes_the_new(tmp_path: Path) -> None:
    from sohuprof import atomic

    dead = _dead_pid()
    old = tmp_path / f".out.old-{dead}-0123abcd"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    atomic.recover(tmp_path / "out")   # no new copy survived: the old one is put back
    assert (tmp_path / "out" / "manifest.json").read_text() == "old" and os.listdir(tmp_path) == ["out"]
    shutil.rmtree(tmp_path / "out")
    for stage, text in (("old", "old"), ("new", "new")):
        (tmp_path / f".out.{stage}-{dead}-0123abcd").mkdir()
        (tmp_path / f".out.{stage}-{dead}-0123abcd" / "manifest.json").write_text(text)
    atomic.recover(tmp_path / "out")   # the complete new copy wins
    assert (tmp_path / "out" / "manifest.json").read_text() == "new" and os.listdir(tmp_path) == ["out"]
    (tmp_path / f".out.old-{dead}-0123abcd").mkdir()   # killed while deleting the old one
    atomic.recover(tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").read_text() == "new" and os.listdir(tmp_path) == ["out"]


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run large enough that collecting it takes a visible fraction of a second."""
    out = tmp_path_factory.mktemp("bigrun") / "run"
    ok(run("-q", "emulate", "--model", "llama3-8b", "--nodes", "2", "--tp", "8", "--requests", "64",
           "--output-len", "64", "-o", str(out)))
    return out


def _events(store: Path) -> int:
    return open_store(store).read("events", columns=["ts"]).num_rows


# Runs the CLI with os.rename patched to stop, forever, right after the old store is moved aside
# (before the new one is renamed in): the instant a kill does the most damage.
PAUSE_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys, time
    real_rename = os.rename
    def rename(src, dst, *a, **k):
        real_rename(src, dst, *a, **k)
        if ".old-" in os.fspath(dst):
            print("moved aside", flush=True)
            time.sleep(600)
    os.rename = rename
    from sohuprof.cli import main
    sys.argv = ["sohuprof", *sys.argv[1:]]
    main()
""")


def test_force_collect_killed_between_its_renames_is_recovered(tmp_path: Path, big_run: Path) -> None:
    store = tmp_path / "store"
    ok(run("collect", str(SAMPLE / "raw"), "-o", str(store)))   # the old store, to be replaced
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_BETWEEN_RENAMES, "-q", "collect", str(big_run),
                             "-o", str(store), "--force"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().strip()
        if line != "moved aside":
            pytest.fail(f"the collect did not reach its renames: {line!r} {proc.stderr.read()}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not store.exists()   # the damage a kill at this instant used to leave for good
    assert [n.split("-")[0] for n in siblings(store)] == [".store.new", ".store.old"]
    # the next run on the same target completes the replacement first, then does its own work
    one_line_error(run("collect", str(SAMPLE / "raw"), "-o", str(store)), "already exists")
    assert siblings(store) == [] and (store / "manifest.json").is_file()
    clean = tmp_path / "clean"
    ok(run("collect", str(big_run), "-o", str(clean)))
    assert _events(store) == _events(clean)


def test_killed_collect_leaves_nothing_after_the_next_run(tmp_path: Path, big_run: Path) -> None:
    store = tmp_path / "store"
    for attempt in range(5):   # kill while the store is half-written (retry if it finished first)
        proc = subprocess.Popen([sys.executable, "-m", "sohuprof", "-q", "collect", str(big_run),
                                 "-o", str(store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                temps = [tmp_path / n for n in siblings(store) if n.startswith(".store.tmp-")]
                if temps and any((temps[0] / "events").glob("node=*/*")):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.002)
        finally:
            proc.kill()
            proc.wait()
        if proc.returncode == -signal.SIGKILL and not store.exists():
            break
        shutil.rmtree(store, ignore_errors=True)
    else:
        pytest.fail("collect always finished before it could be killed mid-write")
    left = siblings(store)
    assert left and all(n.startswith(f".store.tmp-{proc.pid}-") for n in left)
    ok(run("collect", str(big_run), "-o", str(store)))
    assert siblings(store) == [] and sorted(os.listdir(tmp_path)) == ["store"]
    clean = tmp_path / "clean"
    ok(run("collect", str(big_run), "-o", str(clean)))
    assert _events(store) == _events(clean) > 0


def test_a_refused_or_failed_analyze_creates_no_directories(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "report.json"
    one_line_error(run("analyze", str(tmp_path / "missing"), "--format", "json", "-o", str(out)))
    one_line_error(run("analyze", str(tmp_path / "missing"), "--format", "csv", "-o", str(tmp_path / "a" / "csv")))
    assert list(tmp_path.iterdir()) == []
    ok(analyze("--format", "json", "-o", str(out)))
    assert json.loads(out.read_text())["summary"]


def test_dev_stdout_redirected_to_a_file_is_written_through(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    with open(report, "wb") as fh:   # as the shell does for `> report.json`
        proc = subprocess.run([sys.executable, "-m", "sohuprof", "analyze", str(STORE), "--report", "summary",
                               "--format", "json", "-o", "/dev/stdout"], stdout=fh, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(report.read_bytes())["summary"]["ranks"] == 8
    assert os.listdir(tmp_path) == ["report.json"]


@needs_root
def test_block_device_needs_force(tmp_path: Path) -> None:
    node = tmp_path / "disk"
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(1, 3))   # refused before it is ever opened
    for kind in sorted(WRITERS):
        one_line_error(WRITERS[kind](node), "block device", "--force")
    assert stat.S_ISBLK(os.lstat(node).st_mode) and os.listdir(tmp_path) == ["disk"]


def test_force_collect_replaces_a_store_but_never_a_directory_of_other_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    one_line_error(run("collect", str(SAMPLE / "raw"), "-o", str(home), "--force"), "holds other files")
    assert (home / "thesis.tex").read_text() == "years of work"
    store = tmp_path / "store"
    ok(run("collect", str(SAMPLE / "raw"), "-o", str(store)))
    ok(run("collect", str(SAMPLE / "raw"), "-o", str(store), "--force"))   # a previous store: replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    ok(run("collect", str(SAMPLE / "raw"), "-o", str(empty), "--force"))
    assert open_store(empty).manifest["format"] == "sohuprof-trace"


def test_dev_stdout_appended_to_a_file_keeps_what_the_file_held(tmp_path: Path) -> None:
    """`-o /dev/stdout >> log` writes where the shell's descriptor is (O_APPEND): reopening the
    name would start at byte 0 and overwrite the log's beginning."""
    log = tmp_path / "log.txt"
    log.write_text("IMPORTANT LOG LINE 1\n" * 50)
    for args in (["analyze", str(STORE), "--report", "summary", "--format", "json", "-o", "/dev/stdout"],
                 ["export", "chrome", str(STORE), "-o", "/dev/stdout", "--ranks", "0"]):
        before = log.read_bytes()
        with open(log, "ab") as out:
            done = subprocess.run([sys.executable, "-m", "sohuprof.cli", "-q", *args], stdout=out,
                                  stderr=subprocess.PIPE, timeout=120)
        assert done.returncode == 0, done.stderr
        after = log.read_bytes()
        assert after.startswith(before) and len(after) > len(before)


def test_demo_replaces_only_its_own_run_and_store(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    (proj / "run").mkdir(parents=True)
    (proj / "run" / "NOTES.txt").write_text("mine")
    one_line_error(run("-q", "demo", "-o", str(proj)), "did not write", "--force")
    assert (proj / "run" / "NOTES.txt").read_text() == "mine"
    demo = tmp_path / "demo"
    ok(run("-q", "demo", "-o", str(demo)))
    ok(run("-q", "demo", "-o", str(demo)))   # its own output: replaced without --force
    assert (demo / ".sohuprof-demo").is_file() and open_store(demo / "store").manifest["counts"]["events"] > 0
