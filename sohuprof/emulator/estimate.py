"""What an emulation will write and hold, from its configuration alone, before any work starts.

The estimate is closed-form: records per step follow exactly from the program's shape (one per op
of the rank's pipeline stage, doubled under two-batch overlap, and a host record on the first
stage), and the number of scheduler steps from a fluid model of continuous batching (prefill
limited by the token budget, decodes by the sequences the KV cache holds at once, a pipeline's
virtual engines taking turns, idle gaps between Poisson arrivals).
Nothing of the size of the cluster or the workload is allocated, so a configuration that would
need terabytes is refused in microseconds. Measured against real runs the record count lands
within a factor of 2 (tests/emulator/test_plans.py holds that line).
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sohuprof.emulator.clock import MAX_CLOCK_SYNC
from sohuprof.emulator.config import EmulatorConfig
from sohuprof.emulator.lowering import stage_positions
from sohuprof.emulator.plan import split_layers
from sohuprof.emulator.runtime import kv_capacity_tokens, weights_per_chip
from sohuprof.errors import SpecError
from sohuprof.strace import CHUNK_HEADER, FILE_HEADER, RECORD_DTYPE

__all__ = ["RunEstimate", "estimate_run", "check_run", "check_memory", "LARGE_RECORDS", "LARGE_BYTES", "MAX_RECORDS",
           "MAX_BYTES", "MAX_SECONDS"]

#: A run at least this big says so on stderr before it starts (about a minute of emulation).
LARGE_RECORDS = 10_000_000
LARGE_BYTES = 1_000_000_000
#: A run estimated past any ceiling is refused unless asked for explicitly (``--allow-large``):
#: 1e9 records is 72 GB of raw trace and hours of emulation, collection and analysis; an hour of
#: emulation is a mistyped flag far more often than a plan.
MAX_RECORDS = 1_000_000_000
MAX_BYTES = 100_000_000_000
MAX_SECONDS = 3600.0

# Working-memory coefficients, measured with tracemalloc on the emulator (see RunEstimate):
#: bytes per (rank, program position) of one step's [R, K] arrays (durations, start/end, masks...)
_BYTES_PER_CELL = 200
#: bytes per record of one step while it is built (the record itself and its index arrays)
_BYTES_PER_STEP_RECORD = 160
#: bytes per request: the schedulers' state arrays and the request table, and above all its three
#: lifecycle host events held as dicts and encoded lines until they are written (peak RSS measured
#: at 1.40 GB for 100k one-token requests and 13.6 GB for 1M: ~14 KB a request)
_BYTES_PER_REQUEST = 16_000
#: bytes per (step, replica) of the host events kept in memory until they are written
_BYTES_PER_HOST_EVENT = 700
#: wall time per record written, per step, per replica's scheduling in a step, and per request
#: that scheduling scans (its state arrays span every request routed to the replica)
_SECONDS_PER_RECORD, _SECONDS_PER_STEP = 5e-7, 2e-4
_SECONDS_PER_REPLICA_STEP, _SECONDS_PER_STEP_REQUEST = 5e-5, 3e-8
#: wall time per request of its host events (made, sorted, encoded): 90 s for 1M requests
_SECONDS_PER_REQUEST = 9e-5
#: bytes of one host.jsonl line: a step event, and a request's arrival/first-token/finish
_STEP_LINE_BYTES, _REQUEST_LINES_BYTES = 190, 200
#: a chip's NIC counters of one step: its host.jsonl line, the memory it holds until written (a
#: compact row through the run, an event while its node's file is made) and the time to make it
_NIC_LINE_BYTES, _BYTES_PER_NIC_LINE, _SECONDS_PER_NIC_LINE = 150, 200, 3e-6
#: bytes of one clock-sync snapshot in run.json, taken every 100 ms of the run on every node
_SNAPSHOT_BYTES, _SNAPSHOT_EVERY_NS = 90, 1e8


@dataclass(frozen=True)
class RunEstimate:
    """The size of an emulated run, estimated from its configuration.

    Attributes
    ----------
    steps : int
        Scheduler steps of the busiest replica (set of replicas stepping together).
    records : int
        Raw records over every chip.
    raw_bytes : int
        Bytes of the chip files (headers, chunk headers, records).
    host_bytes : int
        Bytes of the host event logs and run.json.
    memory_bytes : int
        Peak working memory of the emulator: one step's per-rank arrays, the writer's buffers
        (up to a chunk per chip), the schedulers' state and the host events kept until the end.
    files : int
        Chip files, all open while the run writes.
    duration_ns : float
        Emulated time the run spans.
    seconds : float
        Wall time the emulation will take here, roughly (a record costs about 2 us, and every
        scheduler step scans its replica's requests).
    """

    steps: int
    records: int
    raw_bytes: int
    host_bytes: int
    memory_bytes: int
    files: int
    duration_ns: float
    seconds: float

    @property
    def disk_bytes(self) -> int:
        """Bytes the run directory will take."""
        return self.raw_bytes + self.host_bytes

    @property
    def large(self) -> bool:
        """Worth saying so before starting (``LARGE_RECORDS`` records or ``LARGE_BYTES`` bytes)."""
        return self.records >= LARGE_RECORDS or self.disk_bytes >= LARGE_BYTES

    def describe(self) -> str:
        """One line for people: ``about 12.3M records, 0.9 GB on disk, ...``."""
        return (f"about {_count(self.records)} records in {self.files:,} chip files, {_size(self.disk_bytes)} on "
                f"disk, {_size(self.memory_bytes)} of memory, {_count(self.steps)} scheduler steps, "
                f"{self.duration_ns / 1e9:,.3g} s emulated, {_wall(self.seconds)} to run")


def estimate_run(cfg: EmulatorConfig) -> RunEstimate:
    """Estimate how many records and bytes emulating ``cfg`` writes, and the memory it needs.

    Cheap whatever the configuration: nothing is allocated per rank, request or step.

    Parameters
    ----------
    cfg : EmulatorConfig

    Returns
    -------
    RunEstimate

    Raises
    ------
    SpecError
        ``cfg`` is inconsistent (as :meth:`EmulatorConfig.validate`), or its weights do not fit.

    Examples
    --------
    >>> from sohuprof.hardware import load_hardware
    >>> from sohuprof.models import load_model
    >>> cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=1,
    ...                      chips_per_node=4, tp=4, requests=8, prompt_len=256, output_len=16)
    >>> est = estimate_run(cfg)
    >>> est.files, est.large
    (4, False)
    """
    cfg.validate()
    m = cfg.model
    stage_layers = split_layers(m.layers, cfg.pp)
    cap = kv_capacity_tokens(cfg, stage_layers)
    dp, tp = cfg.dp, cfg.tp
    span = max(cfg.ep // tp, 1)              # replicas coupled through one EP group step together
    positions = stage_positions(cfg, stage_layers)
    # Records of one replica-step: every stage's positions, plus the first stage's host record.
    per_step = tp * (int(positions.sum()) + 1)
    tbo = (tp > 1 or cfg.ep > 1) and cfg.two_batch_overlap
    per_tbo_step = tp * (int(stage_positions(cfg, stage_layers, two_batch=True).sum()) + 1) if tbo else per_step
    # A replica without tokens in a step its set runs still records its host step and collectives.
    per_idle_step = tp * (int(stage_positions(cfg, stage_layers, collectives_only=True).sum()) + 1)
    step_ns = _decode_step_ns(cfg, stage_layers, positions)

    # Requests are routed round-robin: the first ``requests % dp`` replicas get one more.
    hi, n_hi = -(-cfg.requests // dp), cfg.requests % dp or dp
    lo = cfg.requests // dp
    sets_hi = -(-n_hi // span)
    classes = [(sets_hi, hi), (dp // span - sets_hi, lo)]
    records = steps_max = replica_steps = 0     # replica_steps: host step events, one per replica-step
    for sets, load in classes:
        if sets <= 0 or load <= 0:
            continue
        steps, _ = _steps(cfg, load, span, cap, step_ns)
        busy, tbo_steps = _steps(cfg, load, 1, cap, step_ns) if span > 1 else _steps(cfg, load, span, cap, step_ns)
        tbo_steps = tbo_steps if tbo else 0
        records += sets * span * ((steps - busy) * per_idle_step + (busy - tbo_steps) * per_step
                                  + tbo_steps * per_tbo_step)
        replica_steps += sets * span * steps
        steps_max = max(steps_max, steps)
    world = cfg.world
    nic_lines = replica_steps * _nic_chips(cfg)
    chunks = records / cfg.chunk_records + world
    raw = int(records * RECORD_DTYPE.itemsize + chunks * CHUNK_HEADER.size + world * FILE_HEADER.size)
    arrival_ns = cfg.requests / cfg.rate * 1e9 if cfg.rate else 0.0
    # A pipeline keeps pp steps in flight: a step every step_ns / pp once it is full.
    # Nor faster than its FLOPs on every chip (prefill-heavy runs: 2 FLOPs a weight a token).
    prompt, out = cfg.mean_lengths
    hw = cfg.hardware
    compute_ns = (cfg.requests * (prompt + out) * 2 * m.active_params()
                  / (cfg.world * hw.peak_flops(cfg.dtype) * hw.matmul_efficiency) * 1e9)
    duration = max(arrival_ns, (steps_max + cfg.pp - 1) * step_ns / cfg.pp, compute_ns)
    snapshots = min(max(8, int(duration / _SNAPSHOT_EVERY_NS) + 1), MAX_CLOCK_SYNC) * cfg.nodes
    host = int(replica_steps * _STEP_LINE_BYTES + cfg.requests * _REQUEST_LINES_BYTES
               + nic_lines * _NIC_LINE_BYTES + snapshots * _SNAPSHOT_BYTES + 200 * world)
    cells = world * int(positions.sum()) * (2 if tbo else 1)
    memory = int(cells * _BYTES_PER_CELL + dp * per_tbo_step * _BYTES_PER_STEP_RECORD
                 # up to a chunk pending per chip, copied once more when it is framed
                 + 2 * world * min(records / world, cfg.chunk_records) * RECORD_DTYPE.itemsize
                 + cfg.requests * _BYTES_PER_REQUEST + replica_steps * _BYTES_PER_HOST_EVENT
                 + nic_lines * _BYTES_PER_NIC_LINE)
    seconds = (records * _SECONDS_PER_RECORD + steps_max * _SECONDS_PER_STEP + cfg.requests * _SECONDS_PER_REQUEST
               + nic_lines * _SECONDS_PER_NIC_LINE
               + replica_steps * (_SECONDS_PER_REPLICA_STEP + hi * _SECONDS_PER_STEP_REQUEST))
    return RunEstimate(steps=int(steps_max), records=int(records), raw_bytes=raw, host_bytes=host,
                       memory_bytes=memory, files=world, duration_ns=float(duration), seconds=float(seconds))


def check_run(est: RunEstimate, out_dir: str | os.PathLike[str], *, allow_large: bool = False) -> None:
    """Refuse a run the machine cannot hold, or one past the documented ceilings.

    Parameters
    ----------
    est : RunEstimate
        From :func:`estimate_run`.
    out_dir : path-like
        The run directory to be written; free space is read on its nearest existing parent.
    allow_large : bool, default False
        Run past ``MAX_RECORDS``, ``MAX_BYTES``, ``MAX_SECONDS`` and the free disk space (the
        estimate may be pessimistic). Memory and open-file limits always hold: past them the run
        cannot finish.

    Raises
    ------
    SpecError
        Naming what does not fit, the estimate and the limit.
    """
    what = est.describe()
    check_memory(est)
    limit = _open_file_limit()
    if limit is not None and est.files + 64 > limit:
        raise SpecError(f"this run writes {est.files:,} chip files at once, more than the {limit:,} open files "
                        "this process may hold; raise it (ulimit -n) or use fewer --nodes/--chips-per-node")
    if allow_large:
        return
    if est.records > MAX_RECORDS or est.disk_bytes > MAX_BYTES or est.seconds > MAX_SECONDS:
        raise SpecError(f"this run would write {what}, past the ceiling of {_count(MAX_RECORDS)} records, "
                        f"{_size(MAX_BYTES)} or {_wall(MAX_SECONDS)} of emulation; lower --requests, "
                        "--output-len or --prompt-len, or pass --allow-large")
    free = _free_bytes(Path(out_dir))
    if free is not None and est.disk_bytes > free:
        raise SpecError(f"this run would write {_size(est.disk_bytes)} but only {_size(free)} is free "
                        f"under {str(Path(out_dir).parent)!r} ({what}); free space, pick another -o, "
                        "or pass --allow-large")


def check_memory(est: RunEstimate) -> None:
    """Refuse a run whose working memory exceeds what the machine has available now.

    Raises
    ------
    SpecError
        Naming the estimate and the memory available.
    """
    mem = _available_memory()
    if mem is not None and est.memory_bytes > mem:
        raise SpecError(f"this run needs {_size(est.memory_bytes)} of memory, more than the {_size(mem)} "
                        f"available ({est.describe()}); lower --requests, --nodes or --chips-per-node")


# ------------------------------------------------------------------------------------ the model

def _nic_chips(cfg: EmulatorConfig) -> int:
    """Chips of a replica that may move bytes across nodes in a step (each writes a line of NIC
    counters): all of them when a TP or EP group can span nodes or a pipeline boundary can, else
    none (groups of consecutive ranks that divide a node stay inside it)."""
    cpn = cfg.chips_per_node
    spans = cfg.tp > cpn or cfg.ep > cpn or cpn % cfg.ep != 0 or cfg.pp > 1
    return cfg.tp * cfg.pp if cfg.nodes > 1 and spans else 0


def _steps(cfg: EmulatorConfig, load: int, span: int, cap: int, step_ns: float) -> tuple[int, int]:
    """Scheduler steps of a set of ``span`` coupled replicas with ``load`` requests each, and how
    many of them are full prefill steps (where two-batch overlap applies).

    With ``pp`` stages a replica's requests are dealt to ``pp`` virtual engines taking turns,
    each with its share of the KV cache: a step serves one engine's sequences, and an engine
    with nothing to run still passes its (empty) step while others have work."""
    prompt, out = (max(1, round(x)) for x in cfg.mean_lengths)   # lengths from distributions: their means
    out = 1 + round((out - 1) / cfg.tokens_per_decode)            # speculative decoding: fewer decode steps
    mbt = cfg.max_batch_tokens
    E = cfg.pp
    c = max(1, min(-(-load // E), cfg.max_seqs, cap // E // (prompt + out)))   # one engine's sequences at once
    p = -(-prompt // mbt)                                         # steps of one request's prefill
    life = p + out - 1                                            # steps a request holds its slot
    first_wave = -(-E * c * prompt // mbt) + (out - 1) * E        # all prefill, then each engine's decodes
    budget = load * (prompt + out - 1) / mbt                      # every token through the budget
    slots = load / c * life                                       # c slots, each held ``life`` steps
    burst = max(first_wave, budget, slots)
    steps = burst
    if cfg.rate is not None:
        # Poisson arrivals: a step runs while at least one request is in flight. With x requests
        # in flight on average (Little), busy steps are n * life * (1 - e^-x) / x: n * life when
        # they never meet, the arrival span over the step time when they always do.
        lam = cfg.rate / cfg.dp * span / 1e9                       # the set's arrivals per ns
        x = lam * step_ns * life
        alone = load * span * life * E                             # with the other engines' empty steps
        steps = max(burst, alone * (-math.expm1(-x)) / x if x > 0 else alone)
    # Two-batch overlap runs the steps whose batch reaches two_batch_min_tokens: packed prefill
    # chunks when requests come together, each prompt's own full chunks when they come apart.
    big = mbt >= cfg.two_batch_min_tokens
    packed = load * prompt // mbt + (load * prompt % mbt >= cfg.two_batch_min_tokens) if big else 0
    apart = load * (prompt // mbt + (prompt % mbt >= cfg.two_batch_min_tokens)) if big else 0
    full_prefill = apart if steps > burst else packed
    return int(math.ceil(steps)), int(min(full_prefill, steps))


def _decode_step_ns(cfg: EmulatorConfig, stage_layers: np.ndarray, positions: np.ndarray) -> float:
    """Time of a small decode step: every stage streams its weights from HBM, plus latencies."""
    hw = cfg.hardware
    weights = weights_per_chip(cfg, stage_layers)
    stream = weights.sum() / (hw.hbm_bandwidth * hw.memory_efficiency) * 1e9
    collectives = (cfg.tp > 1 or cfg.ep > 1) * 2 * cfg.model.layers + (cfg.pp - 1)
    latency = hw.inter_node_latency_ns if cfg.tp > cfg.chips_per_node or cfg.ep > cfg.chips_per_node \
        else hw.intra_node_latency_ns
    return float(hw.step_overhead_ns + stream + collectives * latency
                 + int(positions.sum()) * hw.launch_overhead_ns)


# ----------------------------------------------------------------------------- the machine

def _available_memory() -> int | None:
    """Bytes of memory the run may take: MemAvailable on Linux, else the physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def _open_file_limit() -> int | None:
    try:
        import resource
    except ImportError:   # not on Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def _free_bytes(out: Path) -> int | None:
    """Free bytes on the file system the run directory will live on (its nearest existing parent)."""
    here = out.absolute().parent
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def _wall(seconds: float) -> str:
    if seconds >= 5400:
        return f"~{seconds / 3600:,.0f} h"
    if seconds >= 90:
        return f"~{seconds / 60:,.0f} min"
    return f"~{max(seconds, 1):.0f} s"


def _count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f}{unit}"
    return f"{int(n):,}"


def _size(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n):,} B"
