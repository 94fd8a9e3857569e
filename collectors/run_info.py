"""``run.json`` and ``host.jsonl`` of a raw Sohu run, validated before anything uses them.

Types and ranges are checked by msgspec structs (a wrong type names its field: ``$.chips[3].rank``),
the rest by explicit checks: ranks, nodes and chips consistent and bounded (a rank of 2**40 is a
clear line, not an allocation), clock frequencies physical, chip files named as the format says
(no path leaves the run directory), chunk counts consistent with record counts. Every message
names the field and the file. The emulator's ``truth`` section is never read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np

from sohuprof.collectors.strace_reader import Slot
from sohuprof.errors import SohuprofError, TraceFormatError
from sohuprof.strace import (FORMAT_NAME, FORMAT_VERSION, MAX_CHUNK_RECORDS, RECORD_DTYPE, RUN_ID_BYTES, chip_path,
                             host_path)

__all__ = ["RUN_FILE", "RunInfo", "HostEvent", "NIC_FIELDS", "read_run_info", "decode_host_line", "MAX_RANKS",
           "MAX_TS_NS", "MAX_CHUNK_RECORDS"]

RUN_FILE = "run.json"
#: Chips a run may have (far above any cluster; bounds every per-rank allocation).
MAX_RANKS = 1 << 20
#: Nodes and chips per node: the file header stores them as uint16.
MAX_NODES = 1 << 16
#: Records a chip file may claim (2**40 records is 79 TB).
MAX_RECORDS = 1 << 40
#: Largest |timestamp| in ns a store keeps (about 146 years): ts + dur never overflows int64.
MAX_TS_NS = 1 << 62
_MIN_CLOCK_HZ, _MAX_CLOCK_HZ = 1e3, 1e12
#: Largest run.json read (a million chips' entries are ~200 MB).
MAX_RUN_JSON_BYTES = 1 << 30

_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_RECORDS)]
_Id = Annotated[int, msgspec.Meta(ge=0, lt=MAX_RANKS)]
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class _OpName(msgspec.Struct):
    id: Annotated[int, msgspec.Meta(ge=0, lt=1 << 24)]
    name: _Name
    op: _Name
    category: _Name


class _Chip(msgspec.Struct):
    rank: _Id
    node: Annotated[int, msgspec.Meta(ge=0, lt=MAX_NODES)]
    chip: Annotated[int, msgspec.Meta(ge=0, lt=MAX_NODES)]
    clock_hz: float
    file: str
    records: _Count
    chunks: _Count


class _Node(msgspec.Struct):
    node: Annotated[int, msgspec.Meta(ge=0, lt=MAX_NODES)]
    host_events: str


class _Group(msgspec.Struct):
    id: Annotated[int, msgspec.Meta(ge=0, lt=1 << 32)]


class _Snapshot(msgspec.Struct):
    node: Annotated[int, msgspec.Meta(ge=0, lt=MAX_NODES)]
    reference_ns: float
    local_ns: float


class _Record(msgspec.Struct):
    size: int
    chunk_records: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_RECORDS)] | None = None


class _Parallel(msgspec.Struct):
    tp: Annotated[int, msgspec.Meta(ge=1, lt=MAX_RANKS)] = 1


class _RunJson(msgspec.Struct):
    format: str
    version: Annotated[int, msgspec.Meta(ge=1)]
    op_names: list[_OpName]
    engines: list[_Name]
    phases: list[_Name]
    chips: list[_Chip]
    nodes: list[_Node]
    record: _Record
    run_id: str | None = None
    parallel: _Parallel = msgspec.field(default_factory=_Parallel)
    groups: list[_Group] = msgspec.field(default_factory=list)
    clock_sync: list[_Snapshot] | None = None
    hardware: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    workload: dict[str, Any] | None = None
    generator: str | None = None


@dataclass(frozen=True)
class RunInfo:
    """What run.json says, shaped for the collector."""

    root: Path
    meta: dict[str, Any]
    run_id: bytes | None
    names: list[str]
    op_of_name: np.ndarray        # [names] code into ``ops``
    ops: list[str]
    category_of_name: np.ndarray  # [names] code into ``categories``
    categories: list[str]
    kind_of_name: np.ndarray      # [names] code into ``kinds`` (collective kind; send/recv are one p2p kind)
    kinds: list[str]
    engines: list[str]
    phases: list[str]
    chips: list[dict[str, Any]]   # sorted by rank
    slots: list[Slot]             # the same order as ``chips``
    nodes: int
    groups: int                   # collective group ids are below this
    tp: int
    clock_sync: list[dict[str, Any]] | None
    hardware: dict[str, Any] | None   # validated (HardwareSpec.to_dict), for the manifest


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    vocab = sorted(set(values))
    index = {v: i for i, v in enumerate(vocab)}
    return np.array([index[v] for v in values], dtype=np.int32), vocab


def _fail(path: Path, what: str) -> TraceFormatError:
    return TraceFormatError(f"{path}: {what}; the run directory is damaged (re-run `sohuprof emulate`, "
                            f"or copy run.json again from where the run was recorded)")


def read_run_info(root: Path) -> RunInfo:
    """Parse and validate ``root/run.json``.

    Raises
    ------
    TraceFormatError
        run.json is missing, not JSON, of another format or a newer version, or has a field of the
        wrong type or out of range (the message names it).
    """
    path = root / RUN_FILE
    try:
        size = path.stat().st_size
        if size > MAX_RUN_JSON_BYTES:
            raise TraceFormatError(f"{path}: {size:,} bytes is far more than any run.json holds; "
                                   f"the run directory is damaged")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TraceFormatError(f"{root}: no {RUN_FILE}; a Sohu run directory has one beside node*/") from None
    except OSError as exc:
        raise TraceFormatError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        meta = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise TraceFormatError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise TraceFormatError(f"{path}: format is {found!r}, expected {FORMAT_NAME!r}")
    version = meta.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise TraceFormatError(f"{path}: format version {version} is newer than this sohuprof reads "
                               f"({FORMAT_VERSION}); upgrade sohuprof")
    try:
        run = msgspec.convert(meta, _RunJson)
    except msgspec.ValidationError as exc:
        raise _fail(path, f"{exc}".replace("`", "'")) from None
    return _check(root, path, meta, run)


def _check(root: Path, path: Path, meta: dict[str, Any], run: _RunJson) -> RunInfo:
    if run.record.size != RECORD_DTYPE.itemsize:
        raise _fail(path, f"'record.size' is {run.record.size}; this sohuprof reads {RECORD_DTYPE.itemsize}-byte records")
    run_id = None
    if run.version >= 2:
        if run.run_id is None or not re.fullmatch(r"[0-9a-f]{%d}" % (2 * RUN_ID_BYTES), run.run_id):
            raise _fail(path, f"'run_id' must be {2 * RUN_ID_BYTES} hex digits, got {run.run_id!r}")
        if run.record.chunk_records is None:
            raise _fail(path, "'record.chunk_records' is missing")
        run_id = bytes.fromhex(run.run_id)
    table = sorted(run.op_names, key=lambda e: e.id)
    if [e.id for e in table] != list(range(len(table))) or not table:
        raise _fail(path, "'op_names' ids must be 0, 1, 2 ... with none missing or repeated")
    if not run.engines or not run.phases:
        raise _fail(path, "'engines' and 'phases' must not be empty")
    nodes = sorted(n.node for n in run.nodes)
    if nodes != list(range(len(nodes))) or not nodes:
        raise _fail(path, "'nodes' must list nodes 0, 1, 2 ... once each")
    for n in run.nodes:
        if n.host_events != host_path(n.node):
            raise _fail(path, f"node {n.node}'s 'host_events' is {n.host_events!r}, expected {host_path(n.node)!r}")
    chips = sorted(run.chips, key=lambda c: c.rank)
    if not chips or len({c.rank for c in chips}) != len(chips) or len(chips) > MAX_RANKS:
        raise _fail(path, "'chips' must list each rank once")
    if len({(c.node, c.chip) for c in chips}) != len(chips):
        raise _fail(path, "'chips' lists one node and chip twice")
    for c in chips:
        where = f"'chips' rank {c.rank}"
        if c.node >= len(nodes):
            raise _fail(path, f"{where}: node {c.node} is not in 'nodes' (0..{len(nodes) - 1})")
        if not (math.isfinite(c.clock_hz) and _MIN_CLOCK_HZ <= c.clock_hz <= _MAX_CLOCK_HZ):
            raise _fail(path, f"{where}: 'clock_hz' {c.clock_hz!r} is not a clock frequency "
                              f"({_MIN_CLOCK_HZ:g} to {_MAX_CLOCK_HZ:g} Hz)")
        if c.file != chip_path(c.node, c.chip):
            raise _fail(path, f"{where}: 'file' is {c.file!r}, expected {chip_path(c.node, c.chip)!r}")
        k = run.record.chunk_records
        if k is not None and c.chunks != -(-c.records // k):
            raise _fail(path, f"{where}: {c.records:,} records cannot fill {c.chunks} chunks of {k}")
    for s in run.clock_sync or []:
        if not (abs(s.reference_ns) < MAX_TS_NS and abs(s.local_ns) < MAX_TS_NS) or s.node >= len(nodes):
            raise _fail(path, f"'clock_sync' has an entry for node {s.node} with times beyond 2**62 ns, "
                              f"non-finite or of an unknown node")
    hardware = None
    if run.hardware is not None:
        from sohuprof.hardware import HardwareSpec
        try:   # the manifest gets the validated spec, numbers as numbers
            hardware = HardwareSpec.from_dict(run.hardware, source=f"{path} 'hardware'").to_dict()
        except (SohuprofError, TypeError, ValueError, KeyError, OverflowError) as exc:
            raise _fail(path, f"'hardware' is not a valid hardware spec ({exc})") from None
    op_codes, ops = _codes([e.op for e in table])
    cat_codes, cats = _codes([e.category for e in table])
    kind_codes, kinds = _codes(["send_recv" if e.op in ("send", "recv") else e.op for e in table])
    slots = [Slot(source=c.file, rank=c.rank, node=c.node, chip=c.chip, records=c.records, chunks=c.chunks,
                  chunk_records=run.record.chunk_records, run_id=run_id) for c in chips]
    return RunInfo(root=root, meta=meta, run_id=run_id, names=[e.name for e in table], op_of_name=op_codes,
                   ops=ops, category_of_name=cat_codes, categories=cats, kind_of_name=kind_codes, kinds=kinds,
                   engines=list(run.engines), phases=list(run.phases),
                   chips=[msgspec.structs.asdict(c) for c in chips], slots=slots, nodes=len(nodes),
                   groups=max((g.id for g in run.groups), default=-1) + 1, tp=run.parallel.tp,
                   clock_sync=[msgspec.structs.asdict(s) for s in run.clock_sync] if run.clock_sync else None,
                   hardware=hardware)


# ------------------------------------------------------------------------------ host events

_Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_RECORDS)]
#: A NIC port counter of one step (bytes or ns): exact in a float64 counter value.
_PortCount = Annotated[int, msgspec.Meta(ge=0, le=1 << 53)]
#: The NIC port counters a ``nic`` line may carry, each stored as counter ``nic_<name>``.
NIC_FIELDS = ("tx_bytes", "tx_ns", "wait_ns", "rx_bytes", "rx_ns")


class HostEvent(msgspec.Struct):
    """One line of ``host.jsonl``: a scheduler step, a request's arrival, first token or finish,
    or a chip's NIC port counters over a step (``nic``: ``rank``, ``step`` and the counters of
    :data:`NIC_FIELDS`, read at the step's end)."""

    type: Annotated[str, msgspec.Meta(max_length=64)]
    ts: Annotated[float, msgspec.Meta(gt=-MAX_TS_NS, lt=MAX_TS_NS)]
    request: Annotated[int, msgspec.Meta(ge=0, le=MAX_RECORDS)] | None = None
    replica: Annotated[int, msgspec.Meta(ge=0, lt=MAX_RANKS)] | None = None
    prompt_tokens: _Tokens | None = None
    output_tokens: _Tokens | None = None
    prefill_tokens: _Tokens | None = None
    decode_tokens: _Tokens | None = None
    rank: _Id | None = None
    tx_bytes: _PortCount | None = None
    tx_ns: _PortCount | None = None
    wait_ns: _PortCount | None = None
    rx_bytes: _PortCount | None = None
    rx_ns: _PortCount | None = None


_HOST_DECODER = msgspec.json.Decoder(HostEvent)


def decode_host_line(line: bytes) -> HostEvent | str:
    """A host event, or why the line cannot be one (the reason goes to quarantine)."""
    try:
        ev = _HOST_DECODER.decode(line)
    except msgspec.ValidationError as exc:
        return f"invalid host event ({exc})".replace("`", "'")
    except (msgspec.DecodeError, RecursionError):
        return "unreadable host event line"
    if ev.type == "step" and ev.replica is None:
        return "invalid host event (a step without 'replica')"
    if ev.type in ("arrival", "first_token", "finish") and ev.request is None:
        return f"invalid host event (a {ev.type} without 'request')"
    if ev.type == "nic" and ev.rank is None:
        return "invalid host event (a nic without 'rank')"
    return ev
