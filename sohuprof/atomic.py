"""Outputs that appear whole or not at all: write to a temporary sibling, then rename into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sohuprof.errors import OutputError

__all__ = ["atomic_directory", "atomic_file"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_target(path: Path, force: bool, what: str) -> None:
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputError(f"{what} {str(path)!r} already exists; pass --force to replace it")
        if path.is_file() and what == "directory":
            raise OutputError(f"{str(path)!r} is a file, not a {what}; choose another path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot create {str(path)!r}: parent directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {str(path)!r}: parent directory {str(parent)!r} is not writable")


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` in one rename.

    On any exception the temporary directory is removed and ``path`` is left as it was. An
    existing ``path`` is refused unless ``force``.
    """
    target = Path(path)
    _check_target(target, force, "directory")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it private; the result should not be
    except OSError as exc:
        raise OutputError(f"cannot create {str(target)!r}: {exc.strerror}") from None
    try:
        yield tmp
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; on success it is renamed onto ``path``."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{str(target)!r} is a directory; give a file name")
    _check_target(target, force, "file")
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
