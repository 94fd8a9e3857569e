"""HTA's memory bandwidth by direction: HTA's direction rule, a hand-worked example with bytes,
HTA's +bw/-bw time series as the reference, the real traces (whose stores carry no memcpy
bytes yet: counts and time only, with a note), and a cross-check with the launch report."""

from __future__ import annotations

import doctest
import gzip

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest
from click.testing import CliRunner
from device_ref import A100, CPU_TRACES, GPU_TRACES, SHARED, collected, device_frame, hta_memory_series, write_store

import sohuprof.analyzers.reports.memory_bw as memory_module
from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.hta_selection import hta_select
from sohuprof.analyzers.report import run_reports
from sohuprof.analyzers.reports.memory_bw import DIRECTION_COLUMNS, MEMORY_BW, direction_of, memory_bandwidth
from sohuprof.cli import cli
from sohuprof.store import open_store

T0 = 1_000_000
_COLUMNS = ["rank", "ts", "dur", "name", "category", "stream", "correlation", "hbm_bytes"]
HTOD, DTOH = "Memcpy HtoD (Pinned -> Device)", "Memcpy DtoH (Device -> Pinned)"


@pytest.mark.parametrize(("name", "direction"), [
    (HTOD, "HtoD"), (DTOH, "DtoH"), ("Memcpy DtoD (Device -> Device)", "DtoD"), ("Memcpy PtoP (Device -> Device)", "PtoP"),
    ("Memcpy HtoD (Pageable -> Device)", "HtoD"), ("Memset (Device)", "Memset"), ("hipMemcpyDtoH", "other"),
    ("hipMemset", "Memset"), ("dma_request", "other"), ("Memcpy", "other")])
def test_direction_of(name: str, direction: str) -> None:
    assert direction_of(name) == direction


def _worked() -> pd.DataFrame:
    rows = [  # rank, ts, dur, name, category, stream, correlation, bytes
        (0, 0, 100, HTOD, "memory", 7, None, 1000),         # 10 GB/s
        (0, 50, 100, HTOD, "memory", 9, None, 2000),        # 20 GB/s, overlapping: 30 in flight
        (0, 500, 0, HTOD, "memory", 7, None, 10),           # 0 ns: over 1 ns, 10 GB/s
        (0, 1000, 200, DTOH, "memory", 7, None, None),      # bytes unknown
        (0, 2000, 100, DTOH, "memory", 7, None, 5000),      # 50 GB/s
        (0, 0, 10, "Memset (Device)", "memory", 7, None, 100),
        (0, 3000, 10, "dma_request", "memory", 7, None, None),
        (0, 0, 10, "gemm", "compute", 7, None, 10**9),      # not a memory event
        (1, 0, 1000, HTOD, "memory", 7, None, 1000),        # rank 1: 1 GB/s
    ]
    ev = pd.DataFrame(rows, columns=_COLUMNS)
    return ev.assign(ts=ev["ts"] + T0)


def test_worked_example() -> None:
    out = memory_bandwidth(_worked())
    assert list(out.columns) == list(DIRECTION_COLUMNS)
    got = out.set_index(["rank", "direction"])
    assert got.loc[0].index.tolist() == ["DtoH", "HtoD", "Memset", "other"]
    h = got.loc[(0, "HtoD")]
    assert (h["count"], h["bytes_known"], h["bytes"], h["time_ns"], h["busy_ns"]) == (3, 3, 3010, 200, 150)
    assert h["gbps"] == pytest.approx(3010 / 150)
    # The series: 10, 30, 20, 0, 10, 0 -> peak 30, positive points 10 30 20 10.
    assert (h["peak_gbps"], h["mean_gbps"], h["p50_gbps"]) == pytest.approx((30.0, 17.5, 15.0))
    d = got.loc[(0, "DtoH")]
    assert (d["count"], d["bytes_known"], d["bytes"], d["time_ns"], d["busy_ns"]) == (2, 1, 5000, 300, 300)
    assert (d["gbps"], d["peak_gbps"], d["mean_gbps"]) == (50.0, 50.0, 50.0)
    o = got.loc[(0, "other")]
    assert (o["count"], o["bytes_known"], o["time_ns"]) == (1, 0, 10) and np.isnan(o["bytes"]) and np.isnan(o["gbps"])
    assert got.loc[(1, "HtoD"), "gbps"] == 1.0
    # HTA's 1-unit floor on durations, in us as --hta-compatible uses it: each copy lasts at least
    # 1 us, so all three overlap in [500, 1000): 1 + 2 + 0.01 GB/s.
    coarse = memory_bandwidth(_worked(), min_dur_ns=1000).set_index(["rank", "direction"])
    assert coarse.loc[(0, "HtoD"), "peak_gbps"] == pytest.approx(1000 / 1000 + 2000 / 1000 + 10 / 1000)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hta_series_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    ev = pd.DataFrame({"rank": 0, "ts": T0 + np.sort(rng.integers(0, 100_000, n)), "dur": rng.integers(1, 5_000, n),
                       "name": rng.choice([HTOD, DTOH, "Memset (Device)"], n), "category": "memory",
                       "stream": rng.choice([7, 8], n), "correlation": None, "hbm_bytes": rng.integers(1, 10**7, n)})
    out = memory_bandwidth(ev).set_index("direction")
    for name, d in ev.groupby("name"):     # three directions
        series = hta_memory_series(d["ts"].to_numpy() - T0, d["dur"].to_numpy(), d["hbm_bytes"].to_numpy())
        positive = series[series > 1e-9]
        row = out.loc[direction_of(name)]
        assert row["peak_gbps"] == pytest.approx(series.max())
        assert row["mean_gbps"] == pytest.approx(positive.mean())
        assert row["p50_gbps"] == pytest.approx(np.median(positive))


def _real(name: str, factory) -> tuple[pd.DataFrame, dict]:
    store = collected(name, factory)
    ev = pd.read_parquet(store / "events", columns=_COLUMNS)
    return ev, run_reports(open_store(store), ["memory_bw", "launches"]).to_json()


def _check(out: dict, ev: pd.DataFrame) -> None:
    rows = pd.DataFrame(out["memory_bw"]["directions"])
    assert len(rows)
    d = device_frame(ev)
    mem = d[d["category"] == "memory"]
    mem = mem.assign(direction=[direction_of(str(n)) for n in mem["name"]])
    want = mem.groupby(["rank", "direction"]).agg(count=("ts", "size"), time_ns=("dur", "sum"))
    got = rows.set_index(["rank", "direction"])
    assert got["count"].to_dict() == want["count"].to_dict() and got["time_ns"].to_dict() == want["time_ns"].to_dict()
    assert (got["busy_ns"] <= got["time_ns"]).all()
    known = mem.groupby(["rank", "direction"])["hbm_bytes"].agg(["count", "sum"])
    assert got["bytes_known"].to_dict() == known["count"].to_dict()
    assert got["bytes"].fillna(0).to_dict() == known["sum"].to_dict()
    assert (got["gbps"].isna() == (got["bytes_known"] == 0)).all()
    # Bandwidth while moving data is at most the most ever in flight at once.
    assert (got["gbps"].dropna() <= got["peak_gbps"].dropna() * (1 + 1e-9)).all()
    if mem["hbm_bytes"].isna().any():
        assert "no byte count" in out["memory_bw"]["note"]
    else:
        assert "note" not in out["memory_bw"]


def _kineto_bandwidth() -> pd.DataFrame:
    """Kineto's own ``memory bandwidth (GB/s)`` arg of the A100 trace's memcpy/memset events
    (what HTA's series reads), by correlation."""
    with gzip.open(A100) as f:
        events = orjson.loads(f.read())["traceEvents"]
    rows = [(e["args"]["correlation"], e["args"]["memory bandwidth (GB/s)"]) for e in events
            if e.get("cat") in ("gpu_memcpy", "gpu_memset")]       # a loop over the raw JSON (test oracle)
    return pd.DataFrame(rows, columns=["correlation", "kineto_gbps"])


def test_bytes_over_duration_is_kinetos_bandwidth(tmp_path_factory) -> None:
    ev = pd.read_parquet(collected("a100", tmp_path_factory) / "events", columns=_COLUMNS)
    mem = ev[ev["category"] == "memory"].merge(_kineto_bandwidth(), on="correlation")
    assert len(mem) == 1074 and mem["hbm_bytes"].notna().all()
    assert np.allclose(mem["hbm_bytes"] / mem["dur"], mem["kineto_gbps"], rtol=1e-9)


def test_hta_compatible_is_htas_series(tmp_path_factory) -> None:
    """HTA's series from HTA's own inputs: its selection, its whole-us intervals (0 -> 1 us) and
    Kineto's bandwidth arg, a +bw/-bw cumsum per ``name[:11]``; summary over the points above 0."""
    store = collected("a100", tmp_path_factory)
    res = run_analyses(build_context(open_store(store), hta_compatible=True), [MEMORY_BW])["memory_bw"]
    table = pa.Table.from_pandas(pd.read_parquet(store / "events", columns=_COLUMNS), preserve_index=False)
    sel = hta_select(table).to_pandas()
    mem = sel[sel["category"] == "memory"].merge(_kineto_bandwidth(), on="correlation")
    mem["dur"] = mem["dur"].where(mem["dur"] > 0, 1000)
    got = res.directions.set_index("direction")
    assert got["count"].sum() == len(mem)
    for kind, d in mem.groupby(mem["name"].astype(str).str[:11]):      # HTA's get_memory_kernel_type
        series = hta_memory_series(d["ts"].to_numpy() - T0, d["dur"].to_numpy(), d["kineto_gbps"].to_numpy() * d["dur"])
        positive = series[series > 1e-9]
        row = got.loc[direction_of(kind)]
        assert row["peak_gbps"] == pytest.approx(series.max())
        assert (row["mean_gbps"], row["p50_gbps"]) == pytest.approx((positive.mean(), np.median(positive)))


def test_a100_trace_and_the_launch_report_agree(tmp_path_factory) -> None:
    ev, out = _real("a100", tmp_path_factory)
    _check(out, ev)
    got = {r["direction"]: r["count"] for r in out["memory_bw"]["directions"]}
    by_runtime = {r["runtime"]: r["launches"] for r in out["launches"]["by_runtime"]}
    assert got == {"DtoD": 960, "Memset": 114}
    assert (by_runtime["cudaMemcpyAsync"], by_runtime["cudaMemsetAsync"]) == (got["DtoD"], got["Memset"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", GPU_TRACES)
def test_shared_traces(tmp_path_factory, name: str) -> None:
    ev, out = _real(name, tmp_path_factory)
    _check(out, ev)
    directions = {r["direction"] for r in out["memory_bw"]["directions"]}
    if name == "sampled-2rank-of128":
        assert directions == {"DtoD", "DtoH", "HtoD", "Memset"}
    if name == "mtia-single-rank":
        assert directions == {"other"}            # dma_request


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", CPU_TRACES)
def test_cpu_only_traces_say_why(tmp_path_factory, name: str) -> None:
    assert "no device kernels" in MEMORY_BW.applies(build_context(open_store(collected(name, tmp_path_factory))))


def test_bytes_from_the_store(tmp_path) -> None:
    """Where the store has ``hbm_bytes`` for memcpy events, the engine computes bandwidth."""
    ev = _worked()
    res = run_analyses(build_context(open_store(write_store(tmp_path / "s", ev))), [MEMORY_BW])["memory_bw"]
    pd.testing.assert_frame_equal(res.directions, memory_bandwidth(ev), check_dtype=False)
    data = res.to_json()
    h = next(r for r in data["directions"] if r["rank"] == 0 and r["direction"] == "HtoD")
    assert h["bytes"] == 3010 and isinstance(h["bytes"], int) and h["peak_gbps"] == pytest.approx(30.0)
    assert "2 of 8 memory events" in data["note"]


def test_applies(tmp_path) -> None:
    ev = _worked()
    assert MEMORY_BW.applies(build_context(open_store(write_store(tmp_path / "k", ev)))) is None
    no_copies = ev[ev["category"] != "memory"]
    assert "no memory copies" in MEMORY_BW.applies(build_context(open_store(write_store(tmp_path / "n", no_copies))))
    assert "stalls" in MEMORY_BW.applies(build_context(open_store(write_store(tmp_path / "s", ev, "sohu-raw-trace"))))
    # No correlation needed: a plain Chrome trace with memcpy events applies.
    assert MEMORY_BW.applies(build_context(open_store(write_store(tmp_path / "p", ev.drop(columns="correlation"),
                                                                  "chrome")))) is None
    with pytest.raises(ValueError, match="'stream'"):
        memory_bandwidth(ev.drop(columns="stream"))


def test_cli_table_and_json(tmp_path) -> None:
    store = str(write_store(tmp_path / "s", _worked()))
    table = CliRunner().invoke(cli, ["analyze", store, "--report", "memory_bw"])
    assert table.exit_code == 0, table.output
    assert "memory_bw · directions" in table.output and "HtoD" in table.output
    js = CliRunner().invoke(cli, ["analyze", store, "--report", "memory_bw", "--format", "json"])
    assert js.exit_code == 0, js.output
    rows = orjson.loads(js.output)["memory_bw"]["directions"]
    assert next(r for r in rows if r["direction"] == "other")["bytes"] is None


def test_docstring_examples() -> None:
    assert doctest.testmod(memory_module).failed == 0
