"""Critical path and findings on real PyTorch profiler traces: they run, and they degrade plainly
(no roofline findings without FLOPs; cross-rank parts only where every member is in the trace,
with the reason otherwise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sohuprof.analyzers.report import run_reports
from sohuprof.collectors import collect
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"
SHARED = ROOT.parent / "shared" / "traces" / "kineto-more"
#: The shared traces (beside the project, in CI too): name -> what the diagnosis must say.
TRACES = ["cpu-only-rank34", "mi300-resnet-actckpt-rank0of8", "mtia-single-rank", "own-cpu-gloo-ddp-2rank",
          "sampled-2rank-of128", "v100-ddp-rank1of2", "vllm-decode-fullgraph"]


def _diagnose(source: Path, tmp: Path) -> dict:
    store = tmp / "store"
    collect(source, store)
    return run_reports(open_store(store), ["findings", "critical_path"]).to_json()


def _check(out: dict) -> None:
    cp, fi = out["critical_path"], out["findings"]
    assert cp["wall_ns"] > 0
    assert cp["path_ns"] == pytest.approx(cp["wall_ns"], rel=1e-3)
    assert sum(k["share"] for k in cp["by_kind"]) == pytest.approx(1.0, abs=1e-3)
    kinds = {f["kind"] for f in fi["findings"]}
    assert "memory_bound" not in kinds                     # no FLOP or byte counts, no roofs
    assert any("no roofline findings" in n for n in fi["notes"])
    for f in fi["findings"]:
        assert f["saving_pct"] >= 1.0 and f["title"] and f["next"]


def test_a_rank_of_a_ddp_job_says_its_collectives_lack_members(tmp_path: Path) -> None:
    out = _diagnose(DATA, tmp_path)
    _check(out)
    notes = " ".join(out["findings"]["notes"] + out["critical_path"]["notes"])
    assert "lack members" in notes
    # Nothing is invented for the missing ranks: no straggler, no slow link, no communication wait.
    assert not {f["kind"] for f in out["findings"]["findings"]} & {"straggler", "slow_link"}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", TRACES)
def test_shared_profiler_traces(tmp_path: Path, name: str) -> None:
    out = _diagnose(SHARED / name, tmp_path)
    _check(out)
    notes = " ".join(out["findings"]["notes"])
    if name == "sampled-2rank-of128":
        assert "2 of 128 ranks" in notes
    if name == "v100-ddp-rank1of2":
        assert "1 of 2 ranks" in notes
    if name in ("cpu-only-rank34", "own-cpu-gloo-ddp-2rank"):
        assert "only CPU work" in notes and "host_overhead" not in {f["kind"] for f in out["findings"]["findings"]}
    assert not {f["kind"] for f in out["findings"]["findings"]} & {"straggler", "slow_link"}


def test_a_kernel_that_waits_for_its_launch_is_launch_bound_time(tmp_path: Path) -> None:
    """The CPU launch -> kernel link: kernel B starts when its launch (correlation 2) ends, 10 ns
    after the GPU went idle: host time on the path; kernel C's launch ended long before its gap:
    that gap is idle; CPU work with no kernel waiting on it is not on the device's chain."""
    import pyarrow as pa

    from sohuprof.store import StoreWriter

    rows = [  # ts, dur, track, name, category, correlation
        (0, 10, "stream 7", "A", "compute", 1), (20, 10, "stream 7", "B", "compute", 2),
        (40, 10, "stream 7", "C", "compute", 3),
        (0, 2, "thread 1", "cudaLaunchKernel", "host", 1), (5, 15, "thread 1", "cudaLaunchKernel", "host", 2),
        (21, 4, "thread 1", "cudaLaunchKernel", "host", 3), (26, 24, "thread 1", "aten::something", "host", None)]
    table = pa.table({"ts": [r[0] for r in rows], "dur": [r[1] for r in rows], "node": [0] * len(rows),
                      "chip": [0] * len(rows), "rank": [0] * len(rows), "track": [r[2] for r in rows],
                      "name": [r[3] for r in rows], "op": ["gemm" if r[4] == "compute" else "host" for r in rows],
                      "category": [r[4] for r in rows],
                      "correlation": pa.array([r[5] for r in rows], pa.int64())}).sort_by("ts")
    with StoreWriter(tmp_path / "s") as w:
        w.write_events(table)
        w.write_manifest({"source": {"format": "kineto"}})
    cp = run_reports(open_store(tmp_path / "s"), ["critical_path"]).to_json()["critical_path"]
    kinds = {k["kind"]: k["time_ns"] for k in cp["by_kind"]}
    assert cp["wall_ns"] == 50
    assert kinds == {"compute": 30, "memory": 0, "transfer": 0, "host": 10, "idle": 10}
