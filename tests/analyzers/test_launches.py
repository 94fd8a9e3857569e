"""HTA's kernel launch statistics: a hand-worked example with a graph launch, HTA's own join
and outlier rules as the reference on the real NVIDIA traces, every kernel counted once on
every real trace, and the CLI."""

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
from device_ref import CPU_TRACES, GPU_TRACES, SHARED, collected, device_frame, hta_launches, write_store

import sohuprof.analyzers.reports.launches as launches_module
from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.hta_selection import hta_select
from sohuprof.analyzers.report import run_reports
from sohuprof.analyzers.reports.launches import (BY_RUNTIME_COLUMNS, GRAPH_COLUMNS, LAUNCHES, OUTLIER_COLUMNS,
                                                 SUMMARY_COLUMNS, launch_stats)
from sohuprof.cli import cli
from sohuprof.store import open_store

T0 = 1_000_000
_COLUMNS = ["rank", "ts", "dur", "name", "category", "stream", "correlation"]
#: The runtime calls HTA's cuda_kernel_launch_stats reads (hta/analyzers/cuda_kernel_analysis.py).
HTA_NAMES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cudaMemcpyAsync", "cudaMemsetAsync",
             "runFunction - job_prep_and_submit_for_execution")


def _worked() -> pd.DataFrame:
    rows = [
        (0, 0, 10, "cudaLaunchKernel", "host", None, 1), (0, 30, 5, "k1", "compute", 7, 1),          # delay 20, short
        (0, 100, 60_000, "cudaLaunchKernel", "host", None, 2), (0, 50_000, 1000, "k2", "compute", 7, 2),  # 0: clipped
        (0, 200, 20, "cudaMemcpyAsync", "host", None, 3),
        (0, 300_220, 100, "Memcpy HtoD (Pinned -> Device)", "memory", 7, 3),                        # delay 300 000
        (0, 400_000, 10, "k4", "compute", 7, None),                                                 # no launch
        (0, 500_000, 50, "cudaGraphLaunch", "host", None, 5),                                       # one graph:
        (0, 500_100, 100, "g1", "compute", 7, 5), (0, 500_150, 100, "g2", "compute", 9, 5),         # 3 kernels,
        (0, 500_300, 10, "g3", "compute", 7, 5),                                                    # 2 streams
        (0, 600_000, 8, "hipExtLaunchKernel", "host", None, 6), (0, 600_010, 2, "k8", "compute", 7, 6),  # short
        (0, 700_000, 3, "cudaEventRecord", "host", None, 7),                                        # launches nothing
        (1, 0, 10, "cudaLaunchKernel", "host", None, 1), (1, 1_000, 10, "k", "compute", 7, 1),      # rank 1: 990
        (2, 0, 10, "cudaLaunchKernel", "host", None, 1),                                            # no kernels: no row
    ]
    ev = pd.DataFrame(rows, columns=_COLUMNS)
    return ev.assign(ts=ev["ts"] + T0)


def test_worked_example() -> None:
    out = launch_stats(_worked())
    for key, cols in (("summary", SUMMARY_COLUMNS), ("by_runtime", BY_RUNTIME_COLUMNS), ("outliers", OUTLIER_COLUMNS),
                      ("graph_launches", GRAPH_COLUMNS)):
        assert list(out[key].columns) == list(cols), key
    assert out["summary"]["rank"].tolist() == [0, 1]
    s = out["summary"].set_index("rank").loc[0]
    assert (s["device_events"], s["launches"], s["graph_kernels"], s["unlaunched"], s["graph_launches"]) == (8, 4, 3, 1, 1)
    # delays 20, 0, 300 000, 2; runtime calls 10, 60 000, 20, 8 ns
    assert (s["delay_p50_ns"], s["delay_max_ns"], s["runtime_p50_ns"], s["runtime_max_ns"]) == (11, 300_000, 15, 60_000)
    assert (s["short_kernels"], s["runtime_outliers"], s["delay_outliers"]) == (2, 1, 1)
    assert out["summary"].set_index("rank").loc[1, "delay_max_ns"] == 1_000 - (0 + 10)
    by = out["by_runtime"][out["by_runtime"]["rank"] == 0].set_index("runtime")
    assert by.index.tolist() == ["cudaLaunchKernel", "cudaMemcpyAsync", "hipExtLaunchKernel"]
    assert (by.loc["cudaLaunchKernel", "launches"], by.loc["cudaLaunchKernel", "delay_p50_ns"]) == (2, 10)
    assert by.loc["hipExtLaunchKernel", "short_kernels"] == 1 and by.loc["cudaMemcpyAsync", "delay_outliers"] == 1
    worst = out["outliers"][out["outliers"]["rank"] == 0]
    assert worst["kernel"].tolist() == ["Memcpy HtoD (Pinned -> Device)", "k1", "k8", "k2"]
    assert worst.iloc[0][["runtime", "delay_ns", "runtime_ns", "kernel_ns", "correlation"]].tolist() == [
        "cudaMemcpyAsync", 300_000, 20, 100, 3]
    g = out["graph_launches"].iloc[0]
    assert g[["rank", "runtime", "correlation", "runtime_ns", "kernels", "streams"]].tolist() == [
        0, "cudaGraphLaunch", 5, 50, 3, 2]
    assert (g["ts"], g["delay_ns"], g["span_ns"], g["busy_ns"]) == (T0 + 500_000, 50, 210, 160)
    # Fewer kept outliers, and HTA's cutoffs as arguments.
    assert len(launch_stats(_worked(), top=2)["outliers"].query("rank == 0")) == 2
    loose = launch_stats(_worked(), runtime_cutoff_ns=100_000, launch_delay_cutoff_ns=10)["summary"].iloc[0]
    assert (loose["runtime_outliers"], loose["delay_outliers"]) == (0, 2)


def test_a_call_linked_to_several_kernels_is_a_graph() -> None:
    ev = pd.DataFrame([(0, 0, 10, "cudaLaunchKernel", "host", None, 1), (0, 20, 5, "a", "compute", 7, 1),
                       (0, 30, 5, "b", "compute", 7, 1)], columns=_COLUMNS)
    out = launch_stats(ev)
    assert out["summary"].iloc[0][["launches", "graph_kernels", "graph_launches"]].tolist() == [0, 2, 1]


def _check(out: dict, ev: pd.DataFrame) -> None:
    summary = pd.DataFrame(out["summary"])
    assert len(summary)
    # Every device event on a stream is counted once: one by one, in a graph, or unlaunched.
    assert (summary["launches"] + summary["graph_kernels"] + summary["unlaunched"] == summary["device_events"]).all()
    d = device_frame(ev)
    assert summary.set_index("rank")["device_events"].to_dict() == d.groupby("rank").size().to_dict()
    by = pd.DataFrame(out["by_runtime"])
    assert by.groupby("rank")["launches"].sum().reindex(summary["rank"], fill_value=0).tolist() == summary["launches"].tolist()
    for flag in ("short_kernels", "runtime_outliers", "delay_outliers"):
        assert by.groupby("rank")[flag].sum().reindex(summary["rank"], fill_value=0).tolist() == summary[flag].tolist()
    graphs = pd.DataFrame(out["graph_launches"], columns=list(GRAPH_COLUMNS))
    assert graphs.groupby("rank")["kernels"].sum().reindex(summary["rank"], fill_value=0).tolist() == \
        summary["graph_kernels"].tolist()
    assert (graphs["busy_ns"] <= graphs["span_ns"]).all()
    worst = pd.DataFrame(out["outliers"])
    if len(worst):
        assert (worst["delay_ns"] >= 0).all()
        assert worst.groupby("rank")["delay_ns"].max().to_dict() == summary.set_index("rank")["delay_max_ns"].to_dict()
    # Launched device events are exactly those the queue counts.
    queue = pd.DataFrame(out["queue"]["summary"]) if "queue" in out else None
    if queue is not None:
        assert queue.groupby("rank")["launches"].sum().to_dict() == \
            (summary.set_index("rank")["launches"] + summary.set_index("rank")["graph_kernels"]).to_dict()


def _real(name: str, factory) -> tuple[pd.DataFrame, dict]:
    store = collected(name, factory)
    ev = pd.read_parquet(store / "events", columns=_COLUMNS)
    reports = run_reports(open_store(store), ["launches", "queue"]).to_json()
    return ev, {**reports["launches"], "queue": reports["queue"]}


def _against_hta(out: dict, ev: pd.DataFrame) -> None:
    """The reference's delays, durations and outlier counts (HTA's names only)."""
    ref = hta_launches(ev)
    ref = ref[ref["name"].astype(str).isin(HTA_NAMES)]
    for rank, r in ref.groupby("rank"):
        s = pd.DataFrame(out["summary"]).set_index("rank").loc[rank]
        assert s["launches"] == len(r)
        assert s["delay_max_ns"] == r["launch_delay"].max() and s["runtime_max_ns"] == r["cpu_duration"].max()
        assert s["delay_p90_ns"] == round(float(np.quantile(r["launch_delay"].to_numpy(float), 0.9)))
        assert s["runtime_p50_ns"] == round(float(np.quantile(r["cpu_duration"].to_numpy(float), 0.5)))
        assert s["short_kernels"] == ((r["cpu_duration"] <= 50_000) & (r["gpu_duration"] < r["cpu_duration"])).sum()
        assert s["runtime_outliers"] == (r["cpu_duration"] > 50_000).sum()
        assert s["delay_outliers"] == (r["launch_delay"] > 100_000).sum()


def test_a100_trace(tmp_path_factory) -> None:
    ev, out = _real("a100", tmp_path_factory)
    _check(out, ev)
    _against_hta(out, ev)
    s = out["summary"][0]
    assert (s["device_events"], s["launches"], s["unlaunched"], s["short_kernels"], s["delay_outliers"]) == (
        3774, 3774, 0, 2076, 267)


def test_hta_compatible_is_hta_on_its_selection(tmp_path_factory) -> None:
    store = collected("a100", tmp_path_factory)
    res = run_analyses(build_context(open_store(store), hta_compatible=True), [LAUNCHES])["launches"]
    table = pa.Table.from_pandas(pd.read_parquet(store / "events", columns=_COLUMNS), preserve_index=False)
    selected = hta_select(table).to_pandas()
    out = {k: getattr(res, k).to_dict(orient="records") for k in ("summary", "by_runtime", "outliers", "graph_launches")}
    _against_hta(out, selected)
    assert res.summary.iloc[0]["launches"] == 2516


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", GPU_TRACES)
def test_shared_traces(tmp_path_factory, name: str) -> None:
    ev, out = _real(name, tmp_path_factory)
    _check(out, ev)
    s = out["summary"]
    if name in ("v100-ddp-rank1of2", "sampled-2rank-of128", "mtia-single-rank"):
        _against_hta(out, ev)             # every launch call there is one HTA reads
    if name == "vllm-decode-fullgraph":   # one hipGraphLaunch replays 421 kernels
        assert (s[0]["launches"], s[0]["graph_kernels"], s[0]["graph_launches"]) == (13, 421, 1)
        g = out["graph_launches"][0]
        assert (g["runtime"], g["kernels"], g["streams"]) == ("hipGraphLaunch", 421, 1)
        assert g["span_ns"] >= g["busy_ns"] > 0
    if name == "mi300-resnet-actckpt-rank0of8":   # ROCm calls, which HTA's list leaves out
        names = {r["runtime"] for r in out["by_runtime"]}
        assert {"hipLaunchKernel", "hipExtModuleLaunchKernel", "hipExtLaunchKernel"} <= names
        assert s[0]["unlaunched"] == 968          # launched before the profiler started
    if name == "mtia-single-rank":        # DMA transfers carry no correlation
        assert s[0]["launches"] == 3453 and s[0]["unlaunched"] == 22_224


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", CPU_TRACES)
def test_cpu_only_traces_say_why(tmp_path_factory, name: str) -> None:
    assert "no device kernels" in LAUNCHES.applies(build_context(open_store(collected(name, tmp_path_factory))))


def test_chunk_combine_equals_whole(tmp_path) -> None:
    ev = _worked()
    ctx = build_context(open_store(write_store(tmp_path / "s", ev)))
    res = run_analyses(ctx, [LAUNCHES])["launches"]
    whole = launch_stats(ev)
    for key in whole:
        pd.testing.assert_frame_equal(getattr(res, key), whole[key], check_dtype=False)
    table = pa.Table.from_pandas(ev, preserve_index=False)
    parts = [table.filter(pc.equal(table["rank"], r)) for r in (2, 1, 0)]
    random.Random(0).shuffle(parts)
    shuffled = LAUNCHES.combine([LAUNCHES.chunk(p, ctx) for p in parts], ctx)
    for key in whole:
        pd.testing.assert_frame_equal(getattr(shuffled, key), getattr(res, key))


def test_applies(tmp_path) -> None:
    ev = _worked()
    assert LAUNCHES.applies(build_context(open_store(write_store(tmp_path / "k", ev)))) is None
    assert "stalls" in LAUNCHES.applies(build_context(open_store(write_store(tmp_path / "s", ev, "sohu-raw-trace"))))
    plain = ev.drop(columns="correlation")
    assert "correlation" in LAUNCHES.applies(build_context(open_store(write_store(tmp_path / "p", plain, "chrome"))))


def test_missing_columns_and_types() -> None:
    with pytest.raises(ValueError, match="'correlation'"):
        launch_stats(_worked().drop(columns="correlation"))
    with pytest.raises(TypeError, match="'events'"):
        launch_stats("trace.json")  # type: ignore[arg-type]


def test_cli_table_and_json(tmp_path) -> None:
    store = str(write_store(tmp_path / "s", _worked()))
    table = CliRunner().invoke(cli, ["analyze", store, "--report", "launches"])
    assert table.exit_code == 0, table.output
    assert "launches · graph_launches" in table.output and "cudaGraphLaunch" in table.output
    js = CliRunner().invoke(cli, ["analyze", store, "--report", "launches", "--format", "json"])
    assert js.exit_code == 0, js.output
    data = orjson.loads(js.output)["launches"]
    assert set(data) == {"summary", "by_runtime", "outliers", "graph_launches"}
    assert data["summary"][0]["delay_p50_ns"] == 11 and isinstance(data["summary"][0]["delay_p50_ns"], int)


def test_docstring_examples() -> None:
    assert doctest.testmod(launches_module).failed == 0
