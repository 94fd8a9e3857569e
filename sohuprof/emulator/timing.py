"""The timing model: how long an op or a collective takes on the emulated hardware.

Compute ops cost ``max(flops / (peak * eff), bytes / (bw * eff)) + launch`` (a roofline), where
the efficiencies follow the op's shape (:class:`ShapeModel`): a GEMM's M and N are rounded up to
the kernel's output tile and its tiles run in waves over the chip's compute units, then a
per-M table from the hardware preset; attention reads its efficiency from tables by the mean
context a query attends to (prefill is bound by FLOPs, decode by the KV bytes it streams).

Collectives are alpha-beta costs over the links their group crosses, as NCCL and DeepEP run
them: an all-reduce inside a node is the fastest of ring, tree, one-shot (every rank reads every
peer's buffer, TensorRT-LLM's custom all-reduce for small messages), two-shot (a reduce-scatter
and an all-gather with every peer at once) and, on switches that reduce in the fabric, NVLS;
across nodes it is hierarchical (intra-node reduce-scatter, an all-reduce of each chip's 1/l
shard over its own NIC, intra-node all-gather, pipelined). An all-to-all sends each (token,
expert) copy to its rank, the NVLink and NIC parts at the same time and their latencies
in parallel, as DeepEP's low-latency kernels do (for decode steps); a step that prefills runs
DeepEP's normal kernels, NVLink forwarding: a token crosses the NIC once per remote node its
experts lie on (few, under DeepSeek's group-limited routing) and fans out over NVLink there.
The dispatch travels in FP8 with its scales when the model is FP8 (lowering sizes the buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.emulator.config import EmulatorConfig
from sohuprof.emulator.lowering import ACT_BYTES, Feature, Program
from sohuprof.emulator.plan import GroupSet
from sohuprof.hardware import HardwareSpec
from sohuprof.models import ModelConfig
from sohuprof.strace import Engine

__all__ = ["LinkModel", "ShapeModel", "engine_rates", "op_times", "collective_time", "nic_bandwidth",
           "all_reduce_nic_share", "routing_spread"]

#: Op classes of :class:`ShapeModel`.
_FLAT, _GEMM, _ATTENTION = 0, 1, 2


def engine_rates(hw: HardwareSpec, dtype: str) -> np.ndarray:
    """FLOP/s each :class:`Engine` sustains on well-shaped work (inf where an engine does no arithmetic)."""
    rates = np.full(len(Engine), np.inf)
    rates[Engine.MATRIX] = hw.peak_flops(dtype) * hw.matmul_efficiency
    rates[Engine.VECTOR] = hw.vector_flops * hw.vector_efficiency
    return rates


def _interp_log2(x: np.ndarray, xs: tuple[float, ...], ys: tuple[float, ...], default: float) -> np.ndarray:
    """``ys`` at ``x`` interpolated in log2(x), held flat beyond the table; ``default`` without one."""
    if not xs:
        return np.full(x.shape, default)
    return np.interp(np.log2(np.maximum(x, 1.0)), np.log2(np.asarray(xs)), np.asarray(ys))


@dataclass(frozen=True)
class ShapeModel:
    """How each program position's efficiency follows its shape, resolved once per program.

    Per position ``k``: ``kind`` (flat, GEMM, attention), ``row_flops`` the FLOPs of one GEMM row
    (``2 K N``: rows are its FLOPs over that), ``groups`` the GEMMs its rows spread over (local
    experts of a grouped expert GEMM, else 1) and ``n`` its output columns.
    """

    kind: np.ndarray
    row_flops: np.ndarray
    groups: np.ndarray
    n: np.ndarray

    @classmethod
    def build(cls, program: Program, cfg: EmulatorConfig) -> ShapeModel:
        """Read each template's shape from its coefficients (and its ``n`` where lowering set one)."""
        m = cfg.model
        local_experts = (m.experts // cfg.ep if cfg.ep > 1 else m.experts) if m.is_moe else 1
        T = len(program.templates)
        kind, row_flops = np.zeros(T, np.int64), np.ones(T)
        groups, n = np.ones(T), np.ones(T)
        rows = (Feature.TOKENS, Feature.SAMPLES, Feature.LOCAL_TOKENS, Feature.EXPERT_PAIRS, Feature.PREFILL_CONTEXT,
                Feature.DRAFT_TOKENS)
        for i, t in enumerate(program.templates):   # once per template, not per op
            if t.op == "attention":
                kind[i] = _ATTENTION
            elif t.op == "gemm" and t.engine == Engine.MATRIX:
                col = next((c for c in rows if t.flops[c] > 0), None)
                if col is None:
                    continue
                kind[i], row_flops[i] = _GEMM, t.flops[col]
                groups[i] = local_experts if col == Feature.EXPERT_PAIRS else 1
                if t.n:
                    n[i] = t.n
                else:
                    # K + N from the activations a row reads and writes, K N from its FLOPs: the
                    # larger root is taken as N (output tiles), a guess only for unlabelled GEMMs.
                    s, p = t.act[col] / ACT_BYTES, t.flops[col] / 2
                    n[i] = (s + np.sqrt(max(s * s - 4 * p, 0.0))) / 2 if s > 0 else np.sqrt(p)
        idx = program.tmpl
        return cls(kind=kind[idx], row_flops=row_flops[idx], groups=groups[idx], n=n[idx])

    def efficiency(self, flops: np.ndarray, pairs_per_token: np.ndarray,
                   hw: HardwareSpec) -> tuple[np.ndarray, np.ndarray]:
        """Compute and memory efficiency of every (rank, position), ``[R, K]`` each.

        ``flops`` [R, K] are the step's FLOPs (a GEMM's rows follow from them, two-batch halves
        included); ``pairs_per_token`` [R] the mean context a query attends to. The compute
        efficiency folds in tile padding, so ``flops / (peak * eff)`` is the padded kernel's time.
        """
        R, K = flops.shape
        comp = np.full((R, K), hw.matmul_efficiency)
        mem = np.full((R, K), hw.memory_efficiency)
        g = self.kind == _GEMM
        if g.any():
            rows = flops[:, g] / self.row_flops[g]                                   # [R, Kg]
            groups = np.minimum(self.groups[g], np.maximum(rows, 1.0))                # experts that got rows
            m = np.maximum(rows / groups, 1.0)                                       # rows per GEMM
            tm, tn, units = hw.gemm_tile_m, hw.gemm_tile_n, hw.compute_units
            m_tiles = np.ceil(m / tm)
            tiles = m_tiles * np.ceil(self.n[g] / tn) * groups
            waves = np.ceil(tiles / units)
            wave = tiles / (waves * units)                                           # last wave part-filled
            pad = m_tiles * tm / m                                                   # rows computed / rows used
            comp[:, g] = _interp_log2(m_tiles * tm, hw.gemm_rows, hw.gemm_efficiency, hw.matmul_efficiency) \
                * wave / pad
        a = self.kind == _ATTENTION
        if a.any():
            ctx = pairs_per_token[:, None]
            comp[:, a] = _interp_log2(ctx, hw.attention_context, hw.attention_prefill_efficiency,
                                      hw.matmul_efficiency)
            mem[:, a] = _interp_log2(ctx, hw.attention_context, hw.attention_decode_efficiency,
                                     hw.memory_efficiency)
        return comp, mem


def op_times(flops: np.ndarray, hbm: np.ndarray, engine: np.ndarray, hw: HardwareSpec, dtype: str,
             slowdown: np.ndarray, jitter: np.ndarray,
             efficiency: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Duration and memory-stall time (ns) of compute and DMA ops.

    ``flops`` and ``hbm`` are [R, K]; ``engine`` [K]; ``slowdown`` [R] (a throttled chip runs every
    op that many times slower); ``jitter`` [R, K] factors >= 1, so no op ever beats its roof.
    ``efficiency`` (:meth:`ShapeModel.efficiency`) replaces the matrix engine's and the memory's
    flat efficiencies by shape-aware ones.
    """
    if efficiency is None:
        compute = flops / engine_rates(hw, dtype)[engine] * 1e9
        memory = hbm / (hw.hbm_bandwidth * hw.memory_efficiency) * 1e9
    else:
        comp, mem = efficiency
        rates = engine_rates(hw, dtype)[engine]
        matrix = engine == Engine.MATRIX
        # Matrix ops at their shape's efficiency; vector and DMA ops as before.
        rates = np.where(matrix, hw.peak_flops(dtype) * comp, rates)
        compute = flops / rates * 1e9
        memory = hbm / (hw.hbm_bandwidth * np.where(matrix, mem, hw.memory_efficiency)) * 1e9
    scale = slowdown[:, None] * jitter
    busy = np.maximum(compute, memory)
    # An op with any work lasts at least a cycle of the trace unit: a few-FLOP router or sampling
    # op on a chip without launch overhead (Sohu) would otherwise be recorded as taking no time.
    # Before the slowdown, so a throttled chip stays exactly its factor slower.
    busy = np.where(busy > 0, np.maximum(busy, 1e9 / hw.clock_hz), busy) * scale
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


def routing_spread(model: ModelConfig, n: int, local: int) -> tuple[float, float]:
    """Where a token's ``top_k`` experts lie when the experts are spread evenly over ``n`` ranks,
    ``local`` a node: the expected other nodes it visits, and the NVLink copies a forwarding
    all-to-all fans it out to on the nodes it visits (DeepEP's normal kernels: one NIC crossing
    per remote node, then NVLink to the GPUs holding its experts there).

    With group-limited routing (``groups_per_token`` of ``expert_groups`` contiguous groups, as
    DeepSeek-V3's 4 of 8) the token visits the nodes of its distinct groups; otherwise its
    experts fall uniformly at random (expected distinct bins of ``top_k`` draws).
    """
    k = max(model.top_k, 1)
    nodes = max(n // max(local, 1), 1)
    if model.expert_groups and model.groups_per_token:
        g, t = model.expert_groups, model.groups_per_token
        if nodes <= g:
            # g / nodes groups a node; t distinct groups drawn: a node is missed if all t avoid it.
            per = g // nodes
            miss = np.prod([(g - per - i) / (g - i) for i in range(t)]) if g - per >= t else 0.0
            visited = nodes * (1 - miss)
        else:
            # A group spans nodes / g nodes; the token's k / t experts in each fall among them.
            span = nodes / g
            visited = t * span * (1 - (1 - 1 / span) ** (k / t))
    else:
        visited = nodes * (1 - (1 - 1 / nodes) ** k)
    per_node = k / visited                                      # experts a visited node holds
    gpus = local * (1 - (1 - 1 / local) ** per_node)            # distinct GPUs among them
    return float(visited * (nodes - 1) / nodes), float(visited * gpus * (local - 1) / local)


def all_reduce_nic_share(n: int, local: int) -> float:
    """Bytes each member of a hierarchical all-reduce sends (and receives) across nodes, per byte
    of its buffer: a ring all-reduce of its ``1/local`` shard over the ``n / local`` nodes."""
    m = n // max(local, 1)
    return 2 * (m - 1) / m / local if m > 1 else 0.0


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
    local: int = 1          # members per node (groups are consecutive ranks: the same on every node)
    alpha_intra: float = 0.0
    alpha_inter: float = 0.0
    nvls: float = 0.0       # fraction of the link an in-switch all-reduce reaches (0: no NVLS)
    top_k: int = 1          # copies of a token an all-to-all moves (experts it visits)
    remote_nodes: float = 0.0   # other nodes a token's experts lie on (expected; forwarding mode)
    node_gpus: float = 0.0      # NVLink copies per token a forwarding all-to-all fans out
    uniform: bool = True        # every node holds ``local`` members (forwarding needs peers of each index)

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
                   remote_peers=groups.size - 1 - same, local=int(same[:, 0].min()) + 1,
                   alpha_intra=float(hw.intra_node_latency_ns), alpha_inter=float(hw.inter_node_latency_ns),
                   nvls=float(hw.nvls) if hw.intra_node_links == 1 else 0.0,
                   top_k=max(cfg.model.top_k, 1), uniform=bool((same == same.min()).all()),
                   **dict(zip(("remote_nodes", "node_gpus"),
                              routing_spread(cfg.model, groups.size, int(same[:, 0].min()) + 1))))


def _intra_all_reduce(s: np.ndarray, n: int, bw: float, alpha: float, nvls: float) -> np.ndarray:
    """All-reduce of ``s`` bytes over ``n`` chips of one node: NCCL's ring or tree, TensorRT-LLM's
    one-shot or two-shot all-reduce, or NVLS, whichever is fastest (as they pick by size)."""
    if n <= 1:
        return np.zeros_like(s)
    ring = 2 * (n - 1) / n * s / bw + 2 * (n - 1) * alpha
    tree = 2 * s / bw + 2 * np.ceil(np.log2(n)) * alpha
    one_shot = (n - 1) * s / bw + 2 * alpha      # write to every peer once, one barrier each side
    # Two-shot: reduce-scatter then all-gather, each a single round with every peer at once (a
    # switch or a full mesh carries all of a chip's links together): the ring's bytes, 2 latencies.
    two_shot = 2 * (n - 1) / n * s / bw + 2 * alpha
    best = np.minimum(np.minimum(ring, tree), np.minimum(one_shot, two_shot))
    if nvls > 0:
        best = np.minimum(best, s / (bw * nvls) + 2 * alpha)   # each byte up to the switch and back once
    return best


def _intra_half(s: np.ndarray, n: int, bw: float, alpha: float) -> np.ndarray:
    """Ring reduce-scatter (or all-gather) of an ``s``-byte buffer over ``n`` chips of one node
    (in-switch reduction does not help here: each chip still sends its whole buffer once)."""
    if n <= 1:
        return np.zeros_like(s)
    return (n - 1) / n * s / bw + (n - 1) * alpha


def collective_time(kind: str, size: np.ndarray, links: LinkModel, sel: np.ndarray,
                    forward: np.ndarray | None = None) -> np.ndarray:
    """Transfer time (ns) of one collective per selected group, once its last member arrived.

    ``size`` is [G', n]: each member's buffer in bytes (nccl-tests' "size": the all-reduce
    buffer, the all-gather output, the all-to-all send buffer); ``sel`` picks the groups.
    ``forward`` [G'] marks all-to-alls run with NVLink forwarding (DeepEP's normal kernels, as
    SGLang runs them for steps that prefill); the others run as the low-latency kernels.
    """
    n = size.shape[1]
    bw, alpha = links.bw[sel], links.alpha[sel]
    spans = links.spans[sel]
    s = size.max(axis=1)
    if kind == "all_reduce":
        l = links.local
        m = n // l
        inside = _intra_all_reduce(s, n, links.bw_intra, links.alpha_intra, links.nvls)
        if not spans.any():
            return inside
        # Hierarchical: reduce-scatter in the node, each chip all-reduces its 1/l shard with its
        # peers of the same index on the other nodes over its own NIC, all-gather in the node.
        # NCCL pipelines the three phases chunk by chunk, so the slowest one sets the pace.
        shard = s / l
        ring = 2 * (m - 1) / m * shard / bw + 2 * (m - 1) * links.alpha_inter
        tree = 2 * shard / bw + 2 * np.ceil(np.log2(m)) * links.alpha_inter
        halves = 2 * _intra_half(s, l, links.bw_intra, links.alpha_intra)
        return np.where(spans, np.maximum(halves, np.minimum(ring, tree)) + 2 * links.alpha_intra, inside)
    if kind == "all_gather":
        return (n - 1) / n * s / bw + (n - 1) * alpha
    if kind == "all_to_all":
        local, remote = links.local_peers[sel], links.remote_peers[sel]
        # Low-latency form: each (token, expert) copy straight to its rank; the NVLink and NIC
        # parts run at once, one latency each, in parallel.
        intra = size * local / n / links.bw_intra
        inter = size * remote / n / links.bw_inter[sel][:, None]
        lat = np.where(spans, links.alpha_inter, links.alpha_intra)
        direct = np.maximum(intra, inter).max(axis=1) + lat
        if forward is None or not links.uniform or not (forward & spans).any():
            return direct
        # NVLink forwarding: a token crosses the NIC once per remote node holding its experts,
        # to the same-index GPU there, which forwards it over NVLink; a notify round first.
        token = size / links.top_k
        fwd = np.maximum(token * links.remote_nodes / links.bw_inter[sel][:, None],
                         token * links.node_gpus / links.bw_intra).max(axis=1) + 2 * lat
        return np.where(forward & spans, fwd, direct)
    if kind == "send":
        return s / bw + alpha
    raise ValueError(f"unknown collective kind {kind!r}")
