"""Protocol-buffer wire encoding of whole columns at once, for exporters that write millions of messages.

A column of messages is a :class:`Message`: fields are added from numpy arrays, one value per
row (:meth:`Message.varint`, :meth:`Message.fixed64`, nested :meth:`Message.message`), each
as a padded block of columns, and :meth:`Message.flat` packs every row's bytes back to back at
once: no Python loop per message. A row may leave a field out, which is how optional fields and
columns mixing two kinds of message are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Message", "Rows", "varint", "varint_lengths", "encode_varints", "tag", "VARINT", "FIXED64", "LEN"]

#: Wire types.
VARINT, FIXED64, LEN = 0, 1, 2
_VARINT_MAX_BYTES = 10
# 2**(7k) for k = 1..9: a value needs one byte more for each bound it reaches.
_BOUNDS = np.array([1 << (7 * k) for k in range(1, _VARINT_MAX_BYTES)], dtype=np.uint64)
_SHIFTS = np.arange(_VARINT_MAX_BYTES, dtype=np.uint64) * np.uint64(7)


class Rows(NamedTuple):
    """Encoded bytes of ``len(data)`` rows, padded: row ``i`` is ``data[i][mask[i]]``.

    Padded rows join side by side with one ``np.hstack`` (no index arithmetic per byte); the
    padding goes only when :meth:`flat` packs the rows back to back, once, at the end.
    """

    data: np.ndarray      # (n, width) uint8
    mask: np.ndarray      # (n, width) bool: which bytes are the row's

    @property
    def lengths(self) -> np.ndarray:
        """Each row's length in bytes."""
        return self.mask.sum(axis=1, dtype=np.int64)

    def flat(self) -> np.ndarray:
        """The rows' bytes back to back (uint8)."""
        return self.data[self.mask]


def varint(value: int) -> bytes:
    """One unsigned varint (for the few scalar fields written once)."""
    out = bytearray()
    value &= (1 << 64) - 1        # negative int64s are written as their two's complement
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    """The key that opens a field."""
    return varint((field << 3) | wire_type)


def _as_u64(values: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "i":
        return arr.astype(np.int64, copy=False).view(np.uint64)   # two's complement, as protobuf does
    return arr.astype(np.uint64, copy=False)


def varint_lengths(values: np.ndarray | Sequence[int]) -> np.ndarray:
    """Bytes of each value's varint (1-10)."""
    return np.searchsorted(_BOUNDS, _as_u64(values), side="right").astype(np.int64) + 1


def _varint_block(v: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Padded varint bytes of uint64 ``v`` (of ``lengths`` bytes) and the mask of the used ones."""
    width = int(lengths.max(initial=1))
    groups = ((v[:, None] >> _SHIFTS[None, :width]) & np.uint64(0x7F)).astype(np.uint8)
    k = np.arange(width)
    # Every byte but a value's last carries the continuation bit.
    groups |= (k[None, :] < (lengths[:, None] - 1)).view(np.uint8) << np.uint8(7)
    return groups, k[None, :] < lengths[:, None]


def encode_varints(values: np.ndarray | Sequence[int]) -> Rows:
    """Every value's unsigned varint, one a row (int64 values as their two's complement)."""
    v = _as_u64(values)
    return Rows(*_varint_block(v, varint_lengths(v)))


class Message:
    """A column of ``n`` messages built field by field, then packed once.

    Each field adds a block of columns (``n`` rows, padded, with a mask of the bytes that are
    a row's); a nested message's blocks are spliced in behind its key and length. Nothing is
    copied until :meth:`flat`, which joins every block with one ``np.hstack`` and drops the
    padding with one boolean index: each byte is written once however deep the nesting.
    ``rows`` (a bool mask) leaves a field out of the other rows: optional fields, or the
    fields of one kind of message in a column that mixes two.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []
        self.lengths = np.zeros(n, dtype=np.int64)

    def _add(self, data: np.ndarray, mask: np.ndarray, rows: np.ndarray | None, lengths: np.ndarray | int) -> None:
        """Append a block whose rows are ``lengths`` bytes long (before ``rows`` leaves some out)."""
        if rows is not None:
            mask = mask & rows[:, None]
            lengths = np.where(rows, lengths, 0)
        self.blocks.append((data, mask))
        self.lengths += lengths

    def raw(self, data: bytes, rows: np.ndarray | None = None) -> "Message":
        """The same bytes in every row (or in ``rows``)."""
        if data:
            arr = np.frombuffer(data, dtype=np.uint8)
            self._add(np.broadcast_to(arr, (self.n, len(arr))),
                      np.broadcast_to(np.True_, (self.n, len(arr))), rows, len(arr))
        return self

    def varint(self, field: int, values: np.ndarray, rows: np.ndarray | None = None) -> "Message":
        """``field`` as a varint (``values``: one per row; ignored outside ``rows``)."""
        if rows is not None and not rows.any():
            return self
        self.raw(tag(field, VARINT), rows)
        self._add_varints(values, rows)
        return self

    def _add_varints(self, values: np.ndarray, rows: np.ndarray | None) -> None:
        v = _as_u64(values)
        lengths = varint_lengths(v)
        self._add(*_varint_block(v, lengths), rows, lengths)

    def fixed64(self, field: int, values: np.ndarray, rows: np.ndarray | None = None) -> "Message":
        """``field`` as 8 little-endian bytes (a double or a fixed64)."""
        if rows is not None and not rows.any():
            return self
        self.raw(tag(field, FIXED64), rows)
        raw = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"), copy=False)
        self._add(raw.view(np.uint8).reshape(self.n, 8), np.broadcast_to(np.True_, (self.n, 8)), rows, 8)
        return self

    def message(self, field: int, body: "Message", rows: np.ndarray | None = None) -> "Message":
        """``body`` (one message per row) as the length-delimited ``field``."""
        if rows is not None and not rows.any():
            return self
        self.raw(tag(field, LEN), rows)
        self._add_varints(body.lengths, rows)
        if rows is None:      # the body's blocks as they are: nothing to sum or mask again
            self.blocks.extend(body.blocks)
            self.lengths += body.lengths
        else:
            for data, mask in body.blocks:
                self.blocks.append((data, mask & rows[:, None]))
            self.lengths += np.where(rows, body.lengths, 0)
        return self

    def flat(self) -> np.ndarray:
        """Every row's bytes, back to back (uint8)."""
        if not self.blocks:
            return np.empty(0, dtype=np.uint8)
        data = np.hstack([d for d, _ in self.blocks])
        mask = np.hstack([m for _, m in self.blocks])
        return data[mask]
