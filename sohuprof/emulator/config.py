"""What an emulated run is asked to do: model, hardware, cluster shape, workload, faults."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sohuprof.errors import SpecError
from sohuprof.hardware import HardwareSpec
from sohuprof.models import DTYPE_BYTES, ModelConfig

__all__ = ["Fault", "EmulatorConfig", "parse_fault"]

_FAULT_KEYS = {"straggler": {"rank": int, "slowdown": float}, "slow-link": {"node": int, "factor": float}}


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
    """Parse ``straggler:rank=R,slowdown=F`` or ``slow-link:node=N,factor=F``."""
    usage = "expected 'straggler:rank=R,slowdown=F' or 'slow-link:node=N,factor=F'"
    m = re.fullmatch(r"\s*([a-z-]+)\s*:(.*)", text)
    if not m or m.group(1) not in _FAULT_KEYS:
        raise SpecError(f"--inject {text!r}: {usage}")
    kind, keys = m.group(1), _FAULT_KEYS[m.group(1)]
    values: dict[str, float | int] = {}
    for part in filter(None, (p.strip() for p in m.group(2).split(","))):
        key, sep, raw = part.partition("=")
        if not sep or key.strip() not in keys:
            raise SpecError(f"--inject {text!r}: unknown or malformed '{part}'; {usage}")
        try:
            values[key.strip()] = keys[key.strip()](raw.strip())
        except ValueError:
            raise SpecError(f"--inject {text!r}: '{key.strip()}' must be a number, got {raw.strip()!r}") from None
    if set(values) != set(keys):
        raise SpecError(f"--inject {text!r}: needs {', '.join(sorted(keys))}; {usage}")
    if kind == "straggler":
        if values["slowdown"] < 1:
            raise SpecError(f"--inject {text!r}: slowdown must be >= 1")
        return Fault(kind, rank=int(values["rank"]), slowdown=float(values["slowdown"]))
    if not 0 < values["factor"] <= 1:
        raise SpecError(f"--inject {text!r}: factor must be in (0, 1]")
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
        if self.dtype not in DTYPE_BYTES:
            raise SpecError(f"'--dtype' must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}")
        if self.rate is not None and not self.rate > 0:
            raise SpecError(f"'--rate' must be > 0 requests/s, got {self.rate}")
        if self.clock_skew_us < 0:
            raise SpecError("'--clock-skew-us' must be >= 0")
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
