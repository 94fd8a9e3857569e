"""The Sohu collector against the emulator's raw runs: lossless, damage-tolerant, clock-aligned."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.errors import OutputError, TraceFormatError
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store
from sohuprof.strace import RECORD_DTYPE

HEADER = struct.Struct("<8sHHHHI16s8xI")   # version 2: run id and header CRC
CHUNK = struct.Struct("<4sIII")


def read_raw(path: Path) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Independent reader of a .strace file: all records and each chunk's (offset, count)."""
    data = path.read_bytes()
    _, _, node, chip, _, _, run_id, _ = HEADER.unpack_from(data, 0)
    seed = zlib.crc32(run_id + struct.pack("<HH", node, chip))   # chunk CRCs start from the file's identity
    pos, out, chunks = HEADER.size, [], []
    while pos < len(data):
        magic, _seq, count, crc = CHUNK.unpack_from(data, pos)
        payload = data[pos + CHUNK.size: pos + CHUNK.size + count * RECORD_DTYPE.itemsize]
        assert magic == b"CHNK" and zlib.crc32(payload, seed) == crc
        out.append(np.frombuffer(payload, RECORD_DTYPE))
        chunks.append((pos, count))
        pos += CHUNK.size + len(payload)
    return np.concatenate(out), chunks


def config(**kw) -> EmulatorConfig:
    base = dict(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=2, chips_per_node=4,
                tp=8, requests=12, prompt_len=512, output_len=24, clock_skew_us=50.0, chunk_records=2048, seed=3)
    base.update(kw)
    return EmulatorConfig(**base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sohu") / "run"
    emulate(config(), path, show_progress=False)
    return path


@pytest.fixture(scope="module")
def store(run_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "store"
    collect(run_dir, out, show_progress=False)
    return out


def test_every_record_is_in_the_store(run_dir: Path, store: Path) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    events = open_store(store).read("events").to_pandas()
    assert len(events) == sum(c["records"] for c in meta["chips"])
    for chip in meta["chips"]:
        raw, _ = read_raw(run_dir / chip["file"])
        mine = events[events["rank"] == chip["rank"]]
        assert len(mine) == len(raw)
        for col in ("flops", "hbm_bytes", "net_bytes"):
            assert int(mine[col].sum()) == int(raw[col].astype(np.int64).sum())
        raw_dur_ns = (raw["end"] - raw["start"]).astype(float).sum() * 1e9 / chip["clock_hz"]
        # Each event's dur is rounded to the ns and scaled by the fitted drift (ppm).
        assert abs(mine["dur"].sum() - raw_dur_ns) <= len(raw) + 1e-5 * raw_dur_ns


def test_store_is_plain_parquet(store: Path) -> None:
    df = pd.read_parquet(store / "events")
    assert {"ts", "dur", "node", "rank", "name", "op", "category"} <= set(df.columns)
    assert (df["dur"] >= 0).all()
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["format"] == "sohuprof-trace"
    assert manifest["counts"]["quarantined_pieces"] == 0


def test_clock_alignment_matches_the_emulators_truth(run_dir: Path, store: Path) -> None:
    truth = json.loads((run_dir / "run.json").read_text())["truth"]["clock"]
    fit = open_store(store).manifest["clock_alignment"]
    assert fit["causality_violations"] == 0
    d0, o0 = truth[0]["drift"], truth[0]["offset_ns"]
    for node in fit["nodes"]:
        dn, on = truth[node["node"]]["drift"], truth[node["node"]]["offset_ns"]
        local = on + np.linspace(0, 5e8, 11)
        expected = (1 + d0) / (1 + dn) * (local - on) + o0   # node n's reading on node 0's clock
        got = node["scale"] * local + node["offset_ns"]
        assert np.abs(got - expected).max() < 100.0          # ns: "well under a microsecond"
    assert fit["nodes"][1]["method"] == "collectives"
    skew = abs(truth[1]["offset_ns"] - truth[0]["offset_ns"])
    assert skew > 1000, "the run must actually be skewed for this test to mean anything"


def test_members_leave_collectives_together_after_alignment(store: Path) -> None:
    coll = open_store(store).read("collectives").to_pandas()
    per = coll.groupby("coll_id").agg(end_min=("end", "min"), end_max=("end", "max"), last=("arrive", "max"),
                                      start=("start", "first"), nodes=("node", "nunique"))
    assert (per["end_max"] - per["end_min"] <= 2).all()
    assert (per["last"] <= per["end_min"] + 1).all()
    assert (per["start"] == per["last"]).all()
    assert (per["nodes"] == 2).any()


def test_requests_from_host_events(store: Path) -> None:
    req = open_store(store).read("requests").to_pandas()
    assert len(req) == 12
    assert (req["arrival"] <= req["first_token"]).all() and (req["first_token"] <= req["finish"]).all()
    assert (req["output_tokens"] == 24).all() and (req["prompt_tokens"] == 512).all()
    events = open_store(store).read("events", columns=["ts", "dur"]).to_pandas()
    assert req["finish"].max() <= (events["ts"] + events["dur"]).max() + 1


def _nic_lines(run_dir: Path) -> list[dict]:
    return [dict(ev, node=n) for n in (0, 1) for ev in map(json.loads, (run_dir / f"node{n}/host.jsonl")
                                                            .read_text().splitlines()) if ev["type"] == "nic"]


def test_nic_counters_from_host_events(run_dir: Path, store: Path) -> None:
    """Every nic line is five counter samples of its rank, read at its step's end on the aligned clock."""
    lines = pd.DataFrame(_nic_lines(run_dir))
    assert len(lines) and set(lines["rank"] // 4) == {0, 1} and (lines["rank"] // 4 == lines["node"]).all()
    st = open_store(store)
    counters = st.read("counters").to_pandas()
    nic = counters[counters["counter"].astype(str).str.startswith("nic_")]
    assert len(nic) == 5 * len(lines)
    for name in ("tx_bytes", "tx_ns", "wait_ns", "rx_bytes", "rx_ns"):
        mine = nic[nic["counter"] == f"nic_{name}"]
        got = mine.groupby("rank")["value"].sum()
        assert got.to_dict() == lines.groupby("rank")[name].sum().astype(float).to_dict()
    # ts: the step's end, after every op the rank ran in that step (the line and the records are
    # on the same node clock, aligned alike).
    events = st.read("events", columns=["rank", "step", "ts", "dur"]).to_pandas()
    last = (events["ts"] + events["dur"]).groupby([events["rank"], events["step"]]).max()
    tx = nic[nic["counter"] == "nic_tx_bytes"].sort_values(["rank", "ts"])
    steps = lines.sort_values(["rank", "step"])
    ends = last.reindex(pd.MultiIndex.from_arrays([steps["rank"], steps["step"]])).to_numpy()
    assert (tx["ts"].to_numpy() >= ends - 1).all()


def test_damaged_nic_lines_are_quarantined_and_counted(run_dir: Path, tmp_path: Path) -> None:
    copy = _damaged_copy(run_dir, tmp_path)
    host = copy / "node1/host.jsonl"
    good = host.read_bytes().splitlines()
    nic = next(ln for ln in good if b'"nic"' in ln)
    ev = json.loads(nic)
    bad = [json.dumps({k: v for k, v in ev.items() if k != "rank"}),          # no rank
           json.dumps(dict(ev, rank=1)),                                      # a chip of node 0, in node 1's file
           json.dumps(dict(ev, rank=99)),                                     # no such chip
           json.dumps(dict(ev, tx_bytes=-5)),                                 # a counter below 0
           json.dumps(dict(ev, wait_ns="long")),                              # not a number
           json.dumps(dict(ev, rx_ns=2**60))]                                 # past what a counter holds exactly
    host.write_bytes(b"\n".join(good[:2] + [b.encode() for b in bad] + good[2:]) + b"\n")
    clean = collect(run_dir, tmp_path / "clean", show_progress=False)
    summary = collect(copy, tmp_path / "store", show_progress=False)
    h = summary["host_events"]
    assert h["lines"] == clean["host_events"]["lines"] + len(bad)
    assert h["quarantined"] == len(bad) and h["kept"] == clean["host_events"]["kept"]
    q = open_store(tmp_path / "store").read("quarantine").to_pandas()
    reasons = q.loc[q["source"] == "node1/host.jsonl", "reason"].tolist()
    assert len(reasons) == len(bad)
    assert "invalid host event (a nic without 'rank')" in reasons
    assert "invalid host event (rank 1 is not a chip of node 1)" in reasons
    assert "invalid host event (rank 99 is not a chip of node 1)" in reasons
    # The counters kept are exactly the undamaged run's.
    before = open_store(tmp_path / "clean").read("counters").to_pandas()
    after = open_store(tmp_path / "store").read("counters").to_pandas()
    pd.testing.assert_frame_equal(after, before)


def _damaged_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def test_flipped_bytes_lose_exactly_that_chunk(run_dir: Path, tmp_path: Path) -> None:
    copy = _damaged_copy(run_dir, tmp_path)
    path = copy / "node1" / "chip2.strace"
    _, chunks = read_raw(path)
    offset, count = chunks[1]
    data = bytearray(path.read_bytes())
    data[offset + CHUNK.size + 100: offset + CHUNK.size + 108] = b"\xde\xad\xbe\xef" * 2
    path.write_bytes(bytes(data))
    summary = collect(copy, tmp_path / "store", show_progress=False)
    assert summary["records_expected"] - summary["events"] == count
    assert summary["quarantined_records"] == count and summary["quarantined_pieces"] == 1
    q = pq.read_table(tmp_path / "store" / "quarantine.parquet").to_pylist()
    assert q[0]["source"] == "node1/chip2.strace" and q[0]["offset"] == offset
    assert q[0]["raw"] == bytes(data[offset: offset + CHUNK.size + count * RECORD_DTYPE.itemsize])
    assert "CRC" in q[0]["reason"]


def test_damaged_count_field_resyncs_at_the_next_chunk(run_dir: Path, tmp_path: Path) -> None:
    copy = _damaged_copy(run_dir, tmp_path)
    path = copy / "node0" / "chip0.strace"
    _, chunks = read_raw(path)
    offset, count = chunks[0]
    data = bytearray(path.read_bytes())
    data[offset + 8: offset + 12] = struct.pack("<I", 7)
    path.write_bytes(bytes(data))
    summary = collect(copy, tmp_path / "store", show_progress=False)
    assert summary["records_expected"] - summary["events"] == count == summary["quarantined_records"]


def test_truncated_last_chunk(run_dir: Path, tmp_path: Path) -> None:
    copy = _damaged_copy(run_dir, tmp_path)
    path = copy / "node0" / "chip3.strace"
    _, chunks = read_raw(path)
    data = path.read_bytes()
    path.write_bytes(data[:-500])
    summary = collect(copy, tmp_path / "store", show_progress=False)
    missing = chunks[-1][1]
    # The tail's header and payload less 500 bytes are there (quarantined); 500 bytes' worth are not.
    held = (len(data) - 500 - chunks[-1][0] - CHUNK.size) // RECORD_DTYPE.itemsize
    assert summary["records_expected"] - summary["events"] == missing
    assert summary["quarantined_records"] == held and summary["records_lost"] == missing - held
    q = pq.read_table(tmp_path / "store" / "quarantine.parquet").to_pylist()
    assert q[0]["reason"].startswith("truncated") and q[0]["offset"] == chunks[-1][0]


def test_missing_chip_file_is_counted(run_dir: Path, tmp_path: Path) -> None:
    copy = _damaged_copy(run_dir, tmp_path)
    (copy / "node1" / "chip0.strace").unlink()
    summary = collect(copy, tmp_path / "store", show_progress=False)
    assert summary["records_expected"] - summary["events"] == summary["records_lost"] > 0
    assert summary["quarantined_records"] == 0
    (entry,) = [f for f in summary["file_counts"] if f["file"] == "node1/chip0.strace"]
    assert entry["lost"] == entry["expected"] > 0 and entry["refused"] == "chip trace file missing"


def test_dense_data_parallel_run_falls_back_to_clock_sync(tmp_path: Path) -> None:
    # Two TP8 replicas, one per node: no collective crosses nodes.
    emulate(config(chips_per_node=8, requests=4), tmp_path / "run", show_progress=False)
    summary = collect(tmp_path / "run", tmp_path / "store", show_progress=False)
    node1 = summary["clock_alignment"]["nodes"][1]
    assert node1["method"] == "clock_sync"
    truth = json.loads((tmp_path / "run" / "run.json").read_text())["truth"]["clock"]
    expected = truth[0]["offset_ns"] - truth[1]["offset_ns"]
    assert abs(node1["offset_ns"] + (node1["scale"] - 1) * truth[1]["offset_ns"] - expected) < 5000


@pytest.mark.parametrize("case", ["empty_dir", "random_bytes", "other_json", "missing", "mixed", "strace_only",
                                  "bad_run_json"])
def test_bad_input_is_one_clear_error(case: str, run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    if case == "empty_dir":
        src.mkdir()
    elif case == "random_bytes":
        src = tmp_path / "x.json"
        src.write_bytes(np.random.default_rng(0).bytes(4096))
    elif case == "other_json":
        src = tmp_path / "x.json"
        src.write_text(json.dumps({"hello": [1, 2, 3]}))
    elif case == "mixed":
        shutil.copytree(run_dir, src)
        (src / "rank0.json").write_text(json.dumps({"traceEvents": []}))
    elif case == "strace_only":
        shutil.copytree(run_dir, src)
        (src / "run.json").unlink()
    elif case == "bad_run_json":
        shutil.copytree(run_dir, src)
        (src / "run.json").write_text("{not json")
    with pytest.raises(TraceFormatError) as err:
        collect(src, tmp_path / "store", show_progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_existing_store_needs_force(run_dir: Path, store: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="--force"):
        collect(run_dir, store, show_progress=False)
