"""What kind of trace an input path holds: detected from its contents, never declared."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from sohuprof.errors import TraceFormatError

__all__ = ["SourceKind", "detect_source"]

SourceKind = Literal["sohu", "kineto"]
_EXPECTED = ("expected a Sohu run directory (run.json + node*/chip*.strace), a directory of PyTorch "
             "profiler traces (*.json, *.json.gz), or one Kineto / Chrome trace file")


def _is_json_trace(p: Path) -> bool:
    return p.is_file() and (p.name.endswith(".json") or p.name.endswith(".json.gz"))


def detect_source(path: Path) -> tuple[SourceKind, Path]:
    """Return the source kind and the path its collector takes (a run directory for ``sohu``)."""
    if not path.exists():
        raise TraceFormatError(f"{str(path)!r} does not exist; {_EXPECTED}")
    if path.is_dir() and (path / "manifest.json").is_file():   # collected already: nothing to do
        raise TraceFormatError(f"{str(path)!r} is already a trace store: analyze it (`sohuprof analyze {path}`)")
    if path.is_file():
        if path.name == "run.json":
            return "sohu", path.parent
        if path.suffix == ".strace":
            raise TraceFormatError(f"{str(path)!r} is one chip's raw trace; collect its run directory "
                                   f"({str(path.parent.parent)!r}) instead")
        return "kineto", path
    entries = list(path.iterdir())
    if (path / "run.json").is_file():
        others = [p.name for p in entries if _is_json_trace(p) and p.name != "run.json"]
        if others:
            raise TraceFormatError(f"{str(path)!r} mixes a Sohu run (run.json) with other JSON traces "
                                   f"({', '.join(sorted(others)[:3])}); collect them from separate directories")
        return "sohu", path
    if any(p.is_dir() and any(p.glob("*.strace")) for p in entries):
        raise TraceFormatError(f"{str(path)!r} has raw chip traces but no run.json; the run directory is "
                               "incomplete (run.json is written last: was the emulator interrupted?)")
    if any(_is_json_trace(p) for p in entries):
        return "kineto", path
    if not entries:
        raise TraceFormatError(f"{str(path)!r} is empty; {_EXPECTED}")
    raise TraceFormatError(f"{str(path)!r} holds no trace sohuprof reads; {_EXPECTED}")
