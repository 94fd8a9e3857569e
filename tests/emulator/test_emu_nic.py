"""NIC port counters: what each chip's share of its node's NIC sent and received across nodes,
checked against a reference built from the records alone (one collective instance at a time)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from emu_support import MemRun, make_config, read_run, run_in_memory

from sohuprof.emulator import emulate, parse_fault
from sohuprof.emulator.runtime import NIC_COUNTERS
from sohuprof.emulator.timing import routing_spread
from sohuprof.strace import Engine, Phase

SHAPES = {
    # A hierarchical all-reduce over 8 ranks on 2 nodes: rank j and j + 4 exchange a quarter each.
    "tp8-2node": dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=8, requests=3, prompt_len=64, output_len=4),
    # All-to-all across 2 nodes (EP 4 over TP 2), TP all-reduces and all-gathers inside each node.
    "ep4-2node": dict(model="mixtral-8x7b", nodes=2, chips_per_node=2, tp=2, ep=4, requests=4, prompt_len=32,
                      output_len=3),
    # A pipeline over 3 nodes: stage s's chips send to stage s + 1's.
    "pp3": dict(model="llama3-8b", nodes=3, chips_per_node=2, tp=2, pp=3, requests=3, prompt_len=64, output_len=4),
}


def _totals(run: MemRun) -> dict[tuple[int, int], np.ndarray]:
    """(step, rank) -> the five counters, from the run's NicCounters."""
    out = {}
    for step, nic in enumerate(run.nic):
        for r, values in zip(nic.rank.tolist(), nic.values.T):
            out[(step, r)] = values.astype(float)
    return out


def _reference(run: MemRun) -> dict[tuple[int, int], np.ndarray]:
    """The counters from the records: per collective instance, each member's bytes to other nodes
    by nccl's conventions, its line-rate time, and the rest of the transfer."""
    templates = run.em.program.templates
    kinds = [t.collective or "" for t in templates] + ["send"] * (len(run.names) - len(templates))
    groups = run.groups()
    cpn, hw = run.cfg.chips_per_node, run.hw
    nic = np.full(run.cfg.nodes, hw.inter_node_bandwidth)
    for f in run.cfg.faults:
        if f.kind == "slow-link":
            nic[f.node] *= f.factor
    rate = nic * hw.comm_efficiency / 1e9                                     # bytes/ns per chip share
    coll = np.flatnonzero(run.rec["engine"] == Engine.COLLECTIVE)
    members: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, g, s in zip(coll.tolist(), run.rec["group"][coll].tolist(), run.rec["seq"][coll].tolist()):
        members[(g, s)].append(i)
    out: dict[tuple[int, int], np.ndarray] = defaultdict(lambda: np.zeros(5))
    for (g, _), idx in members.items():                                       # a loop per instance: the reference
        idx = sorted(idx, key=lambda i: run.rank[i])
        ranks = [int(run.rank[i]) for i in idx]
        assert len(ranks) == len(groups[g])
        n, kind = len(ranks), kinds[run.rec["name_id"][idx[0]]]
        size = [float(run.rec["net_bytes"][i]) for i in idx]
        node = [r // cpn for r in ranks]
        sent = defaultdict(float)                                             # (src slot, dst slot) -> bytes
        if kind == "all_reduce":
            # Hierarchical: a ring of each member's 1/l shard over the same-index members of the m nodes.
            local = sum(1 for nd in node if nd == node[0])
            m = n // local
            for j in range(n):
                sent[(j, (j + local) % n)] += 2 * (m - 1) / m * size[j] / local
        elif kind == "all_gather":
            for j in range(n):
                sent[(j, (j + 1) % n)] += (n - 1) / n * size[j]
        elif kind == "all_to_all" and any(run.rec["phase"][i] != Phase.DECODE for i in idx):
            # A step that prefills forwards over NVLink (DeepEP's normal kernels): each token's
            # copy once to the same-index member of each remote node its experts lie on.
            local = sum(1 for nd in node if nd == node[0])
            m = n // local
            remote, _ = routing_spread(run.cfg.model, n, local)
            for j in range(n):
                for k in range(j % local, n, local):
                    if node[k] != node[j]:
                        sent[(j, k)] += size[j] / run.cfg.model.top_k * remote / (m - 1)
        elif kind == "all_to_all":
            for j in range(n):
                for k in range(n):
                    if k != j:
                        sent[(j, k)] += size[j] / n
        else:
            assert kind == "send" and n == 2
            sent[(0, 1)] += size[0]
        transfer = max(run.end_ns[i] for i in idx) - max(run.start_ns[i] for i in idx) - hw.launch_overhead_ns
        step = int(run.rec["step"][idx[0]])
        tx = defaultdict(float)
        for (j, k), b in sent.items():
            if node[j] != node[k] and b > 0:
                tx[j] += b
                got = out[(step, ranks[k])]
                got[3] += b
                got[4] += b / rate[node[k]]
        for j, b in tx.items():
            mine = out[(step, ranks[j])]
            mine[0] += b
            mine[1] += b / rate[node[j]]
            mine[2] += max(transfer - b / rate[node[j]], 0.0)
    return dict(out)


@pytest.mark.parametrize("fault", [None, "slow-link:node=1,factor=0.3"], ids=["healthy", "slow-node1"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_counters_match_the_records(shape: str, fault: str | None) -> None:
    run = run_in_memory(make_config(**SHAPES[shape], faults=(parse_fault(fault),) if fault else ()))
    got, ref = _totals(run), _reference(run)
    assert got and got.keys() == ref.keys()
    for key, want in ref.items():
        # The counters are whole bytes and ns, rounded once per chip and step.
        np.testing.assert_allclose(got[key], want, rtol=1e-12, atol=0.5 + 1e-6, err_msg=str(key))
    # What leaves one node arrives at another.
    total = np.sum(list(got.values()), axis=0)
    assert total[0] == pytest.approx(total[3], rel=1e-9)


def test_slow_node_sends_at_its_own_lower_rate_and_others_wait_for_it() -> None:
    base = run_in_memory(make_config(**SHAPES["pp3"]))
    slow = run_in_memory(make_config(**SHAPES["pp3"], faults=(parse_fault("slow-link:node=1,factor=0.3"),)))
    cpn = base.cfg.chips_per_node

    def per_node(run: MemRun) -> np.ndarray:
        out = np.zeros((run.cfg.nodes, len(NIC_COUNTERS)))
        for (_, r), v in _totals(run).items():
            out[r // cpn] += v
        return out

    b, s = per_node(base), per_node(slow)
    np.testing.assert_array_equal(b[:, [0, 3]], s[:, [0, 3]])                # the same bytes move
    with np.errstate(invalid="ignore"):
        rate_b = (b[:, 0] + b[:, 3]) / (b[:, 1] + b[:, 4])
        rate_s = (s[:, 0] + s[:, 3]) / (s[:, 1] + s[:, 4])
    np.testing.assert_allclose(rate_s / rate_b, [1.0, 0.3, 1.0], rtol=1e-3)
    # Node 0 sends only to the slow node: its port is idle, waiting, most of each transfer.
    assert s[0, 2] > 2 * b[0, 2] and s[0, 1] == b[0, 1]
    assert b[2, 0] == 0 and b[2, 3] > 0                                       # the last stage only receives


def test_nothing_crosses_nodes_without_a_spanning_group() -> None:
    run = run_in_memory(make_config(model="llama3-8b", nodes=2, chips_per_node=2, tp=2, requests=4, prompt_len=64,
                                    output_len=4, faults=(parse_fault("slow-link:node=0,factor=0.3"),)))
    assert sum(len(n) for n in run.nic) == 0


def test_nic_lines_are_in_the_chips_node_file_on_its_clock(tmp_path: Path) -> None:
    cfg = make_config(**SHAPES["pp3"], clock_skew_us=50.0)
    emulate(cfg, tmp_path / "run", show_progress=False)
    raw = read_run(tmp_path / "run")
    mem = run_in_memory(cfg)
    want = _totals(mem)
    lines = {n: [ev for ev in evs if ev["type"] == "nic"] for n, evs in raw.host.items()}
    assert sum(map(len, lines.values())) == len(want)
    step_end = {ev["step"]: ev["end"] for ev in raw.host[0] if ev["type"] == "step"}   # one replica, on node 0
    for node, evs in lines.items():
        assert all(ev["rank"] // cfg.chips_per_node == node for ev in evs)
        ts = [ev["ts"] for ev in raw.host[node]]
        assert ts == sorted(ts)
        for ev in evs:
            assert [ev[k] for k in NIC_COUNTERS] == want[(ev["step"], ev["rank"])].tolist()
            if node == 0:
                assert ev["ts"] == step_end[ev["step"]]       # read when the step ends, on the node's clock
