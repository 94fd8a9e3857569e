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
            raise OutputError(f"{str(path)!r} already exists; pass --force to replace it")
        if what == "directory" and not path.is_dir():
            raise OutputError(f"{str(path)!r} is a file, not a {what}; choose another path")
    parent = path.parent
    blocking = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise OutputError(f"cannot create {str(path)!r}: {str(blocking)!r} is a file, not a directory")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {str(path)!r}: {exc.strerror} ({str(parent)!r})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {str(path)!r}: directory {str(parent)!r} is not writable")


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` onto ``target``; an existing target is moved aside first and put back if
    the rename fails, and removed only once the new one is in place."""
    aside: Path | None = None
    try:
        if target.exists() or target.is_symlink():
            aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, aside / target.name)
        os.rename(tmp, target)
    except OSError as exc:
        if aside is not None and (aside / target.name).exists() and not target.exists():
            os.rename(aside / target.name, target)
        raise OutputError(f"cannot move the output into {str(target)!r}: {exc.strerror or exc}") from None
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` in one rename.

    Missing parent directories are created. On any exception the temporary directory is removed
    and ``path`` is left as it was. An existing ``path`` is refused unless ``force``.

    Raises
    ------
    OutputError
        ``path`` exists (without ``force``), or it or its parent cannot be written.
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
        if (target.exists() or target.is_symlink()) and not force:   # appeared while we worked
            raise OutputError(f"{str(target)!r} appeared while it was being written; pass --force to replace it")
        _replace(tmp, target)
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
