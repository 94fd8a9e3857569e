"""What an emulated run is asked to do: model, hardware, cluster shape, workload, faults."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sohuprof.errors import SpecError
from sohuprof.hardware import HardwareSpec
from sohuprof.models import DTYPE_BYTES, ModelConfig

__all__ = ["Fault", "LengthDist", "EmulatorConfig", "parse_fault", "parse_lengths", "MAX_NODES", "MAX_CHIPS_PER_NODE", "MAX_SEED",
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

#: Default upper clip of a lognormal length, as a multiple of its mean (sigma 1 clips ~0.5 %).
LOGNORMAL_CAP = 8
#: Longest speculative draft a decode step verifies (MTP heads draft 1-4; EAGLE trees up to ~8).
MAX_SPEC_TOKENS = 16
#: Rows a length histogram file may hold.
MAX_HISTOGRAM_ROWS = 1_000_000

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
class LengthDist:
    """How a request's prompt (or output) length is drawn; ``mean`` is ``--prompt-len`` (or
    ``--output-len``).

    ``fixed``: every request ``mean`` tokens. ``uniform``: integers in ``[low, high]``.
    ``lognormal``: mean ``mean`` and log-space shape ``sigma``, rounded and clipped to
    ``[1, high]`` (``high`` 0: ``LOGNORMAL_CAP x mean``). ``histogram``: ``lengths`` drawn with
    probability proportional to ``weights`` (a CSV file of ``length,weight`` rows, ``source``).
    """

    kind: str = "fixed"
    low: int = 0
    high: int = 0
    sigma: float = 0.0
    lengths: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()
    source: str = ""

    def spec(self) -> str:
        """The spec :func:`parse_lengths` reads back (a histogram by its file name)."""
        if self.kind == "uniform":
            return f"uniform:min={self.low},max={self.high}"
        if self.kind == "lognormal":
            return f"lognormal:sigma={self.sigma:g}" + (f",max={self.high}" if self.high else "")
        if self.kind == "histogram":
            return f"hist:{self.source}"
        return "fixed"

    def to_dict(self) -> dict:
        """The distribution as run.json records it (a histogram with its table, so the run's
        workload is known without the file)."""
        out: dict = {"kind": self.kind, "spec": self.spec()}
        if self.kind == "histogram":
            out |= {"lengths": list(self.lengths), "weights": list(self.weights)}
        return out

    def bounds(self, mean: int) -> tuple[int, int]:
        """Shortest and longest length a draw can give."""
        if self.kind == "uniform":
            return self.low, self.high
        if self.kind == "lognormal":
            return 1, self.high or LOGNORMAL_CAP * mean
        if self.kind == "histogram":
            drawn = [n for n, w in zip(self.lengths, self.weights) if w > 0]
            return min(drawn), max(drawn)
        return mean, mean

    def mean(self, mean: int) -> float:
        """Expected length (before a lognormal's clip)."""
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        if self.kind == "histogram":
            w = np.asarray(self.weights)
            return float(np.dot(self.lengths, w) / w.sum())
        return float(mean)

    def draw(self, rng: np.random.Generator, n: int, mean: int) -> np.ndarray:
        """``n`` lengths (int64), one vectorized draw from ``rng``; ``fixed`` draws nothing."""
        if self.kind == "uniform":
            return rng.integers(self.low, self.high, n, endpoint=True, dtype=np.int64)
        if self.kind == "lognormal":
            mu = math.log(mean) - self.sigma ** 2 / 2     # so the mean is ``mean``
            x = np.rint(rng.lognormal(mu, self.sigma, n))
            return np.clip(x, 1, self.bounds(mean)[1]).astype(np.int64)
        if self.kind == "histogram":
            w = np.asarray(self.weights)
            return np.asarray(self.lengths, dtype=np.int64)[rng.choice(len(w), n, p=w / w.sum())]
        return np.full(n, mean, dtype=np.int64)


def parse_lengths(text: str, flag: str = "--prompt-dist") -> LengthDist:
    """Parse a length distribution: ``fixed``, ``uniform:min=A,max=B``, ``lognormal:sigma=S[,max=M]``
    or ``hist:FILE`` (a CSV of ``length,weight`` rows; a header row is skipped).

    Raises
    ------
    SpecError
        An unknown kind or key, bounds out of order or outside 1..2**31-1, a sigma outside
        (0, 4], an unreadable or empty histogram, or a weight that is negative or not finite.

    Examples
    --------
    >>> parse_lengths("uniform:min=128,max=4096")
    LengthDist(kind='uniform', low=128, high=4096, sigma=0.0, lengths=(), weights=(), source='')
    """
    usage = "expected fixed, uniform:min=A,max=B, lognormal:sigma=S[,max=M] or hist:FILE.csv"
    kind, _, rest = text.strip().partition(":")
    if kind == "fixed" and not rest:
        return LengthDist()
    if kind == "hist":
        return _read_histogram(rest.strip(), flag)
    keys = {"uniform": {"min": int, "max": int}, "lognormal": {"sigma": float, "max": int}}.get(kind)
    if keys is None:
        raise SpecError(f"{flag} {text!r}: {usage}")
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, raw = (x.strip() for x in part.partition("="))
        if not sep or key not in keys or key in values:
            raise SpecError(f"{flag} {text!r}: unknown, repeated or malformed '{part}'; {usage}")
        try:
            values[key] = keys[key](raw)
        except ValueError:
            raise SpecError(f"{flag} {text!r}: '{key}' must be a number, got {raw!r}") from None
    need = {"min", "max"} if kind == "uniform" else {"sigma"}
    if not need <= set(values):
        raise SpecError(f"{flag} {text!r}: needs {', '.join(sorted(need))}; {usage}")
    for key in ("min", "max"):
        if key in values and not 1 <= values[key] <= MAX_COUNT:
            raise SpecError(f"{flag} {text!r}: '{key}' must be in 1..{MAX_COUNT:,}, got {values[key]}")
    if kind == "uniform":
        if values["min"] > values["max"]:
            raise SpecError(f"{flag} {text!r}: min {values['min']} exceeds max {values['max']}")
        return LengthDist("uniform", low=int(values["min"]), high=int(values["max"]))
    if not (math.isfinite(values["sigma"]) and 0 < values["sigma"] <= 4):
        raise SpecError(f"{flag} {text!r}: sigma must be in (0, 4], got {values['sigma']}")
    return LengthDist("lognormal", sigma=float(values["sigma"]), high=int(values.get("max", 0)))


def _read_histogram(path: str, flag: str) -> LengthDist:
    """A ``length,weight`` CSV as a histogram distribution."""
    try:
        with open(path, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{flag} hist:{path}: cannot read the histogram file ({exc})") from None
    if rows and not rows[0][0].strip().lstrip("-").isdigit():
        rows = rows[1:]                                 # a header row
    if not 1 <= len(rows) <= MAX_HISTOGRAM_ROWS:
        raise SpecError(f"{flag} hist:{path}: needs 1..{MAX_HISTOGRAM_ROWS:,} 'length,weight' rows, got {len(rows):,}")
    lengths, weights = [], []
    for i, row in enumerate(rows, 1):
        try:
            if len(row) != 2:
                raise ValueError
            length, weight = int(row[0]), float(row[1])
        except ValueError:
            raise SpecError(f"{flag} hist:{path}: row {i} {','.join(row)!r} is not 'length,weight'") from None
        if not 1 <= length <= MAX_COUNT or not (math.isfinite(weight) and weight >= 0):
            raise SpecError(f"{flag} hist:{path}: row {i}: length must be in 1..{MAX_COUNT:,} and weight "
                            f"a finite number >= 0, got {length}, {weight}")
        lengths.append(length)
        weights.append(weight)
    if sum(weights) <= 0:
        raise SpecError(f"{flag} hist:{path}: the weights sum to 0")
    return LengthDist("histogram", lengths=tuple(lengths), weights=tuple(weights), source=Path(path).name)


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
        Input and output tokens per request (the mean of a lognormal distribution).
    prompt_dist, output_dist : LengthDist
        How each request's lengths are drawn (seeded, apart from every other random stream).
    prefix_len : int
        A system prompt of this many tokens opens every prompt, before the ``prompt_len`` (or
        drawn) tokens of its own, as vLLM's benchmark ``--prefix-len``; once a replica has
        computed it, later requests reuse its KV (prefix caching): their prefill skips it and
        it is held once.
    spec_tokens, spec_accept : int, float
        Speculative decoding (MTP): each decode step drafts ``spec_tokens`` tokens, verifies
        them with the target model and emits 1 + the accepted ones; each draft token is
        accepted with probability ``spec_accept`` if all before it were.
    max_batch_tokens : int
        Token budget of one scheduler step (chunked prefill plus decodes).
    max_seqs : int
        Sequences one replica runs at once.
    two_batch_overlap, two_batch_min_tokens : bool, int
        Let a step of at least that many tokens split into two interleaved micro-batches, so
        each one's collectives (TP all-reduces, EP dispatch and combine) overlap the other's
        compute, whenever that is estimated faster than the whole batch (it reads the weights
        and launches every op twice): the choice follows the step's shape, with no cliff.
    dtype : str
        Weight and matrix-math format (``fp8`` or ``bf16``); activations travel in bf16.
    kv_dtype : str or None
        KV-cache format (None: ``dtype``).
    prefill_replicas : int
        Disaggregated serving: the first this many data-parallel replicas only prefill (each
        prompt and its first token) and send the request's KV over the NIC to one of the
        others, which only decode (0: every replica does both).
    expert_skew : float or None
        MoE routing: each layer's expert popularity is Zipf with this exponent (the r-th hottest
        expert is picked ~ r**-skew; 0 uniform), over an order of the experts drawn per layer;
        None: a mild random imbalance (Dirichlet(4) per layer). Hot experts take longer and
        their ranks send back more in the combine.
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
    prompt_dist: LengthDist = LengthDist()
    output_dist: LengthDist = LengthDist()
    prefix_len: int = 0
    spec_tokens: int = 0
    spec_accept: float = 0.8
    two_batch_overlap: bool = True
    two_batch_min_tokens: int = 1
    dtype: str = "fp8"
    kv_dtype: str | None = None
    expert_skew: float | None = None
    prefill_replicas: int = 0
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

    @property
    def kv_bytes(self) -> int:
        """Bytes of one KV-cache element."""
        return DTYPE_BYTES[self.kv_dtype or self.dtype]

    @property
    def prompt_bounds(self) -> tuple[int, int]:
        """Shortest and longest prompt, the shared prefix included."""
        lo, hi = self.prompt_dist.bounds(self.prompt_len)
        return lo + self.prefix_len, hi + self.prefix_len

    @property
    def output_bounds(self) -> tuple[int, int]:
        return self.output_dist.bounds(self.output_len)

    @property
    def longest_request(self) -> int:
        """Tokens the longest possible request holds in the KV cache (prompt + output)."""
        return self.prompt_bounds[1] + self.output_bounds[1]

    @property
    def mean_lengths(self) -> tuple[float, float]:
        """Expected prompt (the shared prefix included) and output tokens of a request."""
        return self.prompt_dist.mean(self.prompt_len) + self.prefix_len, self.output_dist.mean(self.output_len)

    @property
    def tokens_per_decode(self) -> float:
        """Expected tokens a sequence emits per decode step: 1 + sum of ``spec_accept**i``, i = 1..k."""
        a = self.spec_accept
        return 1.0 + sum(a ** i for i in range(1, self.spec_tokens + 1))

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
        if self.kv_dtype is not None and self.kv_dtype not in DTYPE_BYTES:
            raise SpecError(f"'--kv-dtype' must be one of {', '.join(DTYPE_BYTES)}, got {self.kv_dtype!r}")
        for flag, lo_hi in (("prompt", self.prompt_bounds), ("output", self.output_bounds)):
            if lo_hi[1] > MAX_COUNT:
                raise SpecError(f"'--{flag}-dist' draws up to {lo_hi[1]:,} tokens, more than {MAX_COUNT:,}; "
                                f"give it a max or lower --{flag}-len")
        if not 0 <= self.prefix_len <= MAX_COUNT:
            raise SpecError(f"'--prefix-len' must be in 0..{MAX_COUNT:,}, got {self.prefix_len}")
        if self.prefill_replicas:
            span = max(self.ep // self.tp, 1)
            if not 0 < self.prefill_replicas < self.dp:
                raise SpecError(f"'--prefill-replicas' {self.prefill_replicas} must leave a decode replica "
                                f"of the {self.dp} data-parallel replicas (and not be negative)")
            if self.prefill_replicas % span:
                raise SpecError(f"'--prefill-replicas' {self.prefill_replicas} must be a multiple of the {span} "
                                f"replicas one EP group of --ep {self.ep} spans")
        if self.expert_skew is not None and not (math.isfinite(self.expert_skew) and 0 <= self.expert_skew <= 4):
            raise SpecError(f"'--expert-skew' must be in [0, 4], got {self.expert_skew}")
        if not 0 <= self.spec_tokens <= MAX_SPEC_TOKENS:
            raise SpecError(f"'--spec-tokens' must be in 0..{MAX_SPEC_TOKENS}, got {self.spec_tokens}")
        if not (math.isfinite(self.spec_accept) and 0 <= self.spec_accept <= 1):
            raise SpecError(f"'--spec-accept' must be in [0, 1], got {self.spec_accept}")
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
