"""Column building blocks: fields of decoded events as arrays, exact us -> ns times, codes."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.collectors.kineto.checks import MAX_NS, objects
from sohuprof.collectors.kineto.decode import _TS_TOKEN

#: Below this many microseconds a float64 has an ulp under 1 ns, so the ns are recoverable.
_EXACT_US = float(2**43)


def _scatter(mask: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """A length-``n`` mask, True at ``rows[mask]``."""
    out = np.zeros(n, dtype=bool)
    out[rows[mask]] = True
    return out


def _field(items: Sequence[Any], name: str) -> list[Any]:
    """One attribute of every struct, in order (a C-level map, no Python loop)."""
    return list(map(attrgetter(name), items))


def _take(items: Sequence[Any], index: np.ndarray) -> Sequence[Any]:
    """The items at ``index``, in order (a C-level gather)."""
    if index.size <= 1:
        return [items[i] for i in index.tolist()]
    return itemgetter(*index.tolist())(items)


_objects = objects


def _fill(items: Sequence[Any], mask: np.ndarray, fill: Any) -> list[Any]:
    """``items`` with the entries in ``mask`` replaced by ``fill``."""
    out = _objects(items)
    out[mask] = fill
    return out.tolist()


def _codes(encoded: pa.DictionaryArray, null_code: int = -1) -> np.ndarray:
    return encoded.indices.fill_null(null_code).to_numpy(zero_copy_only=False).astype(np.int64)


def _dict_from_codes(codes: np.ndarray, vocabulary: tuple[str, ...]) -> pa.DictionaryArray:
    """A dictionary column over a fixed vocabulary, from indices into it."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(vocabulary))


def _value_counts(values: pa.Array) -> dict[str, int]:
    """Counts of each value, most frequent first, ties in order of first appearance."""
    enc = values.dictionary_encode()
    counts = np.bincount(_codes(enc), minlength=len(enc.dictionary))
    order = np.argsort(-counts, kind="stable")
    return dict(zip(np.asarray(enc.dictionary.to_pylist(), dtype=object)[order].tolist(),
                    counts[order].tolist()))


def _factorize(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Codes and distinct values (None among them) of plain JSON scalars, in first-seen order."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        arr = None
    # Ints, strings or nulls keep their Python values through Arrow; anything else (floats
    # mixed with ints, bools, containers) goes through pandas on the objects themselves.
    if arr is not None and (pa.types.is_int64(arr.type) or pa.types.is_string(arr.type)
                            or pa.types.is_null(arr.type)):
        enc = pc.dictionary_encode(arr, null_encoding="encode")
        return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()
    codes, uniques = pd.factorize(_objects(values), use_na_sentinel=False)
    return codes.astype(np.int64), list(uniques)


def _us_to_ns(us: np.ndarray) -> np.ndarray:
    """Microsecond floats (parsed from decimals with at most 3 places) to exact int64 ns.

    A decimal ``n / 1000`` parses to the double nearest it; while the double's ulp is under
    1 ns, ``n`` is the only integer whose ``n / 1000.0`` (also correctly rounded) gives that
    double back, and it lies within 1 of ``round(us * 1000)``. Values with more decimals keep
    the nearest ns.
    """
    guess = np.rint(us * 1000.0)
    for delta in (-1.0, 1.0):
        candidate = guess + delta
        better = (candidate / 1000.0 == us) & (guess / 1000.0 != us)
        guess = np.where(better, candidate, guess)
    return guess.astype(np.int64)


def _all_ts_ns(ts_all: np.ndarray, raw: bytes, base: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Every event's ts in int64 ns plus ``base`` (``base`` where missing or out of range),
    the mask of those within +-MAX_NS, and whether they are exact to the ns.

    Out-of-range values (1e20 us, inf) are masked before any cast, so nothing wraps.
    """
    fits = np.abs(ts_all) < MAX_NS / 1000.0  # False for NaN and inf
    values = np.where(fits, ts_all, 0.0)
    exact = True
    if np.abs(values).max(initial=0.0) < _EXACT_US:
        ns = _us_to_ns(values)
    else:
        from_text = _ts_from_text(raw, ts_all, fits)
        exact = from_text is not None
        ns = from_text if from_text is not None else np.rint(values * 1000.0).astype(np.int64)
    # |ns| <= 2**62 and 0 <= base < 2**62: the sum cannot wrap.
    ns = np.where(fits, ns, 0) + np.int64(base)
    fits &= np.abs(ns) < MAX_NS
    return ns, fits, exact


def _ts_from_text(raw: bytes, ts_all: np.ndarray, fits: np.ndarray) -> np.ndarray | None:
    """Exact ns of every event's ts in range (``fits``), re-read from the JSON text when floats
    cannot hold them; 0 elsewhere.

    The ``"ts": <number>`` tokens are taken in document order and must match, one for one,
    the events that have a ts (checked value by value); otherwise None (the caller falls back
    to the float, and says so in the metadata). So must an in-range ts written with an exponent.
    """
    tokens = _TS_TOKEN.findall(raw)
    present = ~np.isnan(ts_all)
    if len(tokens) != int(present.sum()):
        return None
    text = np.array(tokens, dtype=np.bytes_)
    if not np.array_equal(text.astype(np.float64), ts_all[present]):
        return None
    use = fits[present]
    text = text[use]
    if (np.char.find(text, b"e") >= 0).any() or (np.char.find(text, b"E") >= 0).any():
        return None
    parts = np.char.partition(text, b".")
    whole, frac = parts[:, 0], parts[:, 2]
    negative = np.char.startswith(whole, b"-")
    # ns digits: the first three decimals; the fourth rounds.
    # Fixed-width bytes: astype("S4") truncates, and the uint8 view gives the digits.
    digits = np.char.ljust(frac, 4, b"0").astype("S4").view(np.uint8).reshape(-1, 4).astype(np.int64) - 48
    ns_frac = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2] + (digits[:, 3] >= 5)
    magnitude = np.abs(whole.astype(np.int64)) * 1000 + ns_frac
    out = np.zeros(ts_all.shape, dtype=np.int64)
    out[np.flatnonzero(present)[use]] = np.where(negative, -magnitude, magnitude)
    return out


def _int_values(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """A column of loose values as int64 and where it is a number (a numeric string counts):
    Arrow converts a list of ints (and None) at C speed; anything else takes pandas' parser."""
    try:
        arr = pa.array(values, pa.int64())
        return arr.fill_null(0).to_numpy(zero_copy_only=False), arr.is_valid().to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        num = pd.to_numeric(pd.Series(_objects(values), dtype=object), errors="coerce").to_numpy(np.float64)
        ok = np.isfinite(num) & (np.abs(num) < 2.0**62)
        return np.where(ok, num, 0).astype(np.int64), ok
