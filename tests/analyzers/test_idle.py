"""HTA's idle-time breakdown per stream: a hand-worked example, HTA's own pandas rules as the
reference where streams never overlap, the invariants on every real trace (parts sum to idle,
idle + busy = the stream's window), a cross-check with temporal, and the CLI."""

from __future__ import annotations

import doctest
import random

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from device_ref import CPU_TRACES, GPU_TRACES, SHARED, collected, device_frame, hta_idle, write_store

import sohuprof.analyzers.reports.idle as idle_module
from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.intervals import union_length
from sohuprof.analyzers.report import run_reports
from sohuprof.analyzers.reports.idle import IDLE, INTERVAL_COLUMNS, STREAM_COLUMNS, idle_breakdown
from sohuprof.cli import cli
from sohuprof.store import open_store

T0 = 1_000_000


def _worked() -> pd.DataFrame:
    """Rank 0 stream 7: host wait 85, kernel wait 5 + 10 + 0 + 80, other 100 000 (module docstring
    rules, gaps from the latest end so far); stream 9 one kernel; rank 1 one gap of other."""
    rows = [  # (rank, ts, dur, category, stream, correlation)
        (0, 0, 10, "host", None, 1), (0, 20, 100, "compute", 7, 1),             # K1 [20, 120)
        (0, 30, 10, "host", None, 2), (0, 125, 100, "compute", 7, 2),           # K2: gap 5, launched early: kernel wait
        (0, 300, 10, "host", None, 3), (0, 310, 50, "memory", 7, 3),            # K3: gap 85, launched at 300 > 225: host wait
        (0, 40, 10, "host", None, 4), (0, 100_360, 40, "communication", 7, 4),  # K4: gap 100 000 >= 30 us: other
        (0, 100_410, 10, "compute", 7, None),                                   # K5: gap 10, no launch: kernel wait
        (0, 100_412, 2, "compute", 7, None),                                    # K6 inside K5: gap 0 (HTA: -8)
        (0, 100_500, 20, "compute", 7, None),                                   # K7: gap 80 from K5's end (HTA: 86)
        (0, 50, 5, "host", None, 8), (0, 500, 30, "compute", 9, 8),             # stream 9: one kernel
        (0, 600, 30, "compute", None, None),                                    # no stream: not a device event
        (0, 700, 30, "host", 7, None),                                          # gpu_user_annotation: host
        (1, 0, 100, "compute", 7, 11), (1, 50_100, 100, "compute", 7, 12),      # rank 1: gap 50 000, other
        (1, 10, 5, "host", None, 11), (1, 20, 5, "host", None, 12),
    ]
    ev = pd.DataFrame(rows, columns=["rank", "ts", "dur", "category", "stream", "correlation"])
    return ev.assign(ts=ev["ts"] + T0)


def test_worked_example() -> None:
    streams, intervals = idle_breakdown(_worked())
    assert list(streams.columns) == list(STREAM_COLUMNS) and list(intervals.columns) == list(INTERVAL_COLUMNS)
    got = streams.set_index(["rank", "stream"])
    s7 = got.loc[(0, 7)]
    assert (s7["kernels"], s7["window_ns"], s7["busy_ns"], s7["idle_ns"]) == (7, 100_500, 320, 100_180)
    assert (s7["host_wait_ns"], s7["kernel_wait_ns"], s7["other_ns"]) == (85, 95, 100_000)
    assert s7["idle_pct"] == round(100 * 100_180 / 100_500, 2)
    assert s7["other_pct"] == round(100 * 100_000 / 100_180, 2)
    s9 = got.loc[(0, 9)]
    assert (s9["kernels"], s9["window_ns"], s9["idle_ns"]) == (1, 30, 0) and np.isnan(s9["host_wait_pct"])
    assert got.loc[(1, 7), "other_ns"] == 50_000
    kw = intervals[(intervals["rank"] == 0) & (intervals["stream"] == 7)].set_index("idle_category")
    assert kw.index.tolist() == ["host_wait", "kernel_wait", "other"]
    k = kw.loc["kernel_wait"]
    assert (k["count"], k["total_ns"], k["min_ns"], k["max_ns"]) == (4, 95, 0, 80)
    assert k["mean_ns"] == 23.75 and k["p50_ns"] == 7.5      # gaps 5, 10, 0, 80
    assert (kw.loc["host_wait", "count"], kw.loc["other", "total_ns"]) == (1, 100_000)
    # A stricter threshold: of the kernel waits only the 0 ns gap stays below 5 ns.
    strict, _ = idle_breakdown(_worked(), consecutive_kernel_delay_ns=5)
    s7 = strict.set_index(["rank", "stream"]).loc[(0, 7)]
    assert (s7["kernel_wait_ns"], s7["other_ns"]) == (0, 100_000 + 5 + 10 + 80)


def _streams_never_overlap(n: int, seed: int) -> pd.DataFrame:
    """Kernels on 3 streams of 2 ranks, back to back or apart, launched before or after the
    previous kernel ended, some with no launch."""
    rng = np.random.default_rng(seed)
    rows, corr = [], 0
    for rank in range(2):
        for stream in (3, 7, 20):
            t = T0
            for _ in range(n):
                t += int(rng.choice([0, 0, 5, 200, 40_000, 2_000_000]))
                dur = int(rng.integers(1, 5_000))
                corr += 1
                if rng.random() < 0.9:
                    launch = t - int(rng.choice([10, 3_000, 60_000, 3_000_000]))
                    rows.append((rank, launch, int(rng.integers(1, 30)), "host", None, corr))
                    rows.append((rank, t, dur, str(rng.choice(["compute", "memory", "communication"])), stream, corr))
                else:
                    rows.append((rank, t, dur, "compute", stream, None))
                t += dur
    return pd.DataFrame(rows, columns=["rank", "ts", "dur", "category", "stream", "correlation"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hta_rules_where_streams_never_overlap(seed: int) -> None:
    ev = _streams_never_overlap(300, seed)
    streams, intervals = idle_breakdown(ev)
    ref = hta_idle(ev).set_index(["rank", "stream", "idle_category"])
    mine = intervals.set_index(["rank", "stream", "idle_category"])
    assert sorted(mine.index) == sorted(ref.index)
    for key, row in ref.iterrows():   # a loop over (rank, stream, category) rows of the reference
        assert mine.loc[key, "total_ns"] == row["sum"] and mine.loc[key, "count"] == row["count"], key
        assert mine.loc[key, "max_ns"] == row["max"]
        assert streams.set_index(["rank", "stream"]).loc[key[:2], f"{key[2]}_ns"] == row["sum"]


def _check_invariants(streams: pd.DataFrame, intervals: pd.DataFrame, ev: pd.DataFrame) -> None:
    assert len(streams)
    parts = streams[["host_wait_ns", "kernel_wait_ns", "other_ns"]].sum(axis=1)
    assert (parts == streams["idle_ns"]).all()
    assert (streams["idle_ns"] + streams["busy_ns"] == streams["window_ns"]).all()
    assert (streams["idle_ns"] >= 0).all() and (streams[["host_wait_ns", "kernel_wait_ns", "other_ns"]] >= 0).all().all()
    pct = streams[streams["idle_ns"] > 0][["host_wait_pct", "kernel_wait_pct", "other_pct"]].sum(axis=1)
    assert ((pct - 100).abs() <= 0.02).all()
    # busy is the union of the stream's events, counted independently.
    d = device_frame(ev)
    key = d.groupby(["rank", "stream"]).ngroup().to_numpy()
    keys = d.groupby(["rank", "stream"]).size().index
    busy = pd.Series(union_length(d["ts"].to_numpy(), d["end"].to_numpy(), key, n_keys=len(keys)), index=keys)
    assert streams.set_index(["rank", "stream"])["busy_ns"].to_dict() == busy.to_dict()
    # Every kernel but each stream's first opens one interval.
    counts = intervals.groupby(["rank", "stream"])["count"].sum()
    kernels = streams.set_index(["rank", "stream"])["kernels"]
    assert (counts.reindex(kernels.index, fill_value=0) == kernels - 1).all()
    assert (intervals.groupby(["rank", "stream"])["total_ns"].sum()
            == streams.set_index(["rank", "stream"])["idle_ns"].reindex(counts.index)).all()


def test_invariants_on_hand_built_tables() -> None:
    for ev in (_worked(), _streams_never_overlap(200, 5)):
        _check_invariants(*idle_breakdown(ev), ev)


def _real(name: str, factory) -> tuple[pd.DataFrame, dict]:
    store = collected(name, factory)
    ev = pd.read_parquet(store / "events", columns=["rank", "ts", "dur", "name", "category", "stream", "correlation"])
    return ev, run_reports(open_store(store), ["idle", "temporal"]).to_json()


def test_a100_trace(tmp_path_factory) -> None:
    ev, out = _real("a100", tmp_path_factory)
    streams, intervals = pd.DataFrame(out["idle"]["streams"]), pd.DataFrame(out["idle"]["intervals"])
    _check_invariants(streams, intervals, ev)
    # No stream overlaps itself in this trace: HTA's own rules give the same parts.
    ref = hta_idle(ev).groupby(["rank", "stream", "idle_category"])["sum"].sum()
    got = intervals.set_index(["rank", "stream", "idle_category"])["total_ns"]
    assert got.to_dict() == ref[ref.index.isin(got.index)].to_dict()
    s7 = streams.set_index("stream").loc[7]
    assert (s7["kernels"], s7["idle_ns"], s7["host_wait_ns"], s7["kernel_wait_ns"]) == (3753, 542_241_660,
                                                                                      540_091_317, 2_150_343)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", GPU_TRACES)
def test_shared_traces(tmp_path_factory, name: str) -> None:
    ev, out = _real(name, tmp_path_factory)
    streams, intervals = pd.DataFrame(out["idle"]["streams"]), pd.DataFrame(out["idle"]["intervals"])
    _check_invariants(streams, intervals, ev)
    temporal = {r["rank"]: r for r in out["temporal"]["ranks"]}
    on_stream = ev["category"].isin(["compute", "communication", "memory"])
    for rank, s in streams.groupby("rank"):
        # The device is idle only when every stream is: inside a stream's window the device's
        # idle time (temporal's) is part of the stream's, outside it at most the rest of the window.
        device_idle = round(temporal[rank]["idle_us"] * 1000)
        device_window = round(temporal[rank]["kernel_time_us"] * 1000)
        assert (s["idle_ns"] >= device_idle - (device_window - s["window_ns"])).all()
        if len(s) == 1 and ev[on_stream & (ev["rank"] == rank)]["stream"].notna().all():
            assert s["idle_ns"].iloc[0] == device_idle     # one stream: its idle is the device's
    if name == "vllm-decode-fullgraph":   # one HIP graph replay: back to back, kernel wait only
        assert streams["host_wait_ns"].sum() == 0 and streams["other_ns"].sum() == 0
    if name == "mtia-single-rank":        # DMA inside kernels: HTA's gaps would go negative, ours do not
        assert (pd.DataFrame(intervals)["min_ns"] >= 0).all()
    if name == "mi300-resnet-actckpt-rank0of8":   # the CPU is ~30 ms ahead: never a host wait
        assert streams["host_wait_ns"].sum() == 0


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", CPU_TRACES)
def test_cpu_only_traces_say_why(tmp_path_factory, name: str) -> None:
    ctx = build_context(open_store(collected(name, tmp_path_factory)))
    assert "no device kernels" in IDLE.applies(ctx)


def test_hta_compatible_is_whole_microseconds(tmp_path_factory) -> None:
    store = collected("a100", tmp_path_factory)
    res = run_analyses(build_context(open_store(store), hta_compatible=True), [IDLE])["idle"]
    assert len(res.streams) == 2
    assert (res.streams[["window_ns", "idle_ns", "host_wait_ns", "kernel_wait_ns", "other_ns"]] % 1000 == 0).all().all()
    s7 = res.streams.set_index("stream").loc[7]
    assert s7["kernels"] == 2502 and s7["idle_ns"] + s7["busy_ns"] == s7["window_ns"]


@pytest.mark.parametrize("seed", [0, 1])
def test_chunk_combine_equals_whole(tmp_path, seed: int) -> None:
    ev = _streams_never_overlap(100, seed)
    ctx = build_context(open_store(write_store(tmp_path / "s", ev)))
    res = run_analyses(ctx, [IDLE])["idle"]
    whole = idle_breakdown(ev)
    pd.testing.assert_frame_equal(res.streams, whole[0], check_dtype=False)
    pd.testing.assert_frame_equal(res.intervals, whole[1], check_dtype=False)
    table = pa.Table.from_pandas(ev, preserve_index=False)
    parts = [table.filter(pc.equal(table["rank"], r)) for r in (0, 1)]
    random.Random(seed).shuffle(parts)
    shuffled = IDLE.combine([IDLE.chunk(p, ctx) for p in parts], ctx)
    pd.testing.assert_frame_equal(shuffled.streams, res.streams)


def test_applies(tmp_path) -> None:
    ev = _worked()
    assert IDLE.applies(build_context(open_store(write_store(tmp_path / "k", ev)))) is None
    assert "stalls" in IDLE.applies(build_context(open_store(write_store(tmp_path / "sohu", ev, "sohu-raw-trace"))))
    cpu = ev[ev["category"] == "host"]
    assert "no device kernels" in IDLE.applies(build_context(open_store(write_store(tmp_path / "c", cpu))))
    plain = ev.drop(columns="correlation")                  # a plain Chrome trace: no launches
    assert "correlation" in IDLE.applies(build_context(open_store(write_store(tmp_path / "p", plain, "chrome"))))
    old = ev.drop(columns="stream")                         # collected before the stream column
    assert "re-collect" in IDLE.applies(build_context(open_store(write_store(tmp_path / "o", old))))


def test_missing_columns_and_types() -> None:
    with pytest.raises(ValueError, match="'stream'"):
        idle_breakdown(pd.DataFrame({"ts": [0], "dur": [1], "category": ["compute"]}))
    with pytest.raises(TypeError, match="'events'"):
        idle_breakdown([1, 2])  # type: ignore[arg-type]


def test_cli_table_and_json(tmp_path_factory) -> None:
    store = str(collected("a100", tmp_path_factory))
    table = CliRunner().invoke(cli, ["analyze", store, "--report", "idle"])
    assert table.exit_code == 0, table.output
    assert "idle · streams" in table.output and "host_wait" in table.output
    js = CliRunner().invoke(cli, ["analyze", store, "--report", "idle", "--format", "json"])
    assert js.exit_code == 0, js.output
    data = orjson.loads(js.output)["idle"]
    assert set(data) == {"streams", "intervals"}
    assert all(isinstance(r["idle_ns"], int) for r in data["streams"])


def test_sohu_store_says_why() -> None:
    from pathlib import Path

    store = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"
    if not store.is_dir():
        pytest.skip("sample_traces/mixtral-2node/store is absent")
    out = CliRunner().invoke(cli, ["analyze", str(store), "--report", "idle"])
    assert out.exit_code != 0 and "use `stalls` for Sohu runs" in out.output


def test_docstring_examples() -> None:
    assert doctest.testmod(idle_module).failed == 0
