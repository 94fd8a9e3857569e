"""Slow, obviously correct references for the analyzer tests."""

from __future__ import annotations

import numpy as np


def timeline(start: np.ndarray, end: np.ndarray, length: int | None = None) -> np.ndarray:
    """Coverage count at each integer instant: the plainest possible interval arithmetic."""
    start, end = np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)
    size = length if length is not None else int(max(end.max(initial=0), 0))
    out = np.zeros(size, np.int64)
    for s, e in zip(start.tolist(), end.tolist()):   # a reference: clarity over speed
        out[s:e] += 1
    return out


def union_total(start: np.ndarray, end: np.ndarray) -> int:
    """Length of the union of intervals, by walking them in start order."""
    total, reach = 0, None
    for s, e in sorted(zip(np.asarray(start).tolist(), np.asarray(end).tolist())):
        if e <= s:
            continue
        if reach is None or s > reach:
            total += e - s
            reach = e
        elif e > reach:
            total += e - reach
            reach = e
    return total
