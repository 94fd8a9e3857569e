"""HTA's temporal breakdown, comm/comp overlap and event selection: HTA's own numbers on the
real A100 trace, a slow reference on synthetic ones, and HTA's selection rule by rule."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from analyzers_ref import timeline

from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.hta_selection import hta_round_us, hta_select, hta_selection_mask
from sohuprof.analyzers.reports.temporal import (OVERLAP, OVERLAP_COLUMNS, TEMPORAL, TEMPORAL_COLUMNS, comm_comp_overlap,
                                         temporal_breakdown)
from sohuprof.collectors import collect
from sohuprof.store import StoreWriter, open_store

ROOT = Path(__file__).resolve().parents[2]
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"

#: What HTA 0.6.1 reports for nccl_data.json.gz (tests/data/kineto/README.md).
HTA = {"idle_us": 338781, "compute_us": 75169, "non_compute_us": 21636, "kernel_time_us": 435586,
       "idle_pct": 77.78, "compute_pct": 17.26, "non_compute_pct": 4.97, "overlap_pct": 14.31}
#: What every event gives (no --hta-compatible): three steps, ns resolution.
ALL_EVENTS = {"idle_pct": 76.16, "compute_pct": 17.51, "non_compute_pct": 6.33, "overlap_pct": 15.61}
PP = 0.5   # the tolerance, percentage points


# --- the real trace -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kineto_store(tmp_path_factory) -> Path:
    """The A100 DDP trace (rank 0 of 2, three ProfilerSteps) collected into a store."""
    out = tmp_path_factory.mktemp("kineto") / "store"
    collect(KINETO, out, show_progress=False)
    return out


def _run(store: Path, *, hta_compatible: bool) -> tuple[pd.Series, pd.Series]:
    res = run_analyses(build_context(open_store(store), hta_compatible=hta_compatible), [TEMPORAL, OVERLAP])
    temporal, overlap = res["temporal"].ranks, res["overlap"].ranks
    assert list(temporal.columns) == list(TEMPORAL_COLUMNS) and list(overlap.columns) == list(OVERLAP_COLUMNS)
    assert temporal["rank"].tolist() == [0] and overlap["rank"].tolist() == [0]
    return temporal.iloc[0], overlap.iloc[0]


def test_hta_compatible_matches_hta(kineto_store: Path) -> None:
    t, o = _run(kineto_store, hta_compatible=True)
    for key in ("idle_pct", "compute_pct", "non_compute_pct"):
        assert abs(t[key] - HTA[key]) <= PP, (key, t[key], HTA[key])
    assert abs(o["overlap_pct"] - HTA["overlap_pct"]) <= PP
    # Not just within tolerance: HTA's selection and rounding reproduce its numbers exactly.
    for key in ("idle_us", "compute_us", "non_compute_us", "kernel_time_us"):
        assert t[key] == pytest.approx(HTA[key], abs=1), key
    assert (t["idle_pct"], t["compute_pct"], t["non_compute_pct"], o["overlap_pct"]) == \
        (HTA["idle_pct"], HTA["compute_pct"], HTA["non_compute_pct"], HTA["overlap_pct"])


def test_without_the_flag_every_event_counts(kineto_store: Path) -> None:
    t, o = _run(kineto_store, hta_compatible=False)
    print(f"\nall events: {t.to_dict()} overlap {o['overlap_pct']} %\nHTA:        {HTA}")
    for key, value in ALL_EVENTS.items():
        assert (o if key == "overlap_pct" else t)[key] == pytest.approx(value, abs=0.01), key
    # The window spans every GPU kernel of the trace: the third (last) step is in it.
    ev = open_store(kineto_store).read("events", columns=["ts", "dur", "category"]).to_pandas()
    gpu = ev[ev["category"].isin(["compute", "communication", "memory"])]
    assert t["kernel_time_us"] * 1e3 == pytest.approx((gpu["ts"] + gpu["dur"]).max() - gpu["ts"].min(), abs=1e-3)
    assert t["kernel_time_us"] > 1.4 * HTA["kernel_time_us"]
    # Where the selection matters on this trace: idle, non-compute and overlap move past the tolerance.
    for key in ("idle_pct", "non_compute_pct"):
        assert abs(t[key] - HTA[key]) > PP, key
    assert abs(o["overlap_pct"] - HTA["overlap_pct"]) > PP


def test_json_contract(kineto_store: Path) -> None:
    res = run_analyses(build_context(open_store(kineto_store), hta_compatible=True), [TEMPORAL, OVERLAP])
    temporal = orjson.loads(orjson.dumps(res["temporal"].to_json()))
    overlap = orjson.loads(orjson.dumps(res["overlap"].to_json()))
    assert list(temporal) == ["ranks"] and list(temporal["ranks"][0]) == list(TEMPORAL_COLUMNS)
    assert list(overlap) == ["ranks"] and list(overlap["ranks"][0]) == list(OVERLAP_COLUMNS)
    assert isinstance(overlap["ranks"][0]["comm_ns"], int)


@pytest.mark.parametrize("hta_compatible", [False, True])
def test_parts_sum_to_window(kineto_store: Path, hta_compatible: bool) -> None:
    t, o = _run(kineto_store, hta_compatible=hta_compatible)
    parts = t["idle_us"] + t["compute_us"] + t["non_compute_us"]
    assert parts == pytest.approx(t["kernel_time_us"], abs=1e-6)
    assert t["idle_pct"] + t["compute_pct"] + t["non_compute_pct"] == pytest.approx(100, abs=0.015)
    assert 0 <= o["overlapped_ns"] <= o["comm_ns"]


def test_selection_on_real_trace(kineto_store: Path) -> None:
    ev = open_store(kineto_store).read("events")
    keep = hta_selection_mask(ev)
    df = ev.select(["ts", "dur", "name", "category", "correlation"]).to_pandas()
    ts, _ = hta_round_us(df["ts"].to_numpy(), df["dur"].to_numpy())
    host = (df["category"] == "host").to_numpy()
    last = ts[df["name"].str.startswith("ProfilerStep").to_numpy()].max()
    # CPU side: exactly what starts before the last ProfilerStep.
    assert (keep[host] == (ts[host] < last)).all()
    # GPU side: every kernel of this trace has its launch in it, so what goes was launched in
    # the last step, and everything launched earlier stays.
    corr = df["correlation"].fillna(-1).to_numpy()
    late = set(corr[host & (ts >= last)]) - {-1}
    assert set(corr[~host & ~keep]) <= late
    assert keep[~host & ~np.isin(corr, list(late))].all()
    assert 0 < (~keep[~host]).sum() < (~host).sum()


# --- synthetic traces against a slow reference ------------------------------------------------

def _reference(ev: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Unit-instant coverage per rank: the plainest statement of HTA's definitions."""
    t_rows, o_rows = [], []
    for rank, g in ev.groupby("rank"):
        gpu = g[g["category"].isin(["compute", "communication", "memory"])]
        if not len(gpu):
            continue
        end = gpu["ts"] + gpu["dur"]
        lo, hi = int(gpu["ts"].min()), int(end.max())
        size = hi + 1

        cover = {c: timeline(gpu["ts"][m], end[m], size)[lo:hi] > 0 for c, m in (
            ("busy", gpu["ts"] >= 0), ("compute", gpu["category"] == "compute"),
            ("communication", gpu["category"] == "communication"))}
        busy, comp, comm = cover["busy"], cover["compute"], cover["communication"]
        if hi > lo:
            t_rows.append({"rank": rank, "idle_ns": int((~busy).sum()), "compute_ns": int(comp.sum()),
                           "non_compute_ns": int((busy & ~comp).sum()), "kernel_time_ns": hi - lo})
        if comm.any():
            o_rows.append({"rank": rank, "comm_ns": int(comm.sum()), "overlapped_ns": int((comm & comp).sum())})
    return pd.DataFrame(t_rows), pd.DataFrame(o_rows)


def _synthetic(n: int, ranks: int, seed: int, *, sort: bool = True) -> pd.DataFrame:
    rng = random.Random(seed)
    cats = ["compute", "compute", "communication", "memory", "host"]
    rows = [{"rank": rng.randrange(ranks), "ts": rng.randrange(0, 400), "dur": rng.choice([0, 1, 5, 20, 60]),
             "category": rng.choice(cats), "track": f"stream {rng.randrange(3)}"} for _ in range(n)]
    df = pd.DataFrame(rows, columns=["rank", "ts", "dur", "category", "track"])
    return df.sort_values(["rank", "ts"], kind="stable").reset_index(drop=True) if sort else df


CASES = {
    "empty": pd.DataFrame({"rank": pd.Series(dtype="int32"), "ts": pd.Series(dtype="int64"),
                           "dur": pd.Series(dtype="int64"), "category": pd.Series(dtype="str")}),
    "single": pd.DataFrame({"rank": [0], "ts": [10], "dur": [5], "category": ["communication"]}),
    "host only": pd.DataFrame({"rank": [0], "ts": [10], "dur": [5], "category": ["host"]}),
    "overlapping streams": pd.DataFrame({"rank": 0, "ts": [0, 10, 40, 45, 100], "dur": [30, 50, 20, 5, 10],
                                         "category": ["compute", "communication", "compute", "memory", "compute"]}),
    "unsorted": _synthetic(60, 1, 1, sort=False),
    "multi-rank": _synthetic(300, 4, 2),
    "multi-rank unsorted": _synthetic(300, 3, 3, sort=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_against_reference(case: str) -> None:
    ev = CASES[case]
    ref_t, ref_o = _reference(ev)
    got_t, got_o = temporal_breakdown(ev), comm_comp_overlap(ev)
    assert list(got_t.columns) == list(TEMPORAL_COLUMNS) and list(got_o.columns) == list(OVERLAP_COLUMNS)
    assert len(got_t) == len(ref_t) and len(got_o) == len(ref_o)
    if len(ref_t):
        assert got_t["rank"].tolist() == ref_t["rank"].tolist()
        for part in ("idle", "compute", "non_compute", "kernel_time"):
            assert (got_t[f"{part}_us"] * 1e3).round().astype(int).tolist() == ref_t[f"{part}_ns"].tolist(), part
        assert got_t["idle_pct"].tolist() == (100 * ref_t["idle_ns"] / ref_t["kernel_time_ns"]).round(2).tolist()
    if len(ref_o):
        assert got_o[["rank", "comm_ns", "overlapped_ns"]].to_dict("list") == ref_o.to_dict("list")
        assert got_o["overlap_pct"].tolist() == (100 * ref_o["overlapped_ns"] / ref_o["comm_ns"]).round(2).tolist()


def test_worked_example() -> None:
    # compute [0,30) and [40,60); comm [10,60); memory [45,50); compute [100,110)
    ev = CASES["overlapping streams"]
    t = temporal_breakdown(ev).iloc[0]
    assert (t["kernel_time_us"], t["idle_us"], t["compute_us"], t["non_compute_us"]) == (0.11, 0.04, 0.06, 0.01)
    o = comm_comp_overlap(ev).iloc[0]
    assert (o["comm_ns"], o["overlapped_ns"], o["overlap_pct"]) == (50, 40, 80.0)


def _store(path: Path, ev: pd.DataFrame, source: str) -> Path:
    n = len(ev)
    ranks = [int(r) for r in ev["rank"]]
    table = pa.table({"ts": [int(t) for t in ev["ts"]], "dur": [int(d) for d in ev["dur"]], "node": [0] * n,
                      "chip": ranks, "rank": ranks, "track": ["stream 7"] * n, "name": ["k"] * n, "op": ["gemm"] * n,
                      "category": [str(c) for c in ev["category"]]})
    with StoreWriter(path) as w:
        w.write_events(table)
        w.write_manifest({"source": {"format": source}})
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunk_combine_equals_whole(tmp_path: Path, seed: int) -> None:
    ev = _synthetic(400, 5, 10 + seed)
    ctx = build_context(open_store(_store(tmp_path / "s", ev, "kineto")))
    res = run_analyses(ctx, [TEMPORAL, OVERLAP])
    pd.testing.assert_frame_equal(res["temporal"].ranks, temporal_breakdown(ev))
    pd.testing.assert_frame_equal(res["overlap"].ranks, comm_comp_overlap(ev))
    # Partials in any order, any grouping: the same result.
    table = pa.Table.from_pandas(ev, preserve_index=False)
    parts = [table.filter(pc.equal(table["rank"], r)) for r in sorted(set(ev["rank"]))]
    random.Random(seed).shuffle(parts)
    for a, name in ((TEMPORAL, "temporal"), (OVERLAP, "overlap")):
        shuffled = a.combine([a.chunk(p, ctx) for p in parts], ctx)
        pd.testing.assert_frame_equal(shuffled.ranks, res[name].ranks)


def test_applies(tmp_path: Path) -> None:
    ev = CASES["overlapping streams"].assign(rank=0)
    sohu = build_context(open_store(_store(tmp_path / "sohu", ev, "sohu-raw-trace")))
    assert "stalls" in TEMPORAL.applies(sohu)
    assert OVERLAP.applies(sohu) is None       # communication events, no collectives table
    assert TEMPORAL.applies(build_context(open_store(_store(tmp_path / "k", ev, "kineto")))) is None
    quiet = build_context(open_store(_store(tmp_path / "q", ev[ev["category"] != "communication"], "chrome")))
    assert TEMPORAL.applies(quiet) is None
    assert "no communication" in OVERLAP.applies(quiet)


def test_missing_columns_and_types() -> None:
    with pytest.raises(ValueError, match="'category'"):
        temporal_breakdown(pd.DataFrame({"ts": [0], "dur": [1]}))
    with pytest.raises(ValueError, match="'correlation'"):
        comm_comp_overlap(CASES["single"], hta_compatible=True)
    with pytest.raises(TypeError, match="'events'"):
        temporal_breakdown([1, 2, 3])  # type: ignore[arg-type]


# --- HTA's selection, rule by rule -------------------------------------------------------------

def _selection_case() -> tuple[pa.Table, list[bool]]:
    """Two ranks; ``keep`` is what HTA keeps, worked out by hand (times in ns, whole us)."""
    rows = [
        # rank, ts, dur, name, category, correlation, keep
        (0, 0, 100_000, "ProfilerStep#1", "host", None, True),
        (0, 100_000, 100_000, "ProfilerStep#2", "host", None, True),
        (0, 200_000, 100_000, "ProfilerStep#3", "host", None, False),     # the last step: dropped
        (0, 10_000, 5_000, "aten::mm", "host", None, True),
        (0, 11_000, 2_000, "cudaLaunchKernel", "host", 1, True),
        (0, 120_000, 2_000, "cudaLaunchKernel", "host", 2, True),
        (0, 210_000, 2_000, "cudaLaunchKernel", "host", 3, False),        # launched in the last step
        (0, 200_000, 1_000, "cudaMemcpyAsync", "host", 4, False),         # starts as the last step does
        (0, 350_000, 1_000, "aten::add", "host", None, False),            # after the last step
        (0, 20_000, 50_000, "gemm", "compute", 1, True),
        (0, 125_000, 90_000, "ncclKernel_AllReduce", "communication", 2, True),  # runs into step 3: kept
        (0, 215_000, 10_000, "gemm", "compute", 3, False),
        (0, 201_000, 1_000, "Memcpy DtoD", "memory", 4, False),
        (0, 30_000, 10_000, "gemm", "compute", 9, False),                 # no launcher on the trace
        (0, 40_000, 10_000, "gemm", "compute", 7, False),                 # launcher only on rank 1
        # rank 1: a single ProfilerStep: HTA does not filter at all
        (1, 0, 100_000, "ProfilerStep#1", "host", None, True),
        (1, 10_000, 1_000, "cudaLaunchKernel", "host", 7, True),
        (1, 50_000, 10_000, "gemm", "compute", 8, True),                  # no launcher, still kept
        (1, 150_000, 10_000, "aten::add", "host", None, True),
    ]
    table = pa.table({"rank": pa.array([r[0] for r in rows], pa.int32()),
                      "ts": pa.array([r[1] for r in rows], pa.int64()),
                      "dur": pa.array([r[2] for r in rows], pa.int64()),
                      "name": pa.array([r[3] for r in rows]).dictionary_encode(),
                      "category": pa.array([r[4] for r in rows]).dictionary_encode(),
                      "correlation": pa.array([r[5] for r in rows], pa.int64())})
    return table, [r[6] for r in rows]


def test_selection_drops_exactly_unlaunched_and_last_step() -> None:
    table, keep = _selection_case()
    assert hta_selection_mask(table).tolist() == keep
    out = hta_select(table)
    assert out.schema == table.schema and out.num_rows == sum(keep)
    assert out.column("ts").to_pylist() == [t for t, k in zip(table.column("ts").to_pylist(), keep) if k]


def test_selection_any_row_order() -> None:
    table, keep = _selection_case()
    order = np.random.default_rng(0).permutation(table.num_rows)
    assert hta_selection_mask(table.take(order)).tolist() == np.array(keep)[order].tolist()


def test_selection_without_launchers_in_any_step() -> None:
    # Kernels the profiler saw but whose launch it did not: dropped even in early steps.
    table, _ = _selection_case()
    rank0 = table.filter(pc.equal(table["rank"], 0))
    kept = hta_select(rank0)
    gpu = kept.filter(pc.not_equal(kept["category"].cast(pa.string()), "host"))
    assert sorted(gpu.column("correlation").to_pylist()) == [1, 2]


def test_rounding_is_inward_to_whole_us() -> None:
    ts, dur = hta_round_us(np.array([1_200, 5_000, 7_999, 3_000]), np.array([2_500, 400, 1_002, 0]))
    assert ts.tolist() == [2_000, 5_000, 8_000, 3_000]
    assert dur.tolist() == [1_000, 0, 1_000, 0]            # [1.2, 3.7) -> [2, 3); 5.0..5.4 vanishes
    table, _ = _selection_case()
    jittered = table.set_column(1, "ts", pc.add(table["ts"], 300))
    out = hta_select(jittered)
    assert all(t % 1000 == 0 for t in out.column("ts").to_pylist())
    assert hta_select(jittered, round_us=False).column("ts").to_pylist()[0] == 300


def test_selection_does_not_touch_input() -> None:
    table, _ = _selection_case()
    before = table.to_pydict()
    hta_select(table.set_column(1, "ts", pc.add(table["ts"], 1)))
    hta_select(table)
    assert table.to_pydict() == before


def test_selection_needs_its_columns() -> None:
    table, _ = _selection_case()
    with pytest.raises(ValueError, match="'correlation'"):
        hta_select(table.drop_columns(["correlation"]))
    assert hta_select(table.slice(0, 0)).num_rows == 0
