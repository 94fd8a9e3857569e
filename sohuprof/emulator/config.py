"""What an emulated run is asked to do: model, hardware, cluster shape, workload, faults."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from sohuprof.errors import SpecError
from sohuprof.hardware import HardwareSpec
from sohuprof.models import DTYPE_BYTES, ModelConfig

__all__ = ["Fault", "EmulatorConfig", "parse_fault", "MAX_NODES", "MAX_CHIPS_PER_NODE", "MAX_SEED",
           "MAX_ARRIVAL_SPAN_S", "MAX_CLOCK_SKEW_US", "MAX_SLOWDOWN", "MIN_LINK_FACTOR", "MAX_COUNT"]

#: The raw file header stores node and chip as uint16: ids 0..65535, so at most 65535 of each
#: (one id short of the type's range keeps ``nodes * chips_per_node`` clear of its edge).
MAX_NODES = 65535
MAX_CHIPS_PER_NODE = 65535
#: Seeds numpy's generators accept and every seed-derived stream stays in: 0..2**63-1.
MAX_SEED = 2**63 - 1
#: Longest Poisson arrival span (``requests / rate``) an emulation accepts: one day of emulated
#: time. Past it a run is almost all idle gaps, and a rate of 1e-300 would overflow the arrival
#: times to inf.
MAX_ARRIVAL_SPAN_S = 86_400.0
#: Node clock offsets are drawn in ``BOOT_NS +- skew`` (1 s of boot time), so the local counters
#: stay positive only for a skew under 1e6 us; 1e5 us (100 ms) is far beyond any synced cluster.
MAX_CLOCK_SKEW_US = 1e5
#: A straggler at most 1000x slower, a slow link at least 1/1000 of its bandwidth: beyond that an
#: op's time leaves the emulated day and the cycle counters' useful range.
MAX_SLOWDOWN = 1000.0
MIN_LINK_FACTOR = 1e-3
#: Ceiling of counts (requests, token lengths, budgets): int32, what every table stores them as.
MAX_COUNT = 2**31 - 1

_FAULT_KEYS = {"straggler": {"rank": int, "slowdown": float}, "slow-link": {"node": int, "factor": float}}
#: Ranks and nodes a fault names before the plan is known: a rank id fits int32.
_MAX_FAULT_ID = 2**31 - 1


@dataclass(frozen=True)
class Fault:
    """An injected fault.

    ``straggler`` makes one rank's ops ``slowdown`` times slower (a throttled chip);
    ``slow-link`` multiplies one node's NIC bandwidth by ``factor``.
    """

    kind: str
    rank: int | None = None
    node: int | None = None
    slowdown: float = 1.0
    factor: float = 1.0

    def spec(self) -> str:
        if self.kind == "straggler":
            return f"straggler:rank={self.rank},slowdown={self.slowdown:g}"
        return f"slow-link:node={self.node},factor={self.factor:g}"


def parse_fault(text: str) -> Fault:
    """Parse ``straggler:rank=R,slowdown=F`` or ``slow-link:node=N,factor=F``.

    Parameters
    ----------
    text : str
        One ``--inject`` value.

    Returns
    -------
    Fault

    Raises
    ------
    SpecError
        Unknown kind or key, a key given twice or missing, a value that is not a finite number,
        a negative or huge rank or node, a slowdown outside [1, 1000] or a link factor outside
        [0.001, 1]. Whether the rank or node exists is checked against the plan by
        :meth:`EmulatorConfig.validate`.

    Examples
    --------
    >>> parse_fault("straggler:rank=5,slowdown=1.3")
    Fault(kind='straggler', rank=5, node=None, slowdown=1.3, factor=1.0)
    """
    usage = "expected 'straggler:rank=R,slowdown=F' or 'slow-link:node=N,factor=F'"
    m = re.fullmatch(r"\s*([a-z-]+)\s*:(.*)", text)
    if not m or m.group(1) not in _FAULT_KEYS:
        raise SpecError(f"--inject {text!r}: {usage}")
    kind, keys = m.group(1), _FAULT_KEYS[m.group(1)]
    values: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in m.group(2).split(","))):
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in keys:
            raise SpecError(f"--inject {text!r}: unknown or malformed '{part}'; {usage}")
        if key in values:
            raise SpecError(f"--inject {text!r}: '{key}' is given twice")
        try:
            value = keys[key](raw)
        except ValueError:
            kind_of = " (an integer)" if keys[key] is int else ""
            raise SpecError(f"--inject {text!r}: '{key}' must be a number{kind_of}, got {raw!r}") from None
        if not math.isfinite(value):   # float('nan') and float('inf') parse; no fault means them
            raise SpecError(f"--inject {text!r}: '{key}' must be a finite number, got {raw!r}")
        values[key] = value
    if set(values) != set(keys):
        raise SpecError(f"--inject {text!r}: needs {', '.join(sorted(keys))}; {usage}")
    ident = "rank" if kind == "straggler" else "node"
    if not 0 <= values[ident] <= _MAX_FAULT_ID:
        raise SpecError(f"--inject {text!r}: '{ident}' must be in 0..{_MAX_FAULT_ID}, got {values[ident]}")
    if kind == "straggler":
        if not 1 <= values["slowdown"] <= MAX_SLOWDOWN:
            raise SpecError(f"--inject {text!r}: slowdown must be >= 1 and at most {MAX_SLOWDOWN:g}, "
                            f"got {values['slowdown']:g}")
        return Fault(kind, rank=int(values["rank"]), slowdown=float(values["slowdown"]))
    if not MIN_LINK_FACTOR <= values["factor"] <= 1:
        raise SpecError(f"--inject {text!r}: factor must be in (0, 1] and at least {MIN_LINK_FACTOR:g}, "
                        f"got {values['factor']:g}")
    return Fault(kind, node=int(values["node"]), factor=float(values["factor"]))


@dataclass(frozen=True)
class EmulatorConfig:
    """One emulated serving run.

    Attributes
    ----------
    model, hardware : ModelConfig, HardwareSpec
        What is served, on what.
    nodes, chips_per_node : int
        Cluster shape; ranks are ``node * chips_per_node + chip``.
    tp, ep, pp : int
        Tensor, expert and pipeline parallel degrees; the data-parallel degree is
        ``nodes * chips_per_node / (tp * pp)``.
    requests : int
        Requests served; ``rate`` their Poisson arrival rate in requests/s (None: all at t=0).
    prompt_len, output_len : int
        Input and output tokens per request.
    max_batch_tokens : int
        Token budget of one scheduler step (chunked prefill plus decodes).
    max_seqs : int
        Sequences one replica runs at once.
    two_batch_overlap, two_batch_min_tokens : bool, int
        Split steps of at least that many tokens into two interleaved micro-batches, so each
        one's tensor-parallel all-reduces overlap the other's compute.
    dtype : str
        Weight and matrix-math format (``fp8`` or ``bf16``); activations travel in bf16.
    seed : int
        Seeds every random choice: equal configs give byte-identical traces.
    clock_skew_us : float
        Scale of each node's clock offset (and drift); 0 turns skew off.
    faults : tuple of Fault
    chunk_records : int
        Records per raw-trace chunk.
    """

    model: ModelConfig
    hardware: HardwareSpec
    nodes: int = 2
    chips_per_node: int = 8
    tp: int = 8
    ep: int = 1
    pp: int = 1
    requests: int = 64
    rate: float | None = None
    prompt_len: int = 2048
    output_len: int = 128
    max_batch_tokens: int = 8192
    max_seqs: int = 1024
    two_batch_overlap: bool = True
    two_batch_min_tokens: int = 2048
    dtype: str = "fp8"
    seed: int = 0
    clock_skew_us: float = 50.0
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    chunk_records: int = 16384

    @property
    def world(self) -> int:
        return self.nodes * self.chips_per_node

    @property
    def dp(self) -> int:
        return self.world // (self.tp * self.pp)

    @property
    def weight_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def validate(self) -> None:
        """Raise :class:`SpecError` naming the first inconsistent setting and how to fix it."""
        m, w = self.model, self.world
        for name in ("nodes", "chips_per_node", "tp", "ep", "pp", "requests", "prompt_len",
                     "output_len", "max_batch_tokens", "max_seqs", "chunk_records"):
            if getattr(self, name) < 1:
                raise SpecError(f"'--{name.replace('_', '-')}' must be at least 1, got {getattr(self, name)}")
        for name in ("requests", "prompt_len", "output_len", "max_batch_tokens", "max_seqs", "chunk_records",
                     "two_batch_min_tokens"):
            if getattr(self, name) > MAX_COUNT:
                raise SpecError(f"'--{name.replace('_', '-')}' must be at most {MAX_COUNT:,}, got {getattr(self, name):,}")
        for name, top in (("nodes", MAX_NODES), ("chips_per_node", MAX_CHIPS_PER_NODE)):
            if getattr(self, name) > top:
                raise SpecError(f"'--{name.replace('_', '-')}' must be at most {top:,} (the raw header's "
                                f"16-bit id), got {getattr(self, name):,}")
        if self.dtype not in DTYPE_BYTES:
            raise SpecError(f"'--dtype' must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise SpecError(f"'--seed' must be in 0..2**63-1, got {self.seed}")
        if self.rate is not None:
            if not (math.isfinite(self.rate) and self.rate > 0):
                raise SpecError(f"'--rate' must be a finite number > 0 requests/s, got {self.rate}")
            if self.requests / self.rate > MAX_ARRIVAL_SPAN_S:
                raise SpecError(f"'--rate' {self.rate:g} spreads {self.requests:,} requests over "
                                f"{self.requests / self.rate:,.3g} s, more than the one-day ceiling "
                                f"({MAX_ARRIVAL_SPAN_S:,.0f} s); raise --rate to at least "
                                f"{self.requests / MAX_ARRIVAL_SPAN_S:.3g} or lower --requests")
        if not (math.isfinite(self.clock_skew_us) and 0 <= self.clock_skew_us <= MAX_CLOCK_SKEW_US):
            raise SpecError(f"'--clock-skew-us' must be in [0, {MAX_CLOCK_SKEW_US:g}], got {self.clock_skew_us}")
        if self.chips_per_node > self.hardware.chips_per_node:
            raise SpecError(f"'--chips-per-node' {self.chips_per_node} exceeds the {self.hardware.chips_per_node} "
                            f"chips a {self.hardware.name} node has")
        if m.heads % self.tp:
            raise SpecError(f"'--tp' {self.tp} does not divide {m.name}'s {m.heads} attention heads")
        if w % (self.tp * self.pp):
            raise SpecError(f"'--tp' x '--pp' = {self.tp * self.pp} does not divide the {w} chips "
                            f"({self.nodes} nodes x {self.chips_per_node})")
        if self.tp > self.chips_per_node and self.tp % self.chips_per_node:
            raise SpecError(f"'--tp' {self.tp} spans nodes but is not a multiple of --chips-per-node {self.chips_per_node}")
        if self.chips_per_node % self.tp and self.tp < self.chips_per_node:
            raise SpecError(f"'--tp' {self.tp} does not divide --chips-per-node {self.chips_per_node}")
        if self.pp > m.layers:
            raise SpecError(f"'--pp' {self.pp} exceeds {m.name}'s {m.layers} layers")
        if self.ep > 1:
            if not m.is_moe:
                raise SpecError(f"'--ep' {self.ep} needs a mixture-of-experts model; {m.name} is dense")
            if self.ep % self.tp or (self.dp * self.tp) % self.ep:
                raise SpecError(f"'--ep' {self.ep} must be a multiple of --tp {self.tp} and divide the "
                                f"{self.dp * self.tp} chips of a pipeline stage")
            if m.experts % self.ep:
                raise SpecError(f"'--ep' {self.ep} does not divide {m.name}'s {m.experts} experts")
        for f in self.faults:
            if f.kind == "straggler" and not 0 <= (f.rank or 0) < w:
                raise SpecError(f"--inject {f.spec()}: rank {f.rank} is not in 0..{w - 1}")
            if f.kind == "slow-link" and not 0 <= (f.node or 0) < self.nodes:
                raise SpecError(f"--inject {f.spec()}: node {f.node} is not in 0..{self.nodes - 1}")
