"""units: SI prefixes, durations, percentages, column units and whole-column scaling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sohuprof.analyzers.render.units import column_scale, column_unit, duration, fmt, format_frame, header, \
    percent, scaled, si


@pytest.mark.parametrize(("value", "unit", "text"), [
    (9.5e15, "FLOP/s", "9.50 PFLOP/s"), (4.8e12, "B/s", "4.80 TB/s"), (3.62e10, "B", "36.2 GB"),
    (0, "B", "0 B"), (0.0, "", "0"), (-1.5e9, "B", "-1.50 GB"), (1, "B", "1.00 B"), (999.6, "B", "1.00 kB"),
    (999.4, "B", "999 B"), (2.5e-7, "s", "250 ns"), (1e30, "B", "1.00e+30 B"), (1e-30, "B", "1.00e-30 B"),
    (np.float64(42.0), "FLOP", "42.0 FLOP"), (np.int64(12_000), "B", "12.0 kB"),
    (math.inf, "B", "inf B"), (-math.inf, "B", "-inf B"),
])
def test_si(value: float, unit: str, text: str) -> None:
    assert si(value, unit) == text


@pytest.mark.parametrize("missing", [None, math.nan, np.nan, pd.NA, pd.NaT, np.float32("nan")])
def test_missing_is_empty(missing: object) -> None:
    assert si(missing, "B") == duration(missing) == percent(missing) == fmt(missing, "ns") == fmt(missing, None) == ""


@pytest.mark.parametrize(("ns", "text"), [
    (0, "0 ns"), (1, "1.00 ns"), (0.5, "0.5 ns"), (850, "850 ns"), (3_500, "3.50 µs"), (999_999, "1.00 ms"),
    (12_345_678, "12.3 ms"), (1.2e9, "1.20 s"), (3.6e12, "3,600 s"), (-5e6, "-5.00 ms"), (np.int64(104_642_179), "105 ms"),
])
def test_duration(ns: float, text: str) -> None:
    assert duration(ns) == text


def test_percent() -> None:
    assert percent(65.92) == "65.9 %"
    assert percent(0.5, fraction=True) == "50.0 %"
    assert percent(0) == "0.0 %"
    assert percent(-12.34) == "-12.3 %"
    assert percent(0.004) == "0.004 %"


@pytest.mark.parametrize(("name", "unit"), [
    ("time_ns", "ns"), ("exposed_ns", "ns"), ("ttft_ms_p50", "ms"), ("duration_s", "s"), ("bytes", "B"),
    ("hbm_bytes", "B"), ("tx_bytes", "B"), ("flops", "FLOP"), ("attained_flops", "FLOP/s"), ("peak_flops_fp8", "FLOP/s"),
    ("algbw", "B/s"), ("busbw", "B/s"), ("bandwidth", "B/s"), ("expected_bandwidth", "B/s"), ("rate", "B/s"),
    ("saving_pct", "%"), ("overlap_pct", "%"), ("share", "fraction"), ("efficiency", "fraction"), ("mfu", "fraction"),
    ("peer_ratio", "×"), ("speedup", "×"), ("tokens_per_s", "tok/s"), ("intensity", "FLOP/B"), ("clock_hz", "Hz"),
    ("addr", "addr"), ("rank", None), ("count", None), ("op", None), ("peak_ts", None), (3, None),
])
def test_column_unit(name: object, unit: str | None) -> None:
    assert column_unit(name) == unit


def test_column_scale_and_header() -> None:
    assert column_scale([1e5, 4e8], "ns") == (1e6, "ms")
    assert column_scale([5e3], "ns") == (1e3, "µs")
    assert column_scale([0, 0], "ns") == (1.0, "ns")
    assert column_scale([3.2e10, np.nan], "B") == (1e9, "GB")
    assert column_scale([], "B") == (1.0, "B")
    assert column_scale([0.5], "fraction") == (0.01, "%")
    assert column_scale([1, 2], None) == (1.0, None)
    values, label = scaled([1e9, 2.5e9, None], "B")
    assert label == "GB" and values[:2].tolist() == [1.0, 2.5] and math.isnan(values[2])
    assert header("time_ns", "ms") == "time (ms)"
    assert header("saving_pct", "%") == "saving (%)"
    assert header("bytes", "GB") == "bytes (GB)"
    assert header("rank", None) == "rank"


def test_format_frame() -> None:
    df = pd.DataFrame({"rank": [0, 12_000], "time_ns": [1.5e6, 250e6], "bytes": [9.5e15, np.nan],
                       "slow": [True, False], "op": ["gemm", None], "share": [0.25, 1.0]})
    out = format_frame(df)
    assert list(out.columns) == ["rank", "time (ms)", "bytes (PB)", "slow", "op", "share (%)"]
    assert out["rank"].tolist() == ["0", "12,000"]
    assert out["time (ms)"].tolist() == ["1.50", "250"]
    assert out["bytes (PB)"].tolist() == ["9.50", ""]
    assert out["slow"].tolist() == ["yes", "no"]
    assert out["op"].tolist() == ["gemm", ""]
    assert out["share (%)"].tolist() == ["25.0", "100"]
    assert "9,500,000" not in out.to_string()
    assert list(format_frame(df, units={"rank": "B"}).columns)[0] == "rank (kB)"


def test_format_frame_small_values_and_flattened_names() -> None:
    out = format_frame(pd.DataFrame({"time_ns": [1e8, 20, 6600.0], "bytes": [1e9, 2.1e4, 0],
                                     "ttft_ms_p50": [8.9, 10.0, 11.0], "tokens_per_s": [30733.3, 1.0, None]}))
    assert list(out.columns) == ["time (ms)", "bytes (GB)", "ttft_p50 (ms)", "tokens/s"]
    assert out["time (ms)"].tolist() == ["100", "20.0 ns", "6.60 µs"]   # never 2e-05
    assert out["bytes (GB)"].tolist() == ["1.00", "21.0 kB", "0"]
    assert out["tokens/s"].tolist() == ["30,733", "1.00", ""]


def test_rounding_edges_and_tiny_shares() -> None:
    assert si(99.97, "B") == "100 B" and si(9.996, "B") == "10.0 B" and si(999.96e6, "B") == "1.00 GB"
    assert duration(99_970_000) == "100 ms"
    out = format_frame(pd.DataFrame({"share": [0.5, 4.9e-7, 0.0], "comm=free ms": [1.855, 0.002, 12.0]}))
    assert out["share (%)"].tolist() == ["50.0", "< 0.01", "0"]
    assert list(out.columns)[1] == "comm=free (ms)" and out["comm=free (ms)"].tolist() == ["1.85", "2.00 µs", "12.0"]


def test_addresses_read_in_hex() -> None:
    assert fmt(94_818_286_399_488, "addr") == "0x563c9a477000"
    assert column_scale([94_818_286_399_488], "addr") == (1.0, None)
    assert format_frame(pd.DataFrame({"addr": [255, None]}))["addr"].tolist() == ["0xff", ""]
