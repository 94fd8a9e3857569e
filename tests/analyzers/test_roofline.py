"""The roofline: no op above its roof, sums that match the events, a sample that does not depend
on how the events were split."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sohuprof.analyzers.engine import build_context, rank_partitions, run_analyses
from sohuprof.analyzers.reports.roofline import ROOFLINE, SAMPLE_SIZE, _quota
from sohuprof.collectors import collect

from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "mixtral-2node" / "store"
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"
REL = 1e-6


@pytest.fixture(scope="module")
def bf16(tmp_path_factory) -> Path:
    """A bf16 llama3-8b run with a pipeline boundary across two nodes."""
    tmp = tmp_path_factory.mktemp("bf16")
    cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("h100"), nodes=2, chips_per_node=4,
                         tp=4, pp=2, requests=6, prompt_len=1024, output_len=8, dtype="bf16", seed=5)
    emulate(cfg, tmp / "raw", show_progress=False)
    collect(tmp / "raw", tmp / "store", show_progress=False)
    return tmp / "store"


@pytest.fixture(scope="module", params=["sample", "bf16"])
def store(request, bf16: Path) -> Path:
    return SAMPLE if request.param == "sample" else bf16


def _roofline(path: Path):
    ctx = build_context(open_store(path))
    return ctx, run_analyses(ctx, [ROOFLINE])["roofline"]


def test_no_op_above_its_roof(store: Path) -> None:
    ctx, r = _roofline(store)
    hw, ops = ctx.hardware, r.ops
    assert len(ops)
    assert (ops["attained_flops"] <= ops["peak_flops"] * (1 + REL)).all()
    assert (ops["peak_flops"] <= r.peak_flops).all()
    assert (ops["attained_bandwidth"] <= hw.hbm_bandwidth * (1 + REL)).all()
    assert (ops["attained_flops"] <= ops["roof_flops"] * (1 + REL)).all()
    assert (ops["efficiency"] <= 1 + REL).all() and (ops["efficiency"] > 0).all()
    assert (ops["headroom_ns"] >= 0).all() and (ops["headroom_ns"] <= ops["time_ns"]).all()
    assert ops["headroom_ns"].is_monotonic_decreasing
    ridge = ops["peak_flops"] / hw.hbm_bandwidth
    assert ((ops["bound"] == "compute") == (ops["intensity"] >= ridge)).all()
    coll = r.collectives
    assert len(coll) and (coll["headroom_ns"] >= 0).all() and (coll["efficiency"] <= 1 + REL).all()
    assert np.allclose(coll["algbw"], coll["bytes"] / coll["time_ns"] * 1e9)


def test_sums_match_compute_events(store: Path) -> None:
    ctx, r = _roofline(store)
    ev = ctx.store.read("events", columns=["category", "dur", "flops", "hbm_bytes"])
    compute = ev.filter(pc.equal(ev.column("category").cast(pa.string()), "compute"))
    assert r.ops["time_ns"].sum() == pc.sum(compute.column("dur")).as_py()
    assert r.ops["count"].sum() == compute.num_rows
    assert r.ops["flops"].sum() == pc.sum(compute.column("flops")).as_py()
    assert r.ops["hbm_bytes"].sum() == pc.sum(compute.column("hbm_bytes")).as_py()


def test_peak_follows_the_model_dtype(bf16: Path) -> None:
    ctx, r = _roofline(bf16)
    assert r.peak_flops == ctx.hardware.peak_flops_bf16
    assert r.to_json()["hardware"] == {"peak_flops": ctx.hardware.peak_flops_bf16,
                                       "hbm_bandwidth": ctx.hardware.hbm_bandwidth,
                                       "ridge": ctx.hardware.peak_flops_bf16 / ctx.hardware.hbm_bandwidth}
    gemm = r.ops[r.ops["op"] == "gemm"].set_index("phase")
    assert gemm.loc["prefill", "bound"] == "compute" and gemm.loc["decode", "bound"] == "memory"
    # Vector-engine ops are roofed by the vector units.
    norm = r.ops[r.ops["op"] == "norm"]
    assert (norm["peak_flops"] == ctx.hardware.vector_flops).all()
    assert set(r.collectives["op"]) == {"all_reduce", "all_gather", "send_recv"}


def test_combine_is_independent_of_splits_and_order() -> None:
    ctx = build_context(open_store(SAMPLE))
    ranks = list(rank_partitions(ctx, list(ROOFLINE.columns)))
    whole = ROOFLINE.combine([ROOFLINE.chunk(pa.concat_tables(ranks), ctx)], ctx)
    rng = random.Random(7)
    pieces = []
    for t in ranks:                              # cut every rank at random places
        cuts = sorted(rng.sample(range(1, t.num_rows), 3))
        pieces += [t.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, t.num_rows])]
    rng.shuffle(pieces)
    split = ROOFLINE.combine([ROOFLINE.chunk(p, ctx) for p in pieces], ctx)
    by_rank = ROOFLINE.combine([ROOFLINE.chunk(t, ctx) for t in ranks[::-1]], ctx)
    for other in (split, by_rank):
        pd.testing.assert_frame_equal(whole.ops, other.ops, check_exact=False, rtol=1e-12)
        pd.testing.assert_frame_equal(whole.sample, other.sample)
        pd.testing.assert_frame_equal(whole.collectives, other.collectives)


def test_sample_is_stratified_and_bounded() -> None:
    ctx, r = _roofline(SAMPLE)
    s = r.sample
    ev = ctx.store.read("events", columns=["category", "dur", "op"]).to_pandas()
    timed = ev[(ev["category"] == "compute") & (ev["dur"] > 0)].groupby("op", observed=True).size()
    assert SAMPLE_SIZE - len(timed) < len(s) <= SAMPLE_SIZE < timed.sum()
    assert set(s["op"]) == set(timed.index)                    # every op class is in the plot
    # Water filling: small classes whole, the large ones cut to one equal cap.
    counts = s["op"].value_counts()
    cap = counts.max()
    assert (counts[counts < cap] == timed[counts[counts < cap].index]).all()
    assert (s["dur"] > 0).all()
    assert {"intensity", "attained_flops", "dur", "op", "phase"} <= set(s.columns)
    assert _quota(np.array([5, 100, 100]), 105) == 50
    assert _quota(np.array([5, 10]), 100) == 10
    assert _quota(np.array([3, 3, 3]), 7) == 2


def test_does_not_apply_to_profiler_traces(tmp_path: Path) -> None:
    collect(KINETO, tmp_path / "store", show_progress=False)
    ctx = build_context(open_store(tmp_path / "store"))
    assert ROOFLINE.applies(ctx) == "the trace has no FLOP or byte counts (PyTorch profiler records none by default)"


def test_json_contract() -> None:
    out = _roofline(SAMPLE)[1].to_json()
    assert set(out) == {"hardware", "ops", "collectives"}
    assert set(out["ops"][0]) == {"op", "phase", "count", "time_ns", "flops", "hbm_bytes", "intensity",
                                  "attained_flops", "attained_bandwidth", "roof_flops", "bound", "efficiency",
                                  "headroom_ns"}
    assert set(out["collectives"][0]) == {"op", "count", "time_ns", "bytes", "algbw", "busbw", "link_bandwidth",
                                          "efficiency", "headroom_ns"}
    assert out["ops"][0]["bound"] in ("compute", "memory") and isinstance(out["ops"][0]["count"], int)


def test_totals_past_int64_neither_round_nor_wrap() -> None:
    """A long run's FLOPs pass 2**63 per op: summed exactly (Python ints), never wrapped."""
    from sohuprof.analyzers.reports.roofline import _SUMS, _finish_ops
    from sohuprof.hardware import load_hardware

    big = 6 * 10**18 + 7                       # two partials: 1.2e19 + 14 > 2**63
    row = {c: 1 for c in _SUMS} | {"op": "gemm", "phase": "decode", "flops": big, "timed_flops": big,
                                  "hbm_bytes": 2**53 + 1, "timed_bytes": 2**53 + 1, "time_ns": 10**9}
    sums = pd.DataFrame([row, row]).astype({c: "int64" for c in _SUMS})
    hw = load_hardware("sohu")
    out = _finish_ops(sums, hw, hw.peak_flops_fp8).iloc[0]
    assert out["flops"] == float(2 * big) and out["flops"] > 2**63      # float: it does not fit int64
    assert int(out["hbm_bytes"]) == 2 * (2**53 + 1)                    # fits: exact int64
    assert out["count"] == 2 and out["time_ns"] == 2 * 10**9


def test_partition_sums_switch_to_float_before_int64_could_wrap() -> None:
    from sohuprof.analyzers.reports.roofline import _int_sums

    small = pa.chunked_array([pa.array([1, 2, None], pa.int64())])
    huge = pa.chunked_array([pa.array([2**62, 2**62, 5], pa.int64())])   # their sum passes 2**63
    assert _int_sums(small)
    assert not _int_sums(huge)
