"""Checks of decoded Kineto / Chrome trace events: whole-column validation and quarantine rows.

The Kineto collector (:mod:`sohuprof.collectors.kineto`) decodes a file into per-field lists
(one entry per event) and hands them here. Every check runs over a whole column at once (numpy,
pyarrow, or a C-level ``map``); the few Python loops run over *distinct* values (the distinct
thread ids of a file, say), never over events. A record that fails a check is set aside with
the first reason that applies (:data:`REASONS` order), and each file's set-aside records become
one quarantine row per reason (:func:`quarantine_rows`), so a million bad events make a handful
of rows, not a million.

Ranges, and why:

- times: ``|ts|`` and ``dur`` below :data:`MAX_NS` (2**62 ns, about 146 years) after the
  conversion to ns and after adding ``baseTimeNanoseconds``, so ``ts + dur`` and every
  difference of two stored times still fit int64;
- rank and device ids: ``[0, 2**31)`` (the store holds them as int32), device ``-1`` and other
  negatives down to ``-2**31`` read as "no device"; ids are factorized, never used to size an
  array;
- ``pid``, ``tid`` and ``args.stream``: an integer within int64, or a string. Not 2**31: some
  platforms write 64-bit thread handles as ``tid``, and these ids only ever label tracks;
- ``args.correlation`` within int64, ``args.flops`` in ``[0, 2**63)``, ``args.In msg nelems``
  below :data:`MAX_NELEMS` (so ``nelems`` times the widest dtype still fits int64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.schema import QUARANTINE

__all__ = ["MAX_NS", "MAX_ID", "MAX_NELEMS", "SAMPLE_BYTES", "REASONS", "Verdict", "objects", "blank",
           "wrong_type", "float_column", "int_column", "id_check", "quarantine_rows"]

#: Bound on ``|ts|`` and ``dur`` in ns: sums and differences of two times stay within int64.
MAX_NS = 2**62
#: Bound on rank and device ids (stored as int32).
MAX_ID = 2**31
#: Bound on ``In msg nelems``: times 16 bytes (the widest dtype) it still fits int64.
MAX_NELEMS = 2**58
_INT64 = 2**63
#: At most this many bytes of a sample event are kept in the quarantine row.
SAMPLE_BYTES = 512

#: Why a record is set aside, keyed by the check that sets it, in the order the checks apply
#: (a record gets the first reason that holds).
_REASONS = {
    "ph": "'ph' is not a string",
    "cat": "'cat' is not a string",
    "name": "'name' is not a string",
    "args": "'args' is not an object",
    "ts?": "'ts' is missing",
    "ts": "'ts' is not a number",
    "ts>": "'ts' is out of range (|ts| >= 2**62 ns after conversion and baseTimeNanoseconds)",
    "dur?": "'dur' is missing",
    "dur": "'dur' is not a number",
    "dur<0": "'dur' is negative",
    "dur>": "'dur' is out of range (>= 2**62 ns)",
    "pid": "'pid' is not an integer within int64 or a string",
    "tid": "'tid' is not an integer within int64 or a string",
    "device": "'args.device' is not an integer in [-2**31, 2**31)",
    "stream": "'args.stream' is not an integer within int64 or a string",
    "correlation": "'args.correlation' is not an integer within int64",
    "flops": "'args.flops' is not a number in [0, 2**63)",
    "collective": "'args.Collective name' is not a string",
    "group": "'args.Process Group Name' is not a string",
    "nelems": "'args.In msg nelems' is not an integer below 2**58",
    "dtype": "'args.dtype' is not a string",
    "group_size": "'args.Group size' is not an integer in [-2**31, 2**31)",
    "group_ranks": "'args.Process Group Ranks' is not a string",
    "src": "'args.Src Rank' is not an integer in [-2**31, 2**31)",
    "dst": "'args.Dst Rank' is not an integer in [-2**31, 2**31)",
    "counter": "a counter series value is not a finite number within int64",
}
#: The reasons, in order; a :class:`Verdict` code is an index into it plus one.
REASONS = tuple(_REASONS.values())
_CODE = {key: i + 1 for i, key in enumerate(_REASONS)}
_NONE = type(None)


def _within(nums: np.ndarray, low: int, high: int) -> np.ndarray:
    """``low <= nums < high`` elementwise; a bound at the int64 limit is skipped, not compared
    (numpy 1.x cannot compare an int64 array with 2**63)."""
    ok = np.ones(len(nums), dtype=bool)
    if low > -_INT64:
        ok &= nums >= low
    if high < _INT64:
        ok &= nums < high
    return ok


class Verdict:
    """The reason each record is set aside for (0: sound), filled in one check at a time.

    Parameters
    ----------
    n : int
        Number of records.
    """

    def __init__(self, n: int) -> None:
        self.code = np.zeros(n, dtype=np.int8)

    def flag(self, mask: np.ndarray, check: str) -> None:
        """Set aside the records in ``mask`` not already set aside, for ``check``'s reason.

        ``check`` is a key of the reason table: a field name (``"dur"``, ``"device"``: wrong
        type), or ``"ts?"`` / ``"dur?"`` (missing), ``"ts>"`` / ``"dur>"`` (out of range),
        ``"dur<0"`` (negative).
        """
        if mask.any():
            self.code[mask & (self.code == 0)] = _CODE[check]

    @property
    def ok(self) -> np.ndarray:
        """Mask of the sound records."""
        return self.code == 0


# -- columns ------------------------------------------------------------------------------------

def objects(items: Sequence[Any]) -> np.ndarray:
    """A 1-d object array of ``items`` (``np.array`` would nest list-valued items)."""
    return np.fromiter(items, dtype=object, count=len(items))


def _types(values: Sequence[Any]) -> np.ndarray:
    return objects(list(map(type, values)))


def wrong_type(values: Sequence[Any], allowed: tuple[type, ...]) -> np.ndarray:
    """Mask of entries that are neither None nor exactly one of ``allowed`` (bool is not int)."""
    kinds = _types(values)
    ok = kinds == _NONE
    for kind in allowed:
        ok |= kinds == kind
    return ~ok


def blank(values: Sequence[Any], mask: np.ndarray) -> list[Any]:
    """``values`` with the entries in ``mask`` replaced by None."""
    if not mask.any():
        return values if isinstance(values, list) else list(values)
    out = objects(values)
    out[mask] = None
    return out.tolist()


def _big_ints(values: Sequence[Any], bound: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of int entries with ``|v| >= bound`` and of those among them that are positive."""
    arr = objects(values)
    is_int = _types(values) == int
    big = np.zeros(len(values), dtype=bool)
    positive = np.zeros(len(values), dtype=bool)
    if is_int.any():
        ints = arr[is_int]
        big[is_int] = (ints >= bound) | (ints <= -bound)
        positive[is_int] = ints > 0
    return big, positive & big


def float_column(values: Sequence[Any], *, lenient: bool) -> tuple[np.ndarray, np.ndarray]:
    """Numbers as float64 (NaN where missing) and the mask of entries that are not numbers.

    Integers beyond the float range become +-inf, so a range check catches them. With
    ``lenient`` False the values are known to be floats, ints or None (the typed decoder
    checked), and only the conversion runs.
    """
    bad = wrong_type(values, (int, float)) if lenient else np.zeros(len(values), dtype=bool)
    clean = blank(values, bad)
    try:
        return pa.array(clean, pa.float64()).to_numpy(zero_copy_only=False), bad
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass  # Arrow refuses ints above 2**53 as floats; numpy rounds them (None gives NaN)
    big, positive = _big_ints(clean, _INT64)
    # Ints beyond int64 (JSON allows any; float() overflows past 1e308): their sign times inf.
    out = np.array(blank(clean, big), dtype=np.float64)
    out[big] = np.where(positive[big], np.inf, -np.inf)
    return out, bad


def int_column(values: Sequence[Any], *, lenient: bool, low: int = -_INT64, high: int = _INT64,
               floats: bool = False) -> tuple[pa.Array, np.ndarray]:
    """Integers as int64 (null where missing) and the mask of entries that are not integers
    in ``[low, high)`` (these are null in the array).

    ``floats`` also accepts finite floats (rounded to the nearest integer), as ``args.flops``
    may be written; ints are always taken exactly (a float64 cannot hold every int64).
    """
    bad = wrong_type(values, (int, float) if floats else (int,)) if lenient \
        else np.zeros(len(values), dtype=bool)
    clean = blank(values, bad)
    try:
        arr = pa.array(clean, pa.int64())  # exact for ints; Arrow would truncate floats
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        arr = None
    if arr is not None and (arr.null_count == len(arr) or not floats
                            or float not in set(map(type, clean))):
        if low == -_INT64 and high == _INT64:
            return arr, bad
        nums = arr.fill_null(0).to_numpy()
        out_of_range = ~np.asarray(arr.is_null()) & ~_within(nums, low, high)
        if out_of_range.any():
            arr = pa.array(nums, pa.int64(), mask=~np.asarray(arr.is_valid()) | out_of_range)
        return arr, bad | out_of_range
    # Floats, or ints beyond int64: each kind on its own, with the range checked before any cast.
    as_float, _ = float_column(clean, lenient=False)
    present = ~np.isnan(as_float)
    is_int = _types(clean) == int
    big, _ = _big_ints(clean, _INT64)
    out = np.zeros(len(clean), dtype=np.int64)
    exact_int = is_int & ~big
    if exact_int.any():
        out[exact_int] = pa.array(objects(clean)[exact_int].tolist(), pa.int64()).to_numpy()
    # Rounded floats are checked against the bounds as floats: a cast would wrap first.
    rounded = np.rint(as_float)
    is_float = present & ~is_int & (rounded >= low) & (rounded < high)
    out[is_float] = rounded[is_float].astype(np.int64)
    valid = (exact_int & _within(out, low, high)) | is_float
    return pa.array(out, pa.int64(), mask=~valid), bad | (present & ~valid)


def id_check(values: Sequence[Any], *, lenient: bool, strings: bool, low: int = -_INT64,
             high: int = _INT64) -> tuple[list[Any], np.ndarray]:
    """Validate an id column: integers in ``[low, high)`` (and strings if ``strings``), or None.

    Returns the values with bad entries set to None, and the mask of bad entries. The common
    case (all integers) is one Arrow conversion; otherwise the distinct values are checked
    and the verdict mapped back through the factorization codes, so the cost follows the
    number of distinct ids, never their magnitude.
    """
    allowed = (int, str) if strings else (int,)
    bad = wrong_type(values, allowed) if lenient else np.zeros(len(values), dtype=bool)
    clean = blank(values, bad)
    try:
        arr = pa.array(clean, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        codes, uniques = pd.factorize(objects(clean), use_na_sentinel=True)
        bad_u = np.fromiter((not (isinstance(u, str) or low <= u < high) for u in uniques.tolist()),
                            dtype=bool, count=len(uniques))
        out = bad | ((codes >= 0) & np.append(bad_u, False)[codes])
        return blank(clean, out), out
    if low == -_INT64 and high == _INT64:
        return clean, bad
    nums = arr.fill_null(0).to_numpy()
    out_of_range = ~np.asarray(arr.is_null()) & ~_within(nums, low, high)
    return blank(clean, out_of_range), bad | out_of_range


# -- quarantine ---------------------------------------------------------------------------------

class _RawTrace(msgspec.Struct, gc=False):
    traceEvents: list[msgspec.Raw] | None = None  # noqa: N815 (the JSON key)


_RAW_DECODER = msgspec.json.Decoder(_RawTrace | list[msgspec.Raw])


def quarantine_rows(source: str, text: bytes, rows: np.ndarray, codes: np.ndarray, *,
                    prefix: str = "") -> pa.Table:
    """One quarantine row per reason among ``codes`` (nonzero :class:`Verdict` codes).

    Parameters
    ----------
    source : str
        The file's name, relative to the collected input.
    text : bytes
        The file's JSON text (decompressed).
    rows : numpy.ndarray
        Index in ``traceEvents`` of each set-aside record.
    codes : numpy.ndarray
        Its reason code (index + 1 into :data:`REASONS`).
    prefix : str, default ""
        Put before each reason (``"counter event: "`` for counter events).

    Returns
    -------
    pyarrow.Table
        Columns of the quarantine table: ``records`` is how many records share the reason,
        ``raw`` the first such event's JSON (at most :data:`SAMPLE_BYTES` bytes), ``offset``
        and ``length`` where that event sits in the (decompressed) JSON text.
    """
    uniq, first, counts = np.unique(codes, return_index=True, return_counts=True)
    doc = _RAW_DECODER.decode(text)  # only on files with damage: a fast skim, no objects built
    entries = doc if isinstance(doc, list) else doc.traceEvents or []
    samples = [bytes(entries[int(rows[i])]) for i in first.tolist()]
    # The sample's own bytes, found in the text: the first event with exactly that JSON.
    offsets = [text.find(s) for s in samples]
    return QUARANTINE.conform(pa.table({
        "source": pa.array([source] * len(uniq), pa.string()),
        "offset": pa.array(offsets, pa.int64()),
        "length": pa.array([len(s) for s in samples], pa.int64()),
        "records": pa.array(counts, pa.int64()),
        "reason": pa.array([prefix + REASONS[c - 1] for c in uniq.tolist()], pa.string()),
        "raw": pa.array([s[:SAMPLE_BYTES] for s in samples], pa.binary()),
    }))
