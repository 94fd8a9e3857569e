"""The raw run directory against its documented format, read with the tests' own reference
reader; clocks against the emulator's recorded truth; byte-for-byte reproducibility."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from emu_support import (SMALL_RUN, RawFormatError, RawRun, make_config, read_run, read_strace,
                         run_in_memory)

from sohuprof.emulator import emulate
from sohuprof.emulator.plan import ParallelPlan
from sohuprof.emulator.runtime import StepTrace
from sohuprof.emulator.writer import RawTraceWriter
from sohuprof.errors import OutputError
from sohuprof.strace import NO_GROUP, RECORD_DTYPE

FIELDS = [n for n in RECORD_DTYPE.names if n not in ("start", "end")]


def test_run_json_describes_the_run(small_run: RawRun) -> None:
    meta = small_run.meta
    assert meta["format"] == "sohu-raw-trace" and meta["version"] == 2
    assert len(bytes.fromhex(meta["run_id"])) == 16 and meta["record"]["chunk_records"] == SMALL_RUN["chunk_records"]
    assert meta["record"]["size"] == 72
    assert [f[0] for f in meta["record"]["fields"]] == list(RECORD_DTYPE.names)
    assert meta["engines"] == ["matrix", "vector", "dma", "collective", "host"]
    assert meta["hardware"]["name"] == "sohu" and meta["model"]["name"] == "llama3-8b"
    assert meta["parallel"]["tp"] == 4 and meta["parallel"]["world"] == 8
    assert [o["id"] for o in meta["op_names"]] == list(range(len(meta["op_names"])))
    assert [c["rank"] for c in meta["chips"]] == list(range(8))
    assert all(c["file"] == f"node{c['node']}/chip{c['chip']}.strace" for c in meta["chips"])
    assert all(c["node"] * 4 + c["chip"] == c["rank"] for c in meta["chips"])
    assert {p.relative_to(small_run.path).as_posix() for p in small_run.path.rglob("*") if p.is_file()} == (
        {"run.json"} | {c["file"] for c in meta["chips"]} | {n["host_events"] for n in meta["nodes"]})


def test_file_headers(small_run: RawRun) -> None:
    for chip in small_run.meta["chips"]:
        f = small_run.files[chip["rank"]]
        assert (f.version, f.node, f.chip, f.record_size) == (2, chip["node"], chip["chip"], 72)
        assert f.run_id == small_run.meta["run_id"]
        assert f.chunk_records == SMALL_RUN["chunk_records"]


def test_chunks_are_full_except_the_last_and_counts_match(small_run: RawRun) -> None:
    for chip in small_run.meta["chips"]:
        f = small_run.files[chip["rank"]]
        assert len(f.chunk_counts) == chip["chunks"] >= 2
        assert all(c == f.chunk_records for c in f.chunk_counts[:-1])
        assert 1 <= f.chunk_counts[-1] <= f.chunk_records
        assert len(f.records) == sum(f.chunk_counts) == chip["records"]


def test_record_fields_are_consistent_with_run_json(small_run: RawRun) -> None:
    meta = small_run.meta
    rec, rank = small_run.records()
    ops = meta["op_names"]
    assert rec["name_id"].max() < len(ops)
    engine_of = np.array([meta["engines"].index(o["engine"]) for o in ops])
    assert (rec["engine"] == engine_of[rec["name_id"]]).all()
    assert (rec["end"] >= rec["start"]).all()
    assert (rec["step"] < meta["steps"]).all()
    assert set(np.unique(rec["phase"]).tolist()) <= {0, 1, 2}
    assert rec["layer"].min() >= -1 and rec["layer"].max() < meta["model"]["layers"]
    assert (rec["reserved"] == 0).all()
    groups = {g["id"]: g["ranks"] for g in meta["groups"]}
    coll = rec["group"] != NO_GROUP
    assert all(r in groups[g] for g, r in zip(rec["group"][coll].tolist(), rank[coll].tolist()))
    # Within a chip's file, steps never go back.
    for f in small_run.files.values():
        assert (np.diff(f.records["step"].astype(np.int64)) >= 0).all()


def test_records_equal_the_simulation_and_times_follow_the_true_clocks(small_run: RawRun) -> None:
    """Every record on disk is the in-memory record, its times the node's local cycle counter:
    ``cycles = rint((true_ns * (1 + drift) + offset_ns) * clock_hz / 1e9)`` with run.json's truth."""
    mem = run_in_memory(make_config(**SMALL_RUN))
    truth = {c["node"]: c for c in small_run.meta["truth"]["clock"]}
    hz = small_run.meta["hardware"]["clock_hz"]
    assert any(abs(c["offset_ns"] - truth[0]["offset_ns"]) > 1000 for c in truth.values())
    for r, f in small_run.files.items():
        mine = mem.rank == r
        assert len(f.records) == mine.sum()
        for name in FIELDS:
            np.testing.assert_array_equal(f.records[name], mem.rec[name][mine], err_msg=name)
        node = truth[r // 4]
        for raw, true in (("start", mem.start_ns[mine]), ("end", mem.end_ns[mine])):
            expect = (true * (1 + node["drift"]) + node["offset_ns"]) * hz / 1e9
            assert np.abs(f.records[raw].astype(float) - expect).max() <= 1.0


def test_host_events_are_on_the_node_clock(small_run: RawRun) -> None:
    mem = run_in_memory(make_config(**SMALL_RUN))
    truth = {c["node"]: c for c in small_run.meta["truth"]["clock"]}
    disk = [ev for ev in small_run.host[0] + small_run.host[1] if ev["type"] == "step"]
    assert len(disk) == len(mem.host)
    by_key = {(ev["step"], ev["replica"]): ev for ev in disk}
    for ev in mem.host:
        node = mem.em.replica_node(ev["replica"])
        assert by_key[(ev["step"], ev["replica"])] in small_run.host[node]
        for field in ("ts", "end"):
            local = ev[field] * (1 + truth[node]["drift"]) + truth[node]["offset_ns"]
            assert abs(by_key[(ev["step"], ev["replica"])][field] - local) <= 1


def test_clock_sync_snapshots_agree_with_truth(small_run: RawRun) -> None:
    snaps = small_run.meta["clock_sync"]
    truth = {c["node"]: c for c in small_run.meta["truth"]["clock"]}
    assert {s["node"] for s in snaps} == set(truth)
    assert len(snaps) >= 8 * len(truth)
    for s in snaps:
        t = truth[s["node"]]
        # reference = true time +- 2 us of sync error; local = true * (1 + drift) + offset.
        assert abs(s["local_ns"] - (s["reference_ns"] * (1 + t["drift"]) + t["offset_ns"])) <= 2000 * 1.001 + 2


CROSS = dict(model="llama3-8b", nodes=2, chips_per_node=4, tp=8, requests=2, prompt_len=128, output_len=4)


@pytest.fixture(scope="module")
def cross_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[float, RawRun]:
    out = {}
    for skew in (0.0, 50.0):
        path = tmp_path_factory.mktemp("cross") / "run"
        emulate(make_config(**CROSS, clock_skew_us=skew), path, show_progress=False)
        out[skew] = read_run(path)
    return out


def _cross_node_ends(run: RawRun) -> tuple[np.ndarray, np.ndarray]:
    """End cycles of every collective instance as chip 0 of node 0 and of node 1 recorded it."""
    a, b = run.files[0].records, run.files[4].records
    ca, cb = a[a["group"] != NO_GROUP], b[b["group"] != NO_GROUP]
    assert len(ca) == len(cb) > 0
    assert (ca["group"] == cb["group"]).all() and (ca["seq"] == cb["seq"]).all()
    return ca["end"].astype(np.int64), cb["end"].astype(np.int64)


def test_without_skew_nodes_see_a_collective_end_at_the_same_cycle(cross_runs) -> None:
    ea, eb = _cross_node_ends(cross_runs[0.0])
    np.testing.assert_array_equal(ea, eb)
    assert all(c["offset_ns"] == cross_runs[0.0].meta["truth"]["clock"][0]["offset_ns"]
               for c in cross_runs[0.0].meta["truth"]["clock"])


def test_with_skew_nodes_disagree_by_the_true_offsets(cross_runs) -> None:
    run = cross_runs[50.0]
    ea, eb = _cross_node_ends(run)
    t0, t1 = run.meta["truth"]["clock"]
    hz = run.meta["hardware"]["clock_hz"] / 1e9
    assert abs(t1["offset_ns"] - t0["offset_ns"]) > 1000
    assert (ea != eb).all()
    true = (ea / hz - t0["offset_ns"]) / (1 + t0["drift"])       # node 0's reading back to true ns
    predicted = (true * (1 + t1["drift"]) + t1["offset_ns"]) * hz
    assert np.abs(eb - predicted).max() <= 2.0
    # Mostly the offset: the drift adds well under a microsecond over this short run.
    np.testing.assert_allclose((eb - ea) / hz, t1["offset_ns"] - t0["offset_ns"], atol=1000)


def _digest(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_run_directories(tmp_path: Path, small_run_dir: Path) -> None:
    again = tmp_path / "again"
    emulate(make_config(**SMALL_RUN), again, show_progress=False)
    assert _digest(again) == _digest(small_run_dir)
    other = tmp_path / "other"
    emulate(make_config(**dict(SMALL_RUN, seed=SMALL_RUN["seed"] + 1)), other, show_progress=False)
    d_other, d_first = _digest(other), _digest(small_run_dir)
    assert d_other.keys() == d_first.keys()
    differ = [k for k in d_first if d_first[k] != d_other[k]]
    assert "run.json" in differ and any(k.endswith(".strace") for k in differ)


def test_run_summary_matches_the_directory(tmp_path: Path, small_run: RawRun) -> None:
    cfg = make_config(**SMALL_RUN)
    summary = emulate(cfg, tmp_path / "run", show_progress=False)
    assert summary.path == tmp_path / "run"
    assert summary.records == sum(c["records"] for c in small_run.meta["chips"])
    assert summary.steps == small_run.meta["steps"]
    assert summary.ranks == 8
    assert summary.input_tokens == cfg.requests * cfg.prompt_len
    assert summary.output_tokens == cfg.requests * cfg.output_len
    # Duration: first arrival to last finish, from the host events taken back to true time.
    truth = {c["node"]: c for c in small_run.meta["truth"]["clock"]}

    def true_ns(node: int, ev: dict) -> float:
        return (ev["ts"] - truth[node]["offset_ns"]) / (1 + truth[node]["drift"])

    arrivals = [true_ns(n, e) for n, evs in small_run.host.items() for e in evs if e["type"] == "arrival"]
    finishes = [true_ns(n, e) for n, evs in small_run.host.items() for e in evs if e["type"] == "finish"]
    span = max(finishes) - min(arrivals)
    assert summary.duration_ns == pytest.approx(span, abs=2)
    assert summary.tokens_per_s == pytest.approx((summary.input_tokens + summary.output_tokens) / (span / 1e9), rel=1e-6)


def test_failed_run_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_add = RawTraceWriter.add

    def failing_add(self, trace):  # the disk fills up after two steps
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(28, "No space left on device")
        real_add(self, trace)

    monkeypatch.setattr(RawTraceWriter, "add", failing_add)
    with pytest.raises(OSError):
        emulate(make_config(**SMALL_RUN), tmp_path / "run", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused_then_replaced_with_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    cfg = make_config(model="llama3-8b", nodes=1, chips_per_node=4, tp=4, requests=1, prompt_len=16, output_len=2)
    with pytest.raises(OutputError, match="already exists"):
        emulate(cfg, out, show_progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(OutputError, match="holds other files"):   # force replaces a run, not anything
        emulate(cfg, out, force=True, show_progress=False)
    assert (out / "keep.txt").read_text() == "precious"
    emulate(cfg, tmp_path / "run2", show_progress=False)
    emulate(cfg, tmp_path / "run2", force=True, show_progress=False)
    assert (tmp_path / "run2" / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "run2"]


# ------------------------------------------------------------------ the writer on its own


def _writer_case(tmp_path: Path, chunk: int, steps: list[int]) -> tuple[Path, np.ndarray, ParallelPlan]:
    cfg = make_config(model="llama3-8b", nodes=1, chips_per_node=2, tp=2, chunk_records=chunk)
    plan = ParallelPlan.build(cfg)
    w = RawTraceWriter(tmp_path, plan, chunk, bytes(range(16)))
    written = []
    rng = np.random.default_rng(0)
    for step, n in enumerate(steps):
        rank = np.sort(rng.integers(0, 2, n))
        rec = np.zeros(n, RECORD_DTYPE)
        rec["flops"] = rng.integers(0, 1 << 40, n)
        rec["step"] = step
        start = np.sort(rng.uniform(0, 1e6, n)) + step * 1e6
        end = start + 10
        rec["start"], rec["end"] = np.rint(start), np.rint(end)   # the runtime stamps local cycles
        w.add(StepTrace(step, rank, rec, start, end))
        rec_out = rec.copy()
        written.append((rank, rec_out))
    w.close()
    rank = np.concatenate([r for r, _ in written])
    recs = np.concatenate([x for _, x in written])
    return tmp_path, (rank, recs), plan


@pytest.mark.parametrize("chunk,steps", [(1, [3, 0, 2]), (4, [4, 4]), (5, [7, 1, 9]), (1000, [3, 5]),
                                         (3, [0, 0])])
def test_writer_chunks_round_trip(tmp_path: Path, chunk: int, steps: list[int]) -> None:
    root, (rank, recs), plan = _writer_case(tmp_path, chunk, steps)
    for r in range(plan.world):
        f = read_strace(root / f"node0/chip{r}.strace")
        expect = recs[rank == r]
        np.testing.assert_array_equal(f.records, expect)
        assert sum(f.chunk_counts) == len(expect)
        assert all(c == chunk for c in f.chunk_counts[:-1])
        assert len(f.chunk_counts) == -(-len(expect) // chunk)


def test_reference_reader_rejects_damage(small_run_dir: Path, tmp_path: Path) -> None:
    """The reference reader is strict: the checks above would notice a broken writer."""
    data = bytearray((small_run_dir / "node0/chip0.strace").read_bytes())
    cases = {"magic": (0, b"X"), "crc": (32 + 16 + 100, b"\xff"), "chunk magic": (32, b"Z")}
    for what, (off, patch) in cases.items():
        bad = bytearray(data)
        bad[off:off + len(patch)] = bytes(b ^ 0x5A for b in patch) if what == "crc" else patch
        path = tmp_path / f"{what}.strace"
        path.write_bytes(bytes(bad))
        with pytest.raises(RawFormatError):
            read_strace(path)
    path = tmp_path / "short.strace"
    path.write_bytes(bytes(data[:-5]))
    with pytest.raises(RawFormatError, match="truncated"):
        read_strace(path)
