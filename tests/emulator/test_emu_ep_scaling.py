"""Collectives as NCCL and DeepEP run them, and what they do to expert-parallel serving.

- Wider EP at a fixed per-GPU decode batch raises per-GPU throughput (DeepSeek-V3 on H200, EP 8
  / 16 / 32): each GPU streams fewer experts' weights while its dispatch and combine bytes stay
  about the same, as in DeepSeek's and SGLang's large-EP decode deployments (which also hide
  the all-to-all under two-batch overlap).
- The all-to-all against DeepEP's published low-latency kernels (README of deepseek-ai/DeepEP:
  H800 with a 400 Gb/s CX7 NIC per GPU, 128 tokens per rank, hidden 7168, top-8, FP8 dispatch,
  BF16 combine): dispatch 118 / 155 / 173 / 192 / 194 us and combine 195 / 273 / 314 / 369 / 360
  us at EP 16 / 32 / 64 / 128 / 256. Latencies add in parallel, not once per peer.
- A TP all-reduce across nodes is hierarchical: far faster than a flat ring through one NIC, and
  never faster than each node's NICs can carry; inside a node NVLS beats the ring.
"""

from __future__ import annotations

import numpy as np
import pytest
from emu_support import make_config

from sohuprof.emulator.lowering import dispatch_bytes
from sohuprof.emulator.plan import GroupSet
from sohuprof.emulator.runtime import Emulation
from sohuprof.emulator.timing import LinkModel, collective_time


def per_gpu_decode_tokens_per_s(ep: int, batch: int) -> float:
    """DeepSeek-V3 FP8 on H200, attention data-parallel (TP 1), experts over ``ep`` GPUs, each GPU
    decoding ``batch`` sequences: decode tokens per second per GPU over the decode steps."""
    cfg = make_config(model="deepseek-v3", hw="h200", nodes=max(ep // 8, 1), chips_per_node=min(ep, 8), tp=1,
                      ep=ep, requests=batch * ep, prompt_len=32, output_len=6, dtype="fp8")
    em = Emulation(cfg)
    steps: dict[int, list[dict]] = {}
    for _, host in em.steps():
        for ev in host:
            if ev["type"] == "step" and ev["phase"] == "decode":
                steps.setdefault(ev["step"], []).append(ev)
    assert steps
    tokens = sum(ev["decode_tokens"] for evs in steps.values() for ev in evs)
    assert tokens == sum(len(evs) for evs in steps.values()) * batch      # every GPU decodes its batch
    span = sum(max(ev["end"] for ev in evs) - min(ev["ts"] for ev in evs) for evs in steps.values())
    return tokens / (span / 1e9) / ep


def test_wider_ep_raises_per_gpu_decode_throughput() -> None:
    # 32 sequences a GPU: a latency-bound decode batch. At 128 a GPU and without two-batch overlap
    # hiding the all-to-all, the dispatch and combine bytes (their remote share grows from 1/2 to
    # 3/4 of the copies) outweigh the weights saved, as DeepEP's own figures imply.
    got = {ep: per_gpu_decode_tokens_per_s(ep, batch=32) for ep in (8, 16, 32)}
    assert got[8] < got[16] < got[32], {k: round(v) for k, v in got.items()}


def _ep_time_us(kind: str, ep: int, copy_bytes: int, tokens: int = 128, top_k: int = 8) -> float:
    cfg = make_config(model="deepseek-v3", hw="h100", nodes=ep // 8, chips_per_node=8, tp=1, ep=ep)
    groups = GroupSet("ep", np.array([0]), np.arange(ep)[None, :])
    links = LinkModel.build(groups, cfg)
    size = np.full((1, ep), float(tokens * top_k * copy_bytes))
    return float(collective_time(kind, size, links, np.array([0]))[0]) / 1e3


#: DeepEP low-latency kernels (us): EP -> (dispatch, combine).
DEEPEP_LL = {16: (118, 195), 32: (155, 273), 64: (173, 314), 128: (192, 369), 256: (194, 360)}


@pytest.mark.parametrize("ep", list(DEEPEP_LL))
def test_all_to_all_matches_deepep_low_latency_kernels(ep: int) -> None:
    cfg = make_config(model="deepseek-v3", hw="h100", dtype="fp8")
    dispatch = _ep_time_us("all_to_all", ep, dispatch_bytes(cfg))
    combine = _ep_time_us("all_to_all", ep, cfg.model.hidden * 2)
    want_d, want_c = DEEPEP_LL[ep]
    assert 0.75 <= dispatch / want_d <= 1.25, f"dispatch {dispatch:.0f} us, DeepEP {want_d} us"
    assert 0.75 <= combine / want_c <= 1.25, f"combine {combine:.0f} us, DeepEP {want_c} us"


def test_fp8_dispatch_carries_its_scales() -> None:
    fp8, bf16 = (make_config(model="deepseek-v3", hw="h100", dtype=d) for d in ("fp8", "bf16"))
    assert dispatch_bytes(fp8) == 7168 + 7168 // 128 * 4
    assert dispatch_bytes(bf16) == 7168 * 2


def _all_reduce_us(nodes: int, cpn: int, size: float, hw: str = "h100") -> tuple[float, LinkModel]:
    cfg = make_config(model="llama3-70b", hw=hw, nodes=nodes, chips_per_node=cpn, tp=nodes * cpn)
    n = nodes * cpn
    links = LinkModel.build(GroupSet("tp", np.array([0]), np.arange(n)[None, :]), cfg)
    return float(collective_time("all_reduce", np.full((1, n), size), links, np.array([0]))[0]) / 1e3, links


def test_cross_node_all_reduce_is_hierarchical() -> None:
    s = 256e6
    hier, links = _all_reduce_us(2, 8, s)
    flat = 2 * 15 / 16 * s / links.bw_inter[0] / 1e3          # a ring of 16 through one NIC per node
    assert hier < flat / 8
    hw = make_config(hw="h100").hardware
    # Both nodes' partial sums must cross: S per node over its 8 NICs, at the raw line rate.
    assert hier >= s / (8 * hw.inter_node_bandwidth) * 1e6


def test_nvls_beats_the_ring_inside_a_node() -> None:
    s = 1e9
    nvls, links = _all_reduce_us(1, 8, s)
    busbw = 2 * 7 / 8 * s / (nvls / 1e6)
    ring = 2 * 7 / 8 * s / links.bw_intra / 1e3
    assert nvls < ring
    assert busbw <= 2 * 7 / 8 * make_config(hw="h100").hardware.intra_node_bandwidth   # one pass per byte at most
    no_nvls, _ = _all_reduce_us(1, 8, s, hw="sohu")
    assert no_nvls > 0


def test_prefill_all_to_all_forwards_over_nvlink_under_group_limited_routing() -> None:
    """DeepEP's normal kernels (steps that prefill): a token crosses the NIC once per remote node
    its experts lie on, at most DeepSeek-V3's 4 groups' nodes, then fans out over NVLink; for a
    prefill-sized buffer that beats sending every (token, expert) copy over the NIC."""
    from sohuprof.emulator.timing import routing_spread

    cfg = make_config(model="deepseek-v3", hw="h100", nodes=4, chips_per_node=8, tp=1, ep=32, dtype="fp8")
    m = cfg.model
    remote, fan = routing_spread(m, 32, 8)
    assert remote < m.groups_per_token and fan <= m.top_k
    unlimited = routing_spread(make_config(model="mixtral-8x7b").model, 32, 8)[0]
    assert 0 < unlimited <= 3
    links = LinkModel.build(GroupSet("ep", np.array([0]), np.arange(32)[None, :]), cfg)
    size = np.full((1, 32), 4096.0 * m.top_k * dispatch_bytes(cfg))
    sel = np.array([0])
    direct = collective_time("all_to_all", size, links, sel, np.array([False]))[0]
    forward = collective_time("all_to_all", size, links, sel, np.array([True]))[0]
    assert forward < 0.5 * direct
    # Never faster than the NIC carries the crossings at its raw line rate.
    assert forward >= 4096 * dispatch_bytes(cfg) * remote / cfg.hardware.inter_node_bandwidth * 1e9
