"""The emulated Sohu runtime: serve a workload on a simulated cluster, one scheduler step at a time.

Every step, each replica's scheduler forms a batch; the lowered program's FLOPs and bytes follow
from the batch features in one matrix product; op durations come from the timing model; and a
short loop over the step's collectives (vectorized over every rank and group) resolves the
synchronisation: each rank arrives at its own time, the transfer starts when the last member
arrives and all members leave together. The trace unit also counts, per chip and step, what its
share of the node's NIC sent and received across nodes (:class:`NicCounters`). Nothing loops per
op or per record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from sohuprof.emulator.clock import NodeClocks
from sohuprof.emulator.config import EmulatorConfig
from sohuprof.emulator.lowering import ACT_BYTES, Feature, Program, lower
from sohuprof.emulator.plan import GroupSet, ParallelPlan
from sohuprof.emulator.scheduler import Batch, VirtualEngines
from sohuprof.emulator.timing import (LinkModel, ShapeModel, all_reduce_nic_share, collective_time, nic_bandwidth,
                                     op_times)
from sohuprof.errors import SpecError
from sohuprof.strace import NO_GROUP, NO_LAYER, RECORD_DTYPE, Engine, Phase

__all__ = ["StepTrace", "NicCounters", "NIC_COUNTERS", "Emulation", "weights_per_chip", "kv_capacity_tokens"]

_LAYER_FEATURES = (Feature.EXPERT_PAIRS, Feature.ACTIVE_EXPERTS)


#: The NIC port counters a chip's trace unit keeps, in the order of :attr:`NicCounters.values`.
NIC_COUNTERS = ("tx_bytes", "tx_ns", "wait_ns", "rx_bytes", "rx_ns")


@dataclass(frozen=True)
class NicCounters:
    """One step's NIC port counters, for every chip whose NIC share moved bytes across nodes.

    Per chip, over the step's collectives (bytes by nccl's conventions: a hierarchical all-reduce
    over ``m`` nodes of ``l`` members sends ``2(m-1)/m x S/l`` to its same-index peer on the next
    node, a ring all-gather ``(n-1)/n x S`` to the ring neighbour, an all-to-all
    ``S/n`` to every peer, a pipeline send ``S`` from the sender; only what goes to another node
    counts): ``tx_bytes`` sent, ``tx_ns`` the time the port spent sending them at its own line
    rate (its node's NIC share per chip x ``comm_efficiency``), ``wait_ns`` the rest of each
    transfer it sent in (the far end or the group's slowest NIC holding it back), ``rx_bytes``
    received and ``rx_ns`` the time the port spent receiving them at its own line rate.

    Attributes
    ----------
    rank : numpy.ndarray
        ``[M]`` int64, the chips.
    end_ns : numpy.ndarray
        ``[M]`` float64, the end of the step on each chip's replica (true ns): when the counters
        are read.
    values : numpy.ndarray
        ``[len(NIC_COUNTERS), M]`` int64, rounded to whole bytes and ns.
    """

    rank: np.ndarray
    end_ns: np.ndarray
    values: np.ndarray

    @classmethod
    def empty(cls) -> NicCounters:
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros((len(NIC_COUNTERS), 0), np.int64))

    def __len__(self) -> int:
        return len(self.rank)


@dataclass(frozen=True)
class StepTrace:
    """The records of one step: ``records[i]`` ran on ``rank[i]``.

    ``records`` hold start/end in the chip's local cycles, as written; ``start_ns``/``end_ns``
    are the same instants in true (cluster) ns, for in-memory use. ``nic`` holds the step's NIC
    port counters."""

    step: int
    rank: np.ndarray
    records: np.ndarray   # RECORD_DTYPE
    start_ns: np.ndarray  # [N] float64 true start
    end_ns: np.ndarray    # [N]
    nic: NicCounters = field(default_factory=NicCounters.empty)


@dataclass(frozen=True)
class _NicRoutes:
    """Where a group set's members send across nodes (only sets with a group spanning nodes)."""

    ring_out: np.ndarray      # [G, n] bool: the ring neighbour (next member, wrapping) is on another node
    p2p_out: np.ndarray       # [G, n] bool: a pipeline sender (member 0) whose receiver is on another node
    remote_peers: np.ndarray  # [G, n] members on other nodes
    code: np.ndarray          # [G, n] index of the member's (group, node) among the set's
    codes: int

    @classmethod
    def build(cls, groups: GroupSet, links: LinkModel, rank_node: np.ndarray) -> _NicRoutes:
        node = rank_node[groups.members]
        ring_out = np.roll(node, -1, axis=1) != node
        p2p_out = np.zeros_like(ring_out)
        if groups.size == 2:
            p2p_out[:, 0] = node[:, 1] != node[:, 0]
        key = np.arange(len(node))[:, None] * (int(node.max()) + 1) + node
        _, code = np.unique(key, return_inverse=True)
        code = code.reshape(node.shape)
        return cls(ring_out=ring_out, p2p_out=p2p_out, remote_peers=links.remote_peers, code=code,
                   codes=int(code.max()) + 1)


@dataclass
class _Collective:
    """Static facts of one collective position in the program."""

    pos: int
    kind: str
    groups: GroupSet
    links: LinkModel
    overlaps: bool
    member: np.ndarray      # [R] bool, rank takes part
    rank_group: np.ndarray  # [R] index of the rank's group in ``groups`` (0 for non-members)
    # An all-to-all's partner (the dispatch's combine and back) and what its buffer per pair is
    # of the partner's: a member receives what its partner position sends, scaled (-1: none).
    partner: int = -1
    partner_ratio: float = 0.0


@dataclass
class _Compiled:
    """A program's per-position arrays, resolved against the plan once per run."""

    program: Program
    engine: np.ndarray
    is_coll: np.ndarray
    overlaps: np.ndarray
    active: np.ndarray      # [R, K] rank runs position
    seq_mask: np.ndarray    # [R, K] op advances the rank's stream
    coef_flops: np.ndarray  # [F, K]
    coef_hbm: np.ndarray
    coef_net: np.ndarray
    moe_pos: np.ndarray     # positions whose work depends on per-layer expert routing
    collectives: list[_Collective]
    joins: list[int]        # positions that wait for an overlapped collective
    has_parts: bool
    # Background ops (an overlapped DMA: the KV-cache write) and the stream op each runs under.
    bg_pos: np.ndarray
    bg_partner: np.ndarray
    # Overlapped collectives (indices), the position their stream's next event is at, the HBM
    # bytes each moves per buffer byte, and the stream ops that run under them (positions, and
    # which of them each runs under).
    ov_ci: np.ndarray
    ov_q: np.ndarray
    ov_traffic: np.ndarray
    win_pos: np.ndarray
    win_of: np.ndarray
    events: list[tuple[int, int]]  # (position, collective index or -1 for a join), in issue order
    event_pos: np.ndarray   # [E] their positions
    segment: np.ndarray     # [K] events at or before each position
    collective_batches: dict[tuple[str, int], list[int]]  # collectives sharing a kind and group set
    # Per group set: its collectives in issue order, and which groups take part in each [C, G].
    sequence_plan: list[tuple[GroupSet, list[int], np.ndarray]]
    coll_pos: np.ndarray    # [C] position of each collective
    coll_member: np.ndarray  # [C, R]
    nic_routes: dict[int, _NicRoutes]  # by id of the group set, for sets with a group spanning nodes

    @classmethod
    def build(cls, prog: Program, em: Emulation) -> _Compiled:
        plan = em.plan
        tmpl = [prog.templates[i] for i in prog.tmpl]
        is_coll = np.array([t.collective is not None for t in tmpl])
        active = (plan.stage[:, None] == prog.stage[None, :]) | (plan.stage[:, None] == prog.peer_stage[None, :])
        # C order: numpy's matmul of [R, F] by an F-ordered [F, K] misses BLAS at some F (100x slower).
        coef_flops, coef_hbm = (np.ascontiguousarray(a[prog.tmpl].T) for a in (prog.flops, prog.hbm))
        cols = list(_LAYER_FEATURES)
        coef_net = np.ascontiguousarray(prog.net[prog.tmpl].T)
        moe_pos = np.flatnonzero((coef_flops[cols] != 0).any(0) | (coef_hbm[cols] != 0).any(0)
                                 | (coef_net[cols] != 0).any(0))
        links = [(gs, LinkModel.build(gs, em.cfg)) for gs in plan.all_groups()]
        by_kind = {"tp": plan.tp_groups, "ep": plan.ep_groups}
        collectives = []
        for pos in np.flatnonzero(is_coll):
            t = tmpl[pos]
            gs = plan.pp_groups[prog.stage[pos]] if t.group == "pp" else by_kind[str(t.group)]
            if gs is None:
                raise AssertionError(f"op {t.name} needs {t.group} groups the plan does not have")
            link = next(lm for g, lm in links if g is gs)
            member = np.zeros(plan.world, bool)
            member[gs.members.reshape(-1)] = True
            rank_group = np.zeros(plan.world, np.int64)
            rank_group[gs.members] = np.arange(len(gs.members))[:, None]
            collectives.append(_Collective(int(pos), t.collective, gs, link, bool(prog.overlaps[pos]),
                                           member, rank_group))
        # Receive side of the MoE all-to-alls: a rank receives in the dispatch the pairs its
        # experts compute (what it sends back in the combine), and in the combine what it sent.
        tnames = np.array([t.name for t in tmpl])
        for c in collectives:
            if c.kind != "all_to_all":
                continue
            other = "moe_combine" if tmpl[c.pos].name == "moe_dispatch" else "moe_dispatch"
            same = np.flatnonzero((prog.layer == prog.layer[c.pos]) & (prog.part == prog.part[c.pos])
                                  & (tnames == other))
            if len(same):
                d, q = (c.pos, int(same[0])) if other == "moe_combine" else (int(same[0]), c.pos)
                per_pair_d = coef_net[Feature.LOCAL_TOKENS, d] / max(em.cfg.model.top_k, 1)
                per_pair_c = coef_net[Feature.EXPERT_PAIRS, q]
                c.partner = int(same[0])
                c.partner_ratio = float(per_pair_d / per_pair_c if c.pos == d else per_pair_c / per_pair_d)
        # An overlapped all-to-all dispatch (shared experts computing meanwhile) is waited for by
        # the routed experts that consume its tokens.
        names = [t.name for t in tmpl]
        # (Under two-batch overlap the other micro-batch's block, ending in its own collective,
        # sits between the two: issuing that collective waits for this one, in order.)
        joins = [names.index("expert_gate_up", c.pos) for c in collectives
                 if c.overlaps and c.kind == "all_to_all" and prog.part[c.pos] < 0]
        # After two-batch-overlap layers, the whole-batch ops (head, pipeline send) wait for the
        # second micro-batch's last all-reduce.
        part = prog.part
        joins += [int(k) for k in np.flatnonzero((part[1:] < 0) & (part[:-1] >= 0)) + 1]
        events = sorted([(c.pos, i) for i, c in enumerate(collectives)] + [(p, -1) for p in joins])
        event_pos = np.array([p for p, _ in events], dtype=np.int64)
        batches: dict[tuple[str, int], list[int]] = {}
        by_set: dict[int, list[int]] = {}
        for i, c in enumerate(collectives):
            batches.setdefault((c.kind, id(c.groups)), []).append(i)
            by_set.setdefault(id(c.groups), []).append(i)
        sequence_plan = []
        for idx in by_set.values():
            gs = collectives[idx[0]].groups
            takes_part = np.array([active[gs.members[:, 0], collectives[i].pos] for i in idx])
            sequence_plan.append((gs, idx, takes_part))
        # A background op shares the HBM with the stream op it runs under (the next one of its
        # stage): the pair streams both ops' bytes within the roof, over the same interval.
        fg = ~is_coll & ~prog.overlaps
        bg_pos = np.flatnonzero(~is_coll & prog.overlaps)
        bg_partner = np.array([next(j for j in range(k + 1, len(prog)) if fg[j] and prog.stage[j] == prog.stage[k])
                               for k in bg_pos], dtype=np.int64)
        # An overlapped collective runs under the stream's ops up to the stream's next event
        # (collective or join) of its stage; it moves each byte it sends or receives through HBM.
        ov_ci = np.array([i for i, c in enumerate(collectives) if c.overlaps], dtype=np.int64)
        ov_q = np.zeros(len(ov_ci), np.int64)
        win_pos, win_of = [], []
        for s in np.unique(prog.stage):
            mine = (prog.stage[event_pos] == s) | (prog.peer_stage[event_pos] == s)
            ev_s = event_pos[mine]
            fg_s = np.flatnonzero(fg & (prog.stage == s))
            for j, ci in enumerate(ov_ci):
                p = collectives[ci].pos
                if prog.stage[p] != s:
                    continue
                after = ev_s[ev_s > p]
                ov_q[j] = after[0] if len(after) else len(prog)
                k = fg_s[(fg_s > p) & (fg_s < ov_q[j])]
                win_pos.append(k)
                win_of.append(np.full(len(k), j))
        wire = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
                "all_to_all": lambda n: (n - 1) / n, "send": lambda n: 0.5}
        ring = lambda n: (n - 1) / n      # noqa: E731 - reduce_scatter, and any kind not above
        ov_traffic = np.array([2 * wire.get(collectives[ci].kind, ring)(collectives[ci].groups.size) for ci in ov_ci])
        return cls(program=prog, engine=np.array([int(t.engine) for t in tmpl]), is_coll=is_coll,
                   bg_pos=bg_pos, bg_partner=bg_partner, ov_ci=ov_ci, ov_q=ov_q, ov_traffic=ov_traffic,
                   win_pos=np.concatenate(win_pos) if win_pos else np.zeros(0, np.int64),
                   win_of=np.concatenate(win_of) if win_of else np.zeros(0, np.int64),
                   overlaps=prog.overlaps, active=active, seq_mask=active & ~is_coll & ~prog.overlaps,
                   coef_flops=coef_flops, coef_hbm=coef_hbm, coef_net=coef_net,
                   moe_pos=moe_pos, collectives=collectives, joins=joins, has_parts=bool((prog.part >= 0).any()),
                   events=events, event_pos=event_pos,
                   segment=np.searchsorted(event_pos, np.arange(len(prog)), side="right"),
                   collective_batches=batches, sequence_plan=sequence_plan,
                   coll_pos=np.array([c.pos for c in collectives], dtype=np.int64),
                   # bool even when the plan has no collective (one chip, pure DP): an empty
                   # np.array([]) would be float64 and fail the ``& running`` mask later.
                   coll_member=np.array([c.member for c in collectives],
                                        dtype=bool).reshape(len(collectives), plan.world),
                   nic_routes={id(gs): _NicRoutes.build(gs, lm, plan.node) for gs, lm in links if lm.spans.any()})


@dataclass
class Emulation:
    """A configured run; iterate :meth:`steps` to simulate it."""

    cfg: EmulatorConfig
    plan: ParallelPlan = field(init=False)
    program: Program = field(init=False)
    clocks: NodeClocks = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.cfg
        cfg.validate()
        # Refuse before any per-rank array exists: a cluster too big for memory would otherwise
        # end in a MemoryError, or the OOM killer, minutes in. Imported here because the
        # estimate builds on this module's capacity functions.
        from sohuprof.emulator.estimate import check_memory, estimate_run
        check_memory(estimate_run(cfg))
        self.plan = plan = ParallelPlan.build(cfg)
        self.program = prog = lower(cfg, plan)
        self.rng = np.random.default_rng(cfg.seed)
        self.clocks = NodeClocks.random(cfg.nodes, cfg.clock_skew_us, self.rng)
        self.names = prog.names() + ["host_step"]
        self._host_name = len(self.names) - 1
        # Receive-side name of each template (a pipeline send is a recv on the next stage).
        self._peer_name = np.array([self.names.index(t.peer_name) if t.peer_name else i
                                    for i, t in enumerate(prog.templates)], dtype=np.uint32)
        self._static_program()
        self._workload()
        self._experts()

    # ----------------------------------------------------------------- setup
    def _static_program(self) -> None:
        self.compiled = _Compiled.build(self.program, self)
        self.compiled_tbo = None
        self._overlap_pays: dict[tuple[int, bool], bool] = {}   # two-batch overlap's choice by step size
        if (self.cfg.tp > 1 or self.cfg.ep > 1) and self.cfg.two_batch_overlap:
            tbo = lower(self.cfg, self.plan, two_batch=True)
            if tbo.names() != self.program.names():
                raise AssertionError("two-batch program must share the op-name table")
            self.compiled_tbo = _Compiled.build(tbo, self)
        moe_layers = np.array([li for li in range(self.cfg.model.layers) if self.cfg.model.is_moe_layer(li)], dtype=np.int64)
        self.moe_layer_index = np.full(self.cfg.model.layers, -1)
        self.moe_layer_index[moe_layers] = np.arange(len(moe_layers))
        self.n_moe_layers = len(moe_layers)
        self.n_groups = sum(len(gs.ids) for gs in self.plan.all_groups())
        self.seq = np.zeros(self.n_groups, np.int64)
        self.slowdown = np.ones(self.plan.world)
        # Each chip's NIC share, bytes/ns at the efficiency collectives reach (the port's line rate).
        self.nic_rate = (nic_bandwidth(self.cfg) * self.cfg.hardware.comm_efficiency / 1e9)[self.plan.node]
        for f in self.cfg.faults:
            if f.kind == "straggler":
                self.slowdown[f.rank] *= f.slowdown

    def _workload(self) -> None:
        cfg = self.cfg
        n = cfg.requests
        if cfg.rate is None:
            arrival = np.zeros(n)
        else:
            arrival = np.cumsum(self.rng.exponential(1e9 / cfg.rate, n))
        self.arrival_ns = arrival
        # Lengths and draft acceptance draw from streams of their own: a fixed-length run draws
        # what it always did, and changing one distribution leaves the other's draws alone.
        self.prompt_tokens = cfg.prefix_len + cfg.prompt_dist.draw(np.random.default_rng([cfg.seed, 1]), n, cfg.prompt_len)
        self.output_tokens = cfg.output_dist.draw(np.random.default_rng([cfg.seed, 2]), n, cfg.output_len)
        spec_rng = np.random.default_rng([cfg.seed, 3])
        P = cfg.prefill_replicas
        # Round-robin routers: with disaggregated serving one over the prefill replicas (the
        # first P) and one over the decode replicas (the rest); a request finishes on the latter.
        self.request_prefill = np.arange(n) % (P or cfg.dp)
        self.request_replica = P + np.arange(n) % (cfg.dp - P) if P else self.request_prefill
        cap = self._kv_capacity_tokens()
        self.kv_capacity_tokens = cap
        self.schedulers = []
        self.replica_requests = []
        for r in range(cfg.dp):
            prefill = P > 0 and r < P
            idx = np.flatnonzero((self.request_prefill if prefill else self.request_replica) == r)
            self.replica_requests.append(idx)
            # A prefill replica serves each prompt and its first token; a decode replica gets the
            # request when its KV has arrived (unknown until then).
            self.schedulers.append(VirtualEngines(
                np.full(len(idx), np.inf) if P and not prefill else arrival[idx], self.prompt_tokens[idx],
                np.ones(len(idx), np.int64) if prefill else self.output_tokens[idx],
                engines=cfg.pp, max_batch_tokens=cfg.max_batch_tokens, max_seqs=cfg.max_seqs, kv_capacity_tokens=cap,
                # (a decode replica receives each request's KV whole: nothing to look up)
                prefix_len=0 if P and not prefill else cfg.prefix_len, spec_tokens=cfg.spec_tokens,
                spec_accept=cfg.spec_accept, rng=spec_rng,
                transferred=P > 0 and not prefill))
        self.kv_transfers: list[dict[str, np.ndarray]] = []
        if P:
            # KV bytes a token adds on each rank of a replica (its stage's layers, its TP shard).
            m = cfg.model
            per_layer = m.kv_elements_per_token() if m.mla else 2 * max(m.kv_heads // cfg.tp, 1) * m.head_dim
            ranks0 = self.plan.replica_ranks(0)
            self._kv_token_bytes = np.diff(self.plan.stage_layers)[self.plan.stage[ranks0]] * per_layer * cfg.kv_bytes
            self._nic_free = np.zeros(cfg.dp)

    def _send_kv(self, src: int, requests: np.ndarray, ready_ns: float) -> None:
        """Disaggregated serving: send ``requests``' KV from prefill replica ``src`` (their prefill
        ended at ``ready_ns``) to their decode replicas, each rank to its peer of the same stage
        and TP index over the NIC, one request after another on the replica's NIC; each request
        arrives when its last rank's share has."""
        plan, hw = self.plan, self.cfg.hardware
        requests = requests[self.output_tokens[requests] > 1]   # a one-token request ends where it was prefilled
        if not len(requests):
            return
        dst = self.request_replica[requests]
        src_ranks = plan.replica_ranks(src)
        dst_ranks = np.stack([plan.replica_ranks(int(d)) for d in np.unique(dst)])[np.unique(dst, return_inverse=True)[1]]
        rate = np.minimum(self.nic_rate[src_ranks][None, :], self.nic_rate[dst_ranks])          # [Q, ranks] bytes/ns
        nbytes = self.prompt_tokens[requests][:, None] * self._kv_token_bytes[None, :]
        dur = (nbytes / rate).max(axis=1) + hw.inter_node_latency_ns
        start = max(ready_ns, self._nic_free[src])
        end = start + np.cumsum(dur)
        self._nic_free[src] = end[-1]
        self.kv_transfers.append({"request": requests, "src": np.full(len(requests), src), "dst": dst,
                                  "bytes": nbytes.sum(axis=1), "start": end - dur, "end": end})
        for d in np.unique(dst):
            mine = dst == d
            local = np.searchsorted(self.replica_requests[int(d)], requests[mine])
            self.schedulers[int(d)].receive(local, end[mine])

    def weights_per_chip(self) -> np.ndarray:
        """Weight bytes held by a chip of each pipeline stage."""
        return weights_per_chip(self.cfg, self.plan.stage_layers)

    def _kv_capacity_tokens(self) -> int:
        return kv_capacity_tokens(self.cfg, self.plan.stage_layers)

    def _experts(self) -> None:
        """Each MoE layer's expert popularity (the routing's probabilities)."""
        m, skew = self.cfg.model, self.cfg.expert_skew
        if not m.is_moe:
            return
        layers = max(self.n_moe_layers, 1)
        if skew is None:
            # Some experts are hotter than others, differently in every layer: routing imbalance.
            self.expert_p = self.rng.dirichlet(np.full(m.experts, 4.0), size=layers)
            return
        # Zipf popularity (the r-th hottest expert ~ r**-skew) over an order of its own in every layer.
        w = (1.0 + np.arange(m.experts)) ** -skew
        order = self.rng.permuted(np.tile(np.arange(m.experts), (layers, 1)), axis=1)   # [Lm, E] by heat
        self.expert_p = (w / w.sum())[np.argsort(order, axis=1)]

    # ----------------------------------------------------------------- per step
    def _features(self, batches: list[Batch], running: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-rank features [R, F] and per-(rank, MoE layer) expert features [R, Lm, 2]."""
        cfg, plan, m = self.cfg, self.plan, self.cfg.model
        rep = np.zeros((len(batches), Feature.COUNT))
        rep[:, :5] = [[b.tokens > 0, b.tokens, b.pairs, b.kv_read, b.samples] for b in batches]
        cols = [Feature.PREFILL_PAIRS, Feature.PREFILL_CONTEXT, Feature.DRAFT_TOKENS, Feature.PREFILL_STEP,
                Feature.DRAFT_STEP, Feature.PREFILL_TOKENS]
        rep[:, cols] = [[b.prefill_pairs, b.prefill_context, b.draft_tokens, b.prefill_tokens > 0,
                         b.draft_tokens > 0, b.prefill_tokens] for b in batches]
        feat = rep[plan.replica]
        feat[~running[plan.replica]] = 0
        tokens = feat[:, Feature.TOKENS].astype(np.int64)
        tp_index = np.arange(plan.world) % cfg.tp
        local = tokens // cfg.tp + (tp_index < tokens % cfg.tp)
        feat[:, Feature.LOCAL_TOKENS] = local
        per_layer = np.zeros((plan.world, max(self.n_moe_layers, 1), 2))
        if m.is_moe and self.n_moe_layers:
            if cfg.ep == 1:
                # Experts are TP-sharded: every rank computes every routed pair, with 1/tp of each expert.
                pairs = tokens[:: cfg.tp] * m.top_k                         # per (stage, replica) group
                counts = self.rng.multinomial(pairs[None, :], self.expert_p[:, None, :])  # [Lm, G, E]
                active = (counts > 0).sum(-1)                                # [Lm, G]
                grp = np.arange(plan.world) // cfg.tp
                per_layer[:, :, 0] = pairs[grp][:, None]
                per_layer[:, :, 1] = active.T[grp]
            elif plan.ep_groups is not None:
                members = plan.ep_groups.members                             # [G, ep]
                sent = local[members].sum(1) * m.top_k                       # pairs each EP group routes
                counts = self.rng.multinomial(sent[None, :], self.expert_p[:, None, :])  # [Lm, G, E]
                per_rank = m.experts // cfg.ep
                counts = counts.reshape(self.n_moe_layers, len(members), cfg.ep, per_rank)
                ranks = members.reshape(-1)
                per_layer[ranks, :, 0] = counts.sum(-1).reshape(self.n_moe_layers, -1).T
                per_layer[ranks, :, 1] = (counts > 0).sum(-1).reshape(self.n_moe_layers, -1).T
        return feat, per_layer

    def _work(self, cp: _Compiled, feat: np.ndarray, per_layer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FLOPs, HBM bytes and collective buffer bytes of every (rank, position): [R, K] each."""
        parts = [(feat, per_layer, cp.program.part < 0)]
        if cp.has_parts:
            # Two micro-batches: split the token-proportional features, keep the constant ones.
            tokens = feat[:, Feature.TOKENS]
            share = np.divide(np.ceil(tokens / 2), tokens, out=np.zeros_like(tokens), where=tokens > 0)
            scale_a = np.repeat(share[:, None], Feature.COUNT, axis=1)
            scale_a[:, list(Feature.CONSTANT)] = 1.0
            scale_b = 1.0 - scale_a
            scale_b[:, list(Feature.CONSTANT)] = 1.0
            for i, scale in enumerate((scale_a, scale_b)):
                layer_scale = scale[:, None, [Feature.EXPERT_PAIRS, Feature.ACTIVE_EXPERTS]]
                parts.append((feat * scale, per_layer * layer_scale, cp.program.part == i))
        flops = np.zeros((feat.shape[0], len(cp.program)))
        hbm = np.zeros_like(flops)
        net = np.zeros_like(flops)
        cols = list(_LAYER_FEATURES)
        # Only the features some op of this program uses: each unused column is zero work, and a
        # wider product than needed makes BLAS thread (several times slower on a busy machine).
        used = np.flatnonzero((cp.coef_flops != 0).any(1) | (cp.coef_hbm != 0).any(1) | (cp.coef_net != 0).any(1))
        mats = [np.ascontiguousarray(c[used]) for c in (cp.coef_flops, cp.coef_hbm, cp.coef_net)]
        for f, pl, where in parts:
            fu = f[:, used]
            fl, hb, nt = (fu @ c for c in mats)
            if len(cp.moe_pos):
                pos = cp.moe_pos
                lay = pl[:, self.moe_layer_index[cp.program.layer[pos]], :]          # [R, P, 2]
                fl[:, pos] += np.einsum("rpf,fp->rp", lay, cp.coef_flops[cols][:, pos])
                hb[:, pos] += np.einsum("rpf,fp->rp", lay, cp.coef_hbm[cols][:, pos])
                nt[:, pos] += np.einsum("rpf,fp->rp", lay, cp.coef_net[cols][:, pos])
            flops[:, where], hbm[:, where], net[:, where] = fl[:, where], hb[:, where], nt[:, where]
        return flops, hbm, net

    def _efficiency(self, cp: _Compiled, feat: np.ndarray, flops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Shape-aware compute and memory efficiency of every (rank, position) this step (timing's
        :class:`ShapeModel`, built once per program form)."""
        shapes = self.__dict__.setdefault("_shapes", {})
        if id(cp) not in shapes:
            shapes[id(cp)] = ShapeModel.build(cp.program, self.cfg)
        tokens = feat[:, Feature.TOKENS]
        ctx = np.divide(feat[:, Feature.PAIRS], tokens, out=np.ones_like(tokens), where=tokens > 0)
        return shapes[id(cp)].efficiency(flops, ctx, self.cfg.hardware)

    def _estimate_ns(self, cp: _Compiled, feat: np.ndarray, per_layer: np.ndarray, rows: np.ndarray) -> float:
        """This step's time under program form ``cp`` on ``rows`` (ranks of one replica), summed
        over them, without jitter: each stream's ops back to back, plus what it does not hide
        of each collective (all of a blocking one; of an overlapped one, what outlasts the
        compute before the stream's next collective or join). Draws nothing from the run's
        random streams, so choosing a form leaves a seeded run's draws alone."""
        hw = self.cfg.hardware
        f, pl = feat[rows], per_layer[rows]
        flops, hbm, net = self._work(cp, f, pl)
        if len(cp.bg_pos):
            np.add.at(hbm, (slice(None), cp.bg_partner), hbm[:, cp.bg_pos])
        dur, _ = op_times(flops, hbm, cp.engine, hw, self.cfg.dtype, self.slowdown[rows], np.ones(flops.shape),
                          self._efficiency(cp, f, flops))
        active = cp.active[rows]
        seq = np.where(cp.seq_mask[rows], dur, 0.0)
        cumx = np.concatenate([np.cumsum(seq, axis=1) - seq, seq.sum(axis=1, keepdims=True)], axis=1)  # [n, K+1]
        total = float(seq.sum())
        if not cp.collectives:
            return total
        n, K, C = len(rows), len(cp.program), len(cp.collectives)
        transfer = np.zeros((n, C))
        for (kind, _), idx in cp.collective_batches.items():
            c0 = cp.collectives[idx[0]]
            pos = cp.coll_pos[idx]
            # Every member's buffer as this rank's (the group's ranks carry the same batch).
            size = np.repeat(net[:, pos].T.reshape(-1, 1), c0.groups.size, axis=1)
            sel = np.tile(c0.rank_group[rows], len(pos))
            # A step that prefills runs its all-to-alls with NVLink forwarding (as _transfers).
            fwd = np.tile(f[:, Feature.PREFILL_STEP] > 0, len(pos)) if kind == "all_to_all" else None
            transfer[:, idx] = collective_time(kind, size, c0.links, sel, fwd).reshape(len(pos), n).T
        transfer += hw.launch_overhead_ns
        # The next event each rank's stream meets after each collective (K: the step's end).
        cand = np.where(active[:, cp.event_pos], cp.event_pos[None, :], K)
        nxt = np.minimum.accumulate(cand[:, ::-1], axis=1)[:, ::-1]
        nxt = np.concatenate([nxt[:, 1:], np.full((n, 1), K)], axis=1)
        ev_of = np.array([e for e, (_, ci) in enumerate(cp.events) if ci >= 0])        # [C] event of each
        window = np.take_along_axis(cumx, nxt[:, ev_of], axis=1) - cumx[:, cp.coll_pos]
        exposed = np.where(cp.overlaps[cp.coll_pos], np.maximum(transfer - window, 0.0), transfer)
        return total + float(np.where(active[:, cp.coll_pos], exposed, 0.0).sum())

    def _jitter(self, shape: tuple[int, ...]) -> np.ndarray:
        sigma = self.cfg.hardware.jitter
        return 1.0 + sigma * np.abs(self.rng.standard_normal(shape))

    def _transfers(self, cp: _Compiled, net: np.ndarray, prefill: np.ndarray | None = None) -> list[np.ndarray]:
        """Transfer time (ns) of every group at every collective position of the step: they do
        not depend on arrival times, so all are computed up front, batched per group set.
        ``prefill`` [R] marks ranks whose replica prefills this step: an EP group with one runs
        its all-to-alls with NVLink forwarding (DeepEP's normal kernels), else low-latency."""
        out: list[np.ndarray] = [np.empty(0)] * len(cp.collectives)
        for (kind, gs_id), idx in cp.collective_batches.items():
            first = cp.collectives[idx[0]]
            gs, links = first.groups, first.links
            pos = np.array([cp.collectives[i].pos for i in idx])
            G = len(gs.members)
            size = net[gs.members][:, :, pos].transpose(2, 0, 1).reshape(len(pos) * G, gs.size)
            sel = np.tile(np.arange(G), len(pos))
            if kind == "all_to_all" and first.partner >= 0:
                # A member's time is its sends' or its receives', whichever is more: hot experts'
                # ranks receive more in the dispatch (and send more in the combine).
                part = np.array([cp.collectives[i].partner for i in idx])
                ratio = np.array([cp.collectives[i].partner_ratio for i in idx])
                recv = (net[gs.members][:, :, part] * ratio).transpose(2, 0, 1).reshape(len(pos) * G, gs.size)
                size = np.maximum(size, recv)
            fwd = None
            if kind == "all_to_all" and prefill is not None:
                fwd = np.tile(prefill[gs.members].any(axis=1), len(pos))
            t = collective_time(kind, size, links, sel, fwd) * self._jitter((len(pos) * G,))
            for j, i in enumerate(idx):
                out[i] = t[j * G:(j + 1) * G]
        return out

    def _nic(self, cp: _Compiled, net: np.ndarray, transfers: list[np.ndarray], running: np.ndarray,
             prefill: np.ndarray | None = None) -> np.ndarray:
        """Each chip's NIC port counters over the step, ``[len(NIC_COUNTERS), R]`` (see
        :class:`NicCounters`): one pass per set of collectives sharing a kind and group set that
        spans nodes, vectorized over its positions, groups and members."""
        out = np.zeros((len(NIC_COUNTERS), self.plan.world))
        for (kind, gs_id), idx in cp.collective_batches.items():
            routes = cp.nic_routes.get(gs_id)
            if routes is None:
                continue
            members = cp.collectives[idx[0]].groups.members                     # [G, n]
            n = members.shape[1]
            pos = cp.coll_pos[idx]
            take = cp.active[:, pos][members] & running[members][:, :, None]    # [G, n, P]
            size = np.where(take, net[:, pos][members], 0.0).transpose(2, 0, 1)  # [P, G, n]
            if kind == "all_reduce":
                # Hierarchical (timing.collective_time): each chip all-reduces its 1/l shard with
                # the same-index chips of the other nodes, a ring of its own over its own NIC.
                local = cp.collectives[idx[0]].links.local
                sent = size * all_reduce_nic_share(n, local)
                got = np.roll(sent, local, axis=2)                               # from the previous node's peer
            elif kind == "all_gather":
                sent = size * ((n - 1) / n * routes.ring_out)
                got = np.roll(sent, 1, axis=2)                                   # from the previous member
            elif kind == "send":
                sent = size * routes.p2p_out
                got = np.roll(sent, 1, axis=2)                                   # member 1 from member 0
            elif kind == "all_to_all":
                sent = size * (routes.remote_peers / n)
                # Received: S/n from every member on another node (all, less those on its own node).
                P = len(pos)
                key = (np.arange(P)[:, None, None] * routes.codes + routes.code[None]).reshape(-1)
                per_node = np.bincount(key, weights=size.reshape(-1), minlength=P * routes.codes)
                same = per_node.reshape(P, routes.codes)[:, routes.code]          # [P, G, n]
                got = (size.sum(axis=2, keepdims=True) - same) / n
                if prefill is not None and cp.collectives[idx[0]].links.uniform and prefill[members].any():
                    # NVLink forwarding (timing.collective_time): a token's copy once to the
                    # same-index GPU of each remote node holding its experts, shared equally.
                    links = cp.collectives[idx[0]].links
                    nodes = n // links.local
                    fwd = prefill[members].any(axis=1)[None, :, None]                # [1, G, 1]
                    f_sent = size / links.top_k * links.remote_nodes
                    by_node = f_sent.reshape(P, len(members), nodes, links.local)
                    f_got = ((by_node.sum(axis=2, keepdims=True) - by_node) / max(nodes - 1, 1)).reshape(f_sent.shape)
                    sent, got = np.where(fwd, f_sent, sent), np.where(fwd, f_got, got)
            else:
                raise ValueError(f"unknown collective kind {kind!r}")
            rate = self.nic_rate[members]                                         # [G, n] bytes/ns
            dur = np.stack([transfers[i] for i in idx])[:, :, None]               # [P, G, 1]
            sending = sent / rate
            waiting = np.where(sent > 0, np.maximum(dur - sending, 0.0), 0.0)
            for row, value in enumerate((sent, sending, waiting, got, got / rate)):   # the five counters
                out[row, members] += value.sum(axis=0)     # a rank is in one group of a set
        return out

    def _simulate(self, cp: _Compiled, start: np.ndarray, running: np.ndarray, flops: np.ndarray,
                  hbm: np.ndarray, net: np.ndarray,
                  efficiency: tuple[np.ndarray, np.ndarray] | None = None,
                  prefill: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Resolve one step's times. ``start`` [R] is each rank's first-op time (true ns).

        Between collectives a rank's ops run back to back (prefix sums); at a collective each
        group's members arrive at their own times and all leave at ``last arrival + transfer``.
        An overlapped collective lets the stream go on; the stream waits for it at its join, or
        before issuing the next collective (one collective engine, in order). The loop runs once
        per collective position, each iteration vectorized over every rank and group.
        """
        hw, R, K = self.cfg.hardware, self.plan.world, len(cp.program)
        # Engines on a chip share its HBM: a background DMA's bytes stream within the roof of the
        # op it runs under (that op takes as long as both ops' bytes need, or its compute), and
        # the DMA spans the same interval, so concurrent streams never exceed the bandwidth.
        hbm_t = hbm
        if len(cp.bg_pos):
            hbm_t = hbm.copy()
            np.add.at(hbm_t, (slice(None), cp.bg_partner), hbm[:, cp.bg_pos])
        jitter = self._jitter((R, K))
        transfers = self._transfers(cp, net, prefill)
        dur, stall = op_times(flops, hbm_t, cp.engine, hw, self.cfg.dtype, self.slowdown, jitter, efficiency)
        if len(cp.win_pos):
            # Overlapped communication shares the chip: what runs under it streams the
            # collective's HBM traffic too, and on a GPU computes without the SMs its kernel holds.
            flops_t, hbm_t = self._share_with_collectives(cp, flops, hbm_t, dur, net, transfers, running)
            dur, stall = op_times(flops_t, hbm_t, cp.engine, hw, self.cfg.dtype, self.slowdown, jitter, efficiency)
        if len(cp.bg_pos):
            own = dur[:, cp.bg_pos] > 0
            dur[:, cp.bg_pos] = np.where(own, dur[:, cp.bg_partner], 0.0)
            stall[:, cp.bg_pos] = np.where(own, np.maximum(dur[:, cp.bg_pos] - hw.launch_overhead_ns, 0.0), 0.0)
        active = cp.active & running[:, None]
        seq = np.where(cp.seq_mask & active, dur, 0.0)
        cum = np.cumsum(seq, axis=1) - seq                                    # exclusive prefix sums
        n_ev = len(cp.events)
        bases = np.empty((n_ev + 1, R))
        base = start.astype(float)
        bases[0] = base
        pending = np.full(R, -np.inf)
        in_flight = False
        coll_arrive = np.zeros((len(cp.collectives), R))
        coll_end = np.zeros((len(cp.collectives), R))
        launch = hw.launch_overhead_ns
        for i, (pos, ci) in enumerate(cp.events):
            col = cum[:, pos]
            here = base + col
            if in_flight:                                                    # join what is in flight
                here = np.maximum(here, pending)
                base = here - col
                in_flight = False
            if ci >= 0:
                c = cp.collectives[ci]
                last = here[c.groups.members].max(axis=1)
                end = (last + transfers[ci] + launch)[c.rank_group]
                coll_arrive[ci] = here
                coll_end[ci] = end
                member = c.member & running & cp.active[:, pos]   # only the stage that runs it
                if c.overlaps:
                    pending = np.where(member, end, -np.inf)
                    in_flight = True
                else:
                    base = np.where(member, end - col, base)
            bases[i + 1] = base
        op_start = bases[cp.segment].T + cum
        op_end = op_start + dur
        coll_pos = cp.coll_pos
        ok = cp.coll_member.T & running[:, None]                              # [R, C]
        op_start[:, coll_pos] = np.where(ok, coll_arrive.T, 0.0)
        op_end[:, coll_pos] = np.where(ok, coll_end.T, 0.0)
        is_coll_ok = np.zeros((R, K), bool)
        is_coll_ok[:, coll_pos] = ok
        # Sequence numbers: each group numbers its collectives in issue order across the run.
        group = np.full((R, K), NO_GROUP, dtype=np.uint32)
        seqno = np.zeros((R, K), dtype=np.uint32)
        for gs, idx, takes_part in cp.sequence_plan:
            part = takes_part & running[gs.members[:, 0]][None, :]           # [C, G]
            numbers = self.seq[gs.ids][None, :] + np.cumsum(part, axis=0) - part
            for j, i in enumerate(idx):
                c = cp.collectives[i]
                group[:, c.pos] = np.where(c.member, gs.ids[c.rank_group], NO_GROUP)
                seqno[:, c.pos] = numbers[j][c.rank_group]
            self.seq[gs.ids] += part.sum(axis=0)
        emit = active & (((dur > 0) & ~cp.is_coll) | is_coll_ok)
        return {"start": op_start, "end": op_end, "stall": stall, "emit": emit, "group": group, "seq": seqno,
                "nic": self._nic(cp, net, transfers, running, prefill)}

    def _share_with_collectives(self, cp: _Compiled, flops: np.ndarray, hbm: np.ndarray, dur: np.ndarray,
                                net: np.ndarray, transfers: list[np.ndarray],
                                running: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """FLOPs and HBM bytes to time the step's ops by, with each overlapped collective charged to
        the stream ops under it (``dur``: their times alone): the share of its HBM traffic (its
        buffers' bytes in and out, as much as reaches HBM: ``activation_hbm_fraction``) that
        passes while they run, spread over them by time, and ``comm_compute_share`` of the compute
        units for the share of their time it runs. The records keep each op's own work."""
        hw, R = self.cfg.hardware, self.plan.world
        # By the ops' times at the chip's nominal speed: a throttled chip (a straggler) then runs
        # every op, charges included, exactly its factor slower.
        seq = np.where(cp.seq_mask & cp.active & running[:, None], dur / self.slowdown[:, None], 0.0)
        cs = np.concatenate([np.zeros((R, 1)), np.cumsum(seq, axis=1)], axis=1)     # [R, K + 1]
        p = cp.coll_pos[cp.ov_ci]
        under_ns = cs[:, cp.ov_q] - cs[:, p]                                         # [R, Co]
        t = np.stack([transfers[ci][cp.collectives[ci].rank_group] for ci in cp.ov_ci], axis=1)
        t = t + hw.launch_overhead_ns
        takes = cp.coll_member[cp.ov_ci].T & cp.active[:, p] & running[:, None]
        # Its buffers are activations: the share of them that reaches HBM does (all on a GPU).
        traffic = np.where(takes, net[:, p] * cp.ov_traffic * hw.activation_hbm_fraction, 0.0)
        covered = np.divide(t, under_ns, out=np.zeros_like(t), where=under_ns > 0).clip(max=1.0)
        passing = traffic * np.divide(under_ns, t, out=np.zeros_like(t), where=t > 0).clip(max=1.0)
        wp, wc = cp.win_pos, cp.win_of
        share = np.divide(seq[:, wp], under_ns[:, wc], out=np.zeros((R, len(wp))), where=under_ns[:, wc] > 0)
        hbm, flops = hbm.copy(), flops.copy()
        hbm[:, wp] += passing[:, wc] * share
        flops[:, wp] /= 1.0 - hw.comm_compute_share * covered[:, wc]
        return flops, hbm

    def _batches(self, free0: np.ndarray, finished: np.ndarray) -> tuple[list[Batch], np.ndarray, np.ndarray]:
        """Form every replica's next batch; coupled replicas (one EP group) step together.

        ``free0`` [dp] is when each replica's first pipeline stage is free. The virtual engines
        take turns (:meth:`VirtualEngines.pick`; with one stage, the replica's one scheduler);
        with nothing runnable the step waits for the next arrival. Returns the
        batches, which replicas run, and when each one's step starts (ns)."""
        dp = self.cfg.dp
        coupled = self.plan.coupled_replicas()
        running = np.zeros(dp, bool)
        now = free0.copy()
        for c in np.unique(coupled):
            reps = np.flatnonzero((coupled == c) & ~finished)
            if not len(reps):
                continue
            cands = [self.schedulers[r].candidates(free0[r]) for r in reps]
            start = np.max([s for s, _, _ in cands], axis=0)
            runnable = np.any([ok for _, ok, _ in cands], axis=0)
            nxt = np.min([a for _, _, a in cands], axis=0)
            if not runnable.any() and not np.isfinite(nxt).any():
                continue   # a decode replica waiting for KV not yet sent (disaggregated serving)
            v, _ = self.schedulers[reps[0]].pick(start, runnable, nxt)
            for r, (s, _, _) in zip(reps, cands):
                self.schedulers[r].select(v)
                now[r] = s[v] if runnable.any() else max(s[v], nxt[v])
            running[coupled == c] = True
        batches = [self.schedulers[r].form(now[r]) for r in range(dp)]
        return batches, running, now

    def steps(self) -> Iterator[tuple[StepTrace, list[dict]]]:
        """Simulate the run step by step; yield each step's records and host events.

        A step is one virtual engine's batch on one replica. Every rank's stream goes on from
        where its previous step left it: the first stage starts the next step as soon as it
        has sent the last one on (after the host's scheduling work), while the later stages
        are still computing, so with ``pp`` stages up to ``pp`` steps are in flight (stage
        ``s`` runs step ``m`` while stage ``s + 1`` runs ``m - 1``); a later stage takes a step
        from its pipeline receive. With one stage, steps follow each other.
        """
        cfg, plan, hw = self.cfg, self.plan, self.cfg.hardware
        now = np.array([self.arrival_ns[r].min() if len(r) else np.inf for r in self.replica_requests])
        # Replicas that step together start together: at their set's first arrival.
        coupled = self.plan.coupled_replicas()
        first = np.full(coupled.max() + 1, np.inf)
        np.minimum.at(first, coupled, now)
        now = np.where(np.isfinite(first[coupled]), first[coupled], 0.0)
        free = now[plan.replica]                     # [R] when each rank's stream is free
        stage0 = plan.stage == 0
        finished = np.array([s.finished for s in self.schedulers])
        step = 0
        while not finished.all():
            free0 = np.full(cfg.dp, -np.inf)
            np.maximum.at(free0, plan.replica[stage0], free[stage0])
            batches, running_rep, now = self._batches(free0, finished)
            running = running_rep[plan.replica]
            tokens = np.array([b.tokens for b in batches])[running_rep]
            feat, per_layer = self._features(batches, running_rep)
            cp = self.compiled
            if self.compiled_tbo is not None and tokens.min() >= cfg.two_batch_min_tokens:
                # Two-batch overlap where it is estimated faster: it hides communication but
                # reads the weights twice and launches every op twice, so the choice follows the
                # step's shape, never a hand-set size (no cliff where it switches on).
                # Decided once per step size, within a quarter octave (and whether it prefills):
                # steps that close differ little but in their context, which moves both forms
                # alike, and where the two forms cross they take nearly the same time.
                r0 = int(np.flatnonzero(running_rep)[0])
                key = (int(np.log2(max(int(tokens.min()), 1)) * 4), batches[r0].prefill_tokens > 0)
                if key not in self._overlap_pays:
                    rows = plan.replica_ranks(r0)
                    self._overlap_pays[key] = self._estimate_ns(self.compiled_tbo, feat, per_layer, rows) < \
                        self._estimate_ns(self.compiled, feat, per_layer, rows)
                if self._overlap_pays[key]:
                    cp = self.compiled_tbo
            flops, hbm, net = self._work(cp, feat, per_layer)
            t0 = now[plan.replica]
            compute_start = t0 + hw.step_overhead_ns
            # The first stage opens the step with the host's work; a later stage waits at its
            # receive, from the step's start or the end of its own previous step.
            start = np.where(stage0, compute_start, np.maximum(free, t0))
            prefill = np.array([b.prefill_tokens > 0 for b in batches])[plan.replica] & running
            sim = self._simulate(cp, start, running, flops, hbm, net, self._efficiency(cp, feat, flops), prefill)
            end_rank = np.maximum(np.where(sim["emit"], sim["end"], -np.inf).max(axis=1), start)
            step_end = np.full(cfg.dp, -np.inf)
            np.maximum.at(step_end, plan.replica[running], end_rank[running])
            host_events = self._host_events(step, batches, running_rep, now, step_end)
            nic = sim["nic"]
            moved = np.flatnonzero(running & ((nic[0] > 0) | (nic[3] > 0)))
            counters = NicCounters(rank=moved, end_ns=step_end[plan.replica[moved]],
                                   values=np.rint(nic[:, moved]).astype(np.int64))
            yield self._records(cp, step, sim, running, t0, compute_start, batches, flops, hbm, net,
                                counters), host_events
            free = np.where(running, end_rank, free)
            for r in np.flatnonzero(running_rep):
                sch = self.schedulers[r]
                first_token, _ = sch.complete(batches[r], step_end[r])
                finished[r] = sch.finished
                if r < cfg.prefill_replicas and len(first_token):
                    self._send_kv(int(r), self.replica_requests[r][first_token], float(step_end[r]))
            step += 1

    def _records(self, cp: _Compiled, step: int, sim: dict, running: np.ndarray, t0: np.ndarray,
                 compute_start: np.ndarray, batches: list[Batch], flops: np.ndarray, hbm: np.ndarray,
                 net: np.ndarray, nic: NicCounters) -> StepTrace:
        plan, hw, prog = self.plan, self.cfg.hardware, cp.program
        phase = np.array([int(b.phase) for b in batches], dtype=np.uint8)[plan.replica]
        # One host record per running rank of the first stage, ahead of its ops: the host's
        # scheduling work (a later stage's step opens with its pipeline receive).
        emit = np.concatenate([(running & (plan.stage == 0))[:, None], sim["emit"]], axis=1)
        rr, kk = np.nonzero(emit)
        host = kk == 0
        k = np.where(host, 0, kk - 1)
        rec = np.zeros(len(rr), RECORD_DTYPE)
        start = np.where(host, t0[rr], sim["start"][rr, k])
        end = np.where(host, compute_start[rr], sim["end"][rr, k])
        rec["flops"] = np.where(host, 0, np.rint(flops[rr, k])).astype(np.uint64)
        rec["hbm_bytes"] = np.where(host, 0, np.rint(hbm[rr, k])).astype(np.uint64)
        rec["net_bytes"] = np.where(host | ~cp.is_coll[k], 0, np.rint(net[rr, k])).astype(np.uint64)
        rec["stall_cycles"] = np.where(host, 0, np.rint(sim["stall"][rr, k] * hw.clock_hz / 1e9)).astype(np.uint64)
        name = prog.tmpl[k].astype(np.uint32)
        receiving = (prog.peer_stage[k] >= 0) & (plan.stage[rr] == prog.peer_stage[k])
        name[receiving] = self._peer_name[name[receiving]]
        rec["name_id"] = np.where(host, self._host_name, name)
        rec["step"] = step
        rec["group"] = np.where(host, NO_GROUP, sim["group"][rr, k])
        rec["seq"] = np.where(host, 0, sim["seq"][rr, k])
        rec["layer"] = np.where(host, NO_LAYER, prog.layer[k])
        rec["engine"] = np.where(host, int(Engine.HOST), cp.engine[k])
        rec["phase"] = phase[rr]
        node = plan.node[rr]
        rec["start"] = self.clocks.cycles(start, node, hw.clock_hz)   # the trace unit's local counter
        rec["end"] = self.clocks.cycles(end, node, hw.clock_hz)
        # The counter stamps start, end and stall apart, each rounded to a cycle: a stall never
        # outlasts its op (the collector refuses a record whose stall does).
        rec["stall_cycles"] = np.minimum(rec["stall_cycles"], rec["end"] - rec["start"])
        return StepTrace(step=step, rank=rr, records=rec, start_ns=start, end_ns=end, nic=nic)

    def _host_events(self, step: int, batches: list[Batch], running: np.ndarray, now: np.ndarray,
                     step_end: np.ndarray) -> list[dict]:
        events = []
        for r in np.flatnonzero(running):
            b = batches[r]
            events.append({"type": "step", "replica": int(r), "step": step, "ts": float(now[r]),
                           "end": float(step_end[r]), "prefill_tokens": b.prefill_tokens,
                           "decode_tokens": b.decode_tokens, "phase": Phase(b.phase).name.lower(),
                           "virtual_engine": self.schedulers[r].current})
        return events

    def request_table(self) -> dict[str, np.ndarray]:
        """Per request (after the run): id, replica, arrival, first token, finish (true ns), lengths."""
        n = self.cfg.requests
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        generated = np.zeros(n, np.int64)
        for r, sch in enumerate(self.schedulers):
            # Disaggregated: the first token from the prefill replica (listed first), the rest
            # from the decode replica.
            idx = self.replica_requests[r]
            first[idx] = np.fmin(first[idx], sch.first_token_ns)
            finish[idx] = np.where(np.isnan(sch.finish_ns), finish[idx], sch.finish_ns)
            generated[idx] = np.maximum(generated[idx], sch.generated)
        return {"request": np.arange(n), "replica": self.request_replica, "prefill_replica": self.request_prefill,
                "arrival": self.arrival_ns,
                "first_token": first, "finish": finish, "prompt_tokens": self.prompt_tokens,
                "output_tokens": generated}

    def replica_node(self, replica: int) -> int:
        """Node whose host runs a replica's scheduler (its first rank's node)."""
        return int(self.plan.node[self.plan.replica_ranks(replica)[0]])

    def act_bytes(self) -> int:
        return ACT_BYTES


def weights_per_chip(cfg: EmulatorConfig, stage_layers: np.ndarray) -> np.ndarray:
    """Weight bytes held by a chip of each pipeline stage (``stage_layers`` as in the plan)."""
    m = cfg.model
    w, t, h = cfg.weight_bytes, cfg.tp, m.hidden
    pp = len(stage_layers) - 1
    out = np.zeros(pp)
    for s in range(pp):
        for li in range(int(stage_layers[s]), int(stage_layers[s + 1])):
            out[s] += m.attention_params() / t
            if m.is_moe_layer(li):
                shared = m.shared_experts * 3 * h * m.expert_ffn / t
                routed = m.experts * 3 * h * m.expert_ffn / (t if cfg.ep == 1 else cfg.ep)
                out[s] += shared + routed + h * m.experts
            else:
                out[s] += 3 * h * m.ffn / t
    out[0] += m.vocab * h / t
    out[-1] += m.vocab * h / t
    return out * w


def kv_capacity_tokens(cfg: EmulatorConfig, stage_layers: np.ndarray) -> int:
    """KV-cache tokens one replica can hold (the tightest stage's HBM left after its weights).

    Raises
    ------
    SpecError
        A stage's weights do not fit a chip's HBM, or what is left does not hold one request.
    """
    m = cfg.model
    weights = weights_per_chip(cfg, stage_layers)
    usable = cfg.hardware.hbm_bytes * 0.92   # the rest: activations, runtime, fragmentation
    if (weights > usable).any():
        need = weights.max() / 1e9
        raise SpecError(f"{m.name} needs {need:.0f} GB of weights per chip at tp={cfg.tp} ep={cfg.ep} "
                        f"pp={cfg.pp}, more than a {cfg.hardware.name} chip's {cfg.hardware.hbm_bytes / 1e9:.0f} GB; "
                        "raise --tp, --ep or --pp")
    per_layer = m.kv_elements_per_token() if m.mla else 2 * max(m.kv_heads // cfg.tp, 1) * m.head_dim
    layers = np.diff(stage_layers)
    per_token = layers * per_layer * cfg.kv_bytes
    cap = int(((usable - weights) / per_token).min())
    # The longest request must fit alone, with its last verification's drafts.
    need = cfg.longest_request + cfg.spec_tokens
    if cap < need:
        raise SpecError(f"{m.name} on {cfg.hardware.name} at tp={cfg.tp} pp={cfg.pp} leaves KV space for "
                        f"{max(cap, 0)} tokens, less than the longest request ({need}); "
                        "raise --tp or --pp, or shorten --prompt-len/--output-len (or their --*-dist)")
    return cap
