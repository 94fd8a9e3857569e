"""Decode raw Sohu ``.strace`` files chunk by chunk, accounting for every record written.

Each file fills a *slot* of the run (a node and chip, records and chunks that ``run.json`` says
were written). A chunk is kept only if its magic, record count and CRC32 check out and its sequence
number and record count fit the slot; anything else is set aside as a :class:`Piece` (file, byte
offset, length, reason, the bytes) and decoding resumes at the next sound chunk. Afterwards every
record the slot should hold is in exactly one of three places, so ``kept + quarantined + lost ==
expected`` always:

- **kept**: in a sound chunk with the sequence number it was written under (a duplicate of a
  chunk already kept is dropped and counted apart: its records are not the slot's again);
- **quarantined**: its chunk is missing, but damaged bytes where it should be (between the kept
  chunks before and after it) could hold it: a flipped byte, a truncated tail. The records such
  bytes could hold are counted by length (header-sized chunk framing taken off), never more than
  the missing chunks held: garbage between two sound chunks holds none;
- **lost**: its bytes are not in the file at all (a chunk cut out, a file cut short or missing).

Files are read with positioned reads, not a memory map: a file that shrinks while it is read is a
clear error, not a SIGBUS, and the second pass re-checks every chunk's CRC32 so no byte is stored
that was not checked.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from isal import isal_zlib

from sohuprof.errors import TraceFormatError
from sohuprof.strace import (CHUNK_HEADER, CHUNK_MAGIC, FILE_HEADER, FILE_HEADER_CRC_SPAN, FILE_HEADER_V1,
                             FILE_MAGIC, FORMAT_VERSION, MAX_CHUNK_RECORDS, RECORD_DTYPE, chunk_crc_seed)

__all__ = ["Piece", "Slot", "FileAccount", "ChipFile", "RawBudget", "RAW_LIMIT", "RAW_BUDGET"]

_REC = RECORD_DTYPE.itemsize
_HDR = CHUNK_HEADER.size
#: Bytes of a damaged piece kept in quarantine.parquet (``length`` gives the whole extent).
RAW_LIMIT = 16 << 20
#: Bytes of damaged pieces kept over a whole collect (held in memory until the store is written).
RAW_BUDGET = 256 << 20
#: Bytes read at a time while searching for the next chunk after damage.
_WINDOW = 1 << 20


@dataclass(frozen=True)
class Piece:
    """Something set aside: a damaged range of a file, or records refused inside sound chunks."""

    source: str
    offset: int
    length: int
    records: int
    reason: str
    raw: bytes


class RawBudget:
    """How many damaged bytes a collect still keeps raw: past it, pieces are counted and located
    but their bytes are left in the source file (a run of zeroed files must not fill memory)."""

    def __init__(self, total: int = RAW_BUDGET) -> None:
        self.left = total

    def take(self, length: int) -> int:
        n = max(min(length, RAW_LIMIT, self.left), 0)
        self.left -= n
        return n


@dataclass(frozen=True)
class Slot:
    """What ``run.json`` says one chip file must hold."""

    source: str
    rank: int
    node: int
    chip: int
    records: int
    chunks: int
    chunk_records: int | None   # None: take the file header's (a version 1 run.json)
    run_id: bytes | None        # None: a version 1 run, whose files carry no id

    def expected_count(self, seq: int, chunk_records: int) -> int:
        """Records chunk ``seq`` must hold: full chunks, then the remainder."""
        return chunk_records if seq < self.chunks - 1 else self.records - (self.chunks - 1) * chunk_records


@dataclass
class FileAccount:
    """Where each record of one slot went: ``kept + quarantined + lost == expected``."""

    file: str
    rank: int
    expected: int
    kept: int = 0
    quarantined: int = 0
    lost: int = 0
    duplicates_dropped: int = 0
    refused: str | None = None

    def set_aside(self, records: int) -> None:
        """Move ``records`` kept records (refused on inspection) to quarantined."""
        self.kept -= records
        self.quarantined += records

    def to_dict(self) -> dict[str, Any]:
        out = {"file": self.file, "rank": self.rank, "expected": self.expected, "kept": self.kept,
               "quarantined": self.quarantined, "lost": self.lost, "duplicates_dropped": self.duplicates_dropped}
        if self.refused:
            out["refused"] = self.refused
        return out


@dataclass(frozen=True)
class _Kept:
    offset: int    # of the payload
    count: int
    crc: int


@dataclass
class _Gap:
    """Damaged pieces between two kept chunks (``before``/``after`` are sequence numbers)."""

    before: int
    pieces: list[int] = field(default_factory=list)   # indices into ChipFile.pieces


def _subtract(span: tuple[int, int], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the half-open ``span`` that no range in ``taken`` covers (a loop over the
    few ranges damage made, not over slots)."""
    parts = [span]
    for a, b in taken:
        parts = [piece for lo, hi in parts for piece in ((lo, min(hi, a)), (max(lo, b), hi)) if piece[0] < piece[1]]
    return [p for p in parts if p[0] < p[1]]


class ChipFile:
    """One chip's trace file checked against its slot; use as a context manager.

    :meth:`scan` (pass 1) checks every chunk and hands each kept chunk's records to a callback;
    :attr:`pieces` and :attr:`account` are complete once it returns. :meth:`kept_batches`
    (pass 2) reads the kept chunks again, in sequence order, re-checking their CRC32.
    """

    def __init__(self, path: Path, slot: Slot, budget: RawBudget | None = None) -> None:
        self.path, self.slot = path, slot
        self._budget = budget if budget is not None else RawBudget()
        self.source = slot.source
        self.pieces: list[Piece] = []
        self.account = FileAccount(slot.source, slot.rank, slot.records)
        self._kept: dict[int, _Kept] = {}
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        self.header_size = FILE_HEADER.size
        self.chunk_records = slot.chunk_records or 0
        # Chunk CRCs start from the slot's identity: a chunk from any other file fails its check.
        self._crc_seed = chunk_crc_seed(slot.run_id, slot.node, slot.chip)
        self._scanned = False
        self._buf = bytearray(0)
        self._search_budget = 4 * self.size + (64 << 20)
        try:
            self._check_header()
        except BaseException:
            self.close()
            raise

    # -- file access ----------------------------------------------------------------------

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ChipFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; the file is not allowed to have shrunk meanwhile."""
        data = os.pread(self._fd, length, offset)
        if len(data) < length and offset + length <= self.size:
            self._shrank()
        return data

    def _read_into(self, offset: int, view: memoryview) -> memoryview:
        """Fill ``view`` from ``offset`` (a reused buffer: no fresh pages to fault in per chunk)."""
        if os.preadv(self._fd, [view], offset) < len(view):
            self._shrank()
        return view

    def _shrank(self) -> None:
        raise TraceFormatError(f"{self.source} shrank while it was being collected ({self.size:,} bytes "
                               f"at the start); collect again once nothing writes to it")

    # -- header and provenance ------------------------------------------------------------

    def _check_header(self) -> None:
        slot = self.slot
        head = self._read(0, min(self.size, FILE_HEADER.size))
        if len(head) < FILE_HEADER_V1.size:
            self._refuse(f"{len(head)} bytes: too short for a file header", damaged=True)
            return
        magic, version = struct.unpack_from("<8sH", head)
        if magic == FILE_MAGIC and version == 1:
            _, _, node, chip, rec_size, chunk_records = FILE_HEADER_V1.unpack_from(head)
            self.header_size = FILE_HEADER_V1.size
            if slot.run_id is not None:
                self._refuse(f"a version 1 file carries no run id; this run's files carry {slot.run_id.hex()}")
            elif rec_size != _REC or not 0 < chunk_records <= MAX_CHUNK_RECORDS:
                self._refuse(f"record size {rec_size} / chunk size {chunk_records} in the header (this sohuprof "
                             f"reads {_REC}-byte records, at most {MAX_CHUNK_RECORDS:,} a chunk)", damaged=True)
            elif (node, chip) != (slot.node, slot.chip):
                self._refuse(f"its header says node {node} chip {chip}: another chip's file")
            else:
                self.chunk_records = slot.chunk_records or chunk_records
                self._check_slot()
            return
        if len(head) < FILE_HEADER.size:
            self._refuse(f"{len(head)} bytes: too short for a version {FORMAT_VERSION} file header", damaged=True)
            return
        magic, version, node, chip, rec_size, chunk_records, run_id, crc = FILE_HEADER.unpack(head)
        intact = magic == FILE_MAGIC and isal_zlib.crc32(head[:FILE_HEADER_CRC_SPAN]) == crc
        if intact and version > FORMAT_VERSION:
            raise TraceFormatError(f"{self.source}: format version {version} is newer than this sohuprof reads "
                                   f"({FORMAT_VERSION}); upgrade sohuprof")
        want_k = slot.chunk_records if slot.chunk_records is not None else chunk_records
        if not 0 < want_k <= MAX_CHUNK_RECORDS:
            self._refuse(f"chunk size {chunk_records} in the header", damaged=True)
            return
        self.chunk_records = want_k
        self._check_slot()
        # The identity fields alone say whose file this is; every chunk's CRC is seeded with
        # them, so a damaged size field elsewhere in the header costs the header, not the chunks.
        belongs = run_id == slot.run_id and (node, chip) == (slot.node, slot.chip)
        if intact and version == FORMAT_VERSION:
            if run_id != slot.run_id:
                theirs = slot.run_id.hex() if slot.run_id else "none"
                self._refuse(f"from another run (run id {run_id.hex()}, this run's is {theirs})")
            elif (node, chip) != (slot.node, slot.chip):
                self._refuse(f"its header says node {node} chip {chip}: another chip's file")
            elif rec_size != _REC or chunk_records != want_k:
                self._refuse(f"record size {rec_size} / chunk size {chunk_records} in the header disagree "
                             f"with run.json ({_REC} / {want_k})", damaged=True)
        elif belongs:
            # A damaged byte outside the identity fields: the run id, node and chip still match,
            # so the chunks (each CRC-checked) are this slot's.
            self.pieces.append(Piece(self.source, 0, FILE_HEADER.size, 0,
                                     "damaged file header (its run id, node and chip match; chunks kept)", head))
        else:
            self._refuse("damaged file header: which run and chip it belongs to cannot be read", damaged=True)

    def _check_slot(self) -> None:
        """run.json's records must fill its chunks (a version 1 run.json leaves this to here,
        where the chunk size is known)."""
        slot, k = self.slot, self.chunk_records
        if slot.chunks != -(-slot.records // k):
            raise TraceFormatError(f"run.json: chip rank {slot.rank}'s {slot.records:,} records cannot fill "
                                   f"{slot.chunks} chunks of {k}; the run directory is damaged")

    def _refuse(self, why: str, *, damaged: bool = False) -> None:
        """Set the whole file aside. A damaged file's bytes may hold the slot's records (counted
        as quarantined by length); a foreign file's hold another slot's (the slot's are lost)."""
        acc, slot = self.account, self.slot
        acc.refused = why
        if damaged:
            framing = self.header_size + slot.chunks * _HDR
            held = min(slot.records, max(self.size - framing, 0) // _REC)
            raw = self._read(0, self._budget.take(self.size))
        else:
            held, raw = 0, self._read(0, min(self.size, self.header_size))
        acc.quarantined, acc.lost = held, slot.records - held
        self.pieces.append(Piece(self.source, 0, self.size, held, f"file refused: {why}", raw))
        self._scanned = True

    # -- pass 1 ---------------------------------------------------------------------------

    def _chunk_at(self, pos: int, *, fitting: bool = False) -> tuple[int, int, int, memoryview] | str:
        """``(seq, count, crc, payload)`` of a sound chunk at ``pos``, else why it is not one
        (the payload is a view of a buffer the next call reuses). ``fitting``: only a chunk whose
        sequence number and count fit the slot is worth its payload's CRC (the resync's search)."""
        if pos + _HDR > self.size:
            return "truncated chunk header"
        magic, seq, count, crc = CHUNK_HEADER.unpack(self._read(pos, _HDR))
        if magic != CHUNK_MAGIC:
            return "bad chunk magic"
        if not 0 < count <= self.chunk_records:
            return f"bad chunk header (record count {count})"
        if fitting and not (0 <= seq < self.slot.chunks and count == self.slot.expected_count(seq, self.chunk_records)):
            return "chunk header does not fit this file"
        if pos + _HDR + count * _REC > self.size:
            return f"truncated chunk: {self.size - pos - _HDR:,} of {count * _REC:,} payload bytes"
        if fitting:
            if self._search_budget < count * _REC:
                return "search budget spent"
            self._search_budget -= count * _REC
        if len(self._buf) < count * _REC:
            self._buf = bytearray(count * _REC)
        payload = self._read_into(pos + _HDR, memoryview(self._buf)[:count * _REC])
        if isal_zlib.crc32(payload, self._crc_seed) != crc:
            return "CRC32 mismatch (or a chunk of another file)"
        return seq, count, crc, payload

    def _resync(self, start: int) -> int:
        """Offset of the next sound chunk at or after ``start`` (the file size if none).

        Each candidate that fits the slot costs a payload CRC; crafted garbage full of fitting
        headers would make that quadratic, so the search checks at most ``4 x`` the file's bytes
        (plus 64 MiB) of payloads, then gives up: the rest of the file is one damaged piece."""
        pos = start
        while pos < self.size:
            window = self._read(pos, min(_WINDOW, self.size - pos))
            hit = window.find(CHUNK_MAGIC)
            while hit >= 0:
                if not isinstance(self._chunk_at(pos + hit, fitting=True), str):
                    return pos + hit
                if self._search_budget <= 0:
                    return self.size
                hit = window.find(CHUNK_MAGIC, hit + 1)
            if len(window) <= len(CHUNK_MAGIC):
                break
            pos += len(window) - (len(CHUNK_MAGIC) - 1)   # a magic may straddle two windows
        return self.size

    def scan(self, on_chunk: Callable[[int, np.ndarray], None] | None = None) -> None:
        """Pass 1: check every chunk; call ``on_chunk(seq, records)`` for each one kept (records
        are a read-only view valid for the call), then account for every record of the slot."""
        if self._scanned:
            return
        slot, k = self.slot, self.chunk_records
        acc = self.account
        gaps: list[_Gap] = [_Gap(before=-1)]
        pos = self.header_size
        while pos < self.size:
            found = self._chunk_at(pos)
            if isinstance(found, str):
                nxt = self._resync(pos + 1)
                gaps[-1].pieces.append(len(self.pieces))
                self._set_aside(pos, nxt, found)
                pos = nxt
                continue
            seq, count, crc, payload = found
            end = pos + _HDR + len(payload)
            if not 0 <= seq < slot.chunks or count != slot.expected_count(seq, k):
                self.pieces.append(Piece(self.source, pos, end - pos, 0,
                                         f"chunk {seq} of {count} records does not fit this file (run.json: "
                                         f"{slot.records:,} records in {slot.chunks} chunks of {k})",
                                         b""))
            elif seq in self._kept:
                acc.duplicates_dropped += count
                self.pieces.append(Piece(self.source, pos, end - pos, 0,
                                         f"duplicate of chunk {seq} (dropped)", b""))
            else:
                self._kept[seq] = _Kept(pos + _HDR, count, crc)
                acc.kept += count
                if on_chunk is not None:
                    on_chunk(seq, np.frombuffer(payload, RECORD_DTYPE))
                gaps.append(_Gap(before=seq))
            pos = end
        self._attribute(gaps)
        self._scanned = True

    def _set_aside(self, start: int, end: int, reason: str) -> None:
        raw = self._read(start, self._budget.take(end - start))
        self.pieces.append(Piece(self.source, start, end - start, 0, reason, raw))

    def _attribute(self, gaps: list[_Gap]) -> None:
        """Split the slot's missing records into quarantined (damaged bytes where they belong
        could hold them) and lost, and give each damaged piece its share.

        Slots are counted by arithmetic on ranges, never enumerated: run.json may claim 2**33
        chunks for a file cut to its header, and all of them are lost at once."""
        slot, k, acc = self.slot, self.chunk_records, self.account
        kept = np.array(sorted(self._kept), dtype=np.int64)
        last = slot.chunks - 1
        claimed: list[tuple[int, int]] = []   # half-open ranges of slots a gap already took
        for i, gap in enumerate(gaps):
            if not gap.pieces:
                continue
            after = gaps[i + 1].before if i + 1 < len(gaps) else slot.chunks
            lo, hi = sorted((gap.before, after))
            spans = _subtract((lo + 1, hi), claimed)
            claimed += spans
            missing = sum(b - a - int(np.searchsorted(kept, b) - np.searchsorted(kept, a)) for a, b in spans)
            last_missing = last not in self._kept and any(a <= last < b for a, b in spans)
            expected = missing * k - ((k - slot.expected_count(last, k)) if last_missing else 0)
            nbytes = [self.pieces[p].length for p in gap.pieces]
            room = max(sum(nbytes) - missing * _HDR, 0) // _REC
            held = min(expected, room)
            acc.quarantined += held
            shares = [held * b // max(sum(nbytes), 1) for b in nbytes]
            shares[int(np.argmax(nbytes))] += held - sum(shares)
            for p, share in zip(gap.pieces, shares):
                self.pieces[p] = replace(self.pieces[p], records=share)
        acc.lost = acc.expected - acc.kept - acc.quarantined

    # -- pass 2 ---------------------------------------------------------------------------

    def kept_batches(self, batch_records: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        """Pass 2: the kept chunks in sequence order, as lists of ``(payload offset, records)``
        holding at least ``batch_records`` records (but the last), each chunk's CRC32 checked
        again: a file changed since pass 1 is an error, so nothing unchecked is stored.

        The records are views of one buffer reused for the next batch: use them before asking
        for it.
        """
        if not self._scanned:
            self.scan()
        order = sorted(self._kept)
        if not order:
            return
        # Sized by what is kept, never by a header's claim.
        biggest = max(chunk.count for chunk in self._kept.values())
        buf = memoryview(bytearray((batch_records + biggest) * _REC))
        batch: list[tuple[int, np.ndarray]] = []
        used = 0
        for seq in order:
            chunk = self._kept[seq]
            n = chunk.count * _REC
            view = self._read_into(chunk.offset, buf[used:used + n])
            if isal_zlib.crc32(view, self._crc_seed) != chunk.crc:
                raise TraceFormatError(f"{self.source} changed while it was being collected (chunk {seq} at "
                                       f"byte {chunk.offset - _HDR:,}); collect again once nothing writes to it")
            batch.append((chunk.offset, np.frombuffer(view, RECORD_DTYPE)))
            used += n
            if used >= batch_records * _REC:
                yield batch
                batch, used = [], 0
        if batch:
            yield batch
