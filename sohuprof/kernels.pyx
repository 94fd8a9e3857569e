# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled kernels: per-rank loops and recurrences numpy cannot fuse (DESIGN.md, "Compiled
kernels"), for the analyzers and the collectors alike (so they live in the core package). Each
releases the GIL; tests/test_compiled_kernels.py checks each against the numpy expression it
fuses, on random inputs.
"""

from libc.math cimport INFINITY
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

import numpy as np


def replay_ordered(const long long[::1] offsets, const long long[::1] members, const unsigned char[::1] first,
                   const long long[::1] inst, const double[::1] el, const double[::1] ea,
                   const double[::1] transfer, const double[:, ::1] tscale, const double[:, ::1] delta,
                   const double[::1] arrive0, const double[::1] low, const double[::1] ext,
                   const unsigned char[::1] counts_wait, double[:, ::1] arr, double[:, ::1] rel,
                   double[::1] wait) -> None:
    """Replay every instance in release order (a topological order of the graph), per scenario
    ``s``: each member ``a`` of instance ``c`` arrives at::

        first[a]:  arrive0[a] + delta[a, s]
        else:      max(rel[inst[a-1], s] + transfer[a-1] * tscale[inst[a-1], s] + el[a],
                       arr[a-1, s] + ea[a]) + delta[a, s]

    and ``rel[c, s] = max(max over members of arr + low[c], ext[c])``; ``wait[s]`` sums
    ``rel - arr`` over the members with ``counts_wait``. The numpy version is
    :func:`sohuprof.analyzers.diagnosis.replay._compressed` (lockstep chains by pointer jumping,
    then the merges), which gives the same times.
    """
    cdef Py_ssize_t I = offsets.shape[0] - 1
    cdef Py_ssize_t S = rel.shape[1]
    cdef Py_ssize_t c, j, a, p, s
    cdef double x, top, y
    with nogil:
        for c in range(I):
            for s in range(S):
                top = -INFINITY
                for j in range(offsets[c], offsets[c + 1]):
                    a = members[j]
                    if first[a]:
                        x = arrive0[a]
                    else:
                        p = a - 1
                        x = rel[inst[p], s] + transfer[p] * tscale[inst[p], s] + el[a]
                        if ea[a] > -INFINITY:
                            y = arr[p, s] + ea[a]
                            if y > x:
                                x = y
                    x = x + delta[a, s]
                    arr[a, s] = x
                    if x > top:
                        top = x
                top = top + low[c]
                if ext[c] > top:
                    top = ext[c]
                rel[c, s] = top
                for j in range(offsets[c], offsets[c + 1]):
                    a = members[j]
                    if counts_wait[a]:
                        wait[s] += top - arr[a, s]


cdef inline long long _wrap_sub(long long a, long long b) nogil:
    """``a - b`` wrapping like numpy's int64 (C's signed overflow is undefined)."""
    return <long long>(<unsigned long long>a - <unsigned long long>b)


cdef inline Py_ssize_t _gallop_right(const long long[::1] a, Py_ssize_t n, long long x, Py_ssize_t pos) noexcept nogil:
    """``np.searchsorted(a[:n], x, side="right")`` for sorted ``a``, searched outward from
    ``pos`` (the previous answer): O(1) for queries in order, O(log n) after a jump."""
    cdef Py_ssize_t lo, hi, mid, step = 1
    if pos > 0 and a[pos - 1] > x:
        hi = pos
        lo = pos - 1
        while lo > 0 and a[lo - 1] > x:
            hi = lo
            lo = lo - step
            step = step * 2
            if lo < 0:
                lo = 0
    else:
        lo = pos
        hi = pos
        while hi < n and a[hi] <= x:
            lo = hi + 1
            hi = hi + step
            step = step * 2
        if hi > n:
            hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def searchsorted_right(const long long[::1] a, const long long[::1] q, long long[::1] out) -> None:
    """``out[:] = np.searchsorted(a, q, side="right")`` for sorted ``a``.

    Each query gallops from the previous answer, so queries in time order (a rank's events) cost
    O(1) each instead of a binary search's ~20 cache-missing probes.
    """
    cdef Py_ssize_t n = a.shape[0], m = q.shape[0], i, pos = 0
    with nogil:
        for i in range(m):
            pos = _gallop_right(a, n, q[i], pos)
            out[i] = pos


def searchsorted_right_at(const long long[::1] a, const long long[::1] values, const long long[::1] at,
                          long long[::1] out) -> None:
    """``out[:] = np.searchsorted(a, values[at], side="right")`` for sorted ``a``, galloping, with
    no gathered copy of ``values[at]``."""
    cdef Py_ssize_t n = a.shape[0], m = at.shape[0], i, pos = 0
    with nogil:
        for i in range(m):
            pos = _gallop_right(a, n, values[at[i]], pos)
            out[i] = pos


def max_before(const long long[::1] values, const long long[::1] at, long long[::1] out) -> None:
    """``out[j] = np.maximum.accumulate(values)[at[j] - 1]`` (``values[0]`` where ``at[j]`` is 0)
    for ``at`` in ascending order: one read of ``values`` up to the last position, no prefix
    array written."""
    cdef Py_ssize_t m = at.shape[0], i = 0, j
    cdef long long best
    if m == 0:
        return
    if values.shape[0] == 0:
        raise ValueError("max_before: no values")
    with nogil:
        best = values[0]
        for j in range(m):
            while i < at[j] - 1:
                i += 1
                if values[i] > best:
                    best = values[i]
            out[j] = best


def stream_exposed(const long long[::1] w, const long long[::1] ts, const long long[::1] end,
                   const unsigned char[::1] host, double[::1] exposed, long long[::1] prev_end) -> None:
    """Each work event's exposed time on its stream (device or host: ``host[i]``) and the latest
    end before it on that stream; fuses, per stream ``s``::

        before = np.maximum.accumulate(np.r_[INT64_MIN, end[w][s]])[:-1]
        exposed[s] = np.clip(end[w][s] - np.maximum(ts[w][s], before), 0, None)
        prev_end[s] = before
    """
    cdef Py_ssize_t m = w.shape[0], i
    cdef long long before[2]
    cdef long long t, e, d
    cdef int s
    before[0] = -9223372036854775807 - 1
    before[1] = before[0]
    with nogil:
        for i in range(m):
            s = host[i]
            t = ts[w[i]]
            e = end[w[i]]
            prev_end[i] = before[s]
            d = _wrap_sub(e, t if t > before[s] else before[s])
            exposed[i] = <double>(d if d > 0 else 0)
            if e > before[s]:
                before[s] = e


def segment_composition(const long long[::1] w, const long long[::1] ts, const long long[::1] end,
                        const long long[::1] seg, const double[::1] exposed,
                        const long long[::1] cat_code, const signed char[::1] cat_of_code,
                        const long long[::1] stall, const long long[::1] op_code, const long long[::1] ph_code,
                        const long long[::1] nm_code, const long long[::1] flops, const long long[::1] hbm,
                        const long long[::1] track_code, const unsigned char[::1] vector_of_code,
                        double peak, double vector_peak, double bandwidth, bint roof_model,
                        const long long[::1] arrive, const long long[::1] leave, const unsigned char[::1] barrier,
                        long long tol, long long n_op, long long n_ph,
                        unsigned char[::1] inside, unsigned char[::1] joined, double[:, ::1] kinds,
                        long long[::1] combo, double[::1] op_time, double[::1] op_roof,
                        unsigned char[::1] has_roof, double[::1] key_dur, double[::1] name_dur,
                        long long[::1] name_cat, long long[::1] name_count) -> Py_ssize_t:
    """One pass of :func:`sohuprof.analyzers.diagnosis.graph.rank_graph`'s segment accounting
    over the work events ``w`` (positions into the partition's columns, time order), each in
    segment ``seg[i]``; returns how many (segment, op, phase) groups it wrote. Fuses::

        j = seg - 1; hit = (j >= 0) & (ts[w] > arrive[j]) & (ts[w] < leave[j]); inside[j[hit]] = True
        asyn = inside & ~barrier
        gap = np.clip(ts[w] - running max of end[w] before, 0, None)
        joined[j[(seg > 0) & asyn[j] & (gap > 0) & (|ts[w] - leave[j]| <= tol)]] = True
        share = np.where((cat == 0) & (dur > 0), np.clip(stall / dur, 0, 1), 0)
        kinds[:, 0..3] = np.bincount(seg, exposed * (cat == 0) * (1 - share) | ... * share
                                     | exposed * (cat == 2) | exposed * (cat == 3))
        roof = max(flops / (vector_peak if vector else peak), hbm / bandwidth) * 1e9   (NaN without a model)
        roofed = np.where(dur > 0, exposed * np.clip(roof / dur, 0, 1), 0)
        combo, inv = unique((seg * n_op + op) * n_ph + ph); op_time, op_roof = bincount(inv, exposed | nan_to_num(roofed))
        has_roof = bincount(inv, ~isnan(roofed)) > 0
        key_dur = bincount(op * n_ph + ph, dur); name_dur, name_count = bincount(nm * n_ph + ph, dur | 1)
        name_cat[nm * n_ph + ph] = cat      (the last event's)

    Sums run in ``w`` order within each output cell, as ``np.bincount`` does, so the results
    are the same doubles. The groups come out sorted by combo (a stable counting sort by
    segment, then each segment's codes in order).
    """
    cdef Py_ssize_t m = w.shape[0], J = kinds.shape[0], C = n_op * n_ph
    cdef Py_ssize_t i, j, r, c, k, g = 0, a, b, t_n = 0, cur
    cdef long long x, t, e, running, code, nk, d
    cdef double dur, ex, share, roof, q, fl, re
    cdef int cat, re_nan
    cdef bint ordered = True
    cdef long long int_min = -9223372036854775807 - 1
    cdef double[::1] t_time = np.zeros(C, np.float64)
    cdef double[::1] t_roof = np.zeros(C, np.float64)
    cdef unsigned char[::1] t_has = np.zeros(C, np.uint8)
    cdef unsigned char[::1] t_seen = np.zeros(C, np.uint8)
    cdef long long[::1] touched = np.empty(C, np.int64)
    cdef long long[::1] count, perm, cell_code
    cdef double[::1] roofed
    cdef unsigned char[::1] roofed_nan
    for i in range(1, m):
        if seg[i] < seg[i - 1]:
            ordered = False
            break
    if not ordered:      # launches moved into their kernels' segments: cells are sorted after
        count = np.zeros(J + 1, np.int64)
        perm = np.empty(m, np.int64)
        cell_code = np.empty(m, np.int64)
        roofed = np.empty(m, np.float64)
        roofed_nan = np.empty(m, np.uint8)
    with nogil:
        # Which anchors had work start strictly inside them (asynchronous collectives).
        for i in range(m):
            j = seg[i] - 1
            if j >= 0:
                t = ts[w[i]]
                if t > arrive[j] and t < leave[j]:
                    inside[j] = 1
        running = int_min
        cur = seg[0] if m else 0
        for i in range(m):
            r = w[i]
            t = ts[r]
            e = end[r]
            j = seg[i] - 1
            # The idle gap before the event (numpy's wrapping subtraction at the first event).
            d = _wrap_sub(t, running)
            if j >= 0 and d > 0 and inside[j] and not barrier[j]:
                x = _wrap_sub(t, leave[j])
                if (x if x >= 0 else -x) <= tol:
                    joined[j] = 1
            if e > running:
                running = e
            dur = <double>_wrap_sub(e, t)
            ex = exposed[i]
            cat = cat_of_code[cat_code[r]]
            if cat == 0:
                share = 0.0
                if dur > 0:
                    share = <double>stall[r] / dur
                    share = 0.0 if share < 0.0 else share
                    share = 1.0 if share > 1.0 else share
                kinds[seg[i], 0] += ex * (1.0 - share)
                kinds[seg[i], 1] += ex * share
            elif cat == 2:
                kinds[seg[i], 2] += ex
            elif cat == 3:
                kinds[seg[i], 3] += ex
            re = 0.0
            re_nan = 0
            if dur > 0:
                if roof_model:
                    fl = <double>flops[r] / (vector_peak if vector_of_code[track_code[r]] else peak)
                    roof = <double>hbm[r] / bandwidth
                    roof = (fl if fl >= roof else roof) * 1e9
                    q = roof / dur
                    q = 0.0 if q < 0.0 else q
                    q = 1.0 if q > 1.0 else q
                    re = ex * q
                else:
                    re_nan = 1
            code = op_code[r] * n_ph + ph_code[r]
            key_dur[code] += dur
            nk = nm_code[r] * n_ph + ph_code[r]
            name_dur[nk] += dur
            name_count[nk] += 1
            name_cat[nk] = cat
            if ordered:
                if seg[i] != cur:
                    g = _flush_cells(cur, C, &touched[0], t_n, &t_seen[0], &t_time[0], &t_roof[0], &t_has[0],
                                     &combo[0], &op_time[0], &op_roof[0], &has_roof[0], g)
                    t_n = 0
                    cur = seg[i]
                if not t_seen[code]:
                    t_seen[code] = 1
                    touched[t_n] = code
                    t_n += 1
                t_time[code] += ex
                t_roof[code] += re
                if not re_nan:
                    t_has[code] = 1
            else:
                cell_code[i] = code
                roofed[i] = re
                roofed_nan[i] = re_nan
                count[seg[i] + 1] += 1
        if ordered:
            if m:
                g = _flush_cells(cur, C, &touched[0], t_n, &t_seen[0], &t_time[0], &t_roof[0], &t_has[0],
                                 &combo[0], &op_time[0], &op_roof[0], &has_roof[0], g)
        else:
            # A stable counting sort by segment, then each segment's cells by code.
            for j in range(J):
                count[j + 1] += count[j]
            for i in range(m):
                perm[count[seg[i]]] = i
                count[seg[i]] += 1
            a = 0
            for j in range(J):
                b = count[j]
                t_n = 0
                for k in range(a, b):
                    i = perm[k]
                    c = cell_code[i]
                    if not t_seen[c]:
                        t_seen[c] = 1
                        touched[t_n] = c
                        t_n += 1
                    t_time[c] += exposed[i]
                    t_roof[c] += roofed[i]
                    if not roofed_nan[i]:
                        t_has[c] = 1
                g = _flush_cells(j, C, &touched[0], t_n, &t_seen[0], &t_time[0], &t_roof[0], &t_has[0],
                                 &combo[0], &op_time[0], &op_roof[0], &has_roof[0], g)
                a = b
    return g


cdef Py_ssize_t _flush_cells(Py_ssize_t seg, Py_ssize_t C, long long* touched, Py_ssize_t t_n,
                             unsigned char* t_seen, double* t_time, double* t_roof, unsigned char* t_has,
                             long long* combo, double* op_time, double* op_roof, unsigned char* has_roof,
                             Py_ssize_t g) noexcept nogil:
    """Write one segment's cells (the codes it touched, in code order) and clear them."""
    cdef Py_ssize_t k, c
    cdef long long x
    for k in range(1, t_n):               # insertion sort of the few codes a segment holds
        x = touched[k]
        c = k - 1
        while c >= 0 and touched[c] > x:
            touched[c + 1] = touched[c]
            c -= 1
        touched[c + 1] = x
    for k in range(t_n):
        c = touched[k]
        combo[g] = seg * C + c
        op_time[g] = t_time[c]
        op_roof[g] = t_roof[c]
        has_roof[g] = t_has[c]
        g += 1
        t_time[c] = 0.0
        t_roof[c] = 0.0
        t_has[c] = 0
        t_seen[c] = 0
    return g


cdef struct _Table:
    long long* keys        # -1: empty slot (every key here is >= 0)
    long long* ids
    Py_ssize_t mask
    Py_ssize_t used


cdef int _table_init(_Table* t, Py_ssize_t hint) noexcept nogil:
    cdef Py_ssize_t size = 1024, i
    while size < 2 * hint:
        size = size * 2
    t.keys = <long long*>calloc(size, sizeof(long long))
    t.ids = <long long*>calloc(size, sizeof(long long))
    if t.keys == NULL or t.ids == NULL:
        return -1
    for i in range(size):
        t.keys[i] = -1
    t.mask = size - 1
    t.used = 0
    return 0


cdef inline Py_ssize_t _slot(_Table* t, long long key) noexcept nogil:
    cdef unsigned long long h = <unsigned long long>key * 0x9E3779B97F4A7C15ULL
    cdef Py_ssize_t i = <Py_ssize_t>((h ^ (h >> 29)) & <unsigned long long>t.mask)
    while t.keys[i] != -1 and t.keys[i] != key:
        i = (i + 1) & t.mask
    return i


cdef int _table_grow(_Table* t) noexcept nogil:
    cdef long long* old_keys = t.keys
    cdef long long* old_ids = t.ids
    cdef Py_ssize_t old_size = t.mask + 1, i, j
    if _table_init(t, old_size) != 0:       # twice the slots
        return -1
    for i in range(old_size):
        if old_keys[i] != -1:
            j = _slot(t, old_keys[i])
            t.keys[j] = old_keys[i]
            t.ids[j] = old_ids[i]
            t.used += 1
    free(old_keys)
    free(old_ids)
    return 0


cdef inline long long _dense_id(_Table* t, long long key, Py_ssize_t at, long long* first) noexcept nogil:
    """The dense id of ``key``, a new one (its first position ``at``) the first time it is seen;
    -1 when out of memory."""
    cdef Py_ssize_t i = _slot(t, key)
    cdef long long new
    if t.keys[i] == key:
        return t.ids[i]
    new = t.used
    t.keys[i] = key
    t.ids[i] = new
    t.used += 1
    first[new] = at
    if 2 * t.used > t.mask:
        if _table_grow(t) != 0:
            return -1
    return new


def factorize(const long long[::1] values, long long[::1] codes, long long[::1] first) -> Py_ssize_t:
    """``codes, uniques = pandas.factorize(values)`` for ``values >= 0``: dense ids in order of
    first appearance; ``first[id]`` is that appearance. Returns the number of ids."""
    cdef Py_ssize_t n = values.shape[0], i
    cdef _Table t
    cdef long long c
    cdef int failed = 0
    with nogil:
        if _table_init(&t, 1024) != 0:
            failed = 1
        else:
            for i in range(n):
                c = _dense_id(&t, values[i], i, &first[0])
                if c < 0:
                    failed = 1
                    break
                codes[i] = c
        n = t.used
        free(t.keys)
        free(t.ids)
    if failed:
        raise MemoryError("factorize: no memory for the hash table")
    return n


def sequence_step(const long long[::1] key_prev, const long long[::1] name, const long long[::1] track,
                  const long long[::1] ts, const long long[::1] end, const long long[::1] reach_prev,
                  const long long[::1] csum, long long vocab, Py_ssize_t k, bint tally,
                  long long[::1] key, long long[::1] first, long long[::1] reach, long long[::1] count,
                  double[::1] total, double[::1] kernel) -> Py_ssize_t:
    """One window length ``k`` of :func:`sohuprof.analyzers.reports.sequences.sequences_chunk`
    over ``m = len(name) - k + 1`` windows; returns the number of distinct keys. Fuses::

        key, first = factorize(key_prev[:m] * vocab + name[k - 1:])
        reach = np.maximum(reach_prev[:m], end[k - 1:])
        valid = track[:m] == track[k - 1:]                    # with tally only:
        count = np.bincount(key[valid]); total = np.bincount(key[valid], reach - ts)
        kernel = np.bincount(key[valid], csum[k:] - csum[:-k])

    ``count``, ``total`` and ``kernel`` must be zeroed and as long as ``m``; sums run in window
    order, as ``np.bincount``'s do.
    """
    cdef Py_ssize_t m = name.shape[0] - k + 1, i
    cdef _Table t
    cdef long long c, r
    cdef int failed = 0
    if m <= 0:
        return 0
    with nogil:
        if _table_init(&t, 1024) != 0:
            failed = 1
        else:
            for i in range(m):
                c = _dense_id(&t, key_prev[i] * vocab + name[i + k - 1], i, &first[0])
                if c < 0:
                    failed = 1
                    break
                key[i] = c
                r = end[i + k - 1]
                if reach_prev[i] > r:
                    r = reach_prev[i]
                reach[i] = r
                if tally and track[i] == track[i + k - 1]:
                    count[c] += 1
                    total[c] += <double>(r - ts[i])
                    kernel[c] += <double>(csum[i + k] - csum[i])
        m = t.used
        free(t.keys)
        free(t.ids)
    if failed:
        raise MemoryError("sequence_step: no memory for the hash table")
    return m


def covered_before(const long long[::1] start, const long long[::1] end, const long long[::1] through,
                   const long long[::1] x, long long[::1] out) -> None:
    """For sorted, non-overlapping intervals whose first one starts before every ``x``, with
    ``through = np.cumsum(end - start)``: how much of ``[-inf, x)`` they cover. Fuses::

        last = np.searchsorted(start, x, side="right") - 1
        out = through[last] - np.maximum(end[last] - x, 0)

    Queries that come in sorted runs (a stream's starts, then its ends) gallop.
    """
    cdef Py_ssize_t n = start.shape[0], m = x.shape[0], i, pos = 0, last
    cdef long long ahead
    with nogil:
        for i in range(m):
            pos = _gallop_right(start, n, x[i], pos)
            last = pos - 1
            ahead = end[last] - x[i]
            out[i] = through[last] - (ahead if ahead > 0 else 0)


def roofline_sums(const long long[::1] rows, const long long[::1] c0, const long long[::1] c1,
                  const long long[::1] c2, long long r1, long long r2, const unsigned char[::1] vector,
                  const long long[::1] dur, const long long[::1] flops, const long long[::1] hbm,
                  double peak, double vector_peak, double bandwidth, long long[::1] key, long long[::1] first,
                  long long[::1] count, long long[::1] dur_sum, long long[::1] flops_sum, long long[::1] hbm_sum,
                  double[::1] flops_fsum, double[::1] hbm_fsum, double[::1] headroom_sum) -> Py_ssize_t:
    """The roofline's per-group sums of one rank's compute events ``rows`` (row order); returns
    the number of groups. A group is (``c0``, ``c1``, ``c2`` codes, vector track?, dur > 0?),
    numbered in order of first appearance (``first``: its first row, ``key``: its packed code
    ``((c0 * r1 + c1) * r2 + c2) * 4 + 2 * vector + timed``). Fuses::

        roof = np.maximum(flops / np.where(vector, vector_peak, peak) * 1e9, hbm / bandwidth * 1e9)
        headroom = np.clip(dur - roof, 0, None)
        table.group_by(keys).aggregate(count, sum(dur), sum(flops), sum(hbm), sum(headroom))

    with the FLOP and byte sums both as int64 (exact, where the caller finds they cannot pass
    2**63) and as float64 (where they might), and every float sum in row order. The output arrays
    must be zeroed and as long as ``rows``.
    """
    cdef Py_ssize_t m = rows.shape[0], i, r
    cdef _Table t
    cdef long long k, c
    cdef double rt, hb, h
    cdef int failed = 0
    with nogil:
        if _table_init(&t, 1024) != 0:
            failed = 1
        else:
            for i in range(m):
                r = rows[i]
                k = (((c0[r] * r1 + c1[r]) * r2 + c2[r]) * 4) + 2 * vector[r] + (1 if dur[r] > 0 else 0)
                c = _dense_id(&t, k, r, &first[0])
                if c < 0:
                    failed = 1
                    break
                key[c] = k
                rt = <double>flops[r] / (vector_peak if vector[r] else peak) * 1e9
                hb = <double>hbm[r] / bandwidth * 1e9
                if hb > rt:
                    rt = hb
                h = <double>dur[r] - rt
                count[c] += 1
                dur_sum[c] += dur[r]
                flops_sum[c] += flops[r]
                hbm_sum[c] += hbm[r]
                flops_fsum[c] += <double>flops[r]
                hbm_fsum[c] += <double>hbm[r]
                headroom_sum[c] += h if h > 0 else 0.0
        m = t.used
        free(t.keys)
        free(t.ids)
    if failed:
        raise MemoryError("roofline_sums: no memory for the hash table")
    return m


def is_sequential(const long long[::1] first, const long long[::1] last) -> bool:
    """``(first[1:] >= first[:-1]).all() and (first[1:] >= np.maximum.accumulate(last)[:-1]).all()``:
    do intervals ``[first, last)`` come sorted and never overlap? Stops at the first overlap."""
    cdef Py_ssize_t n = first.shape[0], i
    cdef long long reach
    cdef bint ok = True
    if n == 0:
        return True
    with nogil:
        reach = last[0]
        for i in range(1, n):
            if first[i] < first[i - 1] or first[i] < reach:
                ok = False
                break
            if last[i] > reach:
                reach = last[i]
    return ok


def union_sorted(const long long[::1] a_start, const long long[::1] a_end, const long long[::1] b_start,
                 const long long[::1] b_end, long long[::1] start, long long[::1] end) -> Py_ssize_t:
    """The union of two interval lists, each sorted by start, as disjoint sorted intervals
    (touching ones joined, empty ones dropped) in ``start``/``end`` (as long as both lists);
    returns how many. The same cover as :func:`sohuprof.analyzers.intervals.merge` of their
    concatenation, by one two-way merge instead of a sort."""
    cdef Py_ssize_t na = a_start.shape[0], nb = b_start.shape[0], i = 0, j = 0, k = 0
    cdef long long s, e
    cdef bint have = False
    with nogil:
        while i < na or j < nb:
            if j >= nb or (i < na and a_start[i] <= b_start[j]):
                s = a_start[i]
                e = a_end[i]
                i += 1
            else:
                s = b_start[j]
                e = b_end[j]
                j += 1
            if e <= s:
                continue
            if have and s <= end[k - 1]:
                if e > end[k - 1]:
                    end[k - 1] = e
            else:
                start[k] = s
                end[k] = e
                k += 1
                have = True
    return k


def counting_order(const long long[::1] codes, long long[::1] bounds, long long[::1] order) -> None:
    """``order = np.argsort(codes, kind="stable")`` and ``bounds = np.searchsorted(codes[order],
    np.arange(len(bounds)))`` for codes in ``0 .. len(bounds) - 2``: one counting sort, O(n)."""
    cdef Py_ssize_t n = codes.shape[0], K = bounds.shape[0], i, k
    cdef long long[::1] at = np.zeros(K, np.int64)
    with nogil:
        for i in range(n):
            at[codes[i] + 1] += 1
        for k in range(1, K):
            at[k] += at[k - 1]
        for k in range(K):
            bounds[k] = at[k]
        for i in range(n):
            order[at[codes[i]]] = i
            at[codes[i]] += 1



cdef packed struct _Record:       # sohuprof.strace.RECORD_DTYPE, 72 bytes, little-endian
    unsigned long long start, end, flops, hbm_bytes, net_bytes, stall_cycles
    unsigned int name_id, step, group, seq
    short layer
    unsigned char engine, phase
    unsigned int reserved


def unpack_records(const unsigned char[::1] raw, Py_ssize_t at, double[::1] start, double[::1] end,
                   int[::1] name_id, int[::1] engine, int[::1] phase, long long[::1] group, int[::1] layer,
                   long long[::1] flops, long long[::1] hbm_bytes, long long[::1] net_bytes,
                   double[::1] stall_cycles, long long[::1] seq, long long[::1] step) -> None:
    """Raw trace records (``RECORD_DTYPE``, the bytes ``raw``) into columns from row ``at`` on,
    each field as ``records[field].astype(dtype)`` gives it (u8 -> f8 rounded, u8 -> i8 wrapping,
    u4 -> i4 wrapping): one sequential pass over the records instead of a strided copy per field."""
    cdef Py_ssize_t n = raw.shape[0] // sizeof(_Record), i, j
    cdef _Record rec
    if sizeof(_Record) != 72:
        raise AssertionError("the record layout changed: update _Record")
    with nogil:
        for i in range(n):
            memcpy(&rec, &raw[i * sizeof(_Record)], sizeof(_Record))
            j = at + i
            start[j] = <double>rec.start
            end[j] = <double>rec.end
            name_id[j] = <int>rec.name_id
            engine[j] = rec.engine
            phase[j] = rec.phase
            group[j] = rec.group
            layer[j] = rec.layer
            flops[j] = <long long>rec.flops
            hbm_bytes[j] = <long long>rec.hbm_bytes
            net_bytes[j] = <long long>rec.net_bytes
            stall_cycles[j] = <double>rec.stall_cycles
            seq[j] = rec.seq
            step[j] = rec.step


def sample_hash(const long long[::1] rank, long long one_rank, const long long[::1] ts, const long long[::1] dur,
                unsigned long long[::1] out) -> None:
    """The roofline sample's 64-bit key of each event: its rank (``rank``, or ``one_rank`` for
    every row when ``rank`` is empty), start and duration, odd-multiplied and summed, then one
    xor-shift-multiply round, all modulo 2**64::

        h = rank * 0x9E3779B97F4A7C15 + ts * 0xC2B2AE3D27D4EB4F + dur * 0x165667B19E3779F9
        h ^= h >> 32; h *= 0xBF58476D1CE4E5B9
    """
    cdef Py_ssize_t n = ts.shape[0], i
    cdef bint per_row = rank.shape[0] > 0
    cdef unsigned long long h, r = <unsigned long long>one_rank * 0x9E3779B97F4A7C15ULL
    with nogil:
        for i in range(n):
            if per_row:
                r = <unsigned long long>rank[i] * 0x9E3779B97F4A7C15ULL
            h = r + <unsigned long long>ts[i] * 0xC2B2AE3D27D4EB4FULL + <unsigned long long>dur[i] * 0x165667B19E3779F9ULL
            h ^= h >> 32
            out[i] = h * 0xBF58476D1CE4E5B9ULL
