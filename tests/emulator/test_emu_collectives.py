"""Collectives are real synchronisations with physical transfer times; MoE traffic adds up."""

from __future__ import annotations

import numpy as np
import pytest
from emu_support import SMALL_CONFIGS, MemRun

from sohuprof.emulator.timing import routing_spread
from sohuprof.strace import Engine, Phase

ALL = sorted(SMALL_CONFIGS)

#: The collective algorithm behind each op name (nccl-tests' vocabulary).
KIND = {"attn_all_reduce": "all_reduce", "mlp_all_reduce": "all_reduce", "moe_all_gather": "all_gather",
        "sampling_all_gather": "all_gather", "moe_dispatch": "all_to_all", "moe_combine": "all_to_all",
        "pp_send": "send", "pp_recv": "send"}


def _instances(run: MemRun) -> dict[tuple[int, int], np.ndarray]:
    """(group, seq) -> indices of the records of that collective instance."""
    coll = np.flatnonzero(run.rec["engine"] == Engine.COLLECTIVE)
    key = run.rec["group"][coll].astype(np.int64) << 32 | run.rec["seq"][coll].astype(np.int64)
    order = np.argsort(key, kind="stable")
    coll, key = coll[order], key[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    return {(int(k >> 32), int(k & 0xFFFFFFFF)): idx for k, idx in zip(key[np.r_[0, cuts]], np.split(coll, cuts))}


@pytest.mark.parametrize("key", ALL)
def test_collective_members_leave_together(mem_run, key: str) -> None:
    run = mem_run(key)
    groups = run.groups()
    inst = _instances(run)
    assert inst
    for (g, s), idx in inst.items():
        members = sorted(run.rank[idx].tolist())
        assert members == sorted(groups[g]), f"group {g} seq {s}: ranks {members}"
        names = {run.names[i] for i in run.rec["name_id"][idx].tolist()}
        assert len(names - {"pp_recv"}) == 1, names
        assert len(set(run.rec["step"][idx].tolist())) == 1
        end = run.end_ns[idx]
        assert (end == end[0]).all(), f"group {g} seq {s}: members leave at different times"
        assert (run.start_ns[idx] <= end).all()


@pytest.mark.parametrize("key", ALL)
def test_collective_sequence_numbers_count_up_per_group(mem_run, key: str) -> None:
    """Like an NCCL communicator's op counter: 0, 1, 2, ... in the order the group issues them."""
    run = mem_run(key)
    seqs: dict[int, list[int]] = {}
    for g, s in _instances(run):
        seqs.setdefault(g, []).append(s)
    for g, ss in seqs.items():
        assert sorted(ss) == list(range(len(ss))), f"group {g}"
    # ... and in issue order: within one rank, a group's sequence numbers rise with time.
    coll = np.flatnonzero(run.rec["engine"] == Engine.COLLECTIVE)
    for r in np.unique(run.rank[coll]):
        mine = coll[run.rank[coll] == r]
        for g in np.unique(run.rec["group"][mine]):
            sel = mine[run.rec["group"][mine] == g]
            by_time = sel[np.argsort(run.end_ns[sel], kind="stable")]
            assert (np.diff(run.rec["seq"][by_time].astype(np.int64)) > 0).all()


def _lower_bound_ns(run: MemRun, kind: str, members: np.ndarray, size: np.ndarray, forward: bool = False) -> float:
    """A physical lower bound on the transfer (ns), from the raw link figures (no efficiency).

    Inside a node a chip can push at most ``intra_node_links x intra_node_bandwidth``; between
    nodes each node's cut carries at most ``k x NIC`` per direction for its ``k`` members.
    """
    hw = run.hw
    n = len(members)
    node = members // run.cfg.chips_per_node
    s = float(size.max())
    chip_bw = hw.intra_node_bandwidth * hw.intra_node_links
    spans = len(np.unique(node)) > 1
    alpha = hw.inter_node_latency_ns if spans else hw.intra_node_latency_ns
    if kind == "send":
        return s / (hw.inter_node_bandwidth if spans else hw.intra_node_bandwidth) * 1e9 + alpha
    if kind == "all_reduce":
        bound = 2 * (n - 1) / n * s / chip_bw   # Patarasuk & Yuan: 2(n-1)/n S per rank
        if hw.nvls > 0 and not spans:           # the switch reduces: each byte goes up and back once
            bound = s / chip_bw
        if spans:   # both sides of a node's cut must see the other side's partial sums: S bytes
            bound = max(bound, max(s / (k * hw.inter_node_bandwidth) for k in np.bincount(node) if k))
    elif kind == "all_gather":
        bound = (n - 1) / n * s / chip_bw
        if spans:
            bound = max(bound, max((n - k) / n * s / (k * hw.inter_node_bandwidth) for k in np.bincount(node) if k))
    elif forward and spans:  # NVLink forwarding: a token's copy crosses once per remote node of its experts
        k = int((node == node[0]).sum())
        remote, _ = routing_spread(run.cfg.model, n, k)
        bound = max(size[node == nd].sum() / run.cfg.model.top_k * remote / (k * hw.inter_node_bandwidth)
                    for nd in np.unique(node))
    else:  # all_to_all: every rank sends 1/n of its buffer to each member
        bound = (n - 1) / n * s / chip_bw
        if spans:
            for nd in np.unique(node):
                k = int((node == nd).sum())
                leaving = size[node == nd].sum() * (n - k) / n
                bound = max(bound, leaving / (k * hw.inter_node_bandwidth))
    return bound * 1e9 + alpha


@pytest.mark.parametrize("key", ALL)
def test_transfer_time_respects_alpha_beta_lower_bound(mem_run, key: str) -> None:
    run = mem_run(key)
    groups = run.groups()
    kinds_seen = set()
    for (g, s), idx in _instances(run).items():
        name = run.names[run.rec["name_id"][idx[0]]]
        kind = KIND[name]
        kinds_seen.add(kind)
        members = np.array(groups[g])
        order = np.argsort(run.rank[idx])
        size = run.rec["net_bytes"][idx][order].astype(float)
        transfer = run.end_ns[idx[0]] - run.start_ns[idx].max()
        forward = kind == "all_to_all" and bool((run.rec["phase"][idx] != Phase.DECODE).any())
        bound = _lower_bound_ns(run, kind, members, size, forward)
        assert transfer >= bound * (1 - 1e-9), f"{name} group {g} seq {s}: {transfer:.0f} ns < {bound:.0f} ns"
    assert kinds_seen


def test_run_covers_every_collective_kind(mem_run) -> None:
    seen = set()
    for key in ALL:
        run = mem_run(key)
        names = {run.names[i] for i in np.unique(run.rec["name_id"][run.rec["engine"] == Engine.COLLECTIVE])}
        seen |= {KIND[n] for n in names}
    assert seen == {"all_reduce", "all_gather", "all_to_all", "send"}


def test_pipeline_send_pairs_sender_and_receiver(mem_run) -> None:
    run = mem_run("llama8b-pp2")
    send, recv = run.name_mask("pp_send"), run.name_mask("pp_recv")
    assert send.sum() == recv.sum() > 0
    assert (run.em.plan.stage[run.rank[send]] == 0).all()
    assert (run.em.plan.stage[run.rank[recv]] == 1).all()
    # Stage 1 cannot start a step's layers before stage 0's activations arrived.
    for (g, s), idx in _instances(run).items():
        if run.group_kind()[g] == "pp":
            recv_idx = idx[run.rec["name_id"][idx] == run.names.index("pp_recv")][0]
            step = run.rec["step"][recv_idx]
            rank = run.rank[recv_idx]
            layer_ops = (run.rank == rank) & (run.rec["step"] == step) & (run.rec["engine"] == Engine.MATRIX)
            assert (run.start_ns[layer_ops] >= run.end_ns[recv_idx] - 1e-3).all()


def test_two_batch_overlap_hides_all_reduce_under_compute(mem_run) -> None:
    """Big steps run two micro-batches: every layer has two of each all-reduce, and an all-reduce
    of one micro-batch runs while the rank computes the other."""
    run = mem_run("llama8b-tp4")
    m = run.cfg.model
    ar = run.name_mask("attn_all_reduce")
    per_step = np.bincount(run.rec["step"][ar & (run.rank == 0)], minlength=run.steps)
    assert set(per_step.tolist()) == {m.layers, 2 * m.layers}
    big = np.flatnonzero(per_step == 2 * m.layers)
    tokens = {ev["step"]: ev["prefill_tokens"] + ev["decode_tokens"] for ev in run.host if ev["type"] == "step"}
    assert all(tokens[s] >= run.cfg.two_batch_min_tokens for s in big)
    r0 = run.rank == 0
    coll = np.flatnonzero(r0 & ar & np.isin(run.rec["step"], big))
    mat = np.flatnonzero(r0 & (run.rec["engine"] == Engine.MATRIX))
    overlapped = 0
    for c in coll:
        overlapped += ((run.start_ns[mat] < run.end_ns[c]) & (run.end_ns[mat] > run.start_ns[c])).any()
    assert overlapped > len(coll) // 2


@pytest.mark.parametrize("key,experts_at", [("mixtral-ep8", 0), ("mixtral-tp2-ep4", 0), ("deepseek-ep16", 3)])
def test_moe_dispatch_bytes_are_tokens_topk_hidden(mem_run, key: str, experts_at: int) -> None:
    """Sum over ranks of a layer's combine buffers = tokens x top-k x hidden x 2 B (bf16); the
    dispatch travels in FP8 for an FP8 model, a float32 scale per 128 channels (DeepEP)."""
    run = mem_run(key)
    m = run.cfg.model
    tokens = np.zeros(run.steps)
    for ev in run.host:
        if ev["type"] == "step":
            tokens[ev["step"]] += ev["prefill_tokens"] + ev["decode_tokens"]
    assert tokens.sum() == run.cfg.requests * (run.cfg.prompt_len + run.cfg.output_len - 1)
    for name in ("moe_dispatch", "moe_combine"):
        sel = run.name_mask(name)
        layers = np.unique(run.rec["layer"][sel])
        assert layers.tolist() == list(range(experts_at, m.layers))
        key_ = run.rec["step"][sel].astype(np.int64) * m.layers + run.rec["layer"][sel]
        total = np.bincount(key_, weights=run.rec["net_bytes"][sel].astype(float), minlength=run.steps * m.layers)
        total = total.reshape(run.steps, m.layers)[:, experts_at:]
        per_copy = m.hidden * 2
        if name == "moe_dispatch" and run.cfg.dtype == "fp8":
            per_copy = m.hidden + -(-m.hidden // 128) * 4
        expect = tokens[:, None] * m.top_k * per_copy
        np.testing.assert_array_equal(total, np.broadcast_to(expect, total.shape))


@pytest.mark.parametrize("key", ["mixtral-ep8", "mixtral-tp2-ep4", "deepseek-ep16"])
def test_moe_routed_pairs_are_conserved(mem_run, key: str) -> None:
    """Every (token, expert) pair is computed exactly once somewhere in the EP group: the routed
    experts' FLOPs summed over ranks = tokens x top-k x 3 GEMMs of hidden x expert_ffn x 2."""
    run = mem_run(key)
    m = run.cfg.model
    tokens = np.zeros(run.steps)
    for ev in run.host:
        if ev["type"] == "step":
            tokens[ev["step"]] += ev["prefill_tokens"] + ev["decode_tokens"]
    flops = np.zeros((run.steps, m.layers))
    for name in ("expert_gate_up", "expert_down"):
        sel = run.name_mask(name)
        np.add.at(flops, (run.rec["step"][sel], run.rec["layer"][sel]), run.rec["flops"][sel].astype(float))
    expect = tokens[:, None] * m.top_k * 6 * m.hidden * m.expert_ffn
    moe = [li for li in range(m.layers) if m.is_moe_layer(li)]
    np.testing.assert_allclose(flops[:, moe], np.broadcast_to(expect, (run.steps, len(moe))), rtol=1e-9, atol=4 * run.cfg.world)
    # Routing is imbalanced (some experts hotter), so ranks do different amounts of expert work.
    sel = run.name_mask("expert_gate_up")
    per_rank = np.bincount(run.rank[sel], weights=run.rec["flops"][sel].astype(float))
    assert per_rank.max() > 1.05 * per_rank.min()


#: Ops that by design run while the collective before them is in flight (DeepSeek's shared
#: experts compute while the routed tokens are dispatched).
OVERLAPPING = {"shared_expert_gate_up", "shared_expert_act", "shared_expert_down"}


@pytest.mark.parametrize("key", ALL)
def test_compute_waits_for_the_collective_it_consumes(mem_run, key: str) -> None:
    """In steps without two-batch overlap, a compute op issued after a collective (in program
    order: a rank's records of a step are written in issue order) starts after that collective
    ended, since it consumes its result."""
    run = mem_run(key)
    skip = np.isin(run.rec["name_id"], [run.names.index(n) for n in OVERLAPPING if n in run.names])
    ar = run.name_mask("attn_all_reduce") if "attn_all_reduce" in run.names else np.zeros(len(run.rec), bool)
    checked = 0
    for r in range(run.cfg.world):
        mine = np.flatnonzero(run.rank == r)
        steps = run.rec["step"][mine]
        for s in np.unique(steps):
            idx = mine[steps == s]                                    # program order
            if ar[idx].sum() > len(np.unique(run.rec["layer"][idx][ar[idx]])):   # two micro-batches
                continue
            coll = run.rec["engine"][idx] == Engine.COLLECTIVE
            ends = np.where(coll, run.end_ns[idx], -np.inf)
            before = np.maximum.accumulate(np.r_[-np.inf, ends[:-1]])  # latest prior collective end
            compute = np.isin(run.rec["engine"][idx], [Engine.MATRIX, Engine.VECTOR]) & ~skip[idx]
            late = compute & (run.start_ns[idx] < before - 1e-3)
            assert not late.any(), f"rank {r} step {s}: {run.names[run.rec['name_id'][idx][late][0]]}"
            checked += compute.sum()
    assert checked


@pytest.mark.parametrize("key", ["deepseek-ep16"])
def test_routed_experts_wait_for_the_overlapped_dispatch(mem_run, key: str) -> None:
    run = mem_run(key)
    for a, b in (("moe_dispatch", "expert_gate_up"), ("moe_dispatch", "shared_expert_gate_up")):
        ka = {(r, s, li): e for r, s, li, e in zip(run.rank[run.name_mask(a)], run.rec["step"][run.name_mask(a)],
                                                    run.rec["layer"][run.name_mask(a)], run.end_ns[run.name_mask(a)])}
        sel = run.name_mask(b)
        starts = {(r, s, li): t for r, s, li, t in zip(run.rank[sel], run.rec["step"][sel], run.rec["layer"][sel],
                                                        run.start_ns[sel])}
        assert starts and set(starts) <= set(ka)   # ranks that routed no token to an expert skip it
        waited = np.array([starts[k] >= ka[k] - 1e-3 for k in starts])
        if b == "expert_gate_up":
            assert waited.all()
        else:   # the shared experts are what the dispatch hides behind
            assert not waited.all()


def test_two_batch_overlap_head_waits_for_the_last_all_reduce(mem_run) -> None:
    run = mem_run("llama8b-tp4")
    m = run.cfg.model
    head = run.name_mask("final_norm")
    last = (run.rec["engine"] == Engine.COLLECTIVE) & (run.rec["layer"] == m.layers - 1)
    for i in np.flatnonzero(head):
        same = last & (run.rank == run.rank[i]) & (run.rec["step"] == run.rec["step"][i])
        assert run.start_ns[i] >= run.end_ns[same].max() - 1e-3, (
            f"rank {run.rank[i]} step {run.rec['step'][i]}: final_norm starts "
            f"{run.end_ns[same].max() - run.start_ns[i]:.0f} ns before the last all-reduce ends")
