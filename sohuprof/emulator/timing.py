"""The timing model: how long an op or a collective takes on the emulated hardware.

Compute ops cost ``max(flops / (peak * eff), bytes / (bw * eff)) + launch`` (a roofline with
efficiency factors); collectives an alpha-beta cost over the links their group crosses: ring or
tree all-reduce (whichever is faster, as NCCL picks), ring all-gather, pairwise all-to-all and
point-to-point send, with intra-node links inside a node and the NIC between nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.emulator.config import EmulatorConfig
from sohuprof.emulator.plan import GroupSet
from sohuprof.hardware import HardwareSpec
from sohuprof.strace import Engine

__all__ = ["LinkModel", "engine_rates", "op_times", "collective_time", "nic_bandwidth"]


def engine_rates(hw: HardwareSpec, dtype: str) -> np.ndarray:
    """FLOP/s each :class:`Engine` sustains (inf where an engine does no arithmetic)."""
    rates = np.full(len(Engine), np.inf)
    rates[Engine.MATRIX] = hw.peak_flops(dtype) * hw.matmul_efficiency
    rates[Engine.VECTOR] = hw.vector_flops * hw.vector_efficiency
    return rates


def op_times(flops: np.ndarray, hbm: np.ndarray, engine: np.ndarray, hw: HardwareSpec, dtype: str,
             slowdown: np.ndarray, jitter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Duration and memory-stall time (ns) of compute and DMA ops.

    ``flops`` and ``hbm`` are [R, K]; ``engine`` [K]; ``slowdown`` [R] (a throttled chip runs every
    op that many times slower); ``jitter`` [R, K] factors >= 1, so no op ever beats its roof.
    """
    compute = flops / engine_rates(hw, dtype)[engine] * 1e9
    memory = hbm / (hw.hbm_bandwidth * hw.memory_efficiency) * 1e9
    scale = slowdown[:, None] * jitter
    busy = np.maximum(compute, memory) * scale
    stall = np.maximum(memory - compute, 0.0) * scale
    return busy + hw.launch_overhead_ns * (busy > 0), stall


def nic_bandwidth(cfg: EmulatorConfig) -> np.ndarray:
    """B/s per direction of one chip's share of each node's NIC (``[nodes]``), faults applied:
    a ``slow-link`` fault multiplies its node's by ``factor``."""
    nic = np.full(cfg.nodes, cfg.hardware.inter_node_bandwidth)
    for f in cfg.faults:
        if f.kind == "slow-link":
            nic[f.node] *= f.factor
    return nic


@dataclass(frozen=True)
class LinkModel:
    """Bandwidth (bytes/ns, efficiency applied) and latency (ns) seen by each group of a set."""

    spans: np.ndarray       # [G] bool, members on more than one node
    bw: np.ndarray          # [G] bottleneck bandwidth of a ring through the group
    alpha: np.ndarray       # [G] per-hop latency
    bw_intra: float         # a chip's aggregate over the links it drives
    bw_inter: np.ndarray    # [G] slowest NIC among the members' nodes
    local_peers: np.ndarray   # [G, n] members on the same node, excluding self
    remote_peers: np.ndarray  # [G, n]

    @classmethod
    def build(cls, groups: GroupSet, cfg: EmulatorConfig) -> LinkModel:
        hw = cfg.hardware
        nic = nic_bandwidth(cfg)
        node = groups.members // cfg.chips_per_node
        spans = (node != node[:, :1]).any(axis=1)
        eff = hw.comm_efficiency / 1e9
        bw_inter = nic[node].min(axis=1) * eff
        same = (node[:, :, None] == node[:, None, :]).sum(axis=2) - 1
        # A chip drives up to intra_node_links links at once (a mesh: one per peer in the node).
        bw_intra = hw.intra_node_bandwidth * eff * min(hw.intra_node_links, max(int(same.max()), 1))
        return cls(spans=spans, bw=np.where(spans, bw_inter, bw_intra),
                   alpha=np.where(spans, hw.inter_node_latency_ns, hw.intra_node_latency_ns).astype(float),
                   bw_intra=bw_intra, bw_inter=bw_inter, local_peers=same,
                   remote_peers=groups.size - 1 - same)


def collective_time(kind: str, size: np.ndarray, links: LinkModel, sel: np.ndarray) -> np.ndarray:
    """Transfer time (ns) of one collective per selected group, once its last member arrived.

    ``size`` is [G', n]: each member's buffer in bytes (nccl-tests' "size": the all-reduce
    buffer, the all-gather output, the all-to-all send buffer); ``sel`` picks the groups.
    """
    n = size.shape[1]
    bw, alpha = links.bw[sel], links.alpha[sel]
    s = size.max(axis=1)
    if kind == "all_reduce":
        ring = 2 * (n - 1) / n * s / bw + 2 * (n - 1) * alpha
        tree = 2 * s / bw + 2 * np.ceil(np.log2(n)) * alpha
        return np.minimum(ring, tree)
    if kind == "all_gather":
        return (n - 1) / n * s / bw + (n - 1) * alpha
    if kind == "all_to_all":
        intra = size * links.local_peers[sel] / n / links.bw_intra
        inter = size * links.remote_peers[sel] / n / links.bw_inter[sel][:, None]
        return np.maximum(intra, inter).max(axis=1) + (n - 1) * alpha
    if kind == "send":
        return s / bw + alpha
    raise ValueError(f"unknown collective kind {kind!r}")
