"""Damaged raw Sohu runs: every record written is kept, quarantined or counted as lost, per file,
whatever the damage; no record is altered, invented or kept twice; bad metadata is one clear line.

The damage is random (hypothesis) over a small emulated run with many chunks per file; the clean
collect of the same run is the oracle for what a kept record must look like.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sohuprof.cli import cli
from sohuprof.collectors import collect
from sohuprof.collectors.strace_reader import ChipFile
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.errors import SohuprofError, TraceFormatError
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store
from sohuprof.strace import CHUNK_HEADER, FILE_HEADER, RECORD_DTYPE

CHUNK = 128
#: Columns that identify an event independently of the clock fit (which damage may shift by ns).
KEY = ["rank", "name", "layer", "step", "phase", "track", "flops", "hbm_bytes", "net_bytes", "coll_id"]


def _config(**kw) -> EmulatorConfig:
    base = dict(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=2, chips_per_node=2, tp=2,
                requests=4, prompt_len=128, output_len=6, chunk_records=CHUNK, seed=5)
    base.update(kw)
    return EmulatorConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw")
    emulate(_config(), root / "run", show_progress=False)
    # Another run of the same shape whose records differ (longer prompts: other FLOP counts).
    emulate(_config(seed=6, prompt_len=160, output_len=7), root / "other", show_progress=False)
    collect(root / "run", root / "clean", show_progress=False)
    return {"run": root / "run", "other": root / "other", "clean": root / "clean"}


@pytest.fixture(scope="module")
def clean_keys(runs) -> dict[int, Counter]:
    events = open_store(runs["clean"]).read("events", columns=KEY).to_pandas()
    return {int(r): Counter(map(tuple, g[KEY].astype(str).to_numpy())) for r, g in events.groupby("rank")}


def _chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of an undamaged file."""
    pos, out = FILE_HEADER.size, []
    while pos < len(data):
        _, _, count, _ = CHUNK_HEADER.unpack_from(data, pos)
        out.append((pos, CHUNK_HEADER.size + count * RECORD_DTYPE.itemsize))
        pos += out[-1][1]
    return out


def _damage(data: bytes, op: str, r: np.random.Generator, donor: bytes) -> bytes | None:
    """One kind of damage to a chip file's bytes (None deletes the file)."""
    chunks = _chunks(data) if op not in ("truncate", "flip", "zero") else []
    n = len(data)
    if op == "truncate":
        return data[:int(r.integers(0, n))]
    if op == "flip":
        out = bytearray(data)
        for pos in r.integers(0, n, int(r.integers(1, 9))):
            out[pos] ^= 1 << int(r.integers(0, 8))
        return bytes(out)
    if op == "zero":
        a = int(r.integers(0, n))
        k = min(int(r.integers(1, 4096)), n - a)
        return data[:a] + bytes(k) + data[a + k:]
    if op == "delete_file":
        return None
    if op == "header_flip":
        out = bytearray(data)
        out[int(r.integers(0, FILE_HEADER.size))] ^= 1 << int(r.integers(0, 8))
        return bytes(out)
    if not chunks:
        return data
    i = int(r.integers(0, len(chunks)))
    a, length = chunks[i]
    piece = data[a:a + length]
    if op == "delete_chunk":
        return data[:a] + data[a + length:]
    if op == "duplicate_chunk":
        b = chunks[int(r.integers(0, len(chunks)))][0]
        return data[:b] + piece + data[b:]
    if op == "swap_chunks":
        j = int(r.integers(0, len(chunks)))
        (a, la), (b, lb) = sorted([chunks[i], chunks[j]])
        if a == b:
            return data
        return data[:a] + data[b:b + lb] + data[a + la:b] + data[a:a + la] + data[b + lb:]
    if op == "garbage":
        junk = bytearray(r.bytes(int(r.integers(1, 3000))))
        if r.random() < 0.5 and len(junk) > 20:   # a false chunk magic inside the garbage
            junk[5:9] = b"CHNK"
        return data[:a] + bytes(junk) + data[a:]
    if op == "foreign_chunk":
        donor_chunks = _chunks(donor)
        b, lb = donor_chunks[int(r.integers(0, len(donor_chunks)))]
        return data[:a] + donor[b:b + lb] + data[a:]
    raise ValueError(op)


_OPS = ["truncate", "flip", "zero", "delete_file", "header_flip", "delete_chunk", "duplicate_chunk",
        "swap_chunks", "garbage", "foreign_chunk", "foreign_file", "neighbour_file"]


_DAMAGE = st.lists(st.tuples(st.sampled_from(_OPS), st.integers(0, 3), st.integers(0, 2**32 - 1)),
                   min_size=1, max_size=3)


def _damaged_run(runs: dict[str, Path], ops: list[tuple[str, int, int]], work: Path) -> Path:
    """A copy of the run with ``ops`` applied: (kind of damage, which chip, seed) each."""
    run = work / "run"
    shutil.copytree(runs["run"], run)
    meta = json.loads((run / "run.json").read_text())
    for op, which, seed in ops:
        chip = meta["chips"][which % len(meta["chips"])]
        path = run / chip["file"]
        if not path.exists():
            continue
        if op in ("foreign_file", "neighbour_file"):
            donor = (runs["other"] / chip["file"] if op == "foreign_file"
                     else run / meta["chips"][(which + 1) % len(meta["chips"])]["file"])
            shutil.copy(donor, path)
            continue
        out = _damage(path.read_bytes(), op, np.random.default_rng(seed), (runs["other"] / chip["file"]).read_bytes())
        path.unlink() if out is None else path.write_bytes(out)
    return run


def _check_accounting(run: Path, store: Path, clean_keys: dict[int, Counter]) -> None:
    meta = json.loads((run / "run.json").read_text())
    written = {c["rank"]: c["records"] for c in meta["chips"]}
    manifest = open_store(store).manifest
    counts = manifest["counts"]
    per_file = {f["rank"]: f for f in counts["files"]}
    assert set(per_file) == set(written)
    for rank, f in per_file.items():
        assert f["expected"] == written[rank]
        assert min(f["kept"], f["quarantined"], f["lost"]) >= 0
        assert f["kept"] + f["quarantined"] + f["lost"] == written[rank], f
    assert counts["events"] + counts["quarantined_records"] + counts["records_lost"] == sum(written.values())
    q = pq.read_table(store / "quarantine.parquet")
    assert sum(q.column("records").to_pylist()) == counts["quarantined_records"] + counts["host_events"]["quarantined"]
    events = open_store(store).read("events", columns=KEY + ["dur"]).to_pandas()
    assert (events["dur"] >= 0).all()
    for rank, g in events.groupby("rank"):
        kept = Counter(map(tuple, g[KEY].astype(str).to_numpy()))
        assert len(g) == per_file[int(rank)]["kept"]
        # Every kept record is one the clean collect kept, and no more often: nothing foreign,
        # altered or duplicated.
        assert not kept - clean_keys[int(rank)], "a kept record is not in the clean run"


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=_DAMAGE)
def test_random_damage_keeps_the_accounts_balanced(ops, runs, clean_keys, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("damaged")
    run = _damaged_run(runs, ops, work)
    try:
        collect(run, work / "store", show_progress=False)
    except TraceFormatError as exc:   # only when nothing at all is left to collect
        assert "none of the" in str(exc) and "\n" not in str(exc)
        return
    _check_accounting(run, work / "store", clean_keys)


def test_foreign_and_neighbour_files_are_refused_and_named(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    shutil.copy(runs["other"] / "node0/chip1.strace", run / "node0/chip1.strace")
    shutil.copy(run / "node1/chip0.strace", run / "node1/chip1.strace")
    summary = collect(run, tmp_path / "store", show_progress=False)
    refused = {f["file"]: f["reason"] for f in summary["refused_files"]}
    assert "another run" in refused["node0/chip1.strace"]
    assert "node 1 chip 0" in refused["node1/chip1.strace"]
    per_file = {f["file"]: f for f in summary["file_counts"]}
    assert per_file["node0/chip1.strace"]["kept"] == 0 == per_file["node1/chip1.strace"]["kept"]
    result = CliRunner().invoke(cli, ["collect", str(run), "-o", str(tmp_path / "store2")])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "another run" in warning[0] and "lost" in warning[0]


def test_duplicate_and_deleted_chunks_are_counted_exactly(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    path = run / "node1/chip0.strace"
    data = path.read_bytes()
    chunks = _chunks(data)
    (a1, l1), (a2, l2) = chunks[1], chunks[3]
    # chunk 1 twice, chunk 3 gone, chunks 5 and 6 swapped
    (a5, l5), (a6, l6) = chunks[5], chunks[6]
    out = (data[:a1 + l1] + data[a1:a1 + l1] + data[a1 + l1:a2] + data[a2 + l2:a5] + data[a6:a6 + l6]
           + data[a5:a5 + l5] + data[a6 + l6:])
    path.write_bytes(out)
    summary = collect(run, tmp_path / "store", show_progress=False)
    f = {x["file"]: x for x in summary["file_counts"]}["node1/chip0.strace"]
    assert f["duplicates_dropped"] == CHUNK and f["lost"] == CHUNK and f["quarantined"] == 0
    assert f["kept"] == f["expected"] - CHUNK
    # Swapped chunks are put back in order: the rank's events are in time order as written.
    ts = open_store(tmp_path / "store").read("events", columns=["ts"], filters=[("rank", "=", 2)]).column("ts")
    assert np.all(np.diff(ts.to_numpy()) >= 0)


def test_garbage_between_chunks_holds_no_records(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    path = run / "node0/chip0.strace"
    data = path.read_bytes()
    a = _chunks(data)[2][0]
    path.write_bytes(data[:a] + b"CHNK" + bytes(range(256)) * 3 + data[a:])
    summary = collect(run, tmp_path / "store", show_progress=False)
    assert summary["quarantined_records"] == 0 and summary["records_lost"] == 0
    assert summary["quarantined_pieces"] == 1 and summary["events"] == summary["records_expected"]


def test_damaged_header_byte_keeps_the_chunks(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    path = run / "node0/chip1.strace"
    data = bytearray(path.read_bytes())
    data[42] ^= 0xFF   # a reserved byte: the header CRC fails, run id, node and chip still match
    path.write_bytes(bytes(data))
    summary = collect(run, tmp_path / "store", show_progress=False)
    assert summary["events"] == summary["records_expected"] and summary["quarantined_pieces"] == 1
    data[24] ^= 0xFF   # inside the run id: whose file this is can no longer be told
    path.write_bytes(bytes(data))
    summary = collect(run, tmp_path / "store2", show_progress=False)
    f = {x["file"]: x for x in summary["file_counts"]}["node0/chip1.strace"]
    assert f["kept"] == 0 and f["quarantined"] == f["expected"] and "damaged file header" in f["refused"]


def test_records_that_make_no_physical_sense_are_refused_per_reason(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    path = run / "node0/chip0.strace"
    data = bytearray(path.read_bytes())
    off = _chunks(bytes(data))[0][0] + CHUNK_HEADER.size
    rec = np.frombuffer(data, RECORD_DTYPE, CHUNK, off).copy()
    rec["end"][:3] = rec["start"][:3] - 1          # end before start
    rec["name_id"][3:5] = 10_000                    # an op name run.json does not list
    data[off:off + rec.nbytes] = rec.tobytes()
    import zlib   # re-seal the chunk: its CRC is right, its records are not
    _, _, node, chip, _, _, run_id, _ = FILE_HEADER.unpack_from(data, 0)
    struct.pack_into("<I", data, off - 4, zlib.crc32(rec.tobytes(), zlib.crc32(run_id + struct.pack("<HH", node, chip))))
    path.write_bytes(bytes(data))
    summary = collect(run, tmp_path / "store", show_progress=False)
    f = {x["file"]: x for x in summary["file_counts"]}["node0/chip0.strace"]
    assert f["quarantined"] == 5 and f["kept"] == f["expected"] - 5
    q = pq.read_table(tmp_path / "store" / "quarantine.parquet").to_pylist()
    reasons = {row["reason"].split(" (")[0]: row["records"] for row in q}
    assert reasons == {"records refused: ends before it starts": 3,
                       "records refused: op-name id not in run.json's op_names": 2}


@pytest.mark.parametrize("when", ["shrinks", "changes"])
def test_a_file_changing_between_passes_is_a_clear_error(when: str, runs, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    path = run / "node1/chip1.strace"
    scan = ChipFile.scan

    def scan_then_damage(self, on_chunk=None):
        scan(self, on_chunk)
        if self.path == path:
            data = bytearray(path.read_bytes())
            if when == "shrinks":
                os.truncate(path, len(data) // 2)
            else:
                data[len(data) // 2] ^= 1
                path.write_bytes(bytes(data))

    monkeypatch.setattr(ChipFile, "scan", scan_then_damage)
    with pytest.raises(TraceFormatError, match="while it was being collected") as err:
        collect(run, tmp_path / "store", show_progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _edit_run_json(run: Path, edit) -> None:
    meta = json.loads((run / "run.json").read_text())
    edit(meta)
    (run / "run.json").write_text(json.dumps(meta))


_BAD_RUN_JSON = {
    "chips_missing": lambda m: m.pop("chips"),
    "rank_string": lambda m: m["chips"][0].update(rank="zero"),
    "rank_huge": lambda m: m["chips"][0].update(rank=2**40),
    "node_out_of_range": lambda m: m["chips"][0].update(node=7),
    "tp_string": lambda m: m["parallel"].update(tp="eight"),
    "clock_negative": lambda m: m["chips"][1].update(clock_hz=-1.5e9),
    "clock_tiny": lambda m: m["chips"][1].update(clock_hz=1e-300),
    "clock_nan_string": lambda m: m["chips"][1].update(clock_hz="nan"),
    "path_escapes": lambda m: m["chips"][0].update(file="../../etc/passwd"),
    "records_disagree_with_chunks": lambda m: m["chips"][0].update(records=10**9),
    "op_names_not_a_list": lambda m: m.update(op_names={"a": 1}),
    "op_ids_repeated": lambda m: m["op_names"][1].update(id=0),
    "run_id_short": lambda m: m.update(run_id="abc"),
    "record_size": lambda m: m["record"].update(size=64),
    "clock_sync_nan": lambda m: m["clock_sync"][0].update(local_ns=float("inf")),
    "hardware_wrong": lambda m: m.update(hardware={"name": 3}),
    "version_newer": lambda m: m.update(version=99),
    "not_an_object": lambda m: m.clear(),
    "model_name_int": lambda m: m["model"].update(name=5),
    "hardware_number_as_string": lambda m: m["hardware"].update(peak_flops_bf16="inf"),
    "hardware_huge_int": lambda m: m["hardware"].update(intra_node_links=10**30),
    "hardware_infinite": lambda m: m["hardware"].update(hbm_bandwidth=1e400),
    "clock_sync_absurd": lambda m: m["clock_sync"][0].update(local_ns=1e300),
    "chunk_records_huge": lambda m: m["record"].update(chunk_records=2**31 - 1),
}


@pytest.mark.parametrize("case", sorted(_BAD_RUN_JSON))
def test_bad_run_json_is_one_clear_line(case: str, runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    _edit_run_json(run, _BAD_RUN_JSON[case])
    result = CliRunner().invoke(cli, ["collect", str(run), "-o", str(tmp_path / "store")])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "run.json" in lines[0], lines
    assert "internal error" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "store").exists()


def test_short_op_name_table_refuses_the_records_it_cannot_name(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    _edit_run_json(run, lambda m: m.update(op_names=m["op_names"][:5]))
    summary = collect(run, tmp_path / "store", show_progress=False)
    assert 0 < summary["quarantined_records"] < summary["records_expected"]
    assert summary["events"] + summary["quarantined_records"] + summary["records_lost"] == summary["records_expected"]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(
    st.binary(max_size=40),
    st.just(b'{"type": "arrival", "ts": 1e300, "request": 1}'),
    st.just(b'{"type": "step", "ts": 5, "replica": 99999999}'),
    st.just(b'{"type": "finish", "ts": "soon", "request": 0}'),
    st.just(b'[' * 5000),
    st.just(b'{"type": "first_token", "ts": 7, "request": -1}')), max_size=6))
def test_damaged_host_events_are_quarantined_line_by_line(lines, runs, tmp_path_factory) -> None:
    work = tmp_path_factory.mktemp("host")
    run = work / "run"
    shutil.copytree(runs["run"], run)
    host = run / "node1/host.jsonl"
    good = host.read_bytes().splitlines()
    host.write_bytes(b"\n".join(good[:3] + [ln.replace(b"\n", b" ") for ln in lines] + good[3:]) + b"\n")
    summary = collect(run, work / "store", show_progress=False)
    h = summary["host_events"]
    assert h["kept"] + h["quarantined"] == h["lines"]
    assert summary["events"] == summary["records_expected"]
    req = open_store(work / "store").read("requests").to_pandas()
    assert len(req) == 4 and (req["arrival"] <= req["finish"]).all()


def test_every_collect_error_is_a_sohuprof_error(runs, tmp_path: Path) -> None:
    """A run whose every chip file is gone cannot be collected: one clear line, nothing written."""
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    for p in run.glob("node*/chip*.strace"):
        p.unlink()
    with pytest.raises(SohuprofError, match="none of the 4 chip trace files"):
        collect(run, tmp_path / "store", show_progress=False)


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=_DAMAGE)
def test_stores_of_damaged_runs_analyze_and_export(ops, runs, tmp_path_factory) -> None:
    """Downstream of a damaged collect (ranks missing, collectives short of members, chunks gone
    from the middle of a rank): every command succeeds or says one clear line."""
    work = tmp_path_factory.mktemp("downstream")
    run = _damaged_run(runs, ops, work)
    runner = CliRunner()
    store = work / "store"
    for args in (["collect", str(run), "-o", str(store)], ["analyze", str(store), "--format", "json"],
                 ["export", "chrome", str(store), "-o", str(work / "trace.json.gz")], ["check", str(store)]):
        result = runner.invoke(cli, args)
        assert "internal error" not in result.output and "Traceback" not in result.output, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        if result.exit_code:
            assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
            if args[0] == "collect":
                return


def test_a_file_far_shorter_than_run_json_claims_is_lost_at_once(runs, tmp_path: Path) -> None:
    """run.json may claim 2**40 records (2**33 chunks): they are counted as lost by arithmetic,
    never enumerated or allocated for."""
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    huge = 2**40
    _edit_run_json(run, lambda m: m["chips"][2].update(records=huge, chunks=-(-huge // CHUNK)))
    summary = collect(run, tmp_path / "store", show_progress=False)
    f = {x["file"]: x for x in summary["file_counts"]}[json.loads((run / "run.json").read_text())["chips"][2]["file"]]
    assert f["expected"] == huge and f["kept"] + f["quarantined"] + f["lost"] == huge
    assert f["lost"] > huge - 10_000 and f["kept"] > 0


def test_analyze_of_a_damaged_raw_run_warns_as_collect_does(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    (run / "node1/chip0.strace").unlink()
    result = CliRunner().invoke(cli, ["analyze", str(run), "--report", "summary", "--format", "json"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "node1/chip0.strace (chip trace file missing)" in warning[0]
    assert json.loads(result.stdout)["summary"]


def test_a_damaged_size_field_in_the_header_keeps_the_chunks(runs, tmp_path: Path) -> None:
    """Run id, node and chip intact: the chunks (their CRCs seeded with that identity) are this
    file's, whatever the header's record-size or chunk-size bytes say."""
    for at in (14, 16):   # record size, records per chunk
        run = tmp_path / f"run{at}"
        shutil.copytree(runs["run"], run)
        path = run / "node0/chip1.strace"
        data = bytearray(path.read_bytes())
        data[at] ^= 1
        path.write_bytes(bytes(data))
        summary = collect(run, tmp_path / f"store{at}", show_progress=False)
        assert summary["events"] == summary["records_expected"] and summary["quarantined_pieces"] == 1


def test_garbage_of_fitting_chunk_headers_is_searched_within_a_budget(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    path = run / "node0/chip0.strace"
    data = path.read_bytes()
    junk = struct.pack("<4sIII", b"CHNK", 0, CHUNK, 0) * 20_000   # each fits slot 0; none checks out
    path.write_bytes(data[:FILE_HEADER.size] + junk + data[FILE_HEADER.size:])
    summary = collect(run, tmp_path / "store", show_progress=False)
    f = {x["file"]: x for x in summary["file_counts"]}["node0/chip0.strace"]
    assert f["kept"] + f["quarantined"] + f["lost"] == f["expected"]


def test_host_lines_too_long_or_out_of_time_are_set_aside(runs, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["run"], run)
    host = run / "node0/host.jsonl"
    extra = [b'{"type":"arrival","ts":-4.611686018e18,"request":77}', b"x" * (200 << 10)]
    host.write_bytes(host.read_bytes() + b"\n".join(extra) + b"\n")
    summary = collect(run, tmp_path / "store", show_progress=False)
    assert summary["host_events"]["quarantined"] == 2
    reasons = {r["reason"] for r in pq.read_table(tmp_path / "store" / "quarantine.parquet").to_pylist()}
    assert {"host event time beyond 2**62 ns once aligned", "host event line longer than 64 KiB"} <= reasons
    open_store(tmp_path / "store")   # what collect writes, the store opens
