"""Vectorized interval kernels: merge, union length, intersection, and a priority sweep.

Every kernel takes intervals as ``start``/``end`` int64 ns arrays plus an integer ``key`` (a
rank, a lane: anything the work is grouped by) and runs in O(n log n) with numpy sorts,
cumulative maxima and sums: no Python loop per interval. Keys never interact: each kernel
shifts every key onto its own stretch of the time axis, so one global pass does every group.

Conventions: intervals are half-open ``[start, end)``; zero-length ones contribute nothing;
results are new arrays (inputs are never modified).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Merged", "merge", "union_length", "intersection_length", "priority_sweep"]


class Merged(NamedTuple):
    """Disjoint, sorted intervals: ``key[i]``'s ``[start[i], end[i])``."""

    key: np.ndarray
    start: np.ndarray
    end: np.ndarray


def _as_int(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def _shift(key: np.ndarray, *times: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Offsets that put every key on its own stretch of the time axis (and back)."""
    if not len(key):
        return np.zeros(0, np.int64), 0, 0
    lo = min(int(t.min()) for t in times)
    span = max(int(t.max()) for t in times) - lo + 1
    if int(key.max()) * span > np.iinfo(np.int64).max // 2:
        raise ValueError("'key' x time span overflows int64; re-number the keys densely")
    return key.astype(np.int64) * span - lo, lo, span


def merge(start: np.ndarray, end: np.ndarray, key: np.ndarray | None = None) -> Merged:
    """Merge overlapping or touching intervals within each key.

    >>> merge(np.array([0, 5, 2]), np.array([3, 6, 4]))
    Merged(key=array([0, 0]), start=array([0, 5]), end=array([4, 6]))
    """
    start, end = _as_int(start), _as_int(end)
    key = np.zeros(len(start), np.int64) if key is None else _as_int(key)
    keep = end > start
    start, end, key = start[keep], end[keep], key[keep]
    if not len(start):
        return Merged(key, start, end)
    off, _, _ = _shift(key, start, end)
    s, e = start + off, end + off
    order = np.argsort(s, kind="stable")
    s, e, k = s[order], e[order], key[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), bool)
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last_reach = np.maximum.reduceat(e, first)
    return Merged(k[first], s[first] - off[order][first], last_reach - off[order][first])


def union_length(start: np.ndarray, end: np.ndarray, key: np.ndarray | None = None,
                 n_keys: int | None = None) -> np.ndarray:
    """Length of the union of each key's intervals: an int64 array indexed by key."""
    m = merge(start, end, key)
    size = n_keys if n_keys is not None else (int(m.key.max()) + 1 if len(m.key) else 0)
    return np.bincount(m.key, weights=(m.end - m.start), minlength=size).astype(np.int64)


def intersection_length(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray,
                        a_key: np.ndarray | None = None, b_key: np.ndarray | None = None,
                        n_keys: int | None = None) -> np.ndarray:
    """Per key, the length of ``union(A) ∩ union(B)`` (e.g. communication hidden under compute)."""
    a = merge(a_start, a_end, a_key)
    b = merge(b_start, b_end, b_key)
    size = n_keys if n_keys is not None else int(max(a.key.max(initial=-1), b.key.max(initial=-1))) + 1
    if not len(a.key) or not len(b.key):
        return np.zeros(size, np.int64)
    key = np.concatenate([a.key, a.key, b.key, b.key])
    t = np.concatenate([a.start, a.end, b.start, b.end])
    # Within each merged set intervals are disjoint, so the level is 0..3 and 3 means both.
    delta = np.concatenate([np.full(len(a.key), 1), np.full(len(a.key), -1),
                            np.full(len(b.key), 2), np.full(len(b.key), -2)])
    off, _, _ = _shift(key, t)
    ts = t + off
    order = np.lexsort((delta, ts))          # ends (negative) before starts at the same instant
    ts, delta, key = ts[order], delta[order], key[order]
    level = np.cumsum(delta)
    seg = np.diff(ts)
    both = level[:-1] == 3
    return np.bincount(key[:-1][both], weights=seg[both], minlength=size).astype(np.int64)


def priority_sweep(start: np.ndarray, end: np.ndarray, cls: np.ndarray, key: np.ndarray,
                   n_classes: int, n_keys: int, window_start: np.ndarray, window_end: np.ndarray) -> np.ndarray:
    """Assign each instant of each key's window to exactly one class.

    An instant covered by intervals of several classes goes to the lowest class index (the
    highest priority); an instant covered by none is "idle", the extra last column. Intervals are
    clipped to their key's ``[window_start, window_end)``. Returns an int64 ``[n_keys,
    n_classes + 1]`` array whose rows sum exactly to ``window_end - window_start``.
    """
    start, end, cls, key = _as_int(start), _as_int(end), _as_int(cls), _as_int(key)
    ws, we = _as_int(window_start), _as_int(window_end)
    out = np.zeros((n_keys, n_classes + 1), np.int64)
    s = np.maximum(start, ws[key])
    e = np.minimum(end, we[key])
    keep = e > s
    s, e, cls, key = s[keep], e[keep], cls[keep], key[keep]
    if len(s):
        off, _, _ = _shift(np.concatenate([key, np.arange(n_keys)]), np.concatenate([s, ws]), np.concatenate([e, we]))
        off = off[: len(key)]
        t = np.concatenate([s + off, e + off])
        k = np.concatenate([key, key])
        c = np.concatenate([cls, cls])
        d = np.concatenate([np.ones(len(s), np.int64), -np.ones(len(s), np.int64)])
        order = np.argsort(t, kind="stable")
        t, k, c, d = t[order], k[order], c[order], d[order]
        # Active count of every class after each boundary: a cumulative sum of one-hot deltas.
        counts = np.zeros((len(t), n_classes), np.int64)
        counts[np.arange(len(t)), c] = d
        np.cumsum(counts, axis=0, out=counts)
        active = counts[:-1] > 0
        top = np.where(active.any(axis=1), active.argmax(axis=1), n_classes)
        seg = np.diff(t)
        same = k[:-1] == k[1:]
        busy = same & (top < n_classes)
        flat = np.bincount(k[:-1][busy] * (n_classes + 1) + top[busy], weights=seg[busy],
                           minlength=n_keys * (n_classes + 1))
        out += np.rint(flat).astype(np.int64).reshape(n_keys, n_classes + 1)
    out[:, n_classes] = (we - ws) - out[:, :n_classes].sum(axis=1)
    return out
