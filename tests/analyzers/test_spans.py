"""Enclosing spans, interval intersection and the correlation join against slow, obviously
correct references."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sohuprof.analyzers.spans import enclosing, intersect, launch_calls


def _stack(rng: random.Random, lo: int, hi: int, depth: int, out: list[tuple[int, int]]) -> None:
    """Properly nested spans inside [lo, hi): a call stack's shape."""
    t = lo
    while depth and t < hi - 2 and rng.random() < 0.95:
        a = rng.randint(t, min(hi - 2, t + 10))
        b = rng.randint(a + 1, min(hi, a + 2 + (hi - lo) // 3))
        out.append((a, b))
        _stack(rng, a, b, depth - 1, out)
        t = b + rng.choice([0, 0, 1, 3])    # siblings may touch


def _nested(seed: int, keys: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    s, e, k = [], [], []
    for key in range(keys):
        spans: list[tuple[int, int]] = []
        _stack(rng, 0, 2000, 7, spans)
        for a, b in spans:
            s.append(a), e.append(b), k.append(key)
    order = rng.sample(range(len(s)), len(s))            # any input order
    return np.array(s)[order], np.array(e)[order], np.array(k)[order]


def _slow_enclosing(s, e, k, qs, qe, qk, outermost):
    out = []
    for a, b, key in zip(qs, qe, qk):
        hits = [i for i in range(len(s)) if k[i] == key and e[i] > s[i] and s[i] <= a and e[i] >= b]
        if not hits:
            out.append(-1)
            continue
        # innermost: the latest start (ties: the shorter); outermost: the earliest (ties: the longer)
        key_fn = (lambda i: (s[i], -e[i]))
        out.append(min(hits, key=key_fn) if outermost else max(hits, key=key_fn))
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("outermost", [False, True])
def test_enclosing_matches_the_slow_search(seed: int, outermost: bool) -> None:
    s, e, k = _nested(seed)
    rng = np.random.default_rng(seed)
    qs = rng.integers(0, 2000, 300)
    qe = qs + rng.integers(0, 30, 300)
    qk = rng.integers(0, 4, 300)                      # key 3 has no spans
    got = enclosing(s, e, k, qs, qe, qk, outermost=outermost)
    want = _slow_enclosing(s, e, k, qs, qe, qk, outermost)
    # Identical spans (same start and end) are interchangeable: compare the spans, not indices.
    same = (got == want) | ((got >= 0) & (want >= 0) & (s[got] == s[want]) & (e[got] == e[want]))
    assert same.all(), np.flatnonzero(~same)[:5]
    assert (got >= 0).sum() > 50                       # the case is not vacuous


def test_enclosing_edges() -> None:
    s, e, k = np.array([0, 0, 5, 5]), np.array([10, 10, 5, 10]), np.zeros(4, int)
    # a zero-length span encloses nothing; of two identical spans either is right
    assert enclosing(s, e, k, np.array([5]), np.array([6]), np.zeros(1, int))[0] == 3
    assert enclosing(s, e, k, np.array([0]), np.array([10]), np.zeros(1, int))[0] in (0, 1)
    assert enclosing(s, e, k, np.array([9]), np.array([11]), np.zeros(1, int))[0] == -1
    assert enclosing(s[:0], e[:0], k[:0], np.array([1]), np.array([2]), np.zeros(1, int)).tolist() == [-1]
    assert enclosing(s, e, k, np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)).tolist() == []


def test_enclosing_span_sticking_out_of_its_parent() -> None:
    """Not a call stack (B sticks out of A): still the latest-starting (earliest) covering span."""
    s, e, k = np.array([0, 5]), np.array([10, 20]), np.zeros(2, int)
    q = np.array([6, 12]), np.array([8, 15])
    assert enclosing(s, e, k, *q, np.zeros(2, int)).tolist() == [1, 1]
    assert enclosing(s, e, k, *q, np.zeros(2, int), outermost=True).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(5))
def test_intersect_matches_unit_coverage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    a_s = rng.integers(0, 200, n)
    a_e = a_s + rng.integers(0, 25, n)
    b_s = rng.integers(0, 200, n)
    b_e = b_s + rng.integers(0, 25, n)
    a_k, b_k = rng.integers(0, 3, n), rng.integers(0, 3, n)
    got = intersect(a_s, a_e, b_s, b_e, a_k, b_k)
    for key in range(3):
        cover = np.zeros((2, 240), bool)
        for row, (s, e, k) in enumerate(((a_s, a_e, a_k), (b_s, b_e, b_k))):
            for x, y in zip(s[k == key], e[k == key]):
                cover[row, x:y] = True
        want = cover[0] & cover[1]
        mine = np.zeros(240, bool)
        sel = got.key == key
        for x, y in zip(got.start[sel], got.end[sel]):
            assert not mine[x:y].any()                 # disjoint pieces
            mine[x:y] = True
        assert (mine == want).all(), key
    assert (np.diff(got.start[got.key == 0]) > 0).all()


def test_launch_calls() -> None:
    assert launch_calls(np.array([5, 6, -1, 8]), np.array([8, 5, -1, 5])).tolist() == [3, -1, -1, 0]
    assert launch_calls(np.array([1]), np.zeros(0, int)).tolist() == [-1]
    assert launch_calls(np.zeros(0, int), np.array([1])).tolist() == []


def test_intersect_with_keys_too_far_apart_for_one_axis_is_still_exact() -> None:
    """Damaged times (a window of ~2**61 ns) with several keys: key x span would overflow int64,
    so the keys are met one at a time; the answer is the same as per key."""
    from sohuprof.analyzers.spans import intersect

    big = 2**61
    a_s, a_e, a_k = np.array([0, big - 10, 5]), np.array([10, big, 15]), np.array([0, 0, 7])
    b_s, b_e, b_k = np.array([5, big - 20, 0]), np.array([big - 15, big - 5, 8]), np.array([0, 0, 7])
    got = intersect(a_s, a_e, b_s, b_e, a_k, b_k)
    assert list(zip(got.key.tolist(), got.start.tolist(), got.end.tolist())) == [
        (0, 5, 10), (0, big - 10, big - 5), (7, 5, 8)]
