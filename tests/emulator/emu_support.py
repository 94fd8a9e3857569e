"""Helpers of the emulator tests: small seeded configs, in-memory runs, and an independent
reference reader for the raw ``.strace`` format.

The reader is written from the format's documentation (``sohuprof/strace.py`` docstring and
DESIGN.md) with :mod:`struct`, :mod:`zlib` and one ``numpy.frombuffer`` per chunk; it imports
neither the emulator's writer nor any collector, so it checks the writer against the contract.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sohuprof.emulator import EmulatorConfig
from sohuprof.emulator.runtime import Emulation, NicCounters
from sohuprof.hardware import HardwareSpec, load_hardware
from sohuprof.models import load_model
from sohuprof.strace import RECORD_DTYPE

# ---------------------------------------------------------------------------------------- configs


def make_config(model: str = "llama3-8b", hw: str = "sohu", **kw: Any) -> EmulatorConfig:
    """An :class:`EmulatorConfig` of a preset model on a preset chip."""
    return EmulatorConfig(model=load_model(model), hardware=load_hardware(hw), **kw)


#: Small in-memory configurations the physics and collective tests run on (a second or less each).
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    # Dense, TP within one node; 2048-token prompts so two-batch overlap kicks in on prefill steps.
    "llama8b-tp4": dict(model="llama3-8b", nodes=1, chips_per_node=4, tp=4, requests=6,
                        prompt_len=1500, output_len=12, max_batch_tokens=4096),
    # MoE, expert-parallel within one node (8 replicas coupled through the EP group).
    "mixtral-ep8": dict(model="mixtral-8x7b", nodes=1, chips_per_node=8, tp=1, ep=8, requests=16,
                        prompt_len=128, output_len=8),
    # MLA + shared experts + dense first layers, EP across 2 nodes.
    "deepseek-ep16": dict(model="deepseek-v3", nodes=2, chips_per_node=8, tp=1, ep=16, requests=16,
                          prompt_len=64, output_len=4),
    # Pipeline parallel: stage 0 on node 0, stage 1 on node 1 (PP sends cross the NIC).
    "llama8b-pp2": dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=4, pp=2, requests=8,
                        prompt_len=256, output_len=16),
    # MoE with TP inside EP: the TP group runs all-reduces and all-gathers; EP spans 2 replicas.
    "mixtral-tp2-ep4": dict(model="mixtral-8x7b", nodes=1, chips_per_node=4, tp=2, ep=4, requests=8,
                            prompt_len=64, output_len=4),
    # TP group spanning two nodes, on an H100 (launch overheads, activations through HBM).
    "llama8b-tp8-2node-h100": dict(model="llama3-8b", hw="h100", nodes=2, chips_per_node=4, tp=8,
                                   requests=4, prompt_len=1024, output_len=6),
}


# ------------------------------------------------------------------------------- in-memory runs


@dataclass
class MemRun:
    """Every record of an in-memory emulation, flattened; times are true ns (float64)."""

    em: Emulation
    rank: np.ndarray
    rec: np.ndarray          # RECORD_DTYPE (start/end fields unused: see start_ns/end_ns)
    start_ns: np.ndarray
    end_ns: np.ndarray
    host: list[dict]         # host events of every step, in order
    steps: int
    names: list[str] = field(default_factory=list)
    nic: list[NicCounters] = field(default_factory=list)   # every step's NIC port counters

    @property
    def cfg(self) -> EmulatorConfig:
        return self.em.cfg

    @property
    def hw(self) -> HardwareSpec:
        return self.em.cfg.hardware

    def name_mask(self, name: str) -> np.ndarray:
        return self.rec["name_id"] == self.names.index(name)

    def groups(self) -> dict[int, list[int]]:
        """Group id -> member ranks, from the plan's run.json table."""
        return {g["id"]: g["ranks"] for g in self.em.plan.groups_table()}

    def group_kind(self) -> dict[int, str]:
        return {g["id"]: g["kind"] for g in self.em.plan.groups_table()}


def run_in_memory(cfg: EmulatorConfig) -> MemRun:
    """Iterate ``Emulation(cfg).steps()`` and keep everything."""
    em = Emulation(cfg)
    ranks, recs, starts, ends, host, nic = [], [], [], [], [], []
    steps = 0
    for trace, events in em.steps():
        ranks.append(trace.rank)
        recs.append(trace.records.copy())
        starts.append(trace.start_ns)
        ends.append(trace.end_ns)
        host += events
        nic.append(trace.nic)
        steps += 1
    return MemRun(em=em, rank=np.concatenate(ranks), rec=np.concatenate(recs),
                  start_ns=np.concatenate(starts), end_ns=np.concatenate(ends), host=host,
                  steps=steps, names=list(em.names), nic=nic)


# ------------------------------------------------------------------------- reference raw reader

REF_FILE_MAGIC = b"SOHUTRC\0"
REF_CHUNK_MAGIC = b"CHNK"
#: magic[8], version u16, node u16, chip u16, record size u16, records per chunk u32, run id[16],
#: 8 reserved, CRC32 of the 44 bytes before it
REF_FILE_HEADER = struct.Struct("<8sHHHHI16s8xI")
#: magic[4], sequence u32, record count u32, crc32 u32 of the payload, seeded with the CRC32 of
#: the file's run id, node and chip (u16 each)
REF_CHUNK_HEADER = struct.Struct("<4sIII")


@dataclass
class StraceFile:
    version: int
    node: int
    chip: int
    record_size: int
    chunk_records: int
    chunk_counts: list[int]
    records: np.ndarray
    run_id: str


class RawFormatError(AssertionError):
    """The reference reader found the file violating the documented format."""


def read_strace(path: Path) -> StraceFile:
    """Read one ``.strace`` file strictly: any deviation from the format raises."""
    data = path.read_bytes()
    if len(data) < REF_FILE_HEADER.size:
        raise RawFormatError(f"{path}: shorter than the file header")
    magic, version, node, chip, rsize, per_chunk, run_id, head_crc = REF_FILE_HEADER.unpack_from(data, 0)
    if magic != REF_FILE_MAGIC:
        raise RawFormatError(f"{path}: bad file magic {magic!r}")
    if zlib.crc32(data[:REF_FILE_HEADER.size - 4]) != head_crc:
        raise RawFormatError(f"{path}: file header CRC mismatch")
    if rsize != RECORD_DTYPE.itemsize:
        raise RawFormatError(f"{path}: record size {rsize} != {RECORD_DTYPE.itemsize}")
    off = REF_FILE_HEADER.size
    counts: list[int] = []
    parts: list[np.ndarray] = []
    expect_seq = 0
    while off < len(data):
        if off + REF_CHUNK_HEADER.size > len(data):
            raise RawFormatError(f"{path}: truncated chunk header at byte {off}")
        cmagic, seq, count, crc = REF_CHUNK_HEADER.unpack_from(data, off)
        if cmagic != REF_CHUNK_MAGIC:
            raise RawFormatError(f"{path}: bad chunk magic {cmagic!r} at byte {off}")
        if seq != expect_seq:
            raise RawFormatError(f"{path}: chunk sequence {seq}, expected {expect_seq}")
        off += REF_CHUNK_HEADER.size
        payload = data[off:off + count * rsize]
        if len(payload) != count * rsize:
            raise RawFormatError(f"{path}: truncated payload of chunk {seq}")
        if zlib.crc32(payload, zlib.crc32(run_id + struct.pack("<HH", node, chip))) != crc:
            raise RawFormatError(f"{path}: CRC mismatch in chunk {seq}")
        parts.append(np.frombuffer(payload, dtype=RECORD_DTYPE))
        counts.append(count)
        off += count * rsize
        expect_seq += 1
    records = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
    return StraceFile(version, node, chip, rsize, per_chunk, counts, records, run_id.hex())


@dataclass
class RawRun:
    """A run directory read with the reference reader."""

    path: Path
    meta: dict
    files: dict[int, StraceFile]       # by rank
    host: dict[int, list[dict]]        # by node

    def records(self) -> tuple[np.ndarray, np.ndarray]:
        """All records and their ranks."""
        ranks = sorted(self.files)
        recs = [self.files[r].records for r in ranks]
        rank = np.concatenate([np.full(len(x), r) for r, x in zip(ranks, recs)])
        return np.concatenate(recs), rank


def read_run(path: Path) -> RawRun:
    meta = json.loads((path / "run.json").read_text())
    files = {c["rank"]: read_strace(path / c["file"]) for c in meta["chips"]}
    host = {}
    for n in meta["nodes"]:
        text = (path / n["host_events"]).read_text()
        host[n["node"]] = [json.loads(line) for line in text.splitlines() if line]
    return RawRun(path, meta, files, host)


#: The on-disk run most raw-format tests read: 2 nodes x 4 chips, TP 4, small chunks.
SMALL_RUN = dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=4, requests=8, prompt_len=256,
                 output_len=16, chunk_records=1000, seed=7)

