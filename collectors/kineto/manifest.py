"""The manifest of a collected Kineto/Chrome input: source, plan, clocks and counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from sohuprof.collectors.kineto.collectives import _group_id
from sohuprof.collectors.kineto.events import _RankTrace

from sohuprof.errors import TraceFormatError
from sohuprof.schema import QUARANTINE
from sohuprof.store import PathLike


def _refused_rows(refused: list[tuple[Path, str]]) -> pa.Table:
    """One quarantine row per file that could not be read at all (its first 4 KiB kept)."""
    def head(f: Path) -> bytes:
        try:
            with open(f, "rb") as fh:
                return fh.read(4096)
        except OSError:
            return b""
    return QUARANTINE.conform(pa.table({
        "source": [f.name for f, _ in refused], "offset": pa.array([0] * len(refused), pa.int64()),
        "length": pa.array([f.stat().st_size if f.exists() else 0 for f, _ in refused], pa.int64()),
        "records": pa.array([0] * len(refused), pa.int64()),
        "reason": [f"file refused: {why}" for _, why in refused], "raw": pa.array([head(f) for f, _ in refused], pa.binary())}))


def _metadata(path: PathLike, parts: list[_RankTrace], written: int,
              refused: list[tuple[Path, str]] | None = None) -> dict[str, Any]:
    ranks = sorted(p.rank for p in parts)
    devices = sorted({d for p in parts for d in p.info["devices"] if d})
    dist = next((p.info["distributed"] for p in parts if p.info["distributed"]), None)
    bases = {str(p.rank): p.info["base_time_ns"] for p in parts}
    if any(bases.values()) and not all(bases.values()):
        missing = sorted((p for p in parts if not p.info["base_time_ns"]), key=lambda p: p.rank)
        raise TraceFormatError(f"{missing[0].file}: no baseTimeNanoseconds while the other ranks' traces have one, "
                               f"so its times cannot be put on their clock; collect it apart from them")
    skipped: dict[str, int] = {}
    for p in parts:
        for k, v in p.info["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    return {
        "source": {"format": parts[0].format, "path": str(path),
                   "files": {str(p.rank): Path(p.file).name for p in parts}},
        "hardware": {"devices": devices} if devices else None,
        "model": None,
        "parallel": _parallel(dist) if isinstance(dist, dict) else None,
        "ranks": ranks,
        "clock_alignment": {
            "method": "baseTimeNanoseconds" if any(bases.values()) else "none",
            "base_time_ns": bases,
            "ts_exact_ns": all(p.info["ts_exact"] for p in parts),
        },
        "counts": _counts(parts, written, skipped, refused or []),
    }


#: A world or group larger than this is damage, not a job (bounds every per-group allocation).
_MAX_WORLD = 1 << 20


def _parallel(dist: dict[str, Any]) -> dict[str, Any]:
    """``distributedInfo`` as the manifest keeps it: a world size and process groups whose sizes
    make sense (1 to the world size), the rest left out and counted (a group of size 0 would give
    a bus bandwidth of 0, one of 2**63 a nonsense factor)."""
    world = dist.get("world_size")
    world = world if isinstance(world, int) and not isinstance(world, bool) and 1 <= world <= _MAX_WORLD else None
    groups = dist.get("pg_config")
    kept: list[dict[str, Any]] = []
    dropped = 0
    for g in groups if isinstance(groups, list) else []:   # a loop over process groups
        size = g.get("pg_size") if isinstance(g, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= (world or _MAX_WORLD):
            kept.append(g)
        else:
            dropped += 1
    backend = dist.get("backend")
    out: dict[str, Any] = {"world_size": world, "backend": backend if isinstance(backend, str) else None,
                           "process_groups": kept if isinstance(groups, list) else None}
    if dropped or (groups is not None and not isinstance(groups, list)):
        out["process_groups_dropped"] = dropped or 1
    return out


def world_size(dist: Any) -> int | None:
    """The job's world size from ``distributedInfo``, when it makes sense."""
    return _parallel(dist)["world_size"] if isinstance(dist, dict) else None


def declared_group_sizes(dist: Any) -> dict[int, int]:
    """Process-group id (as :func:`_group_id` keys them) -> ``pg_size``, from ``distributedInfo``."""
    if not isinstance(dist, dict):
        return {}
    return {_group_id(str(g.get("pg_name", ""))): int(g["pg_size"])
            for g in _parallel(dist)["process_groups"] or []}   # a few process groups


def _counts(parts: list[_RankTrace], written: int, skipped: dict[str, int],
            refused: list[tuple[Path, str]]) -> dict[str, Any]:
    """The manifest's counts; what a record is: see the module docstring. A file refused whole
    is listed with its reason: how many records it held cannot be known."""
    files = [p.info["accounting"] for p in parts]
    unread = [{"file": f.name, "rank": None, "expected": 0, "kept": 0, "quarantined": 0, "lost": 0,
               "duplicates_dropped": 0, "refused": why} for f, why in refused]
    return {
        "records_expected": sum(f["expected"] for f in files),
        "events": written,
        "quarantined_records": sum(f["quarantined"] for f in files),
        "records_lost": sum(f["lost"] for f in files),
        "duplicates_dropped": 0,
        "quarantined_pieces": sum(p.quarantine.num_rows for p in parts) + len(refused),
        "counter_events": sum(p.info["counter_events"] for p in parts),
        "counter_events_quarantined": sum(p.info["counter_events_quarantined"] for p in parts),
        # [memory] instant events sampled into counters (they stay counted in skipped_by_ph: not records)
        "memory_events": sum(p.info.get("memory_events", 0) for p in parts),
        "refused_files": [{"file": f.name, "reason": why} for f, why in refused],
        "files": files + unread,
        "skipped_by_ph": skipped,
    }
