"""Collectors: raw traces (Sohu, PyTorch profiler / Kineto, Chrome JSON) into the trace store.

>>> from sohuprof.collectors import collect        # doctest: +SKIP
>>> summary = collect("run/", "store/")            # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["collect"]


def collect(source: str | os.PathLike[str], store: str | os.PathLike[str], *, force: bool = False,
            show_progress: bool | None = None) -> dict[str, Any]:
    """Collect whatever trace ``source`` holds into a trace store at ``store``.

    The kind is detected from the contents (see :func:`sohuprof.collectors.detect.detect_source`).
    Returns a summary with at least ``format``, ``store``, ``files``, ``events``,
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
    refuse_overlap(store, [source])   # `-o RUN --force` would delete the run being read
    if kind == "sohu":
        from sohuprof.collectors.sohu import collect_sohu

        return collect_sohu(path, store, force=force, show_progress=show_progress)
    from sohuprof.collectors.kineto import collect_kineto

    summary = collect_kineto(path, store, force=force)
    summary.setdefault("quarantined_pieces", summary.get("quarantined", 0))
    summary.setdefault("quarantined_records", summary.get("quarantined", 0))
    return summary
