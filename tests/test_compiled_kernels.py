"""The compiled kernels (sohuprof/kernels.pyx) against their numpy twins (tests/kernels_numpy.py),
on random inputs: the same integers and the same doubles, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels_numpy as twin
from sohuprof import kernels

SEEDS = st.integers(0, 2**32 - 1)


def both(name: str, inputs: tuple, outputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], object, object]:
    """Run kernel ``name`` and its twin on the same inputs, each into its own copy of ``outputs``."""
    mine, theirs = [o.copy() for o in outputs], [o.copy() for o in outputs]
    got = getattr(kernels, name)(*inputs, *mine)
    want = getattr(twin, name)(*inputs, *theirs)
    return mine, theirs, got, want


def same(mine: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    for i, (a, b) in enumerate(zip(mine, theirs)):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"output {i}"     # bit for bit, not close


def _events(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ts = np.sort(rng.integers(0, 10 * n + 1, n)).astype(np.int64)
    return ts, ts + rng.integers(0, 40, n)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-50, 50), max_size=40), st.lists(st.integers(-60, 60), max_size=60), st.booleans())
def test_searchsorted(a, q, sort_queries):
    a = np.sort(np.array(a, np.int64))
    q = np.array(sorted(q) if sort_queries else q, np.int64)
    same(*both("searchsorted_right", (a, q), [np.zeros(len(q), np.int64)])[:2])
    at = np.arange(len(q), dtype=np.int64)[::2].copy()
    same(*both("searchsorted_right_at", (a, q, at), [np.zeros(len(at), np.int64)])[:2])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-100, 100), min_size=1, max_size=80), st.lists(st.integers(0, 79), max_size=30))
def test_max_before(values, at):
    values = np.array(values, np.int64)
    at = np.sort(np.array(at, np.int64) % len(values))
    same(*both("max_before", (values, at), [np.zeros(len(at), np.int64)])[:2])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), SEEDS)
def test_stream_exposed(n, seed):
    rng = np.random.default_rng(seed)
    ts, end = _events(rng, n)
    w = np.flatnonzero(rng.random(n) < 0.8)
    host = (rng.random(len(w)) < 0.3).view(np.uint8)
    same(*both("stream_exposed", (w, ts, end, host), [np.zeros(len(w)), np.zeros(len(w), np.int64)])[:2])


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 400), SEEDS, st.booleans(), st.booleans())
def test_segment_composition(n, seed, roof_model, moved):
    rng = np.random.default_rng(seed)
    ts, end = _events(rng, n)
    w = np.flatnonzero(rng.random(n) < 0.85)
    arrive = np.sort(rng.choice(np.r_[ts, end], size=min(int(rng.integers(0, 30)), 2 * n), replace=False)) \
        if n else np.zeros(0, np.int64)
    arrive = arrive.astype(np.int64)
    leave = arrive + rng.integers(0, 30, len(arrive))
    barrier = (rng.random(len(arrive)) < 0.3).view(np.uint8)
    seg = np.searchsorted(arrive, ts[w], side="right").astype(np.int64)
    if moved and len(w):        # a launch's wait moved into its kernel's segment: segments out of order
        shift = rng.random(len(w)) < 0.1
        seg[shift] = rng.integers(0, len(arrive) + 1, shift.sum())
    J, n_op, n_ph, n_nm = len(arrive) + 1, 4, 3, 6
    cat_code = rng.integers(0, 5, n).astype(np.int64)
    op, ph, nm, track = (rng.integers(0, k, n).astype(np.int64) for k in (n_op, n_ph, n_nm, 3))
    exposed = rng.integers(0, 40, len(w)).astype(float) * (rng.random(len(w)) < 0.9)
    inputs = (w, ts, end, seg, exposed, cat_code, np.array([0, 2, 3, 0, 0], np.int8),
              rng.integers(-5, 50, n).astype(np.int64), op, ph, nm, rng.integers(0, 10**6, n).astype(np.int64),
              rng.integers(0, 10**5, n).astype(np.int64), track, np.array([0, 1, 0], np.uint8), 1e3, 1e2, 1e4,
              roof_model, arrive, leave, barrier, 3, n_op, n_ph)
    size = n_nm * n_ph
    outputs = [np.zeros(len(arrive), np.uint8), np.zeros(len(arrive), np.uint8), np.zeros((J, 4)),
               np.zeros(len(w), np.int64), np.zeros(len(w)), np.zeros(len(w)), np.zeros(len(w), np.uint8),
               np.zeros(n_op * n_ph), np.zeros(size), np.zeros(size, np.int64), np.zeros(size, np.int64)]
    mine, theirs, g, want_g = both("segment_composition", inputs, outputs)
    assert g == want_g
    for o in (3, 4, 5, 6):                   # the groups' rows beyond g are scratch
        mine[o], theirs[o] = mine[o][:g], theirs[o][:g]
    same(mine, theirs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**40), max_size=3000), st.integers(1, 50))
def test_factorize(values, spread):
    values = np.array(values, np.int64) % spread * 7919 if values else np.zeros(0, np.int64)
    mine, theirs, n, want_n = both("factorize", (values,), [np.zeros(len(values), np.int64)] * 2)
    assert n == want_n
    same([mine[0], mine[1][:n]], [theirs[0], theirs[1][:n]])
    assert np.array_equal(mine[0], pd.factorize(values)[0])


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 500), st.integers(1, 9), SEEDS)
def test_sequence_step(n, vocab, seed):
    rng = np.random.default_rng(seed)
    name = rng.integers(0, vocab, n).astype(np.int64)
    track = np.sort(rng.integers(0, 3, n)).astype(np.int64)
    ts, end = _events(rng, n)
    csum = np.r_[0, np.cumsum(end - ts)]
    key, reach = pd.factorize(name * 3 + track)[0].astype(np.int64), end
    for k in range(2, 6):                 # each length extends the one before, as sequences_chunk runs them
        m = n - k + 1
        if m <= 0:
            break
        tally = bool(rng.random() < 0.7)
        outputs = [np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m, np.int64), np.zeros(m, np.int64),
                   np.zeros(m), np.zeros(m)]
        mine, theirs, got, want = both("sequence_step", (key, name, track, ts, end, reach, csum, vocab, k, tally),
                                       outputs)
        assert got == want
        mine[1], theirs[1] = mine[1][:got], theirs[1][:got]
        same(mine, theirs)
        assert np.array_equal(mine[2], np.lib.stride_tricks.sliding_window_view(end, k).max(axis=1))
        key, reach = mine[0], mine[2]


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.lists(st.integers(-20, 700), max_size=80), SEEDS)
def test_covered_before(n, x, seed):
    rng = np.random.default_rng(seed)
    gaps, lengths = rng.integers(0, 8, n), rng.integers(0, 8, n)
    start = np.cumsum(gaps + np.r_[0, lengths[:-1]]).astype(np.int64) - 10
    end = start + lengths
    x = np.array(x, np.int64)
    floor = min([*start[:1].tolist(), *x.tolist(), 0])     # the caller's zero-length interval before all
    start, end = np.r_[floor, start].astype(np.int64), np.r_[floor, end].astype(np.int64)
    same(*both("covered_before", (start, end, np.cumsum(end - start), x), [np.zeros(len(x), np.int64)])[:2])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 400), SEEDS, st.booleans())
def test_roofline_sums(n, seed, huge):
    rng = np.random.default_rng(seed)
    c0, c1, c2 = (rng.integers(0, k, n).astype(np.int64) for k in (4, 3, 2))
    high = 2**61 if huge else 10**9                 # sums past 2**63 wrap in int64: the float sums stand
    inputs = (np.flatnonzero(rng.random(n) < 0.7), c0, c1, c2, 3, 2, (rng.random(n) < 0.3).view(np.uint8),
              rng.integers(0, 50, n).astype(np.int64), rng.integers(0, high, n).astype(np.int64),
              rng.integers(0, 10**7, n).astype(np.int64), 1e15, 1e14, 3e12)
    m = len(inputs[0])
    outputs = [np.zeros(m, np.int64) for _ in range(6)] + [np.zeros(m) for _ in range(3)]
    mine, theirs, g, want = both("roofline_sums", inputs, outputs)
    assert g == want
    same([o[:g] for o in mine], [o[:g] for o in theirs])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-50, 50), st.integers(-5, 20)), max_size=30))
def test_is_sequential(pairs):
    first = np.array([s for s, _ in pairs], np.int64)
    last = first + np.array([d for _, d in pairs], np.int64)
    assert kernels.is_sequential(first, last) == twin.is_sequential(first, last)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.integers(-3, 12)), max_size=40),
       st.lists(st.tuples(st.integers(0, 100), st.integers(-3, 12)), max_size=40))
def test_union_sorted_covers_what_merge_covers(a, b):
    from sohuprof.analyzers.intervals import covered_before_sequential

    def lists(pairs):
        pairs = sorted(pairs)
        return np.array([s for s, _ in pairs], np.int64), np.array([s + d for s, d in pairs], np.int64)

    inputs = (*lists(a), *lists(b))
    size = len(a) + len(b)
    mine, theirs, k, k_twin = both("union_sorted", inputs, [np.zeros(size, np.int64), np.zeros(size, np.int64)])
    got, want = (mine[0][:k], mine[1][:k]), (theirs[0][:k_twin], theirs[1][:k_twin])
    # Joined or apart, touching intervals cover the same time: the cover is what callers read.
    assert kernels.is_sequential(*got) and (got[1] > got[0]).all()
    x = np.arange(-2, 120, dtype=np.int64)
    assert np.array_equal(covered_before_sequential(*got, x), covered_before_sequential(*want, x))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=200))
def test_counting_order(codes):
    codes = np.array(codes, np.int64)
    same(*both("counting_order", (codes,), [np.zeros(9, np.int64), np.zeros(len(codes), np.int64)])[:2])


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=72 * 40), st.integers(0, 5))
def test_unpack_records(raw, at):
    raw = raw[:len(raw) // 72 * 72]          # whole records of arbitrary bytes: any value of every field
    n = at + len(raw) // 72
    dtypes = [np.float64, np.float64, np.int32, np.int32, np.int32, np.int64, np.int32, np.int64, np.int64, np.int64,
              np.float64, np.int64, np.int64]
    same(*both("unpack_records", (np.frombuffer(raw, np.uint8), at), [np.zeros(n, t) for t in dtypes])[:2])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2**40, 2**40), max_size=300), st.integers(1, 40))
def test_the_graphs_unique_inverse_is_numpys(values, spread):
    from sohuprof.analyzers.diagnosis.graph import _unique_inverse

    values = np.array(values, np.int64) % spread - spread // 2 if values else np.zeros(0, np.int64)
    got, want = _unique_inverse(values), np.unique(values, return_inverse=True)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), SEEDS, st.booleans(), st.integers(-2**40, 2**40))
def test_sample_hash(n, seed, per_row, one_rank):
    rng = np.random.default_rng(seed)
    rank = rng.integers(-2**62, 2**62, n) if per_row else np.zeros(0, np.int64)
    ts, dur = rng.integers(-2**62, 2**62, n), rng.integers(0, 2**40, n)
    same(*both("sample_hash", (rank, one_rank, ts, dur), [np.zeros(n, np.uint64)])[:2])


def test_every_kernel_has_a_twin():
    compiled = {n for n in dir(kernels) if not n.startswith("_") and callable(getattr(kernels, n))} - {"np"}
    assert compiled - {"replay_ordered"} == set(twin.__all__)
