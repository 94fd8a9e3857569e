"""Collectors: raw traces (Sohu, PyTorch profiler / Kineto, Chrome JSON) into the trace store.

>>> from sohuprof.collectors import collect        # doctest: +SKIP
>>> summary = collect("run/", "store/")            # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["collect", "losses_line"]


def collect(source: str | os.PathLike[str], store: str | os.PathLike[str], *, force: bool = False,
            show_progress: bool | None = None, hosts: str | None = None) -> dict[str, Any]:
    """Collect whatever trace ``source`` holds into a trace store at ``store``.

    The kind is detected from the contents (see :func:`sohuprof.collectors.detect.detect_source`).
    Returns a summary with at least ``format``, ``store``, ``files``, ``events``, ``counts`` (the
    manifest's, as :func:`losses_line` reads them),
    ``quarantined_pieces`` and ``quarantined_records``.

    Raises
    ------
    TraceFormatError
        ``source`` is missing, empty, mixed, or not a trace sohuprof reads; nothing is written.
    OutputError
        ``store`` exists (without ``force``), is, is inside or contains ``source``, or cannot be
        written.
    """
    from sohuprof.atomic import refuse_overlap
    from sohuprof.collectors.detect import detect_source

    kind, path = detect_source(Path(source))
    if hosts and kind == "sohu":
        from sohuprof.errors import TraceFormatError

        raise TraceFormatError("--hosts is for PyTorch profiler traces; a Sohu run's run.json names every chip's node")
    refuse_overlap(store, [source])   # `-o RUN --force` would delete the run being read
    if kind == "sohu":
        from sohuprof.collectors.sohu import collect_sohu

        return collect_sohu(path, store, force=force, show_progress=show_progress)
    from sohuprof.collectors.kineto import collect_kineto

    summary = collect_kineto(path, store, force=force, hosts=hosts)
    summary.setdefault("quarantined_pieces", summary.get("quarantined", 0))
    summary.setdefault("quarantined_records", summary.get("quarantined", 0))
    return summary


def losses_line(counts: dict[str, Any], kept_where: str) -> str | None:
    """One line saying where every record not kept went, from a store manifest's ``counts``
    (kept, quarantined, lost, duplicates, refused files, unreadable host lines, the worst files
    by name); None when every record was kept. ``kept_where`` ends it: where the pieces set aside
    are (``"in STORE/quarantine.parquet"``)."""
    events = counts.get("events", 0)
    expected = counts.get("records_expected", events)
    q, lost = counts.get("quarantined_records", 0), counts.get("records_lost", 0)
    dups, pieces = counts.get("duplicates_dropped", 0), counts.get("quarantined_pieces", 0)
    if not (q or lost or dups or pieces):
        return None
    files = counts.get("files") if isinstance(counts.get("files"), list) else []
    hurt = [f for f in files if f["kept"] != f["expected"] or f.get("refused") or f.get("duplicates_dropped")]
    named = ", ".join(f"{f['file']} ({f.get('refused') or _kept_of(f)})" for f in hurt[:3]) \
        + (f" and {len(hurt) - 3} more" if len(hurt) > 3 else "")
    host = (counts.get("host_events") or {}).get("quarantined", 0)
    return (f"warning: kept {events:,} of {expected:,} records: {q:,} quarantined, {lost:,} lost"
            + (f", {dups:,} duplicate records dropped" if dups else "")
            + (f" in {named}" if named else "")
            + (f"; {host:,} host event line(s) unreadable" if host else "")
            + f"; {pieces} piece(s) set aside {kept_where}")


def _kept_of(entry: dict[str, Any]) -> str:
    return f"{entry['kept']:,} of {entry['expected']:,} kept"
