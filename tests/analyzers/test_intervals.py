"""Interval kernels against slow, obviously correct references (a unit-step timeline)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzers_ref import timeline
from sohuprof.analyzers.intervals import (
    chain_sweep,
    covered_before_sequential,
    intersection_length,
    mask_coverage,
    merge,
    priority_sweep,
    union_length,
)

CASES = {
    "empty": ([], [], []),
    "single": ([3], [7], [0]),
    "overlapping": ([0, 2, 10], [5, 4, 12], [0, 0, 0]),
    "touching": ([0, 5], [5, 9], [0, 0]),
    "unsorted": ([9, 1, 4], [12, 3, 6], [0, 0, 0]),
    "zero_length": ([4, 4], [4, 6], [0, 0]),
    "multi_key": ([0, 0, 5, 1], [10, 3, 8, 2], [1, 0, 0, 1]),
}


@pytest.mark.parametrize("name", CASES)
def test_union_length_matches_reference(name: str) -> None:
    s, e, k = (np.array(x, dtype=np.int64) for x in CASES[name])
    got = union_length(s, e, k, n_keys=2)
    for key in (0, 1):
        sel = k == key
        assert got[key] == (timeline(s[sel], e[sel]) > 0).sum()


def test_merge_is_disjoint_and_sorted() -> None:
    m = merge(np.array([9, 1, 4, 2]), np.array([12, 3, 6, 5]))
    assert m.start.tolist() == [1, 9] and m.end.tolist() == [6, 12]
    touching = merge(np.array([0, 5]), np.array([5, 9]))
    assert (touching.end - touching.start).sum() == 9


def test_inputs_are_not_modified() -> None:
    s, e = np.array([5, 1]), np.array([6, 3])
    merge(s, e)
    assert s.tolist() == [5, 1] and e.tolist() == [6, 3]


intervals = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 15), st.integers(0, 2), st.integers(0, 2)),
                     max_size=25)


def _arrays(items):
    a = np.array(items, dtype=np.int64).reshape(-1, 4)
    return a[:, 0], a[:, 0] + a[:, 1], a[:, 2], a[:, 3]


@settings(max_examples=150, deadline=None)
@given(intervals, intervals)
def test_intersection_matches_reference(a_items, b_items) -> None:
    a_s, a_e, a_k, _ = _arrays(a_items)
    b_s, b_e, b_k, _ = _arrays(b_items)
    got = intersection_length(a_s, a_e, b_s, b_e, a_k, b_k, n_keys=3)
    for key in range(3):
        ta = timeline(a_s[a_k == key], a_e[a_k == key], 80) > 0
        tb = timeline(b_s[b_k == key], b_e[b_k == key], 80) > 0
        assert got[key] == (ta & tb).sum()


@settings(max_examples=150, deadline=None)
@given(intervals)
def test_priority_sweep_matches_reference_and_partitions_the_window(items) -> None:
    s, e, k, c = _arrays(items)
    ws, we = np.array([0, 5, 10]), np.array([70, 40, 80])
    got = priority_sweep(s, e, c, k, n_classes=3, n_keys=3, window_start=ws, window_end=we)
    assert (got.sum(axis=1) == we - ws).all()
    for key in range(3):
        lanes = np.stack([timeline(s[(k == key) & (c == cl)], e[(k == key) & (c == cl)], 80) > 0 for cl in range(3)])
        inside = np.zeros(80, bool)
        inside[ws[key]:we[key]] = True
        owner = np.where(lanes.any(0), lanes.argmax(0), 3)
        for cl in range(4):
            assert got[key, cl] == ((owner == cl) & inside).sum()


@settings(max_examples=150, deadline=None)
@given(intervals)
def test_single_key_sweep_matches_reference(items) -> None:
    s, e, _, c = _arrays(items)
    k = np.zeros(len(s), np.int64)
    got = priority_sweep(s, e, c, k, n_classes=3, n_keys=1, window_start=np.array([3]), window_end=np.array([70]))
    lanes = np.stack([timeline(s[c == cl], e[c == cl], 80) > 0 for cl in range(3)])
    owner = np.where(lanes.any(0), lanes.argmax(0), 3)[3:70]
    assert got[0].tolist() == [int((owner == cl).sum()) for cl in range(4)]


def test_single_key_sweep_with_deep_overlap_falls_back_correctly() -> None:
    # 3000 nested intervals of one class overflow the bit-field counter: the merge path must take over.
    rng = np.random.default_rng(1)
    s = rng.integers(0, 1000, 3000)
    e = s + rng.integers(1, 500, 3000)
    c = np.zeros(3000, np.int64)
    got = mask_coverage(s, e, c, np.zeros(3000, np.int64), n_classes=6, n_keys=1,
                        window_start=np.array([0]), window_end=np.array([2000]))[0]
    covered = (timeline(s, e, 2000) > 0).sum()
    assert got[1] == covered and got[0] == 2000 - covered and got[2:].sum() == 0


def _exact_masks(chains, n_classes: int, ws: int, we: int) -> np.ndarray:
    """Reference: time in each exact set of active classes, from unit-step timelines."""
    lanes = np.zeros((n_classes, we), bool)
    for bounds, classes in chains:
        for j, cl in enumerate(classes):
            lanes[cl] |= timeline(np.clip(bounds[j], 0, we), np.clip(bounds[j + 1], 0, we), we) > 0
    mask = (lanes[:, ws:we] << np.arange(n_classes)[:, None]).sum(axis=0)
    return np.bincount(mask, minlength=1 << n_classes)


chain_events = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 6), st.integers(0, 6), st.integers(0, 4)),
                        max_size=20)


def _chain(items, *, sequential: bool) -> list[np.ndarray]:
    """Three boundaries per event; sequential chains place each event after the last one's end."""
    a = np.array(items, dtype=np.int64).reshape(-1, 4)
    if sequential:
        first = np.cumsum(a[:, 3] + a[:, 1] + a[:, 2]) - (a[:, 1] + a[:, 2])
    else:
        first = a[:, 0]
    return [first, first + a[:, 1], first + a[:, 1] + a[:, 2]]


@settings(max_examples=200, deadline=None)
@given(chain_events, chain_events, chain_events, st.booleans(), st.integers(0, 10), st.integers(40, 120))
def test_chain_sweep_matches_reference(a, b, c, sequential, ws, we) -> None:
    chains = [(_chain(a, sequential=sequential), [0, 1]), (_chain(b, sequential=sequential)[::2], [2]),
              (_chain(c, sequential=sequential), [4, 3])]
    sweep = chain_sweep(chains, 5, ws, we)
    got = sweep.coverage()
    assert got.sum() == we - ws
    assert got.tolist() == _exact_masks(chains, 5, ws, we).tolist()
    # Covered time before any instant, for the classes {0, 1}.
    x = np.arange(-5, 130)
    lanes = np.zeros(200, bool)
    for j in (0, 1):
        lanes[:we] |= timeline(np.clip(chains[0][0][j], 0, we), np.clip(chains[0][0][j + 1], 0, we), we) > 0
    lanes[:ws] = False
    before = np.r_[0, np.cumsum(lanes)]
    assert sweep.covered_before(x, 0b11).tolist() == before[np.clip(x, ws, we)].tolist()


def test_chain_sweep_with_deep_overlap_merges_first() -> None:
    # 16 classes leave 3 bits per counter: 300 nested intervals of one class would carry over.
    rng = np.random.default_rng(2)
    s = rng.integers(0, 500, 300)
    chains = [([s, s + rng.integers(1, 300, 300)], [15]), ([s[:50], s[:50] + 7], [0])]
    sweep = chain_sweep(chains, 16, 0, 900)
    assert sweep.coverage().tolist() == _exact_masks(chains, 16, 0, 900).tolist()


def test_chain_sweep_rejects_decreasing_boundaries() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        chain_sweep([([np.array([5]), np.array([3])], [0])], 1, 0, 10)


@settings(max_examples=200, deadline=None)
@given(chain_events, st.lists(st.integers(-10, 400), max_size=30))
def test_covered_before_sequential_matches_reference(items, xs) -> None:
    first, _, last = _chain(items, sequential=True)
    x = np.array(xs, dtype=np.int64)
    lanes = timeline(first, last, 400) > 0
    before = np.r_[0, np.cumsum(lanes)]
    assert covered_before_sequential(first, last, x).tolist() == before[np.clip(x, 0, 400)].tolist()


def test_chain_sweep_on_a_window_too_long_for_step_tags() -> None:
    # With 8 classes a window of 2**52 ns leaves too few bits to tag boundaries with their
    # steps: the kind table is used instead, with the same coverage (still exact in float64).
    rng = np.random.default_rng(3)
    first = np.cumsum(rng.integers(1, 20, 200))
    chains = [([first, first + 3, first + 5], [0, 7]), ([first[::3] + 1, first[::3] + 9], [2])]
    short = chain_sweep(chains, 8, 0, 5000).coverage()
    long = chain_sweep(chains, 8, 0, 1 << 52).coverage()
    assert long[1:].tolist() == short[1:].tolist()
    assert long.sum() == 1 << 52 and short.tolist() == _exact_masks(chains, 8, 0, 5000).tolist()


def test_keys_on_clocks_centuries_apart_take_the_per_key_path() -> None:
    """Times ~2**61 ns apart with several keys overflow the one-axis trick; every function
    still answers exactly, as it does for each key alone."""
    from sohuprof.analyzers.intervals import intersection_length, mask_coverage, merge, union_length

    big = 2**61
    start = np.array([0, 5, big - 10, 3, big - 4])
    end = np.array([10, 20, big, 8, big - 1])
    key = np.array([0, 0, 0, 5, 5])
    m = merge(start, end, key)
    assert list(zip(m.key.tolist(), m.start.tolist(), m.end.tolist())) == [
        (0, 0, 20), (0, big - 10, big), (5, 3, 8), (5, big - 4, big - 1)]
    assert union_length(start, end, key).tolist() == [30, 0, 0, 0, 0, 8]
    assert intersection_length(start, end, start + 1, end, key, key).tolist() == [28, 0, 0, 0, 0, 6]
    cov = mask_coverage(start, end, np.array([0, 1, 0, 0, 1]), np.array([0, 0, 0, 1, 1]), 2, 2,
                        np.array([0, 0]), np.array([big, big]))
    assert cov.sum(axis=1).tolist() == [big, big] and cov[0, 3] == 5 and cov[1, 1] == 5 and cov[1, 2] == 3
