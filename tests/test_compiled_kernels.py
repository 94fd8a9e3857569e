"""The compiled kernels (sohuprof/kernels.pyx) against the numpy expressions they fuse, on random
inputs: the same integers and the same doubles, bit for bit."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sohuprof import kernels

INT64_MIN = np.iinfo(np.int64).min


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-50, 50), max_size=40), st.lists(st.integers(-60, 60), max_size=60),
       st.booleans())
def test_searchsorted_right_is_numpys(a, q, sort_queries):
    a = np.sort(np.array(a, np.int64))
    q = np.array(sorted(q) if sort_queries else q, np.int64)
    out = np.empty(len(q), np.int64)
    kernels.searchsorted_right(a, q, out)
    assert np.array_equal(out, np.searchsorted(a, q, side="right"))


def _events(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ts = np.sort(rng.integers(0, 10 * n + 1, n)).astype(np.int64)
    return ts, ts + rng.integers(0, 40, n)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_stream_exposed_is_the_running_max_per_stream(n, seed):
    rng = np.random.default_rng(seed)
    ts, end = _events(rng, n)
    w = np.flatnonzero(rng.random(n) < 0.8)
    host = rng.random(len(w)) < 0.3
    exposed, prev_end = np.empty(len(w)), np.empty(len(w), np.int64)
    kernels.stream_exposed(w, ts, end, host.view(np.uint8), exposed, prev_end)
    want, want_prev = np.zeros(len(w)), np.zeros(len(w), np.int64)
    for mask in (~host, host):
        s_ts, s_end = ts[w][mask], end[w][mask]
        before = np.maximum.accumulate(np.r_[INT64_MIN, s_end])[:-1]
        want[mask] = np.clip(s_end - np.maximum(s_ts, before), 0, None)
        want_prev[mask] = before
    assert np.array_equal(exposed, want) and np.array_equal(prev_end, want_prev)


def _composition_numpy(w, ts, end, seg, exposed, cat_of, stall, op, ph, nm, flops, hbm, vector, peak, vpeak, bw,
                       roof_model, arrive, leave, barrier, tol, n_op, n_ph, J, size):
    """The numpy version: what rank_graph computed before the kernel (its expressions, verbatim)."""
    w_ts, w_end = ts[w], end[w]
    inside = np.zeros(len(arrive), bool)
    j = seg - 1
    at = np.maximum(j, 0)
    if len(arrive):
        hit = (j >= 0) & (w_ts > arrive[at]) & (w_ts < leave[at])
        inside[j[hit]] = True
    asynchronous = inside & ~barrier
    dev_before = np.maximum.accumulate(np.r_[INT64_MIN, w_end])[:-1]
    gap_before = np.clip(w_ts - dev_before, 0, None)
    joined = np.zeros(len(arrive), bool)
    if asynchronous.any():
        j = np.maximum(seg - 1, 0)
        wait_end = (seg > 0) & asynchronous[j] & (gap_before > 0) & (np.abs(w_ts - leave[j]) <= tol)
        joined[j[wait_end]] = True
    cat = cat_of[w]
    dur_w = (w_end - w_ts).astype(float)
    stall = stall[w].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where((cat == 0) & (dur_w > 0), np.clip(stall / dur_w, 0, 1), 0.0)
    kinds = np.zeros((J, 4))
    kinds[:, 0] = np.bincount(seg, weights=exposed * (cat == 0) * (1 - share), minlength=J)
    kinds[:, 1] = np.bincount(seg, weights=exposed * (cat == 0) * share, minlength=J)
    kinds[:, 2] = np.bincount(seg, weights=exposed * (cat == 2), minlength=J)
    kinds[:, 3] = np.bincount(seg, weights=exposed * (cat == 3), minlength=J)
    combo = (seg * n_op + op[w]) * n_ph + ph[w]
    uniq, inv = np.unique(combo, return_inverse=True)
    if roof_model:
        roof = np.maximum(flops[w].astype(float) / np.where(vector[w], vpeak, peak), hbm[w].astype(float) / bw) * 1e9
    else:
        roof = np.full(len(w), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        roofed = np.where(dur_w > 0, exposed * np.clip(roof / dur_w, 0, 1), 0.0)
    op_time = np.bincount(inv, weights=exposed, minlength=len(uniq))
    op_roof = np.bincount(inv, weights=np.nan_to_num(roofed, nan=0.0), minlength=len(uniq))
    has_roof = np.bincount(inv, weights=~np.isnan(roofed), minlength=len(uniq)) > 0
    key_dur = np.bincount(op[w] * n_ph + ph[w], weights=dur_w, minlength=n_op * n_ph)
    nm_key = nm[w] * n_ph + ph[w]
    name_dur = np.bincount(nm_key, weights=dur_w, minlength=size)
    name_count = np.bincount(nm_key, minlength=size)
    name_cat = np.zeros(size, np.int64)
    name_cat[nm_key] = cat
    return dict(inside=inside, joined=joined, kinds=kinds, combo=uniq, op_time=op_time, op_roof=op_roof,
                has_roof=has_roof, key_dur=key_dur, name_dur=name_dur, name_count=name_count, name_cat=name_cat)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_segment_composition_is_the_numpy_expressions(n, seed, roof_model, shuffle_segments):
    rng = np.random.default_rng(seed)
    ts, end = _events(rng, n)
    w = np.flatnonzero(rng.random(n) < 0.85)
    anchors = np.sort(rng.choice(np.r_[ts, end], size=min(rng.integers(0, 30), 2 * n), replace=False)) \
        if n else np.zeros(0, np.int64)
    arrive = anchors.astype(np.int64)
    leave = arrive + rng.integers(0, 30, len(arrive))
    barrier = rng.random(len(arrive)) < 0.3
    seg = np.searchsorted(arrive, ts[w], side="right").astype(np.int64)
    if shuffle_segments and len(w):        # a launch's wait moved to its kernel's segment
        moved = rng.random(len(w)) < 0.1
        seg[moved] = rng.integers(0, len(arrive) + 1, moved.sum())
    J = len(arrive) + 1
    n_cat, n_op, n_ph, n_nm = 5, 4, 3, 6
    cat_code = rng.integers(0, n_cat, n).astype(np.int64)
    cat_of_code = np.array([0, 2, 3, 0, 0], np.int8)
    stall = rng.integers(-5, 50, n).astype(np.int64)
    op, ph, nm = (rng.integers(0, k, n).astype(np.int64) for k in (n_op, n_ph, n_nm))
    flops = rng.integers(0, 10**6, n).astype(np.int64)
    hbm = rng.integers(0, 10**5, n).astype(np.int64)
    track = rng.integers(0, 3, n).astype(np.int64)
    vector_of_code = np.array([0, 1, 0], np.uint8)
    exposed = rng.integers(0, 40, len(w)).astype(float) * (rng.random(len(w)) < 0.9)
    peak, vpeak, bw, tol = 1e3, 1e2, 1e4, 3
    size = n_nm * n_ph
    out = dict(inside=np.zeros(len(arrive), np.uint8), joined=np.zeros(len(arrive), np.uint8), kinds=np.zeros((J, 4)),
               combo=np.empty(len(w), np.int64), op_time=np.empty(len(w)), op_roof=np.empty(len(w)),
               has_roof=np.empty(len(w), np.uint8), key_dur=np.zeros(n_op * n_ph), name_dur=np.zeros(size),
               name_cat=np.zeros(size, np.int64), name_count=np.zeros(size, np.int64))
    groups = kernels.segment_composition(
        w, ts, end, seg, exposed, cat_code, cat_of_code, stall, op, ph, nm, flops, hbm, track, vector_of_code,
        peak, vpeak, bw, roof_model, arrive, leave, barrier.view(np.uint8), tol, n_op, n_ph,
        *(out[k] for k in ("inside", "joined", "kinds", "combo", "op_time", "op_roof", "has_roof", "key_dur",
                           "name_dur", "name_cat", "name_count")))
    for k in ("combo", "op_time", "op_roof", "has_roof"):
        out[k] = out[k][:groups]
    want = _composition_numpy(w, ts, end, seg, exposed, cat_of_code[cat_code], stall, op, ph, nm, flops, hbm,
                              vector_of_code[track].astype(bool), peak, vpeak, bw, roof_model, arrive, leave, barrier,
                              tol, n_op, n_ph, J, size)
    for k, v in want.items():
        got = out[k].astype(bool) if v.dtype == bool else out[k]
        assert np.array_equal(got, v), k      # bit-identical doubles, not approximately equal


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=3000), st.integers(1, 50))
def test_factorize_is_pandas(values, spread):
    import pandas as pd

    values = np.array(values, np.int64) % spread * 7919 if values else np.zeros(0, np.int64)
    codes, first = np.empty(len(values), np.int64), np.empty(len(values), np.int64)
    n = kernels.factorize(values, codes, first)
    want, uniques = pd.factorize(values)
    assert n == len(uniques) and np.array_equal(codes, want)
    assert np.array_equal(values[first[:n]], uniques)             # first appearances, in order


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 500), st.integers(1, 9), st.integers(0, 2**32 - 1), st.booleans())
def test_sequence_step_is_the_numpy_window_sums(n, vocab, seed, tally):
    import pandas as pd

    rng = np.random.default_rng(seed)
    name = rng.integers(0, vocab, n).astype(np.int64)
    track = np.sort(rng.integers(0, 3, n)).astype(np.int64)
    ts, end = _events(rng, n)
    csum = np.r_[0, np.cumsum(end - ts)]
    key_prev = pd.factorize(name * 3 + track)[0].astype(np.int64)
    reach_prev = end
    for k in range(2, 6):                 # each length extends the one before, as sequences_chunk runs them
        m = n - k + 1
        if m <= 0:
            break
        key, first, reach = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64)
        count, total, kern = np.zeros(m, np.int64), np.zeros(m), np.zeros(m)
        got = kernels.sequence_step(key_prev, name, track, ts, end, reach_prev, csum, vocab, k, tally,
                                    key, first, reach, count, total, kern)
        want_key, uniques = pd.factorize(key_prev[:m] * vocab + name[k - 1:])
        want_reach = np.lib.stride_tricks.sliding_window_view(end, k).max(axis=1)
        assert got == len(uniques) and np.array_equal(key, want_key)
        assert np.array_equal(reach, want_reach)
        assert np.array_equal(first[:got], np.unique(want_key, return_index=True)[1])
        valid = np.flatnonzero(track[:m] == track[k - 1:]) if tally else np.zeros(0, np.int64)
        mine = want_key[valid]
        assert np.array_equal(count[:got], np.bincount(mine, minlength=got))
        assert np.array_equal(total[:got], np.bincount(mine, weights=want_reach[valid] - ts[valid], minlength=got))
        assert np.array_equal(kern[:got], np.bincount(mine, weights=(csum[k:] - csum[:-k])[valid], minlength=got))
        key_prev, reach_prev = key, reach



@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.lists(st.integers(-20, 700), max_size=80), st.integers(0, 2**32 - 1))
def test_covered_before_is_the_prefix_sum_lookup(n, x, seed):
    rng = np.random.default_rng(seed)
    gaps, lengths = rng.integers(0, 8, n), rng.integers(0, 8, n)
    start = np.cumsum(gaps + np.r_[0, lengths[:-1]]).astype(np.int64) - 10
    end = start + lengths
    x = np.array(x, np.int64)
    floor = min([*start[:1].tolist(), *x.tolist(), 0])     # the caller's zero-length interval before all
    start, end = np.r_[floor, start].astype(np.int64), np.r_[floor, end].astype(np.int64)
    through = np.cumsum(end - start)
    out = np.empty(len(x), np.int64)
    kernels.covered_before(start, end, through, x, out)
    last = np.searchsorted(start, x, side="right") - 1
    assert np.array_equal(out, through[last] - np.maximum(end[last] - x, 0))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32 - 1))
def test_roofline_sums_are_the_arrow_group_by(n, seed):
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    c0, c1, c2 = (rng.integers(0, k, n).astype(np.int64) for k in (4, 3, 2))
    vector = rng.random(n) < 0.3
    dur = rng.integers(0, 50, n).astype(np.int64)
    flops, hbm = rng.integers(0, 10**9, n).astype(np.int64), rng.integers(0, 10**7, n).astype(np.int64)
    rows = np.flatnonzero(rng.random(n) < 0.7)
    peak, vpeak, bw = 1e15, 1e14, 3e12
    m = len(rows)
    key, first = np.empty(m, np.int64), np.empty(m, np.int64)
    count, dsum, fsum, bsum = (np.zeros(m, np.int64) for _ in range(4))
    ffl, bfl, head = np.zeros(m), np.zeros(m), np.zeros(m)
    g = kernels.roofline_sums(rows, c0, c1, c2, 3, 2, vector.view(np.uint8), dur, flops, hbm, peak, vpeak, bw,
                              key, first, count, dsum, fsum, bsum, ffl, bfl, head)
    # The numpy and Arrow version it replaced.
    roof = np.maximum(flops / np.where(vector, vpeak, peak) * 1e9, hbm / bw * 1e9)
    headroom = np.clip(dur - roof, 0, None)
    want_key = ((c0 * 3 + c1) * 2 + c2) * 4 + 2 * vector + (dur > 0)
    t = pa.table({"k": want_key[rows], "dur": dur[rows], "f": flops[rows], "b": hbm[rows], "h": headroom[rows]})
    agg = t.group_by("k", use_threads=False).aggregate([("dur", "count"), ("dur", "sum"), ("f", "sum"), ("b", "sum"),
                                                        ("h", "sum")]).sort_by("k")
    order = np.argsort(key[:g])
    assert np.array_equal(key[:g][order], agg["k"].to_numpy())
    # groups numbered in order of first appearance, each naming its first row
    assert np.array_equal(first[:g], rows[np.sort(np.unique(want_key[rows], return_index=True)[1])])
    for got, col in ((count, "dur_count"), (dsum, "dur_sum"), (fsum, "f_sum"), (bsum, "b_sum"), (head, "h_sum")):
        assert np.array_equal(got[:g][order], agg[col].to_numpy()), col
    assert np.array_equal(ffl[:g][order], agg["f_sum"].to_numpy().astype(float))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(-3, 12)), max_size=40),
       st.lists(st.tuples(st.integers(0, 100), st.integers(-3, 12)), max_size=40))
def test_union_sorted_covers_what_merge_covers(a, b):
    from sohuprof.analyzers.intervals import covered_before_sequential, is_sequential, merge, union_sorted

    def lists(pairs):
        pairs = sorted(pairs)
        return (np.array([s for s, _ in pairs], np.int64), np.array([s + d for s, d in pairs], np.int64))

    (a_s, a_e), (b_s, b_e) = lists(a), lists(b)
    got = union_sorted(a_s, a_e, b_s, b_e)
    want = merge(np.r_[a_s, b_s], np.r_[a_e, b_e])
    assert is_sequential(got.start, got.end) and (got.end > got.start).all()
    x = np.arange(-2, 120, dtype=np.int64)
    assert np.array_equal(covered_before_sequential(got.start, got.end, x),
                          covered_before_sequential(want.start, want.end, x))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 50), st.integers(-5, 20)), max_size=30))
def test_is_sequential_is_the_numpy_test(pairs):
    first = np.array([s for s, _ in pairs], np.int64)
    last = first + np.array([d for _, d in pairs], np.int64)
    want = bool((first[1:] >= first[:-1]).all() and (first[1:] >= np.maximum.accumulate(last)[:-1]).all()) \
        if len(first) else True
    assert kernels.is_sequential(first, last) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=200))
def test_counting_order_is_the_stable_argsort(codes):
    codes = np.array(codes, np.int64)
    order, bounds = np.empty(len(codes), np.int64), np.empty(9, np.int64)
    kernels.counting_order(codes, bounds, order)
    want = np.argsort(codes, kind="stable")
    assert np.array_equal(order, want)
    assert np.array_equal(bounds, np.searchsorted(codes[want], np.arange(9)))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=72 * 40), st.integers(0, 5))
def test_unpack_records_is_each_fields_astype(raw, at):
    from sohuprof.strace import RECORD_DTYPE

    raw = raw[:len(raw) // 72 * 72]          # whole records of arbitrary bytes: any value of every field
    recs = np.frombuffer(raw, RECORD_DTYPE)
    dtypes = {"start": np.float64, "end": np.float64, "name_id": np.int32, "engine": np.int32, "phase": np.int32,
              "group": np.int64, "layer": np.int32, "flops": np.int64, "hbm_bytes": np.int64, "net_bytes": np.int64,
              "stall_cycles": np.float64, "seq": np.int64, "step": np.int64}
    out = {k: np.zeros(at + len(recs), t) for k, t in dtypes.items()}
    kernels.unpack_records(np.frombuffer(raw, np.uint8), at, *out.values())
    for k, t in dtypes.items():
        assert np.array_equal(out[k][at:], recs[k].astype(t)), k


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-100, 100), min_size=1, max_size=80), st.lists(st.integers(0, 79), max_size=30),
       st.lists(st.integers(-120, 120), max_size=40))
def test_max_before_and_searchsorted_at(values, at, a):
    values = np.array(values, np.int64)
    at = np.sort(np.array(at, np.int64) % len(values))
    out = np.empty(len(at), np.int64)
    kernels.max_before(values, at, out)
    assert np.array_equal(out, np.maximum.accumulate(values)[np.maximum(at - 1, 0)])
    a = np.sort(np.array(a, np.int64))
    where = np.empty(len(at), np.int64)
    kernels.searchsorted_right_at(a, values, at, where)
    assert np.array_equal(where, np.searchsorted(a, values[at], side="right"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2**40, 2**40), max_size=300), st.integers(1, 40))
def test_the_graphs_unique_inverse_is_numpys(values, spread):
    from sohuprof.analyzers.diagnosis.graph import _unique_inverse

    values = np.array(values, np.int64) % spread - spread // 2 if values else np.zeros(0, np.int64)
    got, want = _unique_inverse(values), np.unique(values, return_inverse=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
