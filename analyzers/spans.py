"""Spans that enclose others, and where two interval sets meet: the CPU side of profiler traces.

A PyTorch profiler trace links each device kernel to the runtime call that launched it (Kineto's
``correlation``), and that call sits inside a stack of CPU spans on its thread: ``cpu_op``
events, ``user_annotation`` (``record_function``) ranges, ``python_function`` frames. The
kernels and annotations reports ask, for many calls at once, which of those spans encloses each
one; this module answers with sorts and ``searchsorted``, never a loop per event:

- :func:`launch_calls`: each kernel's launching call, by correlation;
- :func:`enclosing`: the innermost (or outermost) span of the same key (thread) covering each
  query interval;
- :func:`intersect`: the intersection of two sets of intervals per key, as disjoint intervals.

Conventions as in :mod:`sohuprof.analyzers.intervals`: int64 ns, half-open ``[start, end)``,
zero-length spans enclose nothing, inputs are never modified.
"""

from __future__ import annotations

import numpy as np

from sohuprof.analyzers.intervals import Merged, merge

__all__ = ["enclosing", "intersect", "launch_calls"]


def _i64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def launch_calls(kernel_corr: np.ndarray, call_corr: np.ndarray) -> np.ndarray:
    """For each kernel, the index (into ``call_corr``) of the call with its correlation id, -1
    when there is none. Negative ids (a missing correlation read as -1) match nothing; where
    several calls share an id the last one wins, as in HTA's ``transform_correlation_to_index``
    (``hta/common/trace.py``).

    >>> launch_calls(np.array([7, 3, 9, -1]), np.array([3, 7, 7]))
    array([ 2,  0, -1, -1])
    """
    kernel_corr, call_corr = _i64(kernel_corr), _i64(call_corr)
    out = np.full(len(kernel_corr), -1, np.int64)
    if not len(call_corr) or not len(kernel_corr):
        return out
    order = np.argsort(call_corr, kind="stable")
    keys = call_corr[order]
    pos = np.searchsorted(keys, kernel_corr, side="right") - 1
    hit = (pos >= 0) & (kernel_corr >= 0)
    hit[hit] = keys[pos[hit]] == kernel_corr[hit]
    out[hit] = order[pos[hit]]
    return out


def enclosing(span_start: np.ndarray, span_end: np.ndarray, span_key: np.ndarray, q_start: np.ndarray,
              q_end: np.ndarray, q_key: np.ndarray, *, outermost: bool = False) -> np.ndarray:
    """For each query ``[q_start, q_end]``, the index of the innermost span of the same key that
    covers it (``start <= q_start`` and ``end >= q_end``), or with ``outermost`` the outermost
    one; -1 where no span covers it.

    Spans of one key (a thread's CPU ops) nest like a call stack, so the innermost cover is the
    latest-starting span whose end reaches the query's end (of two starting together, the
    shorter), and the outermost the earliest-starting one (the longer). With the key's spans
    sorted by (start, -end), the candidates of a query are a prefix (one ``searchsorted``):

    - outermost: the first of them whose end reaches ``q_end`` is where the running maximum of
      the ends first does (one ``searchsorted`` on it);
    - innermost: the last of them whose end reaches ``q_end``: looked for in the query's own
      block of 32 spans, else in the last earlier block whose largest end does (binary lifting
      over a table of block maxima), then within that block.

    Both are exact for any spans, nested or not: O((n + m) log n) with no loop per event.

    Parameters
    ----------
    span_start, span_end, span_key : numpy.ndarray
        The spans (int64 ns) and what they are grouped by (a thread's track code).
    q_start, q_end, q_key : numpy.ndarray
        The queries, likewise.
    outermost : bool, default False
        Return the outermost covering span rather than the innermost.

    Returns
    -------
    numpy.ndarray of int64
        One index into the span arrays per query, -1 for none.

    Examples
    --------
    >>> s, e, k = np.array([0, 2, 3, 10]), np.array([9, 8, 5, 12]), np.zeros(4, int)
    >>> enclosing(s, e, k, np.array([4, 6, 9, 11]), np.array([4, 7, 10, 11]), np.zeros(4, int))
    array([ 2,  1, -1,  3])
    >>> enclosing(s, e, k, np.array([4, 11]), np.array([4, 11]), np.zeros(2, int), outermost=True)
    array([0, 3])
    """
    span_start, span_end, span_key = _i64(span_start), _i64(span_end), _i64(span_key)
    q_start, q_end, q_key = _i64(q_start), _i64(q_end), _i64(q_key)
    out = np.full(len(q_start), -1, np.int64)
    usable = np.flatnonzero(span_end > span_start)
    if not len(usable) or not len(q_start):
        return out
    s_order = usable[np.argsort(span_key[usable], kind="stable")]
    q_order = np.argsort(q_key, kind="stable")
    s_keys, q_keys = span_key[s_order], q_key[q_order]
    for k in np.intersect1d(s_keys, q_keys):        # a loop over keys (threads), not events
        si = s_order[np.searchsorted(s_keys, k, "left"):np.searchsorted(s_keys, k, "right")]
        qi = q_order[np.searchsorted(q_keys, k, "left"):np.searchsorted(q_keys, k, "right")]
        s, e = span_start[si], span_end[si]
        order = np.lexsort((-e, s))                 # parents before the children they start with
        s, e, si = s[order], e[order], si[order]
        last = np.searchsorted(s, q_start[qi], side="right") - 1     # candidates: spans [0, last]
        if outermost:
            first = np.searchsorted(np.maximum.accumulate(e), q_end[qi], side="left")
            found = np.where(first <= last, first, -1)
        else:
            found = _last_reaching(e, last, q_end[qi])
        out[qi] = np.where(found >= 0, si[np.maximum(found, 0)], -1)
    return out


_BLOCK = 32
_CHUNK = 1 << 16      # queries per step of the block search (bounds its (queries x 32) arrays)


def _last_reaching(e: np.ndarray, last: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """For each query, the largest ``j <= last`` with ``e[j] >= reach``, or -1."""
    out = np.full(len(last), -1, np.int64)
    n_blocks = -(-len(e) // _BLOCK)
    blocks = np.full(n_blocks * _BLOCK, np.iinfo(np.int64).min)
    blocks[: len(e)] = e
    blocks = blocks.reshape(n_blocks, _BLOCK)
    table, shift = _max_table(blocks.max(axis=1))
    cols = np.arange(_BLOCK)
    for lo in range(0, len(last), _CHUNK):          # a loop over chunks of queries, not events
        q = np.arange(lo, min(lo + _CHUNK, len(last)))
        q = q[last[q] >= 0]
        # The query's own block, up to its last candidate.
        own = last[q] // _BLOCK
        hit = (blocks[own] >= reach[q, None]) & (cols <= (last[q] % _BLOCK)[:, None])
        out[q] = _last_hit(hit, own)
        # Else the last earlier block that holds an end reaching far enough, then within it.
        rest = q[out[q] < 0]
        block = _last_at_least(table, shift, last[rest] // _BLOCK - 1, reach[rest])
        rest, block = rest[block >= 0], block[block >= 0]
        out[rest] = _last_hit(blocks[block] >= reach[rest, None], block)
    return out


def _last_hit(hit: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Per row of a (queries x block) mask: the span index of its last True, -1 for none."""
    pos = _BLOCK - 1 - np.argmax(hit[:, ::-1], axis=1)
    return np.where(hit.any(axis=1), block * _BLOCK + pos, -1)


def _max_table(values: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Range maxima for binary lifting: ``table[k][i] = max(padded[i : i + 2**k])``, where
    ``padded`` (``table[0]``) is ``values`` after ``shift`` leading minima (a power of two long)."""
    size = 1 << max(len(values).bit_length(), 1)
    shift = size - len(values)
    table = [np.r_[np.full(shift, np.iinfo(np.int64).min), values]]
    while len(table[-1]) > 1:                       # log2(size) levels
        prev, half = table[-1], 1 << (len(table) - 1)
        table.append(np.maximum(prev[:-half], prev[half:]))
    return table, shift


def _last_at_least(table: list[np.ndarray], shift: int, last: np.ndarray, reach: np.ndarray) -> np.ndarray:
    """Largest ``j <= last`` with ``values[j] >= reach`` (-1 for none): from ``last``, jump back
    by ``2**k`` (k descending) over every window lying wholly below ``reach``."""
    pos = last + shift
    for k in range(len(table) - 1, -1, -1):         # a loop over levels, not events
        start = pos - (1 << k) + 1
        jump = (start >= 0) & (table[k][np.clip(start, 0, len(table[k]) - 1)] < reach)
        pos = np.where(jump, pos - (1 << k), pos)
    ok = (pos >= shift) & (table[0][np.clip(pos, 0, None)] >= reach)
    return np.where(ok, pos - shift, -1)


def intersect(a_start: np.ndarray, a_end: np.ndarray, b_start: np.ndarray, b_end: np.ndarray,
              a_key: np.ndarray | None = None, b_key: np.ndarray | None = None) -> Merged:
    """Per key, ``union(A) ∩ union(B)`` as disjoint intervals, sorted by (key, start).

    Both sides are merged per key; each merged ``A`` interval meets the run of merged ``B``
    intervals that ``searchsorted`` finds, and every such pair gives one piece.

    >>> intersect(np.array([0, 10]), np.array([5, 20]), np.array([3, 12]), np.array([11, 30]))
    Merged(key=array([0, 0, 0]), start=array([ 3, 10, 12]), end=array([ 5, 11, 20]))
    """
    a = merge(a_start, a_end, a_key)
    b = merge(b_start, b_end, b_key)
    empty = np.zeros(0, np.int64)
    if not len(a.key) or not len(b.key):
        return Merged(empty, empty, empty)
    # Each key on its own stretch of the axis, so one searchsorted serves every key.
    lo = min(int(a.start.min()), int(b.start.min()))
    span = max(int(a.end.max()), int(b.end.max())) - lo + 1
    if max(int(a.key.max()), int(b.key.max())) * span >= 1 << 62:
        # Keys far apart or a window of centuries (damaged times): one key at a time instead
        # (a loop over keys, a thread's or a stream's few).
        keys = np.union1d(a.key, b.key)
        parts = [intersect(a.start[a.key == k], a.end[a.key == k], b.start[b.key == k], b.end[b.key == k])
                 for k in keys.tolist()]
        return Merged(np.concatenate([np.full(len(m.key), k, np.int64) for k, m in zip(keys.tolist(), parts)]),
                      np.concatenate([m.start for m in parts]), np.concatenate([m.end for m in parts]))
    a_s, a_e = a.start - lo + a.key * span, a.end - lo + a.key * span
    b_s, b_e = b.start - lo + b.key * span, b.end - lo + b.key * span
    first = np.searchsorted(b_e, a_s, side="right")      # first B ending after A starts
    stop = np.searchsorted(b_s, a_e, side="left")        # first B starting at or after A ends
    count = np.maximum(stop - first, 0)
    which = np.repeat(np.arange(len(a_s)), count)
    bi = first[which] + (np.arange(len(which)) - np.repeat(np.cumsum(count) - count, count))
    start = np.maximum(a_s[which], b_s[bi])
    end = np.minimum(a_e[which], b_e[bi])
    keep = end > start
    key = a.key[which][keep]
    back = lo - key * span
    return Merged(key, start[keep] + back, end[keep] + back)
