"""GPU time per user annotation: a hand-built trace worked out by hand, nesting and stream rules,
invariants on the real traces, the CLI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from test_kernels import KINETO, SHARED, SOHU, TRACES, _hand_events, _write

from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.reports.annotations import ANNOTATION_COLUMNS, ANNOTATIONS
from sohuprof.cli import cli
from sohuprof.collectors import collect
from sohuprof.store import open_store


def _annotations(store: Path, *, hta_compatible: bool = False) -> dict:
    ctx = build_context(open_store(store), hta_compatible=hta_compatible)
    return run_analyses(ctx, [ANNOTATIONS])["annotations"].to_json()


def _rows(out: dict, key: str = "names") -> dict[str, tuple]:
    return {r["name"]: tuple(r[c] for c in ANNOTATION_COLUMNS[1:]) for r in out[key]}


def test_hand_built(tmp_path: Path) -> None:
    """(see test_kernels._hand_events) '## fwd ##' on the CPU [10,500) holds the gemm's and the NCCL
    kernel's launches (200 ns of kernels); on the device it spans [1000,1210) on stream 7, where the
    gemm [1000,1100) and the memcpy [1120,1200) run: 180 ns (the NCCL kernel runs on stream 20, under
    its own nccl:all_reduce span). ProfilerStep#1 [0,900) holds three launches: 280 ns."""
    out = _annotations(_write(tmp_path / "s", _hand_events(), "kineto"))
    # name: cpu_count, cpu_ns, kernels, gpu_ns, gpu_count, wall_ns, kernel_ns
    assert _rows(out) == {"ProfilerStep#1": (1, 900, 3, 280, 0, 0, 0), "## fwd ##": (1, 490, 2, 200, 1, 210, 180),
                          "nccl:all_reduce": (0, 0, 0, 0, 1, 100, 100)}
    assert [r["name"] for r in out["names"]] == ["ProfilerStep#1", "## fwd ##", "nccl:all_reduce"]
    assert [(r["rank"], r["name"]) for r in out["names_by_rank"]] == [(0, n) for n in _rows(out)]
    assert out["notes"] == []


def _table(rows: list[tuple]) -> pa.Table:
    """rows: (track, stream, cat, name, ts, dur, correlation) on rank 0."""
    cols = list(zip(*sorted(rows, key=lambda r: r[4])))
    n = len(rows)
    return pa.table({"rank": pa.array([0] * n, pa.int32()), "node": pa.array([0] * n, pa.int32()),
                     "chip": pa.array([0] * n, pa.int32()), "track": list(cols[0]),
                     "stream": pa.array(cols[1], pa.int64()), "cat": list(cols[2]),
                     "category": ["compute" if c == "kernel" else "host" for c in cols[2]], "name": list(cols[3]),
                     "op": ["other"] * n, "ts": pa.array(cols[4], pa.int64()), "dur": pa.array(cols[5], pa.int64()),
                     "correlation": pa.array(cols[6], pa.int64())})


def test_nesting_and_streams(tmp_path: Path) -> None:
    """A name nested in itself counts its kernels and time once; a name on two streams takes each
    stream's own kernels, its time the union over both; another thread's launches are outside."""
    t = _table([
        ("thread 1", None, "user_annotation", "outer", 0, 100, None),
        ("thread 1", None, "user_annotation", "outer", 10, 40, None),
        ("thread 1", None, "cuda_runtime", "cudaLaunchKernel", 20, 5, 1),
        ("thread 1", None, "cuda_runtime", "cudaLaunchKernel", 70, 5, 2),
        ("thread 2", None, "cuda_runtime", "cudaLaunchKernel", 30, 5, 3),      # another thread
        ("stream 1", 1, "kernel", "a", 200, 50, 1),
        ("stream 2", 2, "kernel", "b", 220, 50, 2),
        ("stream 3", 3, "kernel", "c", 200, 100, 3),
        ("stream 1", None, "gpu_user_annotation", "outer", 200, 50, None),
        ("stream 2", None, "gpu_user_annotation", "outer", 210, 70, None),
    ])
    out = _annotations(_write(tmp_path / "s", t, "kineto"))
    # cpu: 2 spans, union 100, kernels a and b (100 ns); gpu: 2 spans, union [200,280) = 80, kernels
    # a on stream 1 and b on stream 2: union [200,270) = 70 (c on stream 3 is under neither span)
    assert _rows(out) == {"outer": (2, 100, 2, 100, 2, 80, 70)}


def test_chunk_combine_in_any_order(tmp_path: Path) -> None:
    table = _hand_events()
    ctx = build_context(open_store(_write(tmp_path / "s", table, "kineto")))
    whole = run_analyses(ctx, [ANNOTATIONS])["annotations"].to_json()
    rank = table.column("rank").to_numpy()
    parts = [table.filter(pa.array(rank == r)) for r in (0, 1)]
    for seed in range(3):
        random.Random(seed).shuffle(parts)
        assert ANNOTATIONS.combine([ANNOTATIONS.chunk(p, ctx) for p in parts], ctx).to_json() == whole
    assert ANNOTATIONS.combine([ANNOTATIONS.chunk(table, ctx)], ctx).to_json() == whole


def test_applies(tmp_path: Path) -> None:
    if SOHU.is_dir():
        reason = ANNOTATIONS.applies(build_context(open_store(SOHU)))
        assert reason and "record_function" in reason
    table = _hand_events()
    cats = np.array(table.column("cat").to_pylist())
    bare = table.filter(pa.array(~np.isin(cats, ["user_annotation", "gpu_user_annotation"])))
    reason = ANNOTATIONS.applies(build_context(open_store(_write(tmp_path / "bare", bare, "kineto"))))
    assert reason and "no user annotations" in reason


@pytest.fixture(scope="module")
def a100(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kineto") / "store"
    collect(KINETO, out, show_progress=False)
    return out


def _check(out: dict, kernels_total: int) -> None:
    for r in out["names"]:
        assert r["kernel_ns"] <= r["wall_ns"] and r["gpu_ns"] <= kernels_total
        assert (r["cpu_count"] > 0 or r["cpu_ns"] == r["kernels"] == r["gpu_ns"] == 0)
        assert (r["gpu_count"] > 0 or r["wall_ns"] == r["kernel_ns"] == 0)
    for key in ("cpu_count", "gpu_count", "gpu_ns", "kernel_ns"):
        assert sum(r[key] for r in out["names"]) == sum(r[key] for r in out["names_by_rank"]), key


def _kernel_total(store: Path) -> int:
    ev = open_store(store).read("events", columns=["dur", "category"]).to_pandas()
    return int(ev.loc[ev["category"] != "host", "dur"].sum())


def test_a100(a100: Path) -> None:
    out = _annotations(a100)
    _check(out, _kernel_total(a100))
    rows = {r["name"]: r for r in out["names"]}
    # Each NCCL all-reduce is launched inside its nccl:all_reduce range and runs inside its device span.
    ar = rows["nccl:all_reduce"]
    assert ar["cpu_count"] == ar["gpu_count"] == ar["kernels"] == 15 and ar["gpu_ns"] == ar["kernel_ns"] > 0
    # The forward's kernels are launched from the main thread inside both of its ranges.
    assert rows["## forward ##"]["kernels"] == rows["DistributedDataParallel.forward"]["kernels"] == 1356
    # Backward kernels come from autograd's thread: outside the CPU range, inside its device span.
    assert rows["## backward ##"]["kernels"] < 50
    assert {r["name"] for r in out["names"]} >= {"ProfilerStep#4", "ProfilerStep#5", "ProfilerStep#6"}
    selected = _annotations(a100, hta_compatible=True)      # the last step is dropped
    assert "ProfilerStep#6" not in {r["name"] for r in selected["names"]}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", TRACES)
def test_every_shared_trace_gives_a_result_or_a_reason(tmp_path: Path, name: str) -> None:
    store = tmp_path / "store"
    collect(SHARED / name, store, show_progress=False)
    assert ANNOTATIONS.applies(build_context(open_store(store))) is None     # all have record_function ranges
    out = _annotations(store)
    assert out["names"], name
    _check(out, _kernel_total(store))
    if name.startswith(("cpu", "own")):
        assert any("CPU-only" in n for n in out["notes"])
        assert all(r["gpu_ns"] == 0 for r in out["names"])
    else:
        assert any(r["gpu_ns"] > 0 for r in out["names"])


def test_cli(a100: Path) -> None:
    runner = CliRunner()
    table = runner.invoke(cli, ["analyze", str(a100), "--report", "annotations"])
    assert table.exit_code == 0, table.output
    assert "annotations · names" in table.output and "DistributedDataParallel.forward" in table.output
    js = runner.invoke(cli, ["analyze", str(a100), "--report", "annotations", "--format", "json"])
    assert js.exit_code == 0, js.output
    names = json.loads(js.output)["annotations"]["names"]
    assert set(names[0]) == set(ANNOTATION_COLUMNS)
    if SOHU.is_dir():
        sohu = runner.invoke(cli, ["analyze", str(SOHU), "--report", "annotations"])
        assert sohu.exit_code != 0 and "record_function" in sohu.output


def test_spans_side_counting_matches_the_per_name_search_on_random_traces() -> None:
    """_launched_inside (from the spans' side, any number of names) against the per-name
    enclosing search it replaces, on random nested ranges and sequential calls per thread."""
    from sohuprof.analyzers.intervals import merge
    from sohuprof.analyzers.reports.annotations import _launched_inside
    from sohuprof.analyzers.spans import enclosing

    rng = np.random.default_rng(7)
    for _ in range(30):
        threads = int(rng.integers(1, 4))
        n_calls = int(rng.integers(1, 300))
        track = rng.integers(0, threads, n_calls)
        start = np.zeros(n_calls, np.int64)
        for t in range(threads):                     # sequential calls on each thread
            sel = np.flatnonzero(track == t)
            gaps = rng.integers(1, 50, len(sel))
            start[sel] = np.cumsum(gaps) * 10
        end = start + rng.integers(0, 9, n_calls)
        n_spans = int(rng.integers(1, 60))
        s_track = rng.integers(0, threads, n_spans)
        s_start = rng.integers(0, int(start.max()) + 10, n_spans)
        s_end = s_start + rng.integers(0, 2000, n_spans)
        names = rng.integers(0, 5, n_spans)
        ts = np.r_[start, s_start]
        en = np.r_[end, s_end]
        tr = np.r_[track, s_track]
        calls = np.arange(n_calls)
        dur = rng.integers(1, 100, n_calls)
        groups = [n_calls + np.flatnonzero(names == k) for k in range(5) if (names == k).any()]
        got = _launched_inside(groups, ts, en, tr, calls, dur)
        assert got is not None
        for i, spans in enumerate(groups):
            m = merge(ts[spans], en[spans], tr[spans])
            hit = enclosing(m.start, m.end, m.key, ts[calls], en[calls], tr[calls], outermost=True) >= 0
            assert (got[0][i], got[1][i]) == (int(hit.sum()), int(dur[hit].sum()))


def test_device_spans_side_coverage_matches_the_per_name_intersection_on_random_traces() -> None:
    from sohuprof.analyzers.intervals import merge, union_length
    from sohuprof.analyzers.reports.annotations import _covered_inside
    from sohuprof.analyzers.spans import intersect

    rng = np.random.default_rng(11)
    for _ in range(30):
        streams = int(rng.integers(1, 4))
        n_k = int(rng.integers(1, 200))
        k_track = rng.integers(0, streams, n_k)
        k_start = rng.integers(0, 5000, n_k)
        k_end = k_start + rng.integers(0, 300, n_k)
        n_s = int(rng.integers(1, 40))
        s_track = rng.integers(0, streams, n_s)
        s_start = rng.integers(0, 5000, n_s)
        s_end = s_start + rng.integers(0, 800, n_s)
        names = rng.integers(0, 4, n_s)
        ts, en, tr = np.r_[k_start, s_start], np.r_[k_end, s_end], np.r_[k_track, s_track]
        k = merge(k_start, k_end, k_track)
        groups = [n_k + np.flatnonzero(names == j) for j in range(4) if (names == j).any()]
        total, exact = _covered_inside(groups, ts, en, tr, k)
        for i, spans in enumerate(groups):
            inside = intersect(ts[spans], en[spans], k.start, k.end, tr[spans], k.key)
            want = int(union_length(inside.start, inside.end, n_keys=1)[0])
            if exact[i]:
                assert total[i] == want
            else:
                assert total[i] >= want       # a moment on two streams counted on each
