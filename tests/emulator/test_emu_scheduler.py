"""The continuous-batching scheduler on its own: budgets, KV capacity, FCFS, arrivals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sohuprof.emulator.scheduler import ReplicaScheduler
from sohuprof.strace import Phase


def drive(sch: ReplicaScheduler, *, step_ns: float = 1.0, max_steps: int = 100_000) -> list[dict]:
    """Run the scheduler to completion as the runtime does; check invariants at every step and
    return a log of the steps."""
    n = len(sch.prompt)
    reserve = sch.prompt + sch.output
    order = np.lexsort((np.arange(n), sch.arrival))      # first come, first served
    now = 0.0
    log = []
    prefilled = np.zeros(n, np.int64)
    while not sch.finished:
        assert len(log) < max_steps, "scheduler does not make progress"
        if not sch.has_runnable(now):
            now = max(now, sch.next_arrival(now))
            assert sch.has_runnable(now)
        b = sch.form(now)
        # Token budget, and the batch's own bookkeeping.
        assert b.tokens == b.prefill_tokens + b.decode_tokens <= sch.max_batch_tokens
        assert b.prefill_tokens == int(b.chunk.sum()) and b.decode_tokens == int(b.decoding.sum())
        assert b.phase == (Phase.MIXED if b.prefill_tokens and b.decode_tokens else
                           Phase.PREFILL if b.prefill_tokens else Phase.DECODE)
        # Nobody is served before arriving; nobody is prefilled past its prompt.
        served = (b.chunk > 0) | b.decoding
        assert (sch.arrival[served] <= now).all()
        assert (prefilled + b.chunk <= sch.prompt).all()
        assert not (b.decoding & (b.chunk > 0)).any()
        assert not b.empty, "a step with runnable requests did nothing"
        sch.complete(b, now + step_ns)
        prefilled += b.chunk
        running = sch.admitted & ~sch.done
        # KV: what admitted, unfinished requests reserved fits in the cache; slots likewise.
        assert reserve[running].sum() <= sch.kv_capacity
        assert running.sum() <= sch.max_seqs
        # FCFS: the admitted requests are a prefix of the arrival order.
        adm = sch.admitted[order]
        assert not (adm[1:] & ~adm[:-1]).any(), "a later request was admitted before an earlier one"
        log.append({"now": now, "batch": b})
        now += step_ns
    assert (prefilled == sch.prompt).all()
    assert (sch.generated == sch.output).all()
    assert (sch.arrival <= sch.first_token_ns).all() and (sch.first_token_ns <= sch.finish_ns).all()
    return log


@st.composite
def workloads(draw):
    n = draw(st.integers(1, 24))
    prompt = np.array(draw(st.lists(st.integers(1, 64), min_size=n, max_size=n)))
    output = np.array(draw(st.lists(st.integers(1, 12), min_size=n, max_size=n)))
    gaps = np.array(draw(st.lists(st.sampled_from([0.0, 0.5, 3.0, 40.0]), min_size=n, max_size=n)))
    arrival = np.cumsum(gaps)
    budget = draw(st.integers(1, 200))
    max_seqs = draw(st.integers(1, 8))
    biggest = int((prompt + output).max())
    capacity = draw(st.integers(biggest, 4 * biggest + 50))
    return arrival, prompt, output, budget, max_seqs, capacity


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_scheduler_invariants(case) -> None:
    arrival, prompt, output, budget, max_seqs, capacity = case
    sch = ReplicaScheduler(arrival, prompt, output, max_batch_tokens=budget, max_seqs=max_seqs,
                           kv_capacity_tokens=capacity)
    drive(sch)


def test_kv_capacity_limits_concurrency() -> None:
    """Room for exactly two requests' KV: never more than two in flight, so 6 requests need 3 waves."""
    n, p, o = 6, 10, 5
    sch = ReplicaScheduler(np.zeros(n), np.full(n, p), np.full(n, o), max_batch_tokens=1000, max_seqs=100,
                           kv_capacity_tokens=2 * (p + o) + 3)
    log = drive(sch)
    # Each wave: one prefill step, then o - 1 decode steps.
    assert len(log) == 3 * o
    assert [int(b["batch"].prefill_tokens) for b in log[::o]] == [2 * p] * 3


def test_token_budget_chunks_a_long_prompt() -> None:
    sch = ReplicaScheduler(np.zeros(1), np.array([1000]), np.array([3]), max_batch_tokens=256, max_seqs=4,
                           kv_capacity_tokens=2000)
    log = drive(sch)
    assert [b["batch"].prefill_tokens for b in log] == [256, 256, 256, 232, 0, 0]
    assert [b["batch"].decode_tokens for b in log] == [0, 0, 0, 0, 1, 1]
    # Attention pairs of chunked prefill: chunk k attends to everything before it plus itself causally.
    pairs = [b["batch"].pairs for b in log]
    assert sum(pairs[:4]) == pytest.approx(1000 * 1001 / 2)
    assert pairs[0] == pytest.approx(256 * 257 / 2)
    # A decode token attends to the prompt, the tokens generated before it, and itself; it reads
    # all but itself from the KV cache.
    assert pairs[4:] == [1001, 1002]
    assert [b["batch"].kv_read for b in log[4:]] == [1000, 1001]
    assert [b["batch"].kv_read for b in log[:4]] == [0, 256, 512, 768]


def test_decode_first_then_prefill_fills_the_budget() -> None:
    """Decodes of running requests go first; the rest of the budget prefills the newcomers."""
    sch = ReplicaScheduler(np.array([0.0, 0.0, 5.0]), np.array([4, 4, 100]), np.array([10, 10, 2]),
                           max_batch_tokens=20, max_seqs=8, kv_capacity_tokens=1000)
    log = drive(sch)
    b = next(x["batch"] for x in log if x["now"] >= 5.0)
    assert (b.decode_tokens, b.prefill_tokens) == (2, 18)


def test_first_come_first_served_even_when_a_later_request_would_fit() -> None:
    """A big request at the head of the queue is not overtaken by a small one behind it."""
    cap = 100
    sch = ReplicaScheduler(np.array([0.0, 1.0, 2.0]), np.array([60, 60, 5]), np.array([10, 10, 1]),
                           max_batch_tokens=1000, max_seqs=8, kv_capacity_tokens=cap)
    log = drive(sch)
    # Request 2 (small) could fit beside request 0 but must wait behind request 1.
    assert sch.first_token_ns[2] >= sch.first_token_ns[1]
    assert len(log) > 0


def test_late_request_is_not_scheduled_before_it_arrives() -> None:
    sch = ReplicaScheduler(np.array([0.0, 1000.0]), np.array([8, 8]), np.array([2, 2]), max_batch_tokens=64,
                           max_seqs=4, kv_capacity_tokens=100)
    assert sch.form(0.0).prefill_tokens == 8       # only the first
    log = drive(sch)
    late = [x for x in log if x["batch"].chunk[1] > 0]
    assert late and all(x["now"] >= 1000.0 for x in late)
    # Idle time is skipped to the arrival, not stepped through.
    assert late[0]["now"] == 1000.0
    assert len(log) == 4


def test_max_seqs_limits_running_sequences() -> None:
    sch = ReplicaScheduler(np.zeros(10), np.full(10, 2), np.full(10, 4), max_batch_tokens=1000, max_seqs=3,
                           kv_capacity_tokens=10_000)
    log = drive(sch)
    assert max(x["batch"].prefill_tokens + x["batch"].decode_tokens for x in log) <= 3 * 2
