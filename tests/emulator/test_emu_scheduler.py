"""The continuous-batching scheduler on its own: budgets, KV capacity, FCFS, arrivals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sohuprof.emulator.scheduler import ReplicaScheduler
from sohuprof.strace import Phase


def drive(sch: ReplicaScheduler, *, step_ns: float = 1.0, max_steps: int = 100_000,
          transferred: bool = False) -> list[dict]:
    """Run the scheduler to completion as the runtime does; check invariants at every step and
    return a log of the steps."""
    n = len(sch.prompt)
    k = sch.spec_tokens
    order = np.lexsort((np.arange(n), sch.arrival))      # first come, first served
    first_admitted = np.full(n, np.inf)
    now = 0.0
    log = []
    while not sch.finished:
        assert len(log) < max_steps, "scheduler does not make progress"
        if not sch.has_runnable(now):
            now = max(now, sch.next_arrival(now))
            assert sch.has_runnable(now)
        b = sch.form(now)
        # Token budget, and the batch's own bookkeeping.
        assert b.tokens == b.prefill_tokens + b.decode_tokens <= max(sch.max_batch_tokens, b.decode_tokens)
        assert b.prefill_tokens == int(b.chunk.sum()) and b.decode_tokens == int(b.decoding.sum()) * (k + 1)
        assert b.phase == (Phase.MIXED if b.prefill_tokens and b.decode_tokens else
                           Phase.PREFILL if b.prefill_tokens else Phase.DECODE)
        # Nobody is served before arriving; nobody is prefilled past what it must (re)compute.
        served = (b.chunk > 0) | b.decoding
        assert (sch.arrival[served] <= now).all()
        assert not (b.decoding & (b.chunk > 0)).any()
        assert not b.empty, "a step with runnable requests did nothing"
        sch.complete(b, now + step_ns)
        assert (sch.prefilled <= sch.target).all()
        running = sch.admitted & ~sch.done
        # KV: what the running requests hold (and the cached prefix, once) fits in the cache.
        assert sch.kv_used() <= sch.kv_capacity
        assert running.sum() <= sch.max_seqs
        first_admitted[np.isinf(first_admitted) & sch.admitted] = len(log)
        log.append({"now": now, "batch": b})
        now += step_ns
    # FCFS: requests are first admitted in arrival order.
    adm = first_admitted[order][np.isfinite(first_admitted[order])]   # (never admitted: done from the start)
    assert (np.diff(adm) >= 0).all(), "a later request was admitted before an earlier one"
    assert (sch.prefilled == sch.target).all()
    assert (sch.generated == sch.output).all()
    # (a request that arrived with its KV had its first token elsewhere)
    # and one of a single token finished there too)
    first = np.where(np.isnan(sch.first_token_ns) & transferred, sch.arrival, sch.first_token_ns)
    here = ~(transferred & (sch.output <= 1))
    assert (sch.arrival <= first).all() and (first[here] <= sch.finish_ns[here]).all()
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
    spec = draw(st.integers(0, 3))
    accept = draw(st.sampled_from([0.0, 0.5, 1.0]))
    prefix = draw(st.integers(0, int(prompt.min()) - 1))
    transferred = draw(st.booleans())
    biggest = int((prompt + output).max()) + spec
    capacity = draw(st.integers(biggest, 4 * biggest + 50))
    return arrival, prompt, output, budget, max_seqs, capacity, prefix, spec, accept, transferred


@settings(max_examples=150, deadline=None)
@given(workloads())
def test_scheduler_invariants(case) -> None:
    arrival, prompt, output, budget, max_seqs, capacity, prefix, spec, accept, transferred = case
    # transferred: a decode replica of disaggregated serving (each request arrives with its KV)
    sch = ReplicaScheduler(arrival, prompt, output, max_batch_tokens=budget, max_seqs=max_seqs,
                           kv_capacity_tokens=capacity, prefix_len=0 if transferred else prefix, spec_tokens=spec,
                           spec_accept=accept, rng=np.random.default_rng(7), transferred=transferred)
    drive(sch, transferred=transferred)


def test_kv_runs_out_and_the_newest_is_preempted_then_recomputed() -> None:
    """Room for two requests and 3 tokens: three are admitted (their first chunks fit), and when
    the decodes' next tokens no longer fit the newest is preempted; it recomputes its prompt and
    the tokens it had generated, and everyone finishes (vLLM's recompute preemption)."""
    n, p, o = 3, 10, 5
    cap = 2 * (p + o) + 3
    sch = ReplicaScheduler(np.zeros(n), np.full(n, p), np.full(n, o), max_batch_tokens=1000, max_seqs=100,
                           kv_capacity_tokens=cap)
    log = drive(sch)
    assert log[0]["batch"].prefill_tokens == 3 * p            # nothing is reserved up front
    # Step 1: 3 x 10 held + 3 new = 33 fits; step 2: 3 x 11 + 3 = 36 does not, so request 2 goes.
    assert [x["batch"].preempted for x in log[:3]] == [0, 0, 1]
    assert sch.preemptions == 1
    # Request 2 had generated 2 tokens: its recompute prefills the prompt and both.
    recompute = next(x["batch"] for x in log[3:] if x["batch"].chunk[2] > 0)
    assert recompute.chunk[2] == p + 2
    assert sch.generated.tolist() == [o] * n


def test_without_preemption_reservation_is_never_needed() -> None:
    """With room for everyone's whole footprint nobody is preempted."""
    sch = ReplicaScheduler(np.zeros(6), np.full(6, 10), np.full(6, 5), max_batch_tokens=1000, max_seqs=100,
                           kv_capacity_tokens=6 * 15)
    log = drive(sch)
    assert sch.preemptions == 0 and len(log) == 5


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
