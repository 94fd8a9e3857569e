"""The numpy versions of sohuprof/kernels.pyx: the short expressions each compiled kernel fuses,
with the same signatures (outputs written into the arrays given), so they stand in for the
module in tests. tests/test_compiled_kernels.py checks each kernel against its twin on random
inputs; tests/test_kernels_json.py runs whole analyses and a collect on the twins and checks
the output is the compiled run's, byte for byte. ``replay_ordered`` has its own numpy twin in
the replay (``replay(..., use_kernels=False)``, tests/analyzers/test_diagnosis.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd

INT64_MIN = np.iinfo(np.int64).min

__all__ = ["searchsorted_right", "searchsorted_right_at", "max_before", "stream_exposed", "segment_composition",
           "factorize", "sequence_step", "covered_before", "roofline_sums", "is_sequential", "union_sorted",
           "counting_order", "unpack_records", "sample_hash"]


def searchsorted_right(a, q, out) -> None:
    out[:] = np.searchsorted(a, q, side="right")


def searchsorted_right_at(a, values, at, out) -> None:
    out[:] = np.searchsorted(a, np.asarray(values)[at], side="right")


def max_before(values, at, out) -> None:
    if len(at):
        out[:] = np.maximum.accumulate(values)[np.maximum(np.asarray(at) - 1, 0)]


def stream_exposed(w, ts, end, host, exposed, prev_end) -> None:
    host = np.asarray(host).astype(bool)
    for mask in (~host, host):
        s_ts, s_end = np.asarray(ts)[w][mask], np.asarray(end)[w][mask]
        before = np.maximum.accumulate(np.r_[INT64_MIN, s_end])[:-1]
        exposed[mask] = np.clip(s_end - np.maximum(s_ts, before), 0, None)
        prev_end[mask] = before


def segment_composition(w, ts, end, seg, exposed, cat_code, cat_of_code, stall, op_code, ph_code, nm_code, flops,
                        hbm, track_code, vector_of_code, peak, vector_peak, bandwidth, roof_model, arrive, leave,
                        barrier, tol, n_op, n_ph, inside, joined, kinds, combo, op_time, op_roof, has_roof, key_dur,
                        name_dur, name_cat, name_count) -> int:
    ts, end, seg, exposed = np.asarray(ts), np.asarray(end), np.asarray(seg), np.asarray(exposed)
    arrive, leave, barrier = np.asarray(arrive), np.asarray(leave), np.asarray(barrier).astype(bool)
    w_ts, w_end = ts[w], end[w]
    j = seg - 1
    at = np.maximum(j, 0)
    if len(arrive):
        hit = (j >= 0) & (w_ts > arrive[at]) & (w_ts < leave[at])
        inside[j[hit]] = True
    asynchronous = np.asarray(inside).astype(bool) & ~barrier
    with np.errstate(over="ignore"):     # numpy's int64 wraps at the first event, as the kernel does
        gap = np.clip(w_ts - np.maximum.accumulate(np.r_[INT64_MIN, w_end])[:-1], 0, None)
    if asynchronous.any():
        wait_end = (seg > 0) & asynchronous[at] & (gap > 0) & (np.abs(w_ts - leave[at]) <= tol)
        joined[at[wait_end]] = True
    cat = np.asarray(cat_of_code)[np.asarray(cat_code)[w]]
    dur = (w_end - w_ts).astype(float)
    stall = np.asarray(stall)[w].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where((cat == 0) & (dur > 0), np.clip(stall / dur, 0, 1), 0.0)
    J = len(kinds)
    kinds[:, 0] += np.bincount(seg, weights=exposed * (cat == 0) * (1 - share), minlength=J)
    kinds[:, 1] += np.bincount(seg, weights=exposed * (cat == 0) * share, minlength=J)
    kinds[:, 2] += np.bincount(seg, weights=exposed * (cat == 2), minlength=J)
    kinds[:, 3] += np.bincount(seg, weights=exposed * (cat == 3), minlength=J)
    op, ph, nm = np.asarray(op_code)[w], np.asarray(ph_code)[w], np.asarray(nm_code)[w]
    uniq, inv = np.unique((seg * n_op + op) * n_ph + ph, return_inverse=True)
    if roof_model:
        vector = np.asarray(vector_of_code)[np.asarray(track_code)[w]].astype(bool)
        roof = np.maximum(np.asarray(flops)[w].astype(float) / np.where(vector, vector_peak, peak),
                          np.asarray(hbm)[w].astype(float) / bandwidth) * 1e9
    else:
        roof = np.full(len(w), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        roofed = np.where(dur > 0, exposed * np.clip(roof / dur, 0, 1), 0.0)
    g = len(uniq)
    combo[:g] = uniq
    op_time[:g] = np.bincount(inv, weights=exposed, minlength=g)
    op_roof[:g] = np.bincount(inv, weights=np.nan_to_num(roofed, nan=0.0), minlength=g)
    has_roof[:g] = np.bincount(inv, weights=~np.isnan(roofed), minlength=g) > 0
    key_dur += np.bincount(op * n_ph + ph, weights=dur, minlength=len(key_dur))
    nm_key = nm * n_ph + ph
    name_dur += np.bincount(nm_key, weights=dur, minlength=len(name_dur))
    name_count += np.bincount(nm_key, minlength=len(name_count))
    name_cat[nm_key] = cat
    return g


def factorize(values, codes, first) -> int:
    ids, uniques = pd.factorize(np.asarray(values))
    codes[:] = ids
    n = len(uniques)
    first[:n] = np.sort(np.unique(ids, return_index=True)[1]) if n else first[:0]
    return n


def sequence_step(key_prev, name, track, ts, end, reach_prev, csum, vocab, k, tally, key, first, reach, count, total,
                  kernel) -> int:
    name, track, ts, end, csum = (np.asarray(x) for x in (name, track, ts, end, csum))
    m = len(name) - k + 1
    if m <= 0:
        return 0
    n = factorize(np.asarray(key_prev)[:m] * vocab + name[k - 1:], key, first)
    reach[:] = np.maximum(np.asarray(reach_prev)[:m], end[k - 1:])
    if tally:
        valid = np.flatnonzero(track[:m] == track[k - 1:])
        mine = np.asarray(key)[valid]
        count[:n] += np.bincount(mine, minlength=n)
        total[:n] += np.bincount(mine, weights=np.asarray(reach)[valid] - ts[valid], minlength=n)
        kernel[:n] += np.bincount(mine, weights=(csum[k:] - csum[:-k])[valid], minlength=n)
    return n


def covered_before(start, end, through, x, out) -> None:
    last = np.searchsorted(start, x, side="right") - 1
    out[:] = np.asarray(through)[last] - np.maximum(np.asarray(end)[last] - x, 0)


def roofline_sums(rows, c0, c1, c2, r1, r2, vector, dur, flops, hbm, peak, vector_peak, bandwidth, key, first, count,
                  dur_sum, flops_sum, hbm_sum, flops_fsum, hbm_fsum, headroom_sum) -> int:
    c0, c1, c2, dur, flops, hbm = (np.asarray(x)[rows] for x in (c0, c1, c2, dur, flops, hbm))
    vector = np.asarray(vector)[rows].astype(bool)
    packed = ((c0 * r1 + c1) * r2 + c2) * 4 + 2 * vector + (dur > 0)
    ids = np.empty(len(rows), np.int64)
    at = np.empty(len(rows), np.int64)
    n = factorize(packed, ids, at)
    first[:n] = np.asarray(rows)[at[:n]]
    key[:n] = packed[at[:n]]
    roof = np.maximum(flops / np.where(vector, vector_peak, peak) * 1e9, hbm / bandwidth * 1e9)
    np.add.at(count, ids, 1)
    np.add.at(dur_sum, ids, dur)
    np.add.at(flops_sum, ids, flops)
    np.add.at(hbm_sum, ids, hbm)
    flops_fsum[:n] += np.bincount(ids, weights=flops.astype(float), minlength=n)
    hbm_fsum[:n] += np.bincount(ids, weights=hbm.astype(float), minlength=n)
    headroom_sum[:n] += np.bincount(ids, weights=np.clip(dur - roof, 0, None), minlength=n)
    return n


def is_sequential(first, last) -> bool:
    first, last = np.asarray(first), np.asarray(last)
    return bool((first[1:] >= first[:-1]).all() and (first[1:] >= np.maximum.accumulate(last)[:-1]).all()) \
        if len(first) else True


def union_sorted(a_start, a_end, b_start, b_end, start, end) -> int:
    from sohuprof.analyzers.intervals import merge

    m = merge(np.r_[a_start, b_start], np.r_[a_end, b_end])
    start[:len(m.start)], end[:len(m.end)] = m.start, m.end
    return len(m.start)


def counting_order(codes, bounds, order) -> None:
    order[:] = np.argsort(codes, kind="stable")
    bounds[:] = np.searchsorted(np.asarray(codes)[order], np.arange(len(bounds)))


def unpack_records(raw, at, start, end, name_id, engine, phase, group, layer, flops, hbm_bytes, net_bytes,
                   stall_cycles, seq, step) -> None:
    from sohuprof.strace import RECORD_DTYPE

    recs = np.frombuffer(np.asarray(raw).tobytes(), RECORD_DTYPE)
    for name, out in (("start", start), ("end", end), ("name_id", name_id), ("engine", engine), ("phase", phase),
                      ("group", group), ("layer", layer), ("flops", flops), ("hbm_bytes", hbm_bytes),
                      ("net_bytes", net_bytes), ("stall_cycles", stall_cycles), ("seq", seq), ("step", step)):
        out[at:at + len(recs)] = recs[name].astype(out.dtype)


def sample_hash(rank, one_rank, ts, dur, out) -> None:
    with np.errstate(over="ignore"):
        r = np.asarray(rank).view(np.uint64) if len(rank) else np.uint64(one_rank % 2**64)
        h = r * np.uint64(0x9E3779B97F4A7C15) + np.asarray(ts).view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F) \
            + np.asarray(dur).view(np.uint64) * np.uint64(0x165667B19E3779F9)
        h ^= h >> np.uint64(32)
        out[:] = h * np.uint64(0xBF58476D1CE4E5B9)
