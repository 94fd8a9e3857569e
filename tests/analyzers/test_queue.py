"""HTA's launch queue length: a hand-worked series, HTA's own concat-sort-cumsum as the reference,
the downsampled series against a brute-force maximum, invariants on every real trace, the CLI."""

from __future__ import annotations

import doctest

import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner
from device_ref import CPU_TRACES, GPU_TRACES, SHARED, collected, device_frame, hta_queue, write_store

import sohuprof.analyzers.reports.queue as queue_module
from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.report import run_reports
from sohuprof.analyzers.reports.queue import QUEUE, SERIES_COLUMNS, SUMMARY_COLUMNS, _series, queue_length
from sohuprof.cli import cli
from sohuprof.store import open_store

T0 = 1_000_000
_COLUMNS = ["rank", "ts", "dur", "category", "stream", "correlation"]


def _worked() -> pd.DataFrame:
    """Stream 7: three launches at 0, 10, 20, a graph of two at 30; kernels start at 100 ... 260
    (the queue: 1 2 3 4 5 4 3 2 1 0). Stream 9: launched and started at the same ns."""
    rows = [(0, 0, 5, "host", None, 1), (0, 100, 50, "compute", 7, 1),
            (0, 10, 5, "host", None, 2), (0, 150, 50, "memory", 7, 2),
            (0, 20, 5, "host", None, 3), (0, 200, 50, "compute", 7, 3),
            (0, 30, 5, "host", None, 4), (0, 250, 50, "compute", 7, 4), (0, 260, 50, "compute", 7, 4),
            (0, 300, 50, "compute", 7, None),                                    # no launch: not queued
            (0, 40, 5, "host", None, 5), (0, 40, 5, "compute", 9, 5)]
    ev = pd.DataFrame(rows, columns=_COLUMNS)
    return ev.assign(ts=ev["ts"] + T0)


def test_worked_example() -> None:
    summary, series = queue_length(_worked(), max_queue_length=4, max_points=4)
    assert list(summary.columns) == list(SUMMARY_COLUMNS) and list(series.columns) == list(SERIES_COLUMNS)
    s7 = summary.set_index("stream").loc[7]
    assert (s7["launches"], s7["count"], s7["min"], s7["max"], s7["mean"], s7["p50"]) == (5, 10, 0, 5, 2.5, 2.5)
    # weights 10 10 10 0 70 50 50 50 10 over 260 ns
    assert s7["time_mean"] == pytest.approx(870 / 260)
    assert (s7["window_ns"], s7["at_max_ns"], s7["full_queue_ns"]) == (260, 70, 120)
    assert s7["full_queue_pct"] == round(100 * 120 / 350, 2)       # the rank runs from 0 to 350
    s9 = summary.set_index("stream").loc[9]
    assert (s9["count"], s9["max"], s9["window_ns"], s9["at_max_ns"]) == (2, 1, 0, 0) and np.isnan(s9["time_mean"])
    # 4 buckets of 66 ns from 0: [0, 66) reaches 5, [66, 132) starts at 5, [132, 198) at 4, [198, 264) at 3.
    got = series[series["stream"] == 7]
    assert (got["ts"] - T0).tolist() == [0, 66, 132, 198] and got["queue_length"].tolist() == [5, 5, 4, 3]
    default, _ = queue_length(_worked())
    assert default.set_index("stream").loc[7, "full_queue_ns"] == 0         # 1024 is never reached


def _brute_peaks(t: np.ndarray, q: np.ndarray, edges: np.ndarray, end: int) -> list[int]:
    """The largest value of the step function in each [edge, next edge): slowly, per bucket."""
    out = []
    bounds = [*edges.tolist(), end]
    for lo, hi in zip(bounds[:-1], bounds[1:]):          # a loop over buckets (test oracle)
        inside = [int(v) for tt, v in zip(t, q) if lo <= tt < hi]
        before = [int(v) for tt, v in zip(t, q) if tt < lo]
        starts_at_lo = any(tt == lo for tt in t)
        vals = inside + ([before[-1]] if before and not starts_at_lo else [])
        out.append(max(vals))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_downsampling_keeps_each_buckets_maximum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    t = np.sort(rng.integers(0, int(rng.choice([5, 100, 10_000])), n)).astype(np.int64) + T0
    q = np.cumsum(rng.choice([1, -1], n)).astype(np.int64)
    for points in (1, 3, 7, 1000):
        edges, peak = _series(t, q, points)
        assert len(edges) == min(points, n)
        width = int(edges[1] - edges[0]) if len(edges) > 1 else int(t[-1] - t[0]) + 1
        assert peak.tolist() == _brute_peaks(t, q, edges, int(edges[-1]) + width)
        assert peak.max() == q.max()


def _synthetic(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows, corr = [], 0
    for rank in range(2):
        for stream in (7, 13):
            t = T0
            for _ in range(400):
                corr += 1
                t += int(rng.integers(0, 3_000))
                rows.append((rank, t - int(rng.integers(0, 50_000)), 5, "host", None, corr))
                rows.append((rank, t, int(rng.integers(1, 2_000)), "compute", stream, corr))
    return pd.DataFrame(rows, columns=_COLUMNS)


def _against_hta(summary: pd.DataFrame, ev: pd.DataFrame) -> None:
    ref = hta_queue(ev).groupby(["rank", "stream"])["queue_length"].describe()
    mine = summary.set_index(["rank", "stream"])
    assert sorted(mine.index) == sorted(ref.index)
    for key, r in ref.iterrows():        # a loop over (rank, stream) rows of the reference
        m = mine.loc[key]
        assert (m["count"], m["min"], m["max"]) == (r["count"], r["min"], r["max"]), key
        assert m["mean"] == pytest.approx(r["mean"]) and m["std"] == pytest.approx(r["std"])
        assert (m["p25"], m["p50"], m["p75"]) == pytest.approx((r["25%"], r["50%"], r["75%"]))


@pytest.mark.parametrize("seed", [0, 1])
def test_hta_reference(seed: int) -> None:
    ev = _synthetic(seed)
    summary, _ = queue_length(ev)
    _against_hta(summary, ev)


def _check(summary: pd.DataFrame, series: pd.DataFrame, ev: pd.DataFrame) -> None:
    assert len(summary)
    assert (summary["count"] == 2 * summary["launches"]).all()
    # Every launched event comes off its queue: the launches per stream are the linked events.
    d = device_frame(ev)
    host = ev[(ev["category"] == "host") & ev["correlation"].notna()]
    linked = d[d.set_index(["rank", "correlation"]).index.isin(host.set_index(["rank", "correlation"]).index)]
    assert summary.set_index(["rank", "stream"])["launches"].to_dict() == linked.groupby(["rank", "stream"]).size().to_dict()
    assert (summary["at_max_ns"] <= summary["window_ns"]).all() and (summary["full_queue_ns"] <= summary["window_ns"]).all()
    assert ((summary["time_mean"] <= summary["max"]) | summary["time_mean"].isna()).all()
    per_stream = series.groupby(["rank", "stream"])
    assert (per_stream.size() <= 1000).all()
    assert per_stream["queue_length"].max().to_dict() == summary.set_index(["rank", "stream"])["max"].to_dict()


def _real(name: str, factory) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    store = collected(name, factory)
    out = run_reports(open_store(store), ["queue"]).to_json()["queue"]
    ev = pd.read_parquet(store / "events", columns=_COLUMNS)
    return pd.DataFrame(out["summary"]), pd.DataFrame(out["series"]), ev


def test_a100_trace(tmp_path_factory) -> None:
    summary, series, ev = _real("a100", tmp_path_factory)
    _check(summary, series, ev)
    _against_hta(summary, ev)
    s7 = summary.set_index("stream").loc[7]
    assert (s7["launches"], s7["max"], s7["full_queue_ns"]) == (3753, 10, 0)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", GPU_TRACES)
def test_shared_traces(tmp_path_factory, name: str) -> None:
    summary, series, ev = _real(name, tmp_path_factory)
    _check(summary, series, ev)
    _against_hta(summary, ev)
    if name == "vllm-decode-fullgraph":            # a graph launch enqueues its 421 kernels at once
        assert summary["max"].max() >= 421
    if name == "mi300-resnet-actckpt-rank0of8":    # the CPU ~30 ms ahead: beyond CUDA's 1024
        s0 = summary.set_index("stream").loc[0]
        assert s0["max"] > 1024 and s0["full_queue_ns"] > 0


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", CPU_TRACES)
def test_cpu_only_traces_say_why(tmp_path_factory, name: str) -> None:
    assert "no device kernels" in QUEUE.applies(build_context(open_store(collected(name, tmp_path_factory))))


def test_engine_equals_function(tmp_path) -> None:
    ev = _synthetic(3)
    res = run_analyses(build_context(open_store(write_store(tmp_path / "s", ev))), [QUEUE])["queue"]
    summary, series = queue_length(ev)
    pd.testing.assert_frame_equal(res.summary, summary, check_dtype=False)
    pd.testing.assert_frame_equal(res.series, series, check_dtype=False)


def test_applies_and_errors(tmp_path) -> None:
    ev = _worked()
    assert QUEUE.applies(build_context(open_store(write_store(tmp_path / "k", ev)))) is None
    assert "stalls" in QUEUE.applies(build_context(open_store(write_store(tmp_path / "s", ev, "sohu-raw-trace"))))
    plain = ev.drop(columns="correlation")
    assert "correlation" in QUEUE.applies(build_context(open_store(write_store(tmp_path / "p", plain, "chrome"))))
    with pytest.raises(ValueError, match="'correlation'"):
        queue_length(plain)


def test_cli_table_and_json(tmp_path) -> None:
    store = str(write_store(tmp_path / "s", _worked()))
    table = CliRunner().invoke(cli, ["analyze", store, "--report", "queue"])
    assert table.exit_code == 0, table.output
    assert "queue · summary" in table.output and "queue · series" in table.output
    js = CliRunner().invoke(cli, ["analyze", store, "--report", "queue", "--format", "json"])
    assert js.exit_code == 0, js.output
    data = orjson.loads(js.output)["queue"]
    # 10 points: 10 buckets of 27 ns; [0, 27) reaches 3, [27, 54) 5, then 5 carried, 5 then 4, 4.
    assert [r["queue_length"] for r in data["series"] if r["stream"] == 7][:5] == [3, 5, 5, 5, 4]


def test_docstring_examples() -> None:
    assert doctest.testmod(queue_module).failed == 0
