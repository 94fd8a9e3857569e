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
import pandas as pd

__all__ = ["Merged", "merge", "union_length", "intersection_length", "mask_coverage", "lowest_class",
           "priority_sweep"]


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
    """Merge overlapping intervals within each key (touching ones may stay apart).

    >>> merge(np.array([0, 5, 2]), np.array([3, 6, 4]))
    Merged(key=array([0, 0]), start=array([0, 5]), end=array([4, 6]))
    """
    start, end = _as_int(start), _as_int(end)
    keys = np.zeros(len(start), np.int64) if key is None else _as_int(key)
    keep = end > start
    if not keep.all():
        start, end, keys = start[keep], end[keep], keys[keep]
    if not len(start):
        return Merged(keys, start, end)
    # One key needs no shifting; several are each moved onto their own stretch of the axis.
    off = np.zeros(1, np.int64) if keys.min() == keys.max() else _shift(keys, start, end)[0]
    s, e = start + off, end + off
    if (np.diff(s) < 0).any():        # profiles mostly arrive sorted: sort only when they are not
        order = np.argsort(s, kind="stable")
        s, e, keys = s[order], e[order], keys[order]
        off = off[order] if len(off) > 1 else off
    reach = np.maximum.accumulate(e)
    if (s[1:] >= reach[:-1]).all():   # disjoint or touching (a sequential stream): nothing to merge
        return Merged(keys, s - off, e - off)
    first = np.flatnonzero(np.r_[True, s[1:] > reach[:-1]])
    back = off[first] if len(off) > 1 else off
    return Merged(keys[first], s[first] - back, np.maximum.reduceat(e, first) - back)


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


def mask_coverage(start: np.ndarray, end: np.ndarray, cls: np.ndarray, key: np.ndarray, n_classes: int,
                  n_keys: int, window_start: np.ndarray, window_end: np.ndarray) -> np.ndarray:
    """Time each key spends in each exact set of active classes.

    Returns int64 ``[n_keys, 2**n_classes]``: column ``m`` is the time during which exactly the
    classes whose bits are set in ``m`` are active (column 0: none), within each key's
    ``[window_start, window_end)``; rows sum exactly to the window. Any priority rule or
    intersection of classes is then a sum over a few columns (see :func:`priority_sweep`).

    Each (key, class) is merged first, so coverage is 0 or 1 per class and the active set after
    any boundary is a bitmask: one cumulative sum of ``±2**class`` over the sorted boundaries.
    """
    if not 0 < n_classes <= 16:
        raise ValueError(f"'n_classes' must be in 1..16, got {n_classes}")
    start, end, cls, key = _as_int(start), _as_int(end), _as_int(cls), _as_int(key)
    ws, we = _as_int(window_start), _as_int(window_end)
    width = 1 << n_classes
    if n_keys == 1:
        fast = _single_key_coverage(start, end, cls, n_classes, int(ws[0]), int(we[0]))
        if fast is not None:
            return fast
    out = np.zeros((n_keys, width), np.int64)
    s = np.maximum(start, ws[key])
    e = np.minimum(end, we[key])
    keep = e > s
    if keep.any():
        m = merge(s[keep], e[keep], key[keep] * n_classes + cls[keep])
        k = m.key // n_classes
        bit = np.left_shift(1, m.key % n_classes)
        if n_keys > 1:
            off, _, _ = _shift(np.concatenate([k, np.arange(n_keys)]), np.concatenate([m.start, ws]),
                               np.concatenate([m.end, we]))
            off = off[: len(k)]
        else:
            off = np.zeros(len(k), np.int64)
        t = np.concatenate([m.start + off, m.end + off])
        kk = np.concatenate([k, k])
        d = np.concatenate([bit, -bit])
        # Merged intervals of one class may touch: at equal times the end sorts first, so a
        # class's bit is never counted twice.
        order = np.argsort(2 * t + (d > 0), kind="stable")
        t, kk, d = t[order], kk[order], d[order]
        mask = np.cumsum(d)[:-1]
        seg = np.diff(t)
        inside = (kk[:-1] == kk[1:]) & (seg > 0) & (mask > 0)
        out += np.bincount(kk[:-1][inside] * width + mask[inside], weights=seg[inside],
                           minlength=n_keys * width).round().astype(np.int64).reshape(n_keys, width)
    out[:, 0] = (we - ws) - out[:, 1:].sum(axis=1)
    return out


def _single_key_coverage(start: np.ndarray, end: np.ndarray, cls: np.ndarray, n_classes: int,
                         ws: int, we: int) -> np.ndarray | None:
    """:func:`mask_coverage` for one key, without merging: each class gets a field of ``bits``
    bits in one int64 that counts its active intervals, the cumulative sum of ``±2**(bits*c)``
    is the state after every boundary, and the time per state is summed by hashing the (few)
    distinct states. None when some class has too many intervals for its field."""
    bits = 62 // n_classes
    s = np.clip(start, ws, we)
    e = np.clip(end, ws, we)
    keep = e > s
    if not keep.all():
        s, e, cls = s[keep], e[keep], cls[keep]
    counts = np.bincount(cls, minlength=n_classes)
    for c in np.flatnonzero(counts >= (1 << bits) - 1):   # a loop over classes, not intervals
        # Many intervals: safe only if they never overlap (a sequential stream usually doesn't).
        sel = cls == c
        cs, ce = s[sel], e[sel]
        if not ((np.diff(cs) >= 0).all() and (cs[1:] >= np.maximum.accumulate(ce)[:-1]).all()):
            return None
    out = np.zeros((1, 1 << n_classes), np.int64)
    if len(s):
        step = np.left_shift(1, bits * cls)
        t = np.concatenate([s, e])
        d = np.concatenate([step, -step])
        order = np.argsort(t, kind="stable")
        t = t[order]
        state = np.cumsum(d[order])[:-1]
        seg = np.diff(t)
        codes, states = pd.factorize(state)
        total = np.bincount(codes, weights=seg).round().astype(np.int64)
        fields = (states[:, None] >> (bits * np.arange(n_classes))) & ((1 << bits) - 1)
        masks = ((fields > 0) << np.arange(n_classes)).sum(axis=1)
        np.add.at(out[0], masks, total)
    out[0, 0] = (we - ws) - out[0, 1:].sum()
    return out


def lowest_class(n_classes: int) -> np.ndarray:
    """For every bitmask of ``n_classes`` classes, its highest-priority (lowest) class; ``n_classes``
    for the empty mask."""
    masks = np.arange(1 << n_classes)
    lowest = np.full(1 << n_classes, n_classes)
    for cl in range(n_classes - 1, -1, -1):        # a loop over classes, not intervals
        lowest[(masks >> cl) & 1 == 1] = cl
    return lowest


def priority_sweep(start: np.ndarray, end: np.ndarray, cls: np.ndarray, key: np.ndarray,
                   n_classes: int, n_keys: int, window_start: np.ndarray, window_end: np.ndarray) -> np.ndarray:
    """Assign each instant of each key's window to exactly one class.

    An instant covered by intervals of several classes goes to the lowest class index (the
    highest priority); an instant covered by none is "idle", the extra last column. Intervals are
    clipped to their key's ``[window_start, window_end)``. Returns an int64 ``[n_keys,
    n_classes + 1]`` array whose rows sum exactly to ``window_end - window_start``.
    """
    cover = mask_coverage(start, end, cls, key, n_classes, n_keys, window_start, window_end)
    out = np.zeros((n_keys, n_classes + 1), np.int64)
    np.add.at(out.T, lowest_class(n_classes), cover.T)
    return out
