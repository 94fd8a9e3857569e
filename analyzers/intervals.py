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

from sohuprof import kernels

__all__ = ["Merged", "Sweep", "chain_sweep", "covered_before_sequential", "is_sequential", "merge", "union_sorted", "union_length", "intersection_length", "mask_coverage",
           "lowest_class", "priority_sweep"]


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
        raise _Overflow
    return key.astype(np.int64) * span - lo, lo, span


class _Overflow(Exception):
    """Keys x time span beyond int64 (times centuries apart: damaged or mixed clocks). The
    public functions then take one key at a time, each on its own axis."""


def _keys_of(*keys: np.ndarray) -> list[int]:
    return np.unique(np.concatenate([_as_int(k) for k in keys])).tolist()


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
    try:
        off = np.zeros(1, np.int64) if keys.min() == keys.max() else _shift(keys, start, end)[0]
    except _Overflow:
        parts = [(k, merge(start[keys == k], end[keys == k])) for k in _keys_of(keys)]   # a loop over keys
        return Merged(np.concatenate([np.full(len(m.key), k, np.int64) for k, m in parts]),
                      np.concatenate([m.start for _, m in parts]), np.concatenate([m.end for _, m in parts]))
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
    try:
        off, _, _ = _shift(key, t)
    except _Overflow:
        out = np.zeros(size, np.int64)
        for k in _keys_of(a.key, b.key):      # a loop over keys
            sa, sb = a.key == k, b.key == k
            out[k] = intersection_length(a.start[sa], a.end[sa], b.start[sb], b.end[sb])[0] if sa.any() and sb.any() else 0
        return out
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
            try:
                off, _, _ = _shift(np.concatenate([k, np.arange(n_keys)]), np.concatenate([m.start, ws]),
                                   np.concatenate([m.end, we]))
            except _Overflow:
                for j in range(n_keys):     # a loop over keys, each on its own axis
                    sel = key == j
                    out[j] = mask_coverage(start[sel], end[sel], cls[sel], np.zeros(int(sel.sum()), np.int64),
                                           n_classes, 1, ws[j:j + 1], we[j:j + 1])[0]
                return out
            off = off[: len(k)]
        else:
            off = np.zeros(len(k), np.int64)
        t = np.concatenate([m.start + off, m.end + off])
        kk = np.concatenate([k, k])
        d = np.concatenate([bit, -bit])
        # Merged intervals of one class may touch: at equal times the end sorts first, so a
        # class's bit is never counted twice.
        if len(t) and max(int(t.max()), -int(t.min())) < 1 << 61:
            order = np.argsort(2 * t + (d > 0), kind="stable")
        else:                                   # 2 t would leave int64
            order = np.lexsort((d > 0, t))
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


class Sweep:
    """The result of :func:`chain_sweep`: between boundaries ``t[i]`` and ``t[i + 1]`` exactly the
    classes whose bits are set in ``masks[code[i]]`` are active. ``t`` is relative to ``origin``
    (the window start), starts at 0 and ends at the window's length."""

    __slots__ = ("origin", "t", "code", "masks", "n_classes", "_before")

    def __init__(self, origin: int, t: np.ndarray, code: np.ndarray, masks: np.ndarray, n_classes: int) -> None:
        self.origin, self.t, self.code, self.masks, self.n_classes = origin, t, code, masks, n_classes
        self._before: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def coverage(self) -> np.ndarray:
        """Time in each exact set of active classes: int64 ``[2**n_classes]`` summing to the window."""
        seg = np.empty(max(len(self.t) - 1, 0))          # float weights: bincount would convert them
        np.subtract(self.t[1:], self.t[:-1], out=seg, casting="unsafe")
        per_code = np.bincount(self.code, weights=seg, minlength=len(self.masks))
        out = np.zeros(1 << self.n_classes, np.int64)
        np.add.at(out, self.masks, per_code.round().astype(np.int64))   # a few distinct masks
        return out

    def _cumulative(self, classes: int) -> tuple[np.ndarray, np.ndarray]:
        """Per segment, whether ``classes`` cover it; per boundary, the covered time before it."""
        out = self._before.get(classes)
        if out is None:
            active = ((self.masks & classes) != 0)[self.code]
            before = np.zeros(len(self.t), np.int64)
            np.cumsum(np.diff(self.t) * active, out=before[1:])
            out = self._before[classes] = (active, before)
        return out

    def covered_before(self, x: np.ndarray, classes: int) -> np.ndarray:
        """For each absolute time in ``x``: the time in ``[window start, x)`` during which any class
        of the bitmask ``classes`` is active. ``covered_before(b) - covered_before(a)`` is the
        covered part of ``[a, b)``."""
        active, before = self._cumulative(classes)
        rel = np.clip(np.asarray(x, dtype=np.int64) - self.origin, 0, self.t[-1])
        if not len(active):
            return np.zeros(len(rel), np.int64)
        i = np.minimum(np.searchsorted(self.t, rel, side="right") - 1, len(active) - 1)
        return before[i] + active[i] * (rel - self.t[i])


def is_sequential(first: np.ndarray, last: np.ndarray) -> bool:
    """Do intervals ``[first, last)`` come sorted and never overlap (a sequential stream)?"""
    return kernels.is_sequential(np.ascontiguousarray(first, np.int64), np.ascontiguousarray(last, np.int64))


def union_sorted(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray) -> Merged:
    """The union of two interval lists, each sorted by start, as disjoint sorted intervals: the
    cover :func:`merge` gives their concatenation, by a two-way merge (compiled) with no sort."""
    arrays = [np.ascontiguousarray(x, np.int64) for x in (a_start, a_end, b_start, b_end)]
    size = len(arrays[0]) + len(arrays[2])
    start, end = np.empty(size, np.int64), np.empty(size, np.int64)
    k = kernels.union_sorted(*arrays, start, end)
    return Merged(np.zeros(k, np.int64), start[:k], end[:k])


def covered_before_sequential(start: np.ndarray, end: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each time in ``x``: how much of ``[-inf, x)`` the intervals ``[start, end)`` cover, where
    they come sorted and never overlap (:func:`is_sequential`): a prefix sum of their lengths and
    one ``searchsorted`` of ``x`` among the starts, O((n + m) log n) with no sweep of the others.

    >>> covered_before_sequential(np.array([0, 10]), np.array([5, 20]), np.array([3, 7, 15, 30]))
    array([ 3,  5, 10, 15])
    """
    x = np.ascontiguousarray(x, dtype=np.int64)
    if not len(start):
        return np.zeros(len(x), np.int64)
    # A zero-length interval before everything, so every x has begun one: no special case.
    floor = min(int(start[0]), int(x.min(initial=start[0])))
    start, end = np.r_[floor, start].astype(np.int64, copy=False), np.r_[floor, end].astype(np.int64, copy=False)
    through = np.cumsum(end - start)                      # length of intervals 0..j
    # All the intervals begun by x, less the part of the last one still ahead of x: one compiled
    # pass (the callers' x come in sorted runs, which it gallops through).
    out = np.empty(len(x), np.int64)
    kernels.covered_before(start, end, through, x, out)
    return out


def _check_chains(chains: list[tuple[list[np.ndarray], list[int]]], n_classes: int, window_start: int,
                  window_end: int) -> None:
    """Raise ValueError unless ``chains`` are well formed (see :func:`chain_sweep`)."""
    if not 0 < n_classes <= 16:
        raise ValueError(f"'n_classes' must be in 1..16, got {n_classes}")
    if int(window_end) < int(window_start):
        raise ValueError(f"window ends before it starts: [{int(window_start)}, {int(window_end)})")
    for bounds, classes in chains:   # a loop over chains (a handful), not events
        if len(bounds) != len(classes) + 1:
            raise ValueError(f"a chain of {len(classes)} classes needs {len(classes) + 1} boundary arrays")
        if any((hi < lo).any() for lo, hi in zip(bounds, bounds[1:])):
            raise ValueError("a chain's boundaries must not decrease within an event")


def chain_sweep(chains: list[tuple[list[np.ndarray], list[int]]], n_classes: int, window_start: int,
                window_end: int) -> Sweep:
    """Which exact set of classes is active at every instant of ``[window_start, window_end)``.

    Each chain is ``(boundaries, classes)``: ``k + 1`` arrays ``b_0 <= b_1 <= ... <= b_k`` (one
    value per event) and ``k`` class indices; each event has class ``classes[j]`` active on
    ``[b_j, b_{j+1})``. An op with a compute body and a memory-stall tail is one chain of three
    boundaries, not two intervals of two.

    Like :func:`mask_coverage`, the active set after each boundary is a cumulative sum of
    per-class counters packed into one int64 (``62 // n_classes`` bits each), but without a
    merge, an argsort or a gather: every boundary is packed with its kind into one int64
    (time << 5 | kind) and sorted by value. A chain whose events come sorted and never overlap (a
    chip's compute stream, its DMA stream ...) is already one sorted run, so the stable sort
    (timsort) only merges a few runs: O(n log runs). Unsorted or overlapping chains stay exact,
    at O(n log n); one whose overlaps could overflow its counter is merged per class first.
    """
    _check_chains(chains, n_classes, window_start, window_end)
    ws, we = int(window_start), int(window_end)
    bits = 62 // n_classes
    field = [1 << (bits * c) for c in range(n_classes)]
    counts = np.zeros(n_classes, np.int64)
    for bounds, classes in chains:   # a loop over chains (a handful), not events
        for c in classes:
            counts[c] += len(bounds[0])
    # Fast path: every class in one chain and every chain sequential, so no class is ever active
    # twice (but for an instant where one event ends as the next begins): one bit per class, and
    # the running sum is the active set itself.
    owners = [c for _, classes in chains for c in classes]
    if len(owners) == len(set(owners)) and all(is_sequential(b[0], b[-1]) for b, _ in chains if len(b[0])):
        bits = 1
        field = [1 << c for c in range(n_classes)]
    safe = (1 << bits) - 1 - len(chains)
    flat: list[tuple[list[np.ndarray], list[int]]] = []
    for bounds, classes in chains:
        if bits > 1 and len(bounds[0]) and any(counts[c] >= safe for c in classes) \
                and not is_sequential(bounds[0], bounds[-1]):
            # Deep overlaps could carry into the next class's counter: merge each class first.
            for j, c in enumerate(classes):
                m = merge(bounds[j], bounds[j + 1])
                flat.append(([m.start, m.end], [c]))
        else:
            flat.append((bounds, classes))
    # Each boundary is packed as ``time << shift | tag``. In the fast path the tag is the
    # boundary's step itself (offset to be positive), so the sorted words give the running sum
    # with no table lookup, and at one instant ends (negative steps) sort before starts; otherwise
    # it is the boundary's kind, an index into ``steps``.
    width = n_classes + 2
    by_step = bits == 1 and we - ws < 1 << (62 - width)
    shift, offset = (width, 1 << (n_classes + 1)) if by_step else (5, 0)
    steps: list[int] = [0]                  # kind 0: the window's own boundaries
    runs = [np.array([offset, ((we - ws) << shift) | offset], np.int64)]
    for bounds, classes in flat:
        m, k = len(bounds[0]), len(bounds)
        kinds = range(len(steps), len(steps) + k)
        for j in range(k):
            steps.append((field[classes[j]] if j < k - 1 else 0) - (field[classes[j - 1]] if j > 0 else 0))
        if len(steps) > 32 and not by_step:
            raise ValueError("too many chain boundaries: at most 31 kinds fit the packing")
        if not m:
            continue
        run = np.empty(m * k, np.int64)
        inside = int(bounds[0].min()) >= ws and int(bounds[-1].max()) <= we   # boundaries only grow along an event
        word = np.empty(m, np.int64)
        for j, kind in enumerate(kinds):     # a loop over a chain's boundaries (2 or 3)
            if inside:
                np.subtract(bounds[j], ws, out=word)
            else:
                np.clip(bounds[j], ws, we, out=word)
                word -= ws
            word <<= shift
            word |= steps[kind] + offset if by_step else kind
            run[j::k] = word
        runs.append(run)
    packed = np.sort(np.concatenate(runs), kind="stable")
    if by_step:
        # One bit per class: the running sum is the active set. Between boundaries at one instant
        # a class may briefly count twice (where an end and a start share a step value's order):
        # such zero-length segments may fall in any bin.
        state = np.bitwise_and(packed, (1 << shift) - 1)
        state -= offset
        np.cumsum(state, out=state)
        packed >>= shift
        code = state[:-1]
        code &= (1 << n_classes) - 1
        return Sweep(origin=ws, t=packed, code=code, masks=np.arange(1 << n_classes), n_classes=n_classes)
    kind = np.bitwise_and(packed, 31, out=np.empty(len(packed), np.int8), casting="unsafe")
    packed >>= 5
    if bits == 1:
        # One bit per class, but a window too long for the step tags: the kind table instead.
        narrow = np.int16 if n_classes <= 13 else np.int32
        state = np.cumsum(np.asarray(steps, narrow)[kind], dtype=narrow)[:-1]
        state &= (1 << n_classes) - 1
        return Sweep(origin=ws, t=packed, code=state, masks=np.arange(1 << n_classes), n_classes=n_classes)
    state = np.cumsum(np.asarray(steps, np.int64)[kind])[:-1]
    code, states = pd.factorize(state, sort=False)
    fields = (states[:, None] >> (bits * np.arange(n_classes))) & ((1 << bits) - 1)
    masks = ((fields > 0) << np.arange(n_classes)).sum(axis=1).astype(np.int64)
    return Sweep(origin=ws, t=packed, code=code, masks=masks, n_classes=n_classes)


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
