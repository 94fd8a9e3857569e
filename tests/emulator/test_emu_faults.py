"""Injected faults do what a performance engineer would see on a real cluster: a throttled chip
arrives last and makes its peers wait; a slow NIC slows exactly the collectives that cross it."""

from __future__ import annotations

import numpy as np
import pytest
from emu_support import MemRun, make_config, run_in_memory

from sohuprof.emulator import parse_fault
from sohuprof.emulator.config import Fault
from sohuprof.errors import SpecError
from sohuprof.strace import Engine

STRAGGLER = 5
TP4 = dict(model="llama3-8b", nodes=1, chips_per_node=8, tp=4, requests=8, prompt_len=1024, output_len=8)


def _instances(run: MemRun) -> dict[tuple[int, int], np.ndarray]:
    coll = np.flatnonzero(run.rec["engine"] == Engine.COLLECTIVE)
    out: dict[tuple[int, int], list[int]] = {}
    for i, g, s in zip(coll.tolist(), run.rec["group"][coll].tolist(), run.rec["seq"][coll].tolist()):
        out.setdefault((g, s), []).append(i)
    return {k: np.array(v) for k, v in out.items()}


def _transfer(run: MemRun) -> dict[tuple[int, int], float]:
    """Per collective instance: end minus the last member's arrival."""
    return {k: float(run.end_ns[idx[0]] - run.start_ns[idx].max()) for k, idx in _instances(run).items()}


@pytest.fixture(scope="module")
def straggler_runs() -> tuple[MemRun, MemRun]:
    base = run_in_memory(make_config(**TP4))
    slow = run_in_memory(make_config(**TP4, faults=(parse_fault(f"straggler:rank={STRAGGLER},slowdown=1.5"),)))
    return base, slow


def test_straggler_runs_every_op_slower_by_its_factor(straggler_runs) -> None:
    base, slow = straggler_runs
    assert len(base.rec) == len(slow.rec) and (base.rec["name_id"] == slow.rec["name_id"]).all()
    compute = np.isin(base.rec["engine"], [Engine.MATRIX, Engine.VECTOR, Engine.DMA])
    mine = compute & (base.rank == STRAGGLER)
    ratio = (slow.end_ns - slow.start_ns)[mine] / (base.end_ns - base.start_ns)[mine]
    np.testing.assert_allclose(ratio, 1.5, rtol=1e-6)   # sohu has no launch overhead to dilute it
    others = compute & (base.rank != STRAGGLER)
    np.testing.assert_allclose((slow.end_ns - slow.start_ns)[others], (base.end_ns - base.start_ns)[others])


def test_straggler_arrives_last_and_makes_its_group_wait(straggler_runs) -> None:
    base, slow = straggler_runs
    group = next(g for g, ranks in slow.groups().items() if STRAGGLER in ranks and slow.group_kind()[g] == "tp")
    peers = [r for r in slow.groups()[group] if r != STRAGGLER]

    def waits(run: MemRun) -> tuple[float, int, int]:
        """Total wait of the straggler's peers, instances the straggler arrived last at, instances."""
        total, last, n = 0.0, 0, 0
        for (g, s), idx in _instances(run).items():
            if g != group:
                continue
            arrive = dict(zip(run.rank[idx].tolist(), run.start_ns[idx].tolist()))
            latest = max(arrive.values())
            total += sum(latest - arrive[r] for r in peers)
            last += arrive[STRAGGLER] == latest
            n += 1
        return total, last, n

    base_wait, base_last, n = waits(base)
    slow_wait, slow_last, n2 = waits(slow)
    assert n == n2 > 0
    assert slow_last >= 0.9 * n, f"straggler last at {slow_last}/{n} collectives"
    assert base_last < 0.5 * n                      # without the fault it is one rank among four
    assert slow_wait > 10 * base_wait, (slow_wait, base_wait)
    # The straggler makes everyone wait about the extra 50% of its compute time.
    mine = np.isin(slow.rec["engine"], [Engine.MATRIX, Engine.VECTOR]) & (slow.rank == STRAGGLER)
    extra = ((slow.end_ns - slow.start_ns)[mine] - (base.end_ns - base.start_ns)[mine]).sum()
    assert 0.5 * extra * len(peers) <= slow_wait - base_wait <= 1.1 * extra * len(peers)


def test_straggler_does_not_touch_other_replicas(straggler_runs) -> None:
    base, slow = straggler_runs
    other = base.em.plan.replica[base.rank] != base.em.plan.replica[STRAGGLER]
    assert other.any()
    np.testing.assert_array_equal(base.start_ns[other], slow.start_ns[other])
    np.testing.assert_array_equal(base.end_ns[other], slow.end_ns[other])
    req_b, req_s = base.em.request_table(), slow.em.request_table()
    mine = req_b["replica"] == base.em.plan.replica[STRAGGLER]
    assert (req_s["finish"][mine] > req_b["finish"][mine]).all()
    np.testing.assert_array_equal(req_s["finish"][~mine], req_b["finish"][~mine])


# Slow link: PP=2 puts stage 0 on node 0 and stage 1 on node 1, so TP groups stay inside a node
# and pipeline sends cross the NIC; TP=8 over 2 x 4 chips makes every all-reduce cross it.
PP2 = dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=4, pp=2, requests=8, prompt_len=2048,
           output_len=4, max_batch_tokens=8192)
TP8 = dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=8, requests=4, prompt_len=2048, output_len=4,
           max_batch_tokens=8192, two_batch_overlap=False)
SLOW = (Fault("slow-link", node=1, factor=0.25),)


@pytest.mark.parametrize("shape", [PP2, TP8], ids=["pp2", "tp8-2node"])
def test_slow_link_slows_only_collectives_crossing_the_node(shape: dict) -> None:
    base, slow = run_in_memory(make_config(**shape)), run_in_memory(make_config(**shape, faults=SLOW))
    tb, ts = _transfer(base), _transfer(slow)
    assert tb.keys() == ts.keys()
    groups = base.groups()
    cpn = base.cfg.chips_per_node
    crossing_big, crossing, inside = [], [], []
    for key, idx in _instances(base).items():
        nodes = {r // cpn for r in groups[key[0]]}
        ratio = ts[key] / tb[key]
        if len(nodes) == 1:
            inside.append(ratio)
        else:
            assert 1 in nodes
            crossing.append(ratio)
            if base.rec["net_bytes"][idx].max() >= 16e6:
                crossing_big.append(ratio)
    assert crossing and crossing_big
    if shape is PP2:
        assert inside
    np.testing.assert_allclose(inside, 1.0, rtol=1e-12)          # intra-node groups unchanged
    assert min(crossing) > 1.0 and max(crossing) <= 4.0 * (1 + 1e-9)
    # Bandwidth-bound transfers (tens of MB) slow by ~1/factor; latency keeps them a bit under.
    assert 3.5 <= min(crossing_big) and max(crossing_big) <= 4.0 * (1 + 1e-9), crossing_big


def test_slow_link_on_an_uninvolved_node_changes_nothing() -> None:
    shape = dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=4, requests=4, prompt_len=256, output_len=4)
    base, slow = run_in_memory(make_config(**shape)), run_in_memory(make_config(**shape, faults=SLOW))
    np.testing.assert_array_equal(base.end_ns, slow.end_ns)


@pytest.mark.parametrize("text,fault", [
    ("straggler:rank=5,slowdown=1.3", Fault("straggler", rank=5, slowdown=1.3)),
    ("slow-link:node=1,factor=0.25", Fault("slow-link", node=1, factor=0.25)),
    (" straggler: slowdown=2 , rank=0", Fault("straggler", rank=0, slowdown=2.0)),
])
def test_parse_fault(text: str, fault: Fault) -> None:
    assert parse_fault(text) == fault
    assert parse_fault(fault.spec()) == fault


@pytest.mark.parametrize("text,match", [
    ("meteor:rank=1", "expected"),
    ("straggler", "expected"),
    ("straggler:rank=1", "needs"),
    ("straggler:rank=x,slowdown=2", "'rank' must be a number"),
    ("straggler:rank=1,slowdown=0.5", "slowdown must be >= 1"),
    ("straggler:rank=1,slowdown=2,colour=red", "colour"),
    ("slow-link:node=1,factor=0", r"factor must be in \(0, 1\]"),
    ("slow-link:node=1,factor=4", r"factor must be in \(0, 1\]"),
])
def test_parse_fault_rejects_malformed(text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_fault(text)


@pytest.mark.parametrize("fault,match", [("straggler:rank=8,slowdown=2", "rank 8 is not in 0..7"),
                                         ("slow-link:node=2,factor=0.5", "node 2 is not in 0..1")])
def test_fault_outside_the_cluster_is_refused(fault: str, match: str) -> None:
    cfg = make_config(model="llama3-8b", nodes=2, chips_per_node=4, tp=4, faults=(parse_fault(fault),))
    with pytest.raises(SpecError, match=match):
        cfg.validate()
