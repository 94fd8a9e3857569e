"""The raw writer: per-chip ``.strace`` files of CRC-checked chunks, as a hardware trace unit
would write them (the format is :mod:`sohuprof.strace`)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from isal import isal_zlib

from sohuprof.emulator.plan import ParallelPlan
from sohuprof.emulator.runtime import StepTrace
from sohuprof.strace import CHUNK_HEADER, CHUNK_MAGIC, RECORD_DTYPE, chip_path, chunk_crc_seed, pack_file_header

__all__ = ["RawTraceWriter"]


class RawTraceWriter:
    """Buffers each chip's records and writes them in chunks of ``chunk_records``.

    Records arrive with their times already on the chip's local cycle counter (the runtime's
    trace unit stamps them); the writer only frames them. Every file header carries ``run_id``
    (also in run.json) so a collector can tell this run's files from another's.
    """

    def __init__(self, root: Path, plan: ParallelPlan, chunk_records: int, run_id: bytes) -> None:
        self.plan, self.chunk = plan, chunk_records
        self.files: list[BinaryIO] = []
        self.crc_seed = [chunk_crc_seed(run_id, int(plan.node[r]), int(plan.chip[r])) for r in range(plan.world)]
        for rank in range(plan.world):
            path = root / chip_path(int(plan.node[rank]), int(plan.chip[rank]))
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "wb")
            f.write(pack_file_header(int(plan.node[rank]), int(plan.chip[rank]), chunk_records, run_id))
            self.files.append(f)
        self.pending: list[list[np.ndarray]] = [[] for _ in range(plan.world)]
        self.pending_n = np.zeros(plan.world, np.int64)
        self.chunks = np.zeros(plan.world, np.int64)
        self.records = np.zeros(plan.world, np.int64)

    def add(self, trace: StepTrace) -> None:
        """Append one step's records (``trace.rank`` must be non-decreasing)."""
        rec = trace.records
        bounds = np.searchsorted(trace.rank, np.arange(self.plan.world + 1))
        counts = np.diff(bounds)
        for rank in np.flatnonzero(counts):
            self.pending[rank].append(rec[bounds[rank]:bounds[rank + 1]])
            self.pending_n[rank] += counts[rank]
            if self.pending_n[rank] >= self.chunk:
                self._flush(int(rank), final=False)
        self.records += counts

    def _flush(self, rank: int, *, final: bool) -> None:
        data = np.concatenate(self.pending[rank]) if len(self.pending[rank]) > 1 else self.pending[rank][0]
        full = len(data) if final else len(data) // self.chunk * self.chunk
        f = self.files[rank]
        for lo in range(0, full, self.chunk):
            payload = data[lo:lo + self.chunk].tobytes()
            f.write(CHUNK_HEADER.pack(CHUNK_MAGIC, int(self.chunks[rank]), len(payload) // RECORD_DTYPE.itemsize,
                                      isal_zlib.crc32(payload, self.crc_seed[rank])))
            f.write(payload)
            self.chunks[rank] += 1
        rest = data[full:]
        self.pending[rank] = [rest] if len(rest) else []
        self.pending_n[rank] = len(rest)

    def close(self) -> None:
        """Write every chip's last, partial chunk and close the files."""
        for rank, f in enumerate(self.files):
            if self.pending_n[rank]:
                self._flush(rank, final=True)
            f.close()

    def abort(self) -> None:
        for f in self.files:
            f.close()
