"""Decode raw Sohu ``.strace`` files chunk by chunk, setting damaged pieces aside.

A chunk is kept only if its magic, record count and CRC32 check out; anything else (a flipped
byte, a truncated tail, garbage between chunks) is quarantined with its file, byte offset, length
and reason, and decoding resumes at the next sound chunk. Records are zero-copy views
(``numpy.frombuffer``) into the memory-mapped file.
"""

from __future__ import annotations

import mmap
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sohuprof.errors import TraceFormatError
from sohuprof.strace import CHUNK_HEADER, CHUNK_MAGIC, FILE_HEADER, FILE_MAGIC, FORMAT_VERSION, RECORD_DTYPE

__all__ = ["Damaged", "ChipFile", "open_chip_file"]

_REC = RECORD_DTYPE.itemsize


@dataclass(frozen=True)
class Damaged:
    """A piece of a file that could not be read."""

    source: str
    offset: int
    length: int
    records: int
    reason: str
    raw: bytes


class ChipFile:
    """One chip's trace file, memory-mapped. Iterate :meth:`chunks` for sound record arrays;
    :attr:`damaged` lists what was set aside (complete once :meth:`chunks` is exhausted)."""

    def __init__(self, path: Path, source: str) -> None:
        self.path, self.source = path, source
        self.damaged: list[Damaged] = []
        self.sound: list[tuple[int, int]] = []   # (payload offset, records) of each sound chunk
        self.size = path.stat().st_size
        self._file = open(path, "rb")
        self._buf: mmap.mmap | bytes = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
        if self.size < FILE_HEADER.size:
            raise TraceFormatError(f"{source}: {self.size} bytes is too short for a .strace header")
        magic, version, self.node, self.chip, rec_size, self.chunk_records = FILE_HEADER.unpack_from(self._buf, 0)
        if magic != FILE_MAGIC:
            raise TraceFormatError(f"{source}: not a Sohu trace (bad magic {magic!r})")
        if version > FORMAT_VERSION:
            raise TraceFormatError(f"{source}: format version {version} is newer than this sohuprof reads "
                                   f"({FORMAT_VERSION}); upgrade sohuprof")
        if rec_size != _REC:
            raise TraceFormatError(f"{source}: record size {rec_size}, expected {_REC}")

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            try:
                self._buf.close()
            except BufferError:   # a caller still holds a record view; the map closes with it
                pass
        self._file.close()

    def __enter__(self) -> ChipFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sound_at(self, pos: int) -> int:
        """Record count of a sound chunk at ``pos``, or -1."""
        buf, n = self._buf, self.size
        if pos + CHUNK_HEADER.size > n:
            return -1
        magic, _seq, count, crc = CHUNK_HEADER.unpack_from(buf, pos)
        end = pos + CHUNK_HEADER.size + count * _REC
        if magic != CHUNK_MAGIC or not 0 < count <= self.chunk_records or end > n:
            return -1
        return count if zlib.crc32(buf[pos + CHUNK_HEADER.size:end]) == crc else -1

    def _resync(self, start: int) -> int:
        """Offset of the next sound chunk at or after ``start`` (the file size if none)."""
        pos = start
        while True:
            pos = self._buf.find(CHUNK_MAGIC, pos)
            if pos < 0:
                return self.size
            if self._sound_at(pos) > 0:
                return pos
            pos += 1

    def _set_aside(self, offset: int, end: int, records: int, reason: str) -> None:
        self.damaged.append(Damaged(self.source, offset, end - offset, records, reason, bytes(self._buf[offset:end])))

    def chunks(self, *, trusted: list[tuple[int, int]] | None = None) -> Iterator[np.ndarray]:
        """Yield each sound chunk's records (read-only views, in file order).

        ``trusted`` is :attr:`sound` of an earlier full check of the same file: those chunks are
        read again without re-checking their CRC32.
        """
        if trusted is not None:
            for offset, count in trusted:
                yield np.frombuffer(self._buf, RECORD_DTYPE, count, offset)
            return
        buf, n, pos = self._buf, self.size, FILE_HEADER.size
        hdr = CHUNK_HEADER.size
        while pos < n:
            if pos + hdr > n:
                self._set_aside(pos, n, 0, "truncated chunk header")
                return
            magic, _seq, count, crc = CHUNK_HEADER.unpack_from(buf, pos)
            if magic != CHUNK_MAGIC or not 0 < count <= self.chunk_records:
                nxt = self._resync(pos + 1)
                claimed = max(nxt - pos - hdr, 0) // _REC
                self._set_aside(pos, nxt, claimed, "bad chunk header")
                pos = nxt
                continue
            end = pos + hdr + count * _REC
            if end > n:
                self._set_aside(pos, n, count, f"truncated chunk: {n - pos - hdr} of {count * _REC} payload bytes")
                return
            if zlib.crc32(buf[pos + hdr:end]) != crc:
                # The count may be what was damaged: trust it only if a sound chunk (or EOF) follows.
                nxt = end if end == n or self._sound_at(end) > 0 else self._resync(pos + 1)
                # If the count was damaged, the distance to the next sound chunk says how many were there.
                held = count if nxt == end else (nxt - pos - hdr) // _REC
                self._set_aside(pos, nxt, held, "CRC32 mismatch")
                pos = nxt
                continue
            self.sound.append((pos + hdr, count))
            yield np.frombuffer(buf, RECORD_DTYPE, count, pos + hdr)
            pos = end


def open_chip_file(path: Path, source: str) -> ChipFile:
    """Open a chip's ``.strace`` file; raises :class:`TraceFormatError` if its header is unusable."""
    return ChipFile(path, source)
