"""Outputs that appear whole or not at all, and never destroy what a user had.

Every output is written to a temporary sibling and renamed into place. The sibling's name is a
tiny journal that the next run on the same target reads to finish or undo an interrupted one:

``.NAME.tmp-PID-TOKEN``
    Being written (or garbage about to be deleted). Removed by the next run once process PID is
    gone.
``.NAME.new-PID-TOKEN``
    Complete, about to be renamed onto ``NAME``. If the run died and ``NAME`` is missing, the
    next run renames it into place (the replacement is completed); otherwise it is removed.
``.NAME.old-PID-TOKEN``
    The previous ``NAME``, moved aside by a ``force`` replacement. If the run died and ``NAME``
    is missing (and no ``.new-`` of the same run is left to complete it), it is put back.

Only names of exactly this pattern whose writer process is gone are ever touched.

Kinds of output (the same rules for every command):

- ``-`` is stdout (:func:`open_output`); a character device, a FIFO or a descriptor's name
  (``/dev/stdout``) is opened and written through, never renamed over or created; so is a block
  device, but only with ``force`` (it holds a disk's data).
- A symlink is followed: its target is written (atomically, beside the target), the link kept.
- A file refuses an existing file unless ``force``.
- A directory (a trace store, a raw run) refuses an existing path unless ``force``, which
  replaces it: old moved aside, new renamed in, old deleted.
- A marked directory (:func:`marked_directory`, e.g. CSV reports) is created whole when absent
  and swapped whole when it holds only a previous output of the same kind (its marker file lists
  its files); files it does not list are never removed: into an empty directory, a previous
  output a user added files to, or (with ``force``) any other directory, the new files are moved
  in one by one and the rest is kept.
- An output equal to, inside or containing one of its inputs is refused (:func:`refuse_overlap`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Literal

import orjson

from sohuprof.errors import OutputError

__all__ = ["atomic_directory", "atomic_file", "open_output", "marked_directory", "output_kind",
           "check_file_output", "check_marked_directory", "refuse_overlap", "recover", "STDOUT"]

log = logging.getLogger("sohuprof.atomic")

#: The output path that means standard output.
STDOUT = "-"

Stage = Literal["tmp", "new", "old"]

# Tokens of the outputs this process is writing: a leftover carrying our own pid is stale unless
# its token is here (a pid is reused after a restart, e.g. in a container).
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _sibling(target: Path, stage: Stage, token: str) -> Path:
    return target.parent / f".{target.name}.{stage}-{os.getpid()}-{token}"


def _journal_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(tmp|new|old)-([0-9]{{1,10}})-([0-9a-f]{{8}})")


def _process_gone(pid: int, token: str) -> bool:
    if pid == os.getpid():
        with _ACTIVE_LOCK:
            return token not in _ACTIVE
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)   # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except OSError:       # exists but is not ours (EPERM), or cannot tell: leave its files alone
        return False
    return False


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def recover(path: str | os.PathLike[str]) -> None:
    """Finish or undo what an interrupted run left beside ``path`` (see the module docstring).

    Only siblings named ``.NAME.{tmp,new,old}-PID-TOKEN`` whose process PID is gone are touched:
    a missing ``NAME`` gets the run's complete new output or else its old one back; everything
    else of that run is deleted. Safe to call at any time, by several processes at once.
    """
    target = Path(path)
    pattern = _journal_re(target.name)
    runs: dict[tuple[int, str], dict[str, Path]] = {}
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        m = pattern.fullmatch(name)
        if m and _process_gone(int(m.group(2)), m.group(3)):
            runs.setdefault((int(m.group(2)), m.group(3)), {})[m.group(1)] = target.parent / name
    for (pid, _token), stages in sorted(runs.items()):
        try:
            if not os.path.lexists(target):
                for stage, what in (("new", "completed the replacement"), ("old", "put back the previous output")):
                    if stage in stages:
                        try:
                            os.rename(stages.pop(stage), target)
                        except FileNotFoundError:   # another process recovered it first
                            continue
                        log.warning("%s: a run (pid %d) was interrupted while replacing it; %s",
                                    target, pid, what)
                        break
            for leftover in stages.values():
                _remove(leftover)
                log.info("removed %s, left by an interrupted run (pid %d)", leftover, pid)
        except OSError as exc:
            raise OutputError(f"cannot recover {str(target)!r} from an interrupted run (pid {pid}): "
                              f"{exc.strerror or exc}; move the hidden '.{target.name}.*' entries "
                              f"beside it away by hand") from None


# /dev/stdout, /dev/fd/1, /proc/self/fd/1: another name for an open descriptor, written through
# even when it resolves to a regular file (``-o /dev/stdout > report.json``)
_FD_ALIAS = re.compile(r"/dev/(stdout|stderr|fd/[0-9]+)|/proc/(self|[0-9]+)/fd/[0-9]+")


def _is_fd_alias(path: str | os.PathLike[str]) -> bool:
    name = os.path.abspath(path)
    for _ in range(8):   # a few links deep: /dev/stdout -> /proc/self/fd/1 -> the file
        if _FD_ALIAS.fullmatch(name):
            return True
        if not os.path.islink(name):
            return False
        name = os.path.join(os.path.dirname(name), os.readlink(name))
    return False


def _own_descriptor(path: str | os.PathLike[str]) -> int | None:
    """The number of this process's open descriptor that ``path`` names (``/dev/stdout`` is 1,
    ``/proc/self/fd/5`` is 5), else None. Reopening such a name starts a new file position at 0
    without the descriptor's O_APPEND: ``-o /dev/stdout >> log`` would overwrite the log's start."""
    name = os.path.abspath(path)
    for _ in range(8):
        m = re.fullmatch(r"/dev/(stdout|stderr)|/dev/fd/([0-9]+)|/proc/(self|[0-9]+)/fd/([0-9]+)", name)
        if m:
            if m.group(1):
                return 1 if m.group(1) == "stdout" else 2
            if m.group(2):
                return int(m.group(2))
            if m.group(3) == "self" or int(m.group(3)) == os.getpid():
                return int(m.group(4))
            return None
        if not os.path.islink(name):
            return None
        name = os.path.join(os.path.dirname(name), os.readlink(name))
    return None


def output_kind(path: str | os.PathLike[str]) -> Literal["stdout", "stream", "path"]:
    """How ``path`` is written: ``stdout`` (``-``), ``stream`` (an existing character or block
    device, a FIFO or a name of an open descriptor such as ``/dev/stdout``: opened and written
    through) or ``path`` (a regular file or directory, written beside and renamed into place)."""
    if os.fspath(path) == STDOUT:
        return "stdout"
    if _is_fd_alias(path) and os.path.exists(path):
        return "stream"
    try:
        mode = os.stat(path).st_mode   # follows symlinks: a link to /dev/null is a stream
    except OSError:
        return "path"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        return "stream"
    return "path"


def _check_stream(path: str | os.PathLike[str], force: bool) -> None:
    """A block device holds data (a disk, a partition): writing a report over it needs ``force``."""
    try:
        block = stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return
    if block and not force:
        raise OutputError(f"{os.fspath(path)!r} is a block device and writing to it overwrites what "
                          f"it holds; pass --force to write to it")


def _follow(path: Path) -> Path:
    """The path to write: a symlink's final target (kept as a link), else ``path`` itself."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _check_parent(shown: Path, target: Path, *, create: bool = True) -> None:
    """Check (and with ``create`` make) the parent directories of ``target``; a check made
    before the work creates nothing, so a failed analysis leaves no empty directories."""
    parent = target.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise OutputError(f"cannot create {str(shown)!r}: {str(blocking)!r} is a file, not a directory")
    if not create:
        if blocking is not None and not os.access(blocking, os.W_OK | os.X_OK):
            raise OutputError(f"cannot create {str(shown)!r}: directory {str(blocking)!r} is not writable")
        return
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {str(shown)!r}: {exc.strerror} ({str(parent)!r})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {str(shown)!r}: directory {str(parent)!r} is not writable")


def _check_target(shown: Path, target: Path, force: bool, what: str, *, create: bool = True) -> None:
    if os.path.lexists(target):
        if what == "directory" and not target.is_dir():
            raise OutputError(f"{str(shown)!r} exists and is not a directory; choose another path")
        if what == "file" and target.is_dir():
            raise OutputError(f"{str(shown)!r} is a directory; give a file name")
        if not force:
            raise OutputError(f"{str(shown)!r} already exists; pass --force to replace it")
    _check_parent(shown, target, create=create)


def refuse_overlap(output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse an output that is, is inside, or contains one of ``inputs`` (compared as real paths).

    Writing there would replace or bury what is being read (``collect RUN -o RUN --force`` would
    delete the raw run). ``-`` and device or FIFO outputs replace nothing and pass.

    Raises
    ------
    OutputError
        The output and an input overlap; the message names both.
    """
    if output_kind(output) != "path":
        return
    out = Path(os.path.realpath(output))
    for inp in inputs:
        src = Path(os.path.realpath(inp))
        if out == src or (out.exists() and src.exists() and os.path.samefile(out, src)):
            how = "is the input"
        elif out.is_relative_to(src):
            how = "is inside the input"
        elif src.is_relative_to(out):
            how = "contains the input"
        else:
            continue
        raise OutputError(f"output {os.fspath(output)!r} {how} {os.fspath(inp)!r}; "
                          f"write the output somewhere else")


def _register(token: str) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.add(token)


def _unregister(token: str) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(token)


def _mkdir_tmp(shown: Path, target: Path) -> tuple[Path, str]:
    token = secrets.token_hex(4)
    _register(token)
    tmp = _sibling(target, "tmp", token)
    try:
        os.mkdir(tmp, 0o777)   # the umask applies, as for any directory the user creates
    except OSError as exc:
        _unregister(token)
        raise OutputError(f"cannot create {str(shown)!r}: {exc.strerror}") from None
    return tmp, token


def _swap_in(tmp: Path, shown: Path, target: Path, token: str) -> None:
    """Rename the finished ``tmp`` onto ``target`` through the journal: ``tmp`` -> ``new``, an
    existing ``target`` -> ``old``, ``new`` -> ``target``, ``old`` -> ``tmp`` and deleted."""
    new = _sibling(target, "new", token)
    old = _sibling(target, "old", token)
    os.rename(tmp, new)   # the content is complete: from here a dead run is rolled forward
    moved = False
    try:
        if os.path.lexists(target):
            os.rename(target, old)
            moved = True
        os.rename(new, target)
    except OSError as exc:
        if moved and not os.path.lexists(target):
            os.rename(old, target)
            moved = False
        _remove(new)
        raise OutputError(f"cannot move the output into {str(shown)!r}: {exc.strerror or exc}") from None
    finally:
        if moved:
            try:
                os.rename(old, tmp)   # garbage from here on, whatever happens while deleting it
                _remove(tmp)
            except OSError as exc:    # the new output is in place; the next run deletes the rest
                log.warning("could not delete the previous %s set aside as %s: %s", shown,
                            old if old.exists() else tmp, exc.strerror or exc)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, force: bool = False,
                     replaces: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` in one rename.

    What an interrupted earlier run left beside ``path`` is recovered first (:func:`recover`).
    Missing parent directories are created; a symlink ``path`` is followed (its target is
    written, the link kept). On any exception the temporary directory is removed and ``path`` is
    left as it was.

    Parameters
    ----------
    path : str or os.PathLike
        The directory to create.
    force : bool, default False
        Replace an existing directory: the old one is moved aside, the new one renamed into place
        and only then the old one deleted; a run killed in between is finished by the next one.
    replaces : callable, optional
        Says whether an existing directory is a previous output of this kind (a trace store, a
        raw run). With it, ``force`` replaces only such a directory or an empty one: a mistyped
        ``-o ~ --force`` must not delete a home directory.

    Raises
    ------
    OutputError
        ``path`` exists (without ``force``), is not a directory, or it or its parent cannot be
        written.
    """
    shown = Path(path)
    target = _follow(shown)
    recover(target)
    _check_target(shown, target, force, "directory")
    if (replaces is not None and target.is_dir() and any(target.iterdir())
            and not replaces(target)):
        raise OutputError(f"{str(shown)!r} holds other files, not a previous output of this kind; "
                          f"--force replaces only that (or an empty directory): choose another path")
    tmp, token = _mkdir_tmp(shown, target)
    try:
        yield tmp
        if os.path.lexists(target) and not force:   # appeared while we worked
            raise OutputError(f"{str(shown)!r} appeared while it was being written; pass --force to replace it")
        _swap_in(tmp, shown, target, token)
    except BaseException:
        _remove(tmp)
        _remove(_sibling(target, "new", token))
        raise
    finally:
        _unregister(token)


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, force: bool = True) -> Iterator[Path]:
    """Yield a path to write; on success the file appears at ``path`` whole, in one rename.

    A device or FIFO ``path`` is yielded itself, to be written through (never renamed over). A
    symlink is followed: its target is replaced, the link kept. Stale temporary files of
    interrupted runs beside the target are removed first.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write; not ``-`` (use :func:`open_output` for stdout).
    force : bool, default True
        Replace an existing file.

    Raises
    ------
    OutputError
        ``path`` is ``-``, a directory, exists (without ``force``), or cannot be written.
    """
    kind = output_kind(path)
    if kind == "stdout":
        raise OutputError("'-' (stdout) cannot be written as a file here; give a file name")
    if kind == "stream":
        _check_stream(path, force)
        yield Path(path)
        return
    shown = Path(path)
    target = _follow(shown)
    recover(target)
    _check_target(shown, target, force, "file")
    token = secrets.token_hex(4)
    _register(token)
    tmp = _sibling(target, "tmp", token)
    try:
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))   # umask applies
        except OSError as exc:
            raise OutputError(f"cannot create {str(shown)!r}: {exc.strerror}") from None
        yield tmp
        if os.path.lexists(target) and not force:
            raise OutputError(f"{str(shown)!r} appeared while it was being written; pass --force to replace it")
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _unregister(token)


@contextmanager
def open_output(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[BinaryIO]:
    """Open an output for binary writing, by its kind (see :func:`output_kind`).

    ``-`` yields stdout (flushed, not closed); a device or FIFO is opened for writing as it is
    (never created, truncated or renamed over); anything else is written through
    :func:`atomic_file`, so it appears whole when the block ends without an exception.

    Parameters
    ----------
    path : str or os.PathLike
        ``-``, a device or FIFO, or a file path.
    force : bool, default False
        Replace an existing regular file.

    Raises
    ------
    OutputError
        The path is a directory, an existing file (without ``force``), or cannot be written.
    """
    kind = output_kind(path)
    if kind == "stdout":
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    if kind == "stream":
        _check_stream(path, force)
        own = _own_descriptor(path)
        try:
            if own is not None:   # write where the descriptor is (its offset, its O_APPEND)
                if own in (1, 2):
                    (sys.stdout if own == 1 else sys.stderr).flush()
                fd = os.dup(own)
            else:
                # no O_CREAT or O_TRUNC: if the node vanished we fail rather than create a file
                fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise OutputError(f"cannot write {os.fspath(path)!r}: {exc.strerror}") from None
        with open(fd, "wb") as fh:
            yield fh
        return
    with atomic_file(path, force=force) as tmp, open(tmp, "wb") as fh:
        yield fh


def check_file_output(path: str | os.PathLike[str], *, force: bool = False,
                      inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Check, before any work, that :func:`open_output` will accept ``path``.

    Raises
    ------
    OutputError
        ``path`` is a directory, exists (without ``force``), overlaps an input or cannot be
        written.
    """
    refuse_overlap(path, inputs)
    kind = output_kind(path)
    if kind == "stream":
        _check_stream(path, force)
    elif kind == "path":
        _check_target(Path(path), _follow(Path(path)), force, "file", create=False)


# -- marked directories ---------------------------------------------------------------------


def _is_file(path: Path) -> bool:
    return path.is_file() or path.is_symlink()


def _read_marker(target: Path, marker: str) -> set[str] | None:
    """The files a previous output listed in its marker; ``None`` when there is no marker."""
    mark = target / marker
    if not mark.is_file():
        return None
    try:
        files = orjson.loads(mark.read_bytes()).get("files", [])
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return set()   # a damaged marker vouches for no file: nothing unlisted is removed
    return {f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..", marker)}


def _marked_state(shown: Path, target: Path, marker: str, force: bool,
                  new_files: Iterable[str] = ()) -> Literal["create", "swap", "merge"]:
    """How a marked directory output goes into ``target``: created, swapped whole or merged."""
    if not os.path.lexists(target):
        return "create"
    if not target.is_dir():
        raise OutputError(f"{str(shown)!r} exists and is not a directory; choose another path")
    entries = set(os.listdir(target))
    listed = _read_marker(target, marker)
    if (listed is not None and entries <= listed | {marker}
            and all(_is_file(target / name) for name in entries)):
        return "swap"   # holds nothing but our previous output (a directory in it is not ours)
    if listed is None and entries and not force:
        raise OutputError(f"{str(shown)!r} is a directory with other files in it, not a previous "
                          f"output of this kind; choose an empty or new directory, or pass --force "
                          f"to write into it (its other files are kept)")
    clash = sorted((set(new_files) & entries) - (listed or set()))
    if clash and not force:
        raise OutputError(f"{str(shown / clash[0])!r} is not a file this command wrote; move it away "
                          f"or pass --force to replace it")
    return "merge"


def check_marked_directory(path: str | os.PathLike[str], *, marker: str, force: bool = False,
                           inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
    """Check, before any work, that :func:`marked_directory` will accept ``path``.

    Raises
    ------
    OutputError
        ``path`` is ``-``, a device or a file; a non-empty directory that is not a previous
        output of this kind (without ``force``); it overlaps an input or cannot be written.
    """
    if output_kind(path) != "path":
        raise OutputError(f"{os.fspath(path)!r} is not a directory; give a directory for the files")
    refuse_overlap(path, inputs)
    shown = Path(path)
    target = _follow(shown)
    _marked_state(shown, target, marker, force)
    _check_parent(shown, target, create=False)


@contextmanager
def marked_directory(path: str | os.PathLike[str], *, marker: str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill with files; on success they appear in ``path``.

    ``marker`` (e.g. ``.sohuprof-csv``) is written beside them, listing them, so a later run
    knows which files are its own. ``path`` is created whole when absent, swapped whole when it
    holds only a previous output with that marker, and otherwise merged: the new files moved in
    one at a time (each whole), files the old marker listed and this run did not write removed,
    every other file kept. Without ``force`` a merge is refused into a non-empty directory that
    has no marker, or over a file the marker does not list.

    Parameters
    ----------
    path : str or os.PathLike
        The directory to write; a symlink to one is followed.
    marker : str
        Name of the marker file that says which kind of output a directory holds.
    force : bool, default False
        Write into a directory that is not a previous output of this kind, replacing files of
        the same names; no other file is removed.

    Raises
    ------
    OutputError
        See :func:`check_marked_directory`.
    """
    check_marked_directory(path, marker=marker, force=force)
    shown = Path(path)
    target = _follow(shown)
    _check_parent(shown, target)
    recover(target)
    tmp, token = _mkdir_tmp(shown, target)
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / marker).write_bytes(orjson.dumps({"format": marker.lstrip("."), "files": files}) + b"\n")
        how = _marked_state(shown, target, marker, force, files)
        if how != "merge":
            _swap_in(tmp, shown, target, token)
            return
        previous = _read_marker(target, marker) or set()
        stale = previous - set(files)
        try:
            # the marker first claims the names about to arrive, so a run killed half-way through
            # the merge leaves files its successor still recognises as its own
            (tmp / f"{marker}.claim").write_bytes(orjson.dumps(
                {"format": marker.lstrip("."), "files": sorted(previous | set(files))}) + b"\n")
            os.replace(tmp / f"{marker}.claim", target / marker)
            for name in files:
                if name != marker:
                    os.replace(tmp / name, target / name)
            for name in sorted(stale):   # ours by the old marker's word, and not written this time
                if _is_file(target / name):   # a directory of that name is someone else's
                    (target / name).unlink()
            os.replace(tmp / marker, target / marker)   # last: lists only files that are there
        except OSError as exc:
            raise OutputError(f"cannot write into {str(shown)!r}: {exc.strerror or exc}") from None
        _remove(tmp)
    except BaseException:
        _remove(tmp)
        _remove(_sibling(target, "new", token))
        raise
    finally:
        _unregister(token)
