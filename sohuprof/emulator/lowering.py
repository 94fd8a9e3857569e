"""Lowering: a model and a parallel plan become the program of ops every step runs.

Each op's FLOPs, HBM bytes and collective buffer bytes are linear in a handful of per-rank batch
features (tokens, attention pairs, KV tokens read, ...), so an op is a row of coefficients and a
whole step's work is one matrix product. The program is built once per run; a step only supplies
its features.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sohuprof.emulator.config import EmulatorConfig
from sohuprof.emulator.plan import ParallelPlan
from sohuprof.strace import Engine

__all__ = ["Feature", "OpTemplate", "Program", "lower", "stage_positions"]

ACT_BYTES = 2  # activations and collectives travel in bf16


class Feature:
    """Columns of the per-rank feature matrix an op's coefficients multiply."""

    ONE = 0         # constant (weights)
    TOKENS = 1      # tokens in the replica's batch this step
    PAIRS = 2       # attention (query, key) pairs
    KV_READ = 3     # KV-cache tokens read (summed over sequences)
    SAMPLES = 4     # sequences producing a token this step
    LOCAL_TOKENS = 5  # tokens this rank owns in an expert-parallel MoE block
    EXPERT_PAIRS = 6  # (token, expert) pairs this rank's experts process
    ACTIVE_EXPERTS = 7  # local experts that received at least one token
    PREFILL_PAIRS = 8   # attention pairs of prefill chunks (of PAIRS)
    PREFILL_CONTEXT = 9  # tokens prefill chunks attend to: cached context plus the chunk
    DRAFT_TOKENS = 10   # tokens the speculative draft head proposes this step
    PREFILL_STEP = 11   # 1 when the replica prefills this step (weights read once per step)
    DRAFT_STEP = 12     # 1 when the replica drafts this step
    PREFILL_TOKENS = 13  # prefill chunk tokens (of TOKENS)
    COUNT = 14
    #: Per-step constants: a micro-batch of a two-batch-overlap step needs them whole.
    CONSTANT = (ONE, ACTIVE_EXPERTS, PREFILL_STEP, DRAFT_STEP)


@dataclass(frozen=True)
class OpTemplate:
    """One op of a layer (or of the model's head), as coefficient rows over :class:`Feature`."""

    name: str
    op: str
    category: str
    engine: Engine
    flops: np.ndarray
    hbm: np.ndarray     # bytes that always reach HBM: weights, KV cache
    act: np.ndarray     # activation bytes passed between ops
    net: np.ndarray
    collective: str | None = None   # all_reduce, all_to_all, all_gather, send
    group: str | None = None        # tp, ep, pp
    overlaps: bool = False          # async: the compute stream goes on while it runs
    peer_name: str | None = None    # name on the receiving side of a send
    n: int = 0                      # a GEMM's output columns per rank (its tiles; 0: timing infers them)


def _coef(**terms: float) -> np.ndarray:
    row = np.zeros(Feature.COUNT)
    for key, value in terms.items():
        row[getattr(Feature, key.upper())] = value
    return row


def _op(name: str, op: str, engine: Engine, *, flops: dict | None = None, hbm: dict | None = None,
        act: dict | None = None, net: dict | None = None, **kw) -> OpTemplate:
    """An op; ``hbm`` are bytes that always reach HBM (weights, KV cache), ``act`` activation bytes
    passed between ops, of which the hardware's ``activation_hbm_fraction`` reaches HBM."""
    category = {Engine.COLLECTIVE: "communication", Engine.DMA: "memory", Engine.HOST: "host"}.get(engine, "compute")
    return OpTemplate(name, op, category, engine, _coef(**(flops or {})), _coef(**(hbm or {})),
                      _coef(**(act or {})), _coef(**(net or {})), **kw)


@dataclass
class Program:
    """The ops of one step in issue order, for every stage.

    ``templates`` are the distinct ops; per position ``k``: ``tmpl[k]`` indexes them, ``layer[k]``
    is the decoder layer (-1 outside), ``stage[k]`` the pipeline stage that runs it and
    ``peer_stage[k]`` the stage receiving a pipeline send (-1 otherwise), ``part[k]`` the
    micro-batch under two-batch overlap and ``overlaps[k]`` whether it runs asynchronously. HBM bytes per op are the
    fixed bytes plus the share ``activation_hbm_fraction`` of its activation bytes.
    """

    templates: list[OpTemplate]
    tmpl: np.ndarray
    layer: np.ndarray
    stage: np.ndarray
    peer_stage: np.ndarray
    part: np.ndarray        # micro-batch of a two-batch-overlap step (0, 1), -1 for the whole batch
    overlaps: np.ndarray    # the compute stream goes on while the op runs
    activation_hbm_fraction: float
    flops: np.ndarray = field(init=False)   # [n_templates, F]
    hbm: np.ndarray = field(init=False)
    net: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.flops = np.stack([t.flops for t in self.templates])
        self.hbm = np.stack([t.hbm + t.act * self.activation_hbm_fraction for t in self.templates])
        self.net = np.stack([t.net for t in self.templates])

    def names(self) -> list[str]:
        """Op names in template order, then receive-side names (the raw op-name table)."""
        names = [t.name for t in self.templates]
        names += [t.peer_name for t in self.templates if t.peer_name]
        return names

    def __len__(self) -> int:
        return len(self.tmpl)


def _norm(name: str, hidden: int, feature: str = "tokens") -> OpTemplate:
    """An RMSNorm over ``feature`` rows (its weight vector read once, activations twice)."""
    return _op(name, "norm", Engine.VECTOR, flops={feature: 4 * hidden}, hbm={"one": hidden * ACT_BYTES},
               act={feature: 2 * hidden * ACT_BYTES})


def _tp_all_reduce(name: str, hidden: int) -> OpTemplate:
    """The tensor-parallel all-reduce of one block's output (a bf16 row per token)."""
    return _op(name, "all_reduce", Engine.COLLECTIVE, net={"tokens": hidden * ACT_BYTES},
               collective="all_reduce", group="tp")


def _attention_ops(cfg: EmulatorConfig) -> list[OpTemplate]:
    m, t, w, a = cfg.model, cfg.tp, cfg.weight_bytes, ACT_BYTES
    h, kvb = m.hidden, cfg.kv_bytes
    hr = m.heads // t
    ops = [_norm("attn_norm", h)]
    if m.mla is None:
        hd = m.head_dim
        q, kvr = hr * hd, max(m.kv_heads // t, 1) * hd
        ops += [
            _op("qkv_proj", "gemm", Engine.MATRIX, n=q + 2 * kvr, flops={"tokens": 2 * h * (q + 2 * kvr)},
                hbm={"one": h * (q + 2 * kvr) * w}, act={"tokens": (h + q + 2 * kvr) * a}),
            _op("rotary", "elementwise", Engine.VECTOR, flops={"tokens": 6 * (q + kvr)}, act={"tokens": 2 * (q + kvr) * a}),
            _op("kv_cache_write", "memcpy", Engine.DMA, hbm={"tokens": 2 * kvr * kvb}, overlaps=True),
            _op("attention", "attention", Engine.MATRIX, flops={"pairs": 4 * hr * hd},
                hbm={"kv_read": 2 * kvr * kvb}, act={"tokens": 2 * q * a}),
            _op("o_proj", "gemm", Engine.MATRIX, n=h, flops={"tokens": 2 * q * h}, hbm={"one": q * h * w}, act={"tokens": (q + h) * a}),
        ]
    else:
        ml = m.mla
        qk = ml.qk_nope_head_dim + ml.qk_rope_head_dim
        lat = ml.kv_lora_rank + ml.qk_rope_head_dim
        nv = ml.qk_nope_head_dim + ml.v_head_dim
        absorbed = 2 * hr * (lat + ml.kv_lora_rank)   # per pair: q.latent and p.latent, every head
        ops += [
            _op("q_a_proj", "gemm", Engine.MATRIX, n=ml.q_lora_rank, flops={"tokens": 2 * h * ml.q_lora_rank},
                hbm={"one": h * ml.q_lora_rank * w}, act={"tokens": (h + ml.q_lora_rank) * a}),
            _op("q_b_proj", "gemm", Engine.MATRIX, n=hr * qk, flops={"tokens": 2 * ml.q_lora_rank * hr * qk},
                hbm={"one": ml.q_lora_rank * hr * qk * w}, act={"tokens": (ml.q_lora_rank + hr * qk) * a}),
            _op("kv_a_proj", "gemm", Engine.MATRIX, n=lat, flops={"tokens": 2 * h * lat},
                hbm={"one": h * lat * w}, act={"tokens": (h + lat) * a}),
            _op("rotary", "elementwise", Engine.VECTOR, flops={"tokens": 6 * (hr + 1) * ml.qk_rope_head_dim},
                act={"tokens": 2 * (hr + 1) * ml.qk_rope_head_dim * a}),
            # Prefill attends un-absorbed (as FlashAttention-based MLA prefill kernels do): the
            # context's latents are expanded to per-head keys and values once per chunk...
            _op("kv_b_proj", "gemm", Engine.MATRIX, n=hr * nv, flops={"prefill_context": 2 * ml.kv_lora_rank * hr * nv},
                hbm={"prefill_step": ml.kv_lora_rank * hr * nv * w},
                act={"prefill_context": (ml.kv_lora_rank + hr * nv) * a}),
            _op("kv_cache_write", "memcpy", Engine.DMA, hbm={"tokens": lat * kvb}, overlaps=True),
            # ... and a prefill pair costs a head's q.k (qk dims) and p.v (v dims). Decode
            # stays absorbed: scores and values against the shared latent cache, with the
            # up-projections folded into each query and output token.
            _op("attention", "attention", Engine.MATRIX,
                flops={"pairs": absorbed, "prefill_pairs": 2 * hr * (qk + ml.v_head_dim) - absorbed,
                       "tokens": 2 * hr * ml.kv_lora_rank * nv, "prefill_tokens": -2 * hr * ml.kv_lora_rank * nv},
                hbm={"kv_read": lat * kvb, "one": ml.kv_lora_rank * hr * nv * w},
                act={"tokens": 2 * hr * qk * a}),
            _op("o_proj", "gemm", Engine.MATRIX, n=h, flops={"tokens": 2 * hr * ml.v_head_dim * h},
                hbm={"one": hr * ml.v_head_dim * h * w}, act={"tokens": (hr * ml.v_head_dim + h) * a}),
        ]
    if t > 1:
        ops.append(_tp_all_reduce("attn_all_reduce", h))
    return ops


def _dense_mlp_ops(cfg: EmulatorConfig) -> list[OpTemplate]:
    m, t, w, a = cfg.model, cfg.tp, cfg.weight_bytes, ACT_BYTES
    h, f = m.hidden, m.ffn // t
    ops = [
        _norm("mlp_norm", h),
        _op("gate_up_proj", "gemm", Engine.MATRIX, n=2 * f, flops={"tokens": 4 * h * f}, hbm={"one": 2 * h * f * w}, act={"tokens": (h + 2 * f) * a}),
        _op("silu_mul", "elementwise", Engine.VECTOR, flops={"tokens": 4 * f}, act={"tokens": 3 * f * a}),
        _op("down_proj", "gemm", Engine.MATRIX, n=h, flops={"tokens": 2 * f * h}, hbm={"one": f * h * w}, act={"tokens": (f + h) * a}),
    ]
    if t > 1:
        ops.append(_tp_all_reduce("mlp_all_reduce", h))
    return ops


#: Channels per FP8 scale of an FP8 dispatch (DeepEP: one float32 scale per 128 channels).
FP8_SCALE_BLOCK = 128


def dispatch_bytes(cfg: EmulatorConfig) -> int:
    """Bytes of one token's copy in the MoE dispatch: FP8 with a float32 scale per 128 channels
    when the model runs FP8 (DeepEP's FP8 dispatch), else bf16. The combine stays bf16."""
    h = cfg.model.hidden
    if cfg.dtype == "fp8":
        return h + -(-h // FP8_SCALE_BLOCK) * 4
    return h * ACT_BYTES


def _moe_ops(cfg: EmulatorConfig) -> list[OpTemplate]:
    m, t, ep, w, a = cfg.model, cfg.tp, cfg.ep, cfg.weight_bytes, ACT_BYTES
    h, k, e = m.hidden, m.top_k, m.experts
    te = t if ep == 1 else 1            # experts are TP-sharded unless expert-parallel
    fe = m.expert_ffn // te
    ops = [
        _norm("mlp_norm", h),
        _op("router", "gemm", Engine.MATRIX, n=e, flops={"tokens": 2 * h * e}, hbm={"one": h * e * a}, act={"tokens": (h + e) * a}),
        _op("router_topk", "router", Engine.VECTOR, flops={"tokens": 4 * e}, act={"tokens": e * a}),
    ]
    if ep > 1:
        ops.append(_op("moe_dispatch", "all_to_all", Engine.COLLECTIVE, net={"local_tokens": k * dispatch_bytes(cfg)},
                       collective="all_to_all", group="ep", overlaps=m.shared_experts > 0))
    if m.shared_experts:
        fs = m.shared_experts * m.expert_ffn // t
        ops += [
            _op("shared_expert_gate_up", "gemm", Engine.MATRIX, n=2 * fs, flops={"tokens": 4 * h * fs},
                hbm={"one": 2 * h * fs * w}, act={"tokens": (h + 2 * fs) * a}),
            _op("shared_expert_act", "elementwise", Engine.VECTOR, flops={"tokens": 4 * fs}, act={"tokens": 3 * fs * a}),
            _op("shared_expert_down", "gemm", Engine.MATRIX, n=h, flops={"tokens": 2 * fs * h},
                hbm={"one": fs * h * w}, act={"tokens": (fs + h) * a}),
        ]
    ops += [
        _op("expert_gate_up", "gemm", Engine.MATRIX, n=2 * fe, flops={"expert_pairs": 4 * h * fe},
            hbm={"active_experts": 2 * h * fe * w}, act={"expert_pairs": (h + 2 * fe) * a}),
        _op("expert_act", "elementwise", Engine.VECTOR, flops={"expert_pairs": 4 * fe}, act={"expert_pairs": 3 * fe * a}),
        _op("expert_down", "gemm", Engine.MATRIX, n=h, flops={"expert_pairs": 2 * fe * h},
            hbm={"active_experts": fe * h * w}, act={"expert_pairs": (fe + h) * a}),
    ]
    if ep > 1:
        # The combine sends back what the rank's experts computed: hot experts' ranks send more.
        ops.append(_op("moe_combine", "all_to_all", Engine.COLLECTIVE, net={"expert_pairs": h * a},
                       collective="all_to_all", group="ep"))
        if t > 1:
            ops.append(_op("moe_all_gather", "all_gather", Engine.COLLECTIVE, net={"local_tokens": t * h * a},
                           collective="all_gather", group="tp"))
    elif t > 1:
        ops.append(_tp_all_reduce("mlp_all_reduce", h))
    return ops


def _head_ops(cfg: EmulatorConfig) -> list[OpTemplate]:
    m, t, w, a = cfg.model, cfg.tp, cfg.weight_bytes, ACT_BYTES
    h, v = m.hidden, m.vocab // t
    ops = [
        _norm("final_norm", h, "samples"),
        _op("lm_head", "gemm", Engine.MATRIX, n=v, flops={"samples": 2 * h * v}, hbm={"one": h * v * w}, act={"samples": (h + v) * a}),
    ]
    if t > 1:
        # Distributed sampling: each rank keeps its shard's top-64 (value, id) pairs per sequence.
        ops.append(_op("sampling_all_gather", "all_gather", Engine.COLLECTIVE, net={"samples": t * 64 * 8},
                       collective="all_gather", group="tp"))
    ops.append(_op("sampling", "sampling", Engine.VECTOR, flops={"samples": 5 * v}, act={"samples": 2 * v * a}))
    return ops


def _draft_ops(cfg: EmulatorConfig) -> list[OpTemplate]:
    """The speculative draft head (an MTP module, as DeepSeek-V3's): per draft token, a projection
    of the last hidden state and the token's embedding, one decoder layer (its projections and
    MLP as one GEMM; its attention and collectives left out) and the shared lm_head. Drafting the
    ``spec_tokens`` tokens runs one after another, so each step reads the head's weights
    ``spec_tokens`` times. None without speculative decoding."""
    m, t, w, a, k = cfg.model, cfg.tp, cfg.weight_bytes, ACT_BYTES, cfg.spec_tokens
    if not k:
        return []
    h, v = m.hidden, m.vocab // t
    mlp = (m.top_k + m.shared_experts) * 3 * h * m.expert_ffn if m.is_moe else 3 * h * m.ffn
    layer = (m.attention_params() + mlp) // t
    proj = 2 * h * h // t
    return [
        _op("mtp_proj", "gemm", Engine.MATRIX, flops={"draft_tokens": 2 * proj}, hbm={"draft_step": k * proj * w},
            act={"draft_tokens": 3 * h * a}),
        _op("mtp_layer", "gemm", Engine.MATRIX, flops={"draft_tokens": 2 * layer}, hbm={"draft_step": k * layer * w},
            act={"draft_tokens": 2 * h * a}),
        _op("mtp_lm_head", "gemm", Engine.MATRIX, flops={"draft_tokens": 2 * h * v}, hbm={"draft_step": k * h * v * w},
            act={"draft_tokens": (h + v) * a}),
    ]


def _blocks(ops: list[OpTemplate]) -> list[list[OpTemplate]]:
    """Split a layer's ops after each collective: the units two-batch overlap interleaves."""
    blocks: list[list[OpTemplate]] = [[]]
    for op in ops:
        blocks[-1].append(op)
        if op.collective:
            blocks.append([])
    return [b for b in blocks if b]


def lower(cfg: EmulatorConfig, plan: ParallelPlan, *, two_batch: bool = False) -> Program:
    """Build the per-step program of ``cfg``'s model under ``plan``.

    With ``two_batch`` the step's batch is split in two micro-batches whose blocks interleave
    (two-batch overlap): micro-batch A's collectives (tensor-parallel all-reduces, expert-parallel
    dispatch and combine) run on the collective engine while B computes, and the other way round. The op templates, and so the op-name table, are
    the same in both forms.
    """
    m, a = cfg.model, ACT_BYTES
    embed = _op("embedding", "embedding", Engine.VECTOR, hbm={"tokens": 2 * m.hidden * a})
    pp_send = _op("pp_send", "send", Engine.COLLECTIVE, net={"tokens": m.hidden * a}, collective="send",
                  group="pp", peer_name="pp_recv")
    attention, dense, moe, head = _attention_ops(cfg), _dense_mlp_ops(cfg), _moe_ops(cfg) if m.is_moe else [], _head_ops(cfg)
    templates: list[OpTemplate] = []
    index: dict[str, int] = {}
    cols: dict[str, list] = {"tmpl": [], "layer": [], "stage": [], "peer": [], "part": [], "overlaps": []}

    def emit(op: OpTemplate, *, layer: int = -1, stage: int = 0, peer: int = -1, part: int = -1,
             overlaps: bool | None = None) -> None:
        if op.name not in index:
            index[op.name] = len(templates)
            templates.append(op)
        for key, value in (("tmpl", index[op.name]), ("layer", layer), ("stage", stage), ("peer", peer),
                           ("part", part), ("overlaps", op.overlaps if overlaps is None else overlaps)):
            cols[key].append(value)

    emit(embed)
    for s in range(plan.pp):
        for li in range(int(plan.stage_layers[s]), int(plan.stage_layers[s + 1])):
            ops = attention + (moe if m.is_moe_layer(li) else dense)
            if not two_batch:
                for op in ops:
                    emit(op, layer=li, stage=s)
                continue
            for block in _blocks(ops):
                for part in (0, 1):
                    for op in block:
                        # Every collective of a layer runs while the other micro-batch computes.
                        emit(op, layer=li, stage=s, part=part, overlaps=op.overlaps or op.collective is not None)
        if s < plan.pp - 1:
            emit(pp_send, stage=s, peer=s + 1)
    for op in head + _draft_ops(cfg):
        emit(op, stage=plan.pp - 1)
    arr = {k: np.array(v) for k, v in cols.items()}
    return Program(templates, arr["tmpl"], arr["layer"], arr["stage"], arr["peer"], arr["part"],
                   arr["overlaps"].astype(bool), cfg.hardware.activation_hbm_fraction)


def stage_positions(cfg: EmulatorConfig, stage_layers: np.ndarray, *, two_batch: bool = False,
                    collectives_only: bool = False) -> np.ndarray:
    """Program positions each pipeline stage's ranks run per step, without building the program.

    Counts what :func:`lower` emits for a stage (its layers' ops, the embedding on the first
    stage, the head on the last, a pipeline send out of and a receive into each boundary), so
    the run estimate can size a run before any per-rank array exists.

    Parameters
    ----------
    cfg : EmulatorConfig
    stage_layers : numpy.ndarray
        ``[pp + 1]`` first layer of each stage, then the layer count (:func:`split_layers`).
    two_batch : bool, default False
        Count the two-batch-overlap form (every layer op twice).
    collectives_only : bool, default False
        Count only collectives (sends and receives included): what a rank with no tokens in a
        step still records, since its group's peers wait for it.

    Returns
    -------
    numpy.ndarray
        ``[pp]`` int64 positions per stage; their sum, minus the ``pp - 1`` receives, is the
        program's length.
    """
    m = cfg.model

    def count(ops: list[OpTemplate]) -> int:
        return sum(1 for op in ops if op.collective or not collectives_only)

    attention, dense = count(_attention_ops(cfg)), count(_dense_mlp_ops(cfg))
    moe = count(_moe_ops(cfg)) if m.is_moe else 0
    pp = len(stage_layers) - 1
    out = np.zeros(pp, dtype=np.int64)
    for s in range(pp):
        layers = range(int(stage_layers[s]), int(stage_layers[s + 1]))
        per_layer = sum(attention + (moe if m.is_moe_layer(li) else dense) for li in layers)
        out[s] = per_layer * (2 if two_batch else 1) + (s < pp - 1) + (s > 0)
    out[0] += 0 if collectives_only else 1    # embedding
    out[-1] += count(_head_ops(cfg)) + count(_draft_ops(cfg))
    return out
