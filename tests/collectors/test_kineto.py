"""PyTorch profiler (Kineto) / Chrome JSON collector, checked against the raw JSON."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sohuprof.collectors.kineto import collect_kineto, read_kineto
from sohuprof.errors import TraceFormatError
from sohuprof.schema import COLLECTIVES, COUNTERS, EVENTS
from sohuprof.store import open_store

A100 = Path(__file__).resolve().parents[1] / "data" / "kineto" / "nccl_data.json.gz"
GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation"}


@pytest.fixture(scope="module")
def raw() -> dict:
    """The A100 trace parsed with exact decimals: the reference for every check."""
    return json.loads(gzip.decompress(A100.read_bytes()), parse_float=Decimal)


@pytest.fixture(scope="module")
def raw_x(raw: dict) -> list[dict]:
    return [e for e in raw["traceEvents"] if e.get("ph") == "X" and e.get("cat") != "Trace"]


@pytest.fixture(scope="module")
def trace():
    return read_kineto(A100)


def column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=object)


def test_category_counts_match_raw(trace, raw_x: list[dict]) -> None:
    kernels = [e for e in raw_x if e["cat"] == "kernel"]
    nccl = [e for e in kernels if "nccl" in e["name"].lower()]
    expected = {
        "compute": len(kernels) - len(nccl),
        "communication": len(nccl),
        "memory": sum(e["cat"] in ("gpu_memcpy", "gpu_memset") for e in raw_x),
        "host": sum(e["cat"] not in ("kernel", "gpu_memcpy", "gpu_memset") for e in raw_x),
    }
    counts = trace.events.group_by("category").aggregate([("ts", "count")]).to_pydict()
    assert dict(zip([str(c) for c in counts["category"]], counts["ts_count"])) == expected
    counts = trace.metadata["counts"]
    assert trace.events.num_rows == len(raw_x) == counts["records_expected"] == counts["events"]
    assert counts["quarantined_records"] == counts["quarantined_pieces"] == counts["records_lost"] == 0
    assert counts["files"] == [{"file": A100.name, "rank": 0, "expected": len(raw_x), "kept": len(raw_x),
                                "quarantined": 0, "lost": 0, "duplicates_dropped": 0}]
    assert trace.quarantine.num_rows == 0
    assert trace.events.schema.equals(EVENTS.schema)


def test_times_are_exact_ns(trace, raw: dict, raw_x: list[dict]) -> None:
    base = raw["baseTimeNanoseconds"]
    ref = sorted((base + int(Decimal(e["ts"]) * 1000), int(Decimal(e["dur"]) * 1000)) for e in raw_x)
    got = sorted(zip(trace.events.column("ts").to_pylist(), trace.events.column("dur").to_pylist()))
    assert got == ref
    # Per category, the ns sum equals the exact decimal sum (no float drift).
    for cat in ("kernel", "gpu_memcpy", "cpu_op", "cuda_runtime"):
        exact = sum(Decimal(e["dur"]) * 1000 for e in raw_x if e["cat"] == cat)
        mask = [e["cat"] == cat for e in raw_x]
        assert exact == int(exact) and int(exact) > 0
        assert sum(int(Decimal(e["dur"]) * 1000) for e, m in zip(raw_x, mask) if m) == int(exact)
    kernels = trace.events.filter(pc.equal(trace.events.column("category"), "compute"))
    raw_kernel_ns = sum(int(Decimal(e["dur"]) * 1000) for e in raw_x
                        if e["cat"] == "kernel" and "nccl" not in e["name"].lower())
    assert pc.sum(kernels.column("dur")).as_py() == raw_kernel_ns


def test_rank_and_clock_from_kineto_fields(trace, raw: dict) -> None:
    assert trace.metadata["ranks"] == [0]
    assert set(trace.events.column("rank").to_pylist()) == {0}
    assert trace.metadata["clock_alignment"]["base_time_ns"] == {"0": raw["baseTimeNanoseconds"]}
    assert trace.metadata["clock_alignment"]["ts_exact_ns"] is True
    assert trace.metadata["parallel"]["world_size"] == 2
    assert trace.metadata["hardware"] == {"devices": ["NVIDIA A100-PG509-200"]}


def test_tracks_and_ops(trace) -> None:
    ev = trace.events
    category, track, op = column(ev, "category"), column(ev, "track"), column(ev, "op")
    gpu = category != "host"
    assert set(track[gpu]) == {"stream 7", "stream 40"}
    assert all(t.startswith("thread ") for t in track[~gpu & ~np.char.startswith(track.astype(str), "stream")])
    assert set(op[category == "host"]) == {"host"}
    assert set(op[category == "memory"]) == {"memcpy", "memset"}
    names = column(ev, "name")
    compute = category == "compute"
    assert (op[compute & (np.char.find(names.astype(str), "gemm") >= 0)] == "gemm").all()
    assert set(op[compute & (np.char.find(names.astype(str), "bn_fw") >= 0)]) == {"norm"}
    assert {"gemm", "norm", "elementwise"} <= set(op[compute])
    assert pc.sum(pc.is_valid(ev.column("flops"))).as_py() == 0  # not recorded: null, not invented
    corr = column(ev, "correlation")
    assert all(c is not None for c in corr[compute])


def test_nccl_kernels_are_collectives(trace, raw_x: list[dict]) -> None:
    ev = trace.events
    comm = ev.filter(pc.equal(ev.column("category"), "communication"))
    assert all("nccl" in n.lower() for n in comm.column("name").to_pylist())
    kinds = {}
    for k in comm.column("op").to_pylist():
        kinds[k] = kinds.get(k, 0) + 1
    raw_kinds = {}
    for e in raw_x:
        if e["cat"] == "kernel" and "nccl" in e["name"].lower():
            kind = {"allreduce": "all_reduce", "broadcast": "broadcast"}[e["args"]["Collective name"]]
            raw_kinds[kind] = raw_kinds.get(kind, 0) + 1
    assert kinds == raw_kinds == {"all_reduce": 15, "broadcast": 6}
    # coll_id: 0..20 in ts order within process group 0; the collectives table mirrors it.
    comm = comm.sort_by("ts")
    assert comm.column("coll_id").to_pylist() == list(range(21))
    assert pc.sum(pc.is_valid(ev.column("coll_id"))).as_py() == 21
    coll = trace.collectives
    assert coll.schema.equals(COLLECTIVES.schema)
    assert coll.column("coll_id").to_pylist() == list(range(21))
    assert coll.column("kind").to_pylist() == comm.column("op").to_pylist()
    assert coll.column("arrive").to_pylist() == comm.column("ts").to_pylist()
    assert coll.column("start").to_pylist() == coll.column("arrive").to_pylist()  # one rank only
    first_allreduce = next(e for e in sorted(raw_x, key=lambda e: e["ts"])
                           if e["cat"] == "kernel" and "AllReduce" in e["name"])
    row = coll.column("kind").to_pylist().index("all_reduce")
    assert coll.column("bytes")[row].as_py() == first_allreduce["args"]["In msg nelems"] * 4  # Float


def test_steps_match_profiler_step_windows(trace, raw: dict, raw_x: list[dict]) -> None:
    base = raw["baseTimeNanoseconds"]
    windows = [(int(e["name"].split("#")[1]), base + int(Decimal(e["ts"]) * 1000),
                base + int(Decimal(e["ts"]) * 1000) + int(Decimal(e["dur"]) * 1000))
               for e in raw_x if e["name"].startswith("ProfilerStep#")]
    assert [w[0] for w in sorted(windows)] == [4, 5, 6]
    ts = trace.events.column("ts").to_pylist()
    expected = [next((n for n, start, end in windows if start <= t < end), None) for t in ts]
    assert trace.events.column("step").to_pylist() == expected


def rewrite(doc: dict, path: Path, *, rank: int | None = None, shift_us: float = 0.0) -> Path:
    """Write a copy of a Kineto doc as compact (optionally gzipped) JSON with another rank."""
    doc = dict(doc)
    if rank is not None:
        doc["distributedInfo"] = {**doc["distributedInfo"], "rank": rank}
    if shift_us:
        doc["traceEvents"] = [{**e, "ts": e["ts"] + shift_us} if "ts" in e else e
                              for e in doc["traceEvents"]]
    data = orjson.dumps(doc)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture(scope="module")
def doc() -> dict:
    return orjson.loads(gzip.decompress(A100.read_bytes()))


def test_rank_from_compact_distributed_info(tmp_path: Path, doc: dict) -> None:
    # Compact JSON, misleading file name, and no .gz suffix on gzipped content.
    path = rewrite(doc, tmp_path / "rank0_trace.json.gz", rank=3)
    (tmp_path / "rank0_trace.json").write_bytes(path.read_bytes())
    path.unlink()
    got = read_kineto(tmp_path / "rank0_trace.json")
    assert set(got.events.column("rank").to_pylist()) == {3}
    assert got.metadata["ranks"] == [3]


def test_directory_of_ranks(tmp_path: Path, doc: dict) -> None:
    rewrite(doc, tmp_path / "a.json", rank=0)
    rewrite(doc, tmp_path / "b.json.gz", rank=1, shift_us=5.0)  # rank 1 arrives 5 us later
    (tmp_path / "notes.txt").write_text("ignored")
    got = read_kineto(tmp_path)
    assert got.metadata["ranks"] == [0, 1]
    assert got.events.num_rows == 2 * read_kineto(A100).events.num_rows
    coll = got.collectives
    assert coll.num_rows == 42 and coll.column("rank").to_pylist() == [0, 1] * 21
    arrive = np.array(coll.column("arrive").to_pylist()).reshape(21, 2)
    start = np.array(coll.column("start").to_pylist()).reshape(21, 2)
    assert (arrive[:, 1] - arrive[:, 0] == 5000).all()
    assert (start == arrive[:, 1:]).all()  # the last arrival, seen by both ranks


def test_collect_writes_store(tmp_path: Path, trace) -> None:
    summary = collect_kineto(A100, tmp_path / "store")
    assert summary["events"] == trace.events.num_rows and summary["ranks"] == [0]
    assert summary["collectives"] == 21
    store = open_store(tmp_path / "store")
    assert store.manifest["source"]["format"] == "kineto"
    assert store.manifest["counts"]["events"] == trace.events.num_rows
    back = store.read("events")
    assert back.column("ts").to_pylist() == trace.events.column("ts").to_pylist()
    assert back.column("name").to_pylist() == trace.events.column("name").to_pylist()
    assert store.read("collectives").equals(trace.collectives)


# Written as text: a Python float cannot hold these timestamps to the ns, which is the point.
CHROME = """[
{"ph": "M", "name": "thread_name", "pid": 1, "tid": 9, "args": {"name": "decoder"}},
{"ph": "X", "name": "step", "cat": "app", "pid": 1, "tid": 9, "ts": 1711964646123456.789, "dur": 10.5},
{"ph": "X", "name": "fused_gemm", "cat": "app", "pid": 1, "tid": 9,
 "ts": 1711964646123457.001, "dur": 0.001, "args": {"flops": 123456789}},
{"ph": "C", "name": "queue", "pid": 1, "ts": 1711964646123458, "args": {"depth": 3}},
{"ph": "i", "name": "mark", "pid": 1, "tid": 9, "ts": 1711964646123459}
]"""


def test_chrome_epoch_microseconds_exact(tmp_path: Path) -> None:
    # The JSON Array Format may leave off the closing bracket.
    (tmp_path / "t.json").write_text(CHROME[:-1] + ",\n")
    got = read_kineto(tmp_path / "t.json")
    ev = got.events
    assert ev.column("ts").to_pylist() == [1711964646123456789, 1711964646123457001]
    assert ev.column("dur").to_pylist() == [10500, 1]
    assert set(ev.column("track").to_pylist()) == {"decoder"}
    assert set(ev.column("category").to_pylist()) == {"host"}
    assert ev.column("flops").to_pylist() == [None, 123456789]
    assert set(ev.column("rank").to_pylist()) == {0}
    assert got.metadata["source"]["format"] == "chrome"
    assert got.metadata["clock_alignment"]["ts_exact_ns"] is True
    assert got.counters.schema.equals(COUNTERS.schema)
    assert got.counters.to_pydict()["counter"] == ["queue"]
    assert got.counters.column("ts").to_pylist() == [1711964646123458000]


def test_chrome_counters_null_args_and_process_names(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("""[
{"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "server"}},
{"ph": "M", "name": "thread_name", "pid": 2, "tid": 4, "args": null},
{"ph": "X", "name": "a", "pid": 1, "tid": 3, "ts": 1.5, "dur": 2, "args": null},
{"ph": "X", "name": "b", "pid": 2, "tid": 4, "ts": 2, "dur": 1, "args": {}},
{"ph": "C", "name": "mem", "ts": 3, "args": {"used": 7, "note": "x", "ok": true, "free": 2.5}},
{"ph": "C", "name": "mem", "ts": 4, "args": {"free": 1, "used": 8}},
{"ph": "C", "name": "q", "ts": 5, "args": {"depth": [1, 2]}},
{"ph": "C", "name": "none", "ts": 6}
""")  # no closing bracket: the counters are decoded from the completed text too
    got = read_kineto(tmp_path / "t.json")
    assert got.events.column("track").to_pylist() == ["pid 1: thread 3", "server: thread 4"]
    assert got.events.column("correlation").to_pylist() == [None, None]
    # Numeric series only (not bools, strings or lists), in each event's key order.
    assert got.counters.to_pydict() == {
        "ts": [3000, 3000, 4000, 4000], "rank": [0] * 4,
        "counter": ["mem.used", "mem.free", "mem.free", "mem.used"], "value": [7.0, 2.5, 1.0, 8.0]}


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing.json", "does not exist"),
    (lambda d: d, "holds no .json or .json.gz trace files"),
    (lambda d: (d / "x.json").write_bytes(bytes(range(256)) * 4) and d / "x.json", "is not JSON"),
    (lambda d: (d / "x.json.gz").write_bytes(b"\x1f\x8b" + b"junk" * 10) and d / "x.json.gz",
     "damaged gzip"),
    (lambda d: (d / "x.json").write_text('{"foo": 1}') and d / "x.json",
     "not a trace: an object without a 'traceEvents' list"),
    (lambda d: (d / "x.json").write_text("[1, 2]") and d / "x.json", "not objects"),
    (lambda d: (d / "x.json").write_text('{"traceEvents": {"ph": "X"}}') and d / "x.json",
     "not a trace: an object without a 'traceEvents' list"),
    (lambda d: (d / "x.json").write_text('"trace"') and d / "x.json", "not a trace: str"),
    (lambda d: (d / "x.json").write_text('[{"ph": "X", "ts": 1, "dur": 1, "args": [1]}]') and d / "x.json",
     r"none of its 1 complete \('X'\) events is sound \(1 with 'args' is not an object\)"),
    (lambda d: (d / "x.json").write_text('[{"ph": "X", "ts": 1, "dur": 1}, 2, {"ph": ') and d / "x.json",
     "is not JSON"),
    (lambda d: (d / "x.json").write_text('[{"ph": "B", "ts": 1, "name": "a"}, '
                                         '{"ph": "E", "ts": 2}]') and d / "x.json",
     "'B'/'E' duration events"),
    (lambda d: (d / "x.json").write_text('[{"ph": "X", "ts": "soon", "dur": 1}]') and d / "x.json",
     "1 with 'ts' is not a number"),
])
def test_bad_input(tmp_path: Path, setup, message: str) -> None:
    path = setup(tmp_path)
    with pytest.raises(TraceFormatError, match=message) as info:
        read_kineto(path)
    assert "\n" not in str(info.value)


def test_mixed_directory(tmp_path: Path, doc: dict, caplog: pytest.LogCaptureFixture) -> None:
    """A plain Chrome file and a sidecar JSON beside a Kineto trace are skipped, each named."""
    (tmp_path / "in").mkdir()
    rewrite(doc, tmp_path / "in" / "a.json", rank=0)
    (tmp_path / "in" / "b.json").write_text(CHROME)
    (tmp_path / "in" / "execution_details.json").write_text('{"gpu": "MI300X", "runs": 3}')
    trace = read_kineto(tmp_path / "in")
    assert trace.metadata["ranks"] == [0]
    assert {s["file"] for s in trace.metadata["counts"]["skipped_files"]} == {"b.json", "execution_details.json"}
    assert "skipped b.json" in caplog.text and "skipped execution_details.json" in caplog.text
    summary = collect_kineto(tmp_path / "in", tmp_path / "store")
    assert summary["events"] == trace.events.num_rows


def test_duplicate_rank(tmp_path: Path, doc: dict) -> None:
    rewrite(doc, tmp_path / "a.json", rank=1)
    rewrite(doc, tmp_path / "b.json", rank=1)
    with pytest.raises(TraceFormatError, match="are both rank 1"):
        read_kineto(tmp_path)


def test_failed_collect_writes_nothing(tmp_path: Path, doc: dict) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text("[{broken")
    (tmp_path / "in" / "b.json").write_text("{broken")
    with pytest.raises(TraceFormatError):
        collect_kineto(tmp_path / "in", tmp_path / "store")
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_an_unreadable_rank_file_is_refused_and_the_others_kept(tmp_path: Path, doc: dict) -> None:
    (tmp_path / "in").mkdir()
    rewrite(doc, tmp_path / "in" / "a.json", rank=0)
    (tmp_path / "in" / "b.json").write_text("{broken")
    summary = collect_kineto(tmp_path / "in", tmp_path / "store")
    assert summary["events"] > 0 and [f["file"] for f in summary["refused_files"]] == ["b.json"]
    assert summary["events"] + summary["quarantined_records"] + summary["records_lost"] == summary["records_expected"]
    q = pq.read_table(tmp_path / "store" / "quarantine.parquet").to_pylist()
    assert any(row["source"] == "b.json" and row["reason"].startswith("file refused") for row in q)
