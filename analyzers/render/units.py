"""Numbers for people: SI prefixes with units, durations from ns, and the unit a column holds.

Pure formatting, shared by the table and HTML renderers (and figures, for axis scaling). A
missing value (None, NaN, NaT, ±inf is kept as "inf") formats as ``""``.

>>> si(9.5e15, "FLOP/s")
'9.50 PFLOP/s'
>>> si(4.8e12, "B/s")
'4.80 TB/s'
>>> duration(12_345_678)
'12.3 ms'
>>> column_unit("exposed_ns"), column_unit("busbw"), column_unit("saving_pct")
('ns', 'B/s', '%')
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["si", "duration", "percent", "fmt", "column_unit", "column_scale", "scaled", "header", "format_frame",
           "PREFIXES", "TIME_UNITS"]

#: SI prefixes by power of 1000 (decimal: 1 GB = 1e9 bytes, as bandwidths are quoted).
PREFIXES: dict[int, str] = {-8: "y", -7: "z", -6: "a", -5: "f", -4: "p", -3: "n", -2: "µ", -1: "m", 0: "",
                            1: "k", 2: "M", 3: "G", 4: "T", 5: "P", 6: "E", 7: "Z", 8: "Y"}

#: Time units from ns: (name, ns in one), largest first; durations stop at seconds.
TIME_UNITS: tuple[tuple[str, float], ...] = (("s", 1e9), ("ms", 1e6), ("µs", 1e3), ("ns", 1.0))

# Units whose values are never SI-scaled (tokens a second read best whole: 30,733).
_PLAIN = {"%", "×", "FLOP/B", "tok/s"}


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _digits(v: float) -> str:
    """Three significant digits for 1 <= |v| < 1000 (and for zero)."""
    a = abs(v)
    # Decimals from the rounded value: 99.97 is "100", not "100.0"; 9.996 is "10.0".
    if a == 0 or round(a, 1) >= 100:
        return f"{v:.0f}"
    if round(a, 2) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _power(value: float) -> int:
    """The power of 1000 that puts ``value`` in [1, 1000) after 3-digit rounding, clamped to PREFIXES."""
    p = math.floor(math.log10(abs(value)) / 3)
    # 999.6 rounds to "1000": move up a prefix.
    if abs(float(_digits(value / 1000.0 ** p))) >= 1000:
        p += 1
    return p


def si(value: Any, unit: str = "", *, space: bool = True) -> str:
    """``value`` with an SI prefix and ``unit`` at three significant digits: ``si(3.62e10, "B")``
    is ``'36.2 GB'``; ``si(0, "B")`` is ``'0 B'``; None or NaN is ``''``.

    Values outside the prefixes (beyond 1e27 or under 1e-24) fall back to exponent notation.
    """
    if _missing(value):
        return ""
    v = float(value)
    sep = " " if space and unit else ""
    if math.isinf(v):
        return f"{'-' if v < 0 else ''}inf{sep}{unit}"
    if v == 0:
        return f"0{sep}{unit}"
    p = _power(v)
    if p not in PREFIXES:
        return f"{v:.2e}{sep}{unit}"
    return f"{_digits(v / 1000.0 ** p)}{sep}{PREFIXES[p]}{unit}"


def duration(ns: Any) -> str:
    """A time given in ns, in the unit that reads best: ``'850 ns'``, ``'3.50 µs'``, ``'12.3 ms'``,
    ``'1.20 s'`` (seconds at most: ``'3,600 s'``); None or NaN is ``''``."""
    if _missing(ns):
        return ""
    v = float(ns)
    if math.isinf(v):
        return f"{'-' if v < 0 else ''}inf s"
    if v == 0:
        return "0 ns"
    a = abs(v)
    if a >= 1000 * 1e9:
        return f"{v / 1e9:,.0f} s"
    if a < 1:
        return f"{v:.3g} ns"
    i = next(i for i, (_, size) in enumerate(TIME_UNITS) if a >= size)
    text = _digits(v / TIME_UNITS[i][1])
    if abs(float(text)) >= 1000 and i > 0:   # 999.96 µs rounds to 1000: say 1.00 ms
        i -= 1
        text = _digits(v / TIME_UNITS[i][1])
    return f"{text} {TIME_UNITS[i][0]}"


def percent(value: Any, *, fraction: bool = False) -> str:
    """``'65.9 %'`` (``fraction``: ``value`` is 0..1, shown times 100); None or NaN is ``''``."""
    if _missing(value):
        return ""
    v = float(value) * (100.0 if fraction else 1.0)
    if math.isinf(v):
        return f"{'-' if v < 0 else ''}inf %"
    return f"{v:.1f} %" if abs(v) >= 0.1 or v == 0 else f"{v:.2g} %"


def fmt(value: Any, unit: str | None) -> str:
    """One value in the unit :func:`column_unit` names: ns as a duration, ``'%'`` and
    ``'fraction'`` as percentages, ``'×'`` as a ratio, other units SI-prefixed, None as a plain
    number (integers with thousands separators)."""
    if _missing(value):
        return ""
    if unit == "ns":
        return duration(value)
    if unit == "ms":
        return duration(float(value) * 1e6)
    if unit == "s":
        return duration(float(value) * 1e9)
    if unit == "%":
        return percent(value)
    if unit == "fraction":
        return percent(value, fraction=True)
    if unit == "×":
        return f"{float(value):.2f}×"
    if unit == "addr":
        return f"0x{int(value):x}"
    if unit == "FLOP/B":
        return f"{float(value):,.1f} FLOP/B"
    if unit is not None:
        return si(value, unit)
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v.is_integer() and abs(v) < 1e15:
            return f"{v:,.0f}"
        return f"{v:,.3f}".rstrip("0").rstrip(".") if 1e-3 <= abs(v) < 1e6 else f"{v:.3g}"
    return str(value)


# (test, unit), first match wins; names are lower-cased report column names, flattened
# (``ttft_ms_p50``) or not.
_NAME_RULES: tuple[tuple[Any, str], ...] = (
    (lambda n: n in ("addr", "address") or n.endswith("_addr"), "addr"),
    (lambda n: n.endswith("_pct") or n.endswith("pct") or "_pct_" in n, "%"),
    (lambda n: n.endswith("_ns") or n.endswith(" ns") or n == "ns" or "_ns_" in n, "ns"),
    (lambda n: n.endswith("_ms") or n.endswith(" ms") or "_ms_" in n, "ms"),
    (lambda n: n.endswith("_s") and not n.endswith("_per_s") or n == "duration_s", "s"),
    (lambda n: "tokens_per_s" in n or n.endswith("tok_s"), "tok/s"),
    (lambda n: n.endswith("_hz") or n == "hz", "Hz"),
    (lambda n: n in ("algbw", "busbw", "bandwidth", "rate") or n.endswith("_bandwidth") or n.endswith("_bw")
     or n.endswith("_rate") or n.endswith("_bytes_per_s"), "B/s"),
    (lambda n: n == "bytes" or n.endswith("_bytes") or n.startswith("bytes_"), "B"),
    (lambda n: n == "flops" or n.endswith("_flop_count"), "FLOP"),
    (lambda n: "flops" in n, "FLOP/s"),
    (lambda n: n in ("intensity", "ridge") or n.endswith("_intensity") or n.endswith("_ridge"), "FLOP/B"),
    (lambda n: n in ("share", "efficiency", "mfu", "fraction") or n.endswith("_share") or n.endswith("_efficiency")
     or n.endswith("_fraction"), "fraction"),
    (lambda n: n in ("ratio", "speedup") or n.endswith("_ratio") or n.endswith("_speedup"), "×"),
)


def column_unit(name: Any) -> str | None:
    """The unit a report column holds, from its name: ``'ns'`` (``*_ns``), ``'ms'``, ``'s'``,
    ``'B'`` (``bytes``, ``*_bytes``), ``'B/s'`` (``algbw``, ``busbw``, ``*bandwidth``, ``*rate``),
    ``'FLOP'`` (``flops``), ``'FLOP/s'`` (other ``*flops*``), ``'FLOP/B'`` (``intensity``),
    ``'%'`` (``*_pct``), ``'fraction'`` (0..1: ``share``, ``efficiency``, ``mfu``), ``'×'``
    (``*ratio``, ``speedup``), ``'tok/s'``, ``'Hz'``, ``'addr'`` (``addr``: hex); None for
    counts, ids, timestamps and text."""
    if not isinstance(name, str):
        return None
    n = name.lower()
    for test, unit in _NAME_RULES:
        if test(n):
            return unit
    return None


def column_scale(values: Iterable[Any] | pd.Series, unit: str | None) -> tuple[float, str | None]:
    """One scale for a whole column: ``(divisor, label)`` so that its largest magnitude reads in
    [1, 1000), e.g. ``(1e6, 'ms')`` for ns up to 4e8, ``(1e9, 'GB')`` for bytes; percentages and
    ratios unscaled; ``(1.0, None)`` for a column without unit or without numbers."""
    if unit is None or unit == "addr":   # an address is never scaled and needs no label
        return 1.0, None
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    arr = np.abs(arr[np.isfinite(arr)])
    top = float(arr.max()) if len(arr) else 0.0
    base = {"ms": 1e6, "s": 1e9}.get(unit, 1.0)   # express every time as ns first
    if unit in ("ns", "ms", "s"):
        top *= base
        for name, size in TIME_UNITS:
            if top >= size:
                return size / base, name
        return 1.0 / base, "ns"
    if unit == "fraction":
        return 0.01, "%"
    if unit in _PLAIN:
        return 1.0, unit
    if top == 0:
        return 1.0, unit
    p = max(min(math.floor(math.log10(top) / 3), max(PREFIXES)), min(PREFIXES))
    return 1000.0 ** p, PREFIXES[p] + unit


def scaled(values: Iterable[Any] | pd.Series, unit: str | None) -> tuple[np.ndarray, str | None]:
    """``values`` as floats divided by :func:`column_scale`'s divisor, with its label: for axes
    that must say "GB", never plotly's "B" for billion."""
    div, label = column_scale(values, unit)
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return arr / div, label


# Suffixes dropped from a header once the unit is shown beside it.
_SUFFIXES = ("_pct", "_ns", "_ms", "_s", " ns", " ms")


def header(name: Any, label: str | None) -> str:
    """A column header with its unit: ``header('time_ns', 'ms')`` is ``'time (ms)'``,
    ``header('bytes', 'GB')`` is ``'bytes (GB)'``, no label leaves the name as it is."""
    text = str(name)
    if text.endswith("_per_s"):          # tokens_per_s: the name says its unit already
        return text[: -len("_per_s")] + "/s"
    if label is None:
        return text
    for suffix in _SUFFIXES:
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
            break
    else:   # a flattened name: ttft_ms_p50 reads "ttft_p50 (ms)"
        for suffix in _SUFFIXES:
            if f"{suffix}_" in text and not text.startswith(suffix[1:]):
                text = text.replace(f"{suffix}_", "_", 1)
                break
    return f"{text} ({label})"


def _number(v: float) -> str:
    """A scaled number: thousands separators, three significant digits under 1000."""
    if not math.isfinite(v):
        return "" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a == 0:
        return "0"
    if a < 0.01:
        return f"{v:.2g}"
    return _digits(v)


def format_frame(df: pd.DataFrame, *, units: dict[str, str | None] | None = None) -> pd.DataFrame:
    """``df`` as strings for reading: each numeric column with a unit scaled once (one unit per
    column, named in its header: ``time (ms)``), three significant digits; integer columns
    without unit get thousands separators; booleans yes/no; missing values ``''``.

    ``units`` overrides :func:`column_unit` per column name (a None value: no unit).
    """
    out: dict[str, pd.Series] = {}
    for col in df.columns:
        s = df[col]
        unit = units[col] if units is not None and col in units else column_unit(col)
        if pd.api.types.is_bool_dtype(s):
            out[str(col)] = s.map({True: "yes", False: "no"}).fillna("")
            continue
        if not pd.api.types.is_numeric_dtype(s) or unit is None:
            if pd.api.types.is_numeric_dtype(s):
                out[str(col)] = s.map(lambda v: fmt(v, None))
            else:
                out[str(col)] = s.map(lambda v: "" if _missing(v) else str(v))
            continue
        if unit == "addr":   # an address reads in hex, unscaled
            out[str(col)] = s.map(lambda v: fmt(v, "addr"))
            continue
        values, label = scaled(s, unit)
        if unit == "×":
            text = [f"{v:.2f}" if math.isfinite(v) else _number(v) for v in values]
        elif unit in ("%", "fraction"):   # a share too small to read: "< 0.01", not 4.9e-05
            text = [("< 0.01" if v > 0 else "> -0.01") if 0 < abs(v) < 0.01 else _number(v) for v in values]
        elif unit in _PLAIN:
            text = [_number(v) for v in values]
        else:   # a value far under the column's scale says its own unit (20.0 ns in a ms column), not 2e-05
            raw = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
            text = [fmt(r, unit) if v != 0 and abs(v) < 0.01 else _number(v) for v, r in zip(values, raw)]
        out[header(col, label)] = pd.Series(text, index=s.index, dtype=object)
    return pd.DataFrame(out, index=df.index)
