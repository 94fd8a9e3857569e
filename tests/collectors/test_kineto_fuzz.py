"""Fuzzing the Kineto / Chrome collector: damaged traces end in a sound store or one clear line.

Small real and synthetic traces are mutated (wrong types, negative / huge / non-finite numbers,
missing keys, truncated text, deep nesting, huge ids, damaged top-level fields). Every case
must either collect, with the accounting identity holding per file and in total and every
stored event sane, or raise a :class:`~sohuprof.errors.SohuprofError` with a one-line
message; any other exception is a defect. Hypothesis runs derandomized, so CI is stable.
"""

from __future__ import annotations

import copy
import functools
import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sohuprof.cli import cli
from sohuprof.collectors.kineto import collect_kineto, read_kineto
from sohuprof.collectors.kineto.checks import MAX_ID, MAX_NS, REASONS
from sohuprof.collectors import collect
from sohuprof.errors import SohuprofError, TraceFormatError
from sohuprof.store import open_store
from sohuprof.schema import EVENTS, QUARANTINE
from sohuprof.store import open_store

A100 = Path(__file__).resolve().parents[1] / "data" / "kineto" / "nccl_data.json.gz"
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- base traces --------------------------------------------------------------------------------

def _kernel(ts: float, name: str, **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts, "dur": 3.5,
            "args": {"device": 0, "stream": 7, "correlation": int(ts), **args}}


def tiny_kineto() -> dict[str, Any]:
    """A Kineto trace with one of each thing the collector reads."""
    return {
        "schemaVersion": 1, "baseTimeNanoseconds": 1_700_000_000_000_000_000,
        "distributedInfo": {"backend": "nccl", "rank": 1, "world_size": 2},
        "deviceProperties": [{"id": 0, "name": "NVIDIA A100"}],
        "traceEvents": [
            {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#3", "pid": 11, "tid": 11,
             "ts": 100.0, "dur": 200.0},
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 11, "tid": 11, "ts": 101.5,
             "dur": 10.25, "args": {"flops": 4096}},
            {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 11, "tid": 11,
             "ts": 102.0, "dur": 2.0, "args": {"correlation": 120}},
            _kernel(120.0, "ampere_sgemm_128x64_nn"),
            _kernel(130.0, "ncclKernel_AllReduce_RING_LL_Sum_float", **{
                "Collective name": "allreduce", "Process Group Name": "0", "In msg nelems": 1024,
                "dtype": "Float", "Group size": 2, "Process Group Ranks": "[0, 1]"}),
            _kernel(135.0, "ncclDevKernel_SendRecv", **{
                "Collective name": "send", "Process Group Name": "0", "Src Rank": 1, "Dst Rank": 0}),
            {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD", "pid": 0, "tid": 7,
             "ts": 140.0, "dur": 1.0, "args": {"device": 0, "stream": 7, "bytes": 4096}},
            {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 11, "tid": 11, "ts": 103.0,
             "args": {"Device Type": 1, "Device Id": 0, "Addr": 139926520725504, "Bytes": 4096,
                      "Total Allocated": 8192, "Total Reserved": 2**21}},
            {"ph": "s", "cat": "ac2g", "id": 120, "pid": 11, "tid": 11, "ts": 102.0},
            {"ph": "f", "cat": "ac2g", "id": 120, "pid": 0, "tid": 7, "ts": 120.0, "bp": "e"},
            {"ph": "M", "name": "thread_name", "pid": 11, "tid": 11, "args": {"name": "main"}},
            {"ph": "C", "name": "mem", "pid": 11, "ts": 150.0, "args": {"used": 7, "free": 2.5}},
            {"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans",
             "tid": "PyTorch Profiler", "ts": 99.0, "dur": 300.0},
        ],
    }


def tiny_chrome() -> list[dict[str, Any]]:
    """A plain Chrome (array format) trace."""
    return [
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "server"}},
        {"ph": "X", "name": "decode", "cat": "app", "pid": 2, "tid": 4, "ts": 1711964646123456.789,
         "dur": 10.5},
        {"ph": "X", "name": "sample", "cat": "app", "pid": 1, "tid": 3, "ts": 1711964646123460,
         "dur": 1, "args": None},
        {"ph": "C", "name": "queue", "pid": 2, "ts": 1711964646123458, "args": {"depth": 3}},
        {"ph": "i", "name": "mark", "pid": 2, "tid": 4, "ts": 1711964646123459},
    ]


@functools.cache
def a100_slice() -> bytes:
    """The A100 trace's top-level keys and its first 300 events, as compact JSON."""
    doc = orjson.loads(gzip.decompress(A100.read_bytes()))
    doc["traceEvents"] = doc["traceEvents"][:300]
    return orjson.dumps(doc)


def base_doc(which: str) -> Any:
    if which == "kineto":
        return tiny_kineto()
    if which == "chrome":
        return tiny_chrome()
    return orjson.loads(a100_slice())


# -- mutations ----------------------------------------------------------------------------------

EVENT_KEYS = ("ph", "cat", "name", "pid", "tid", "ts", "dur", "args")
ARG_KEYS = ("device", "stream", "correlation", "flops", "Collective name", "Process Group Name",
            "In msg nelems", "dtype", "name", "Group size", "Process Group Ranks", "Src Rank", "Dst Rank", "bytes",
            "Bytes", "Addr", "Total Allocated", "Total Reserved", "Device Type")
TOP_KEYS = ("baseTimeNanoseconds", "distributedInfo", "deviceProperties", "traceEvents", "host_name")

HUGE_INTS = st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, 2**63, 2**64, -2**63 - 1, 10**30,
                             10**400, -1, -(2**40)])
HUGE_FLOATS = st.sampled_from([1e20, 1e300, -1e300, 4.6e15, -0.5, 1e-300, 2.0**53 + 1,
                               float("inf"), float("-inf"), float("nan")])
WEIRD = st.one_of(
    HUGE_INTS, HUGE_FLOATS, st.integers(-10, 10), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.booleans(), st.none(), st.just([1, [2]]), st.just({"a": {"b": 1}}),
    st.just([]), st.just({}),
)


def _nest(depth: int) -> str:
    """A placeholder :func:`serialize` turns into ``depth`` nested lists (json.dumps and
    deepcopy would recurse as deep themselves)."""
    return f"@@nest{depth}@@"


@st.composite
def mutation(draw: st.DrawFn) -> tuple[str, Any]:
    """One change to a trace document: (kind, parameters)."""
    kind = draw(st.sampled_from(["event_key", "event_key", "event_key", "arg_key", "arg_key",
                                 "delete_key", "top_key", "rank", "replace_event", "nest",
                                 "duplicate"]))
    if kind == "event_key":
        return kind, (draw(st.integers(0, 10**6)), draw(st.sampled_from(EVENT_KEYS)), draw(WEIRD))
    if kind == "arg_key":
        return kind, (draw(st.integers(0, 10**6)), draw(st.sampled_from(ARG_KEYS)), draw(WEIRD))
    if kind == "delete_key":
        return kind, (draw(st.integers(0, 10**6)), draw(st.sampled_from(EVENT_KEYS)))
    if kind == "top_key":
        return kind, (draw(st.sampled_from(TOP_KEYS)), draw(WEIRD))
    if kind == "rank":
        return kind, draw(WEIRD)
    if kind == "replace_event":
        return kind, (draw(st.integers(0, 10**6)), draw(WEIRD))
    if kind == "nest":
        return kind, (draw(st.integers(0, 10**6)), draw(st.sampled_from([5, 50, 2000, 20000])))
    return kind, draw(st.integers(0, 10**6))


def apply(doc: Any, change: tuple[str, Any]) -> Any:
    """``doc`` with one mutation applied (a deep copy; the base is never changed)."""
    doc = copy.deepcopy(doc)
    events = doc if isinstance(doc, list) else doc.get("traceEvents")
    kind, params = change
    if kind in ("top_key", "rank"):
        if isinstance(doc, dict):
            if kind == "rank":
                doc["distributedInfo"] = {"rank": params, "world_size": 2}
            else:
                doc[params[0]] = params[1]
        return doc
    if not isinstance(events, list) or not events:
        return doc
    i = params[0] % len(events) if isinstance(params, tuple) else params % len(events)
    event = events[i]
    if kind == "replace_event":
        events[i] = params[1]
    elif kind == "duplicate":
        events.insert(i, copy.deepcopy(event))
    elif not isinstance(event, dict):
        pass
    elif kind == "event_key":
        event[params[1]] = params[2]
    elif kind == "delete_key":
        event.pop(params[1], None)
    elif kind == "arg_key":
        args = event.get("args")
        if isinstance(args, dict):
            args[params[1]] = params[2]
        else:
            event["args"] = {params[1]: params[2]}
    elif kind == "nest":
        event["args"] = {"deep": _nest(params[1])}
    return doc


def serialize(doc: Any) -> bytes:
    """JSON text; NaN and inf come out as ``NaN`` / ``Infinity`` (not JSON: the parser's turn)."""
    text = json.dumps(doc, allow_nan=True)
    for depth in (5, 50, 2000, 20000):
        text = text.replace(f'"@@nest{depth}@@"', "[" * depth + "1" + "]" * depth)
    return text.encode()


# -- the property -------------------------------------------------------------------------------

def check_outcome(path: Path) -> None:
    """Read ``path``: a sane trace with balanced accounting, or one clear SohuprofError line."""
    try:
        trace = read_kineto(path)
    except SohuprofError as exc:
        message = str(exc)
        assert message and "\n" not in message, message
        assert path.name in message or str(path.parent) in message, message
        return
    ev = trace.events
    counts = trace.metadata["counts"]
    assert ev.schema.equals(EVENTS.schema)
    assert ev.num_rows > 0
    # Accounting: per file and in total.
    for f in counts["files"]:
        assert f["kept"] + f["quarantined"] + f["lost"] == f["expected"], f
    assert counts["events"] == ev.num_rows == sum(f["kept"] for f in counts["files"])
    assert counts["records_expected"] == (counts["events"] + counts["quarantined_records"]
                                          + counts["records_lost"])
    q = trace.quarantine
    assert q.schema.equals(QUARANTINE.schema)
    assert counts["quarantined_pieces"] == q.num_rows
    reasons = q.column("reason").to_pylist()
    records = q.column("records").to_pylist()
    event_rows = [r for r, why in zip(records, reasons) if not why.startswith("counter event: ")]
    assert sum(event_rows) == counts["quarantined_records"]
    assert sum(records) - sum(event_rows) == counts["counter_events_quarantined"]
    assert all(why.removeprefix("counter event: ") in REASONS for why in reasons)
    assert all(len(raw) <= 512 for raw in q.column("raw").to_pylist())
    assert len(set(reasons)) == len(reasons)  # one row per reason and file
    # Every stored event is sane.
    ts = ev.column("ts").to_numpy()
    dur = ev.column("dur").to_numpy()
    assert (dur >= 0).all() and (dur < MAX_NS).all()
    assert (np.abs(ts) < MAX_NS).all()
    for name in ("rank", "chip"):
        col = ev.column(name).to_numpy()
        assert ((col >= 0) & (col < MAX_ID)).all(), name
    assert pc.min(pc.fill_null(ev.column("flops"), 0)).as_py() >= 0
    counters = trace.counters
    if counters.num_rows:
        assert (np.abs(counters.column("ts").to_numpy()) < MAX_NS).all()
        assert np.isfinite(counters.column("value").to_numpy()).all()


def write(tmp: Path, text: bytes, *, gz: bool) -> Path:
    path = tmp / ("trace.json.gz" if gz else "trace.json")
    path.write_bytes(gzip.compress(text, compresslevel=1) if gz else text)
    return path


@pytest.mark.parametrize("which", ["kineto", "chrome", "a100"])
def test_bases_are_clean(tmp_path: Path, which: str) -> None:
    trace = read_kineto(write(tmp_path, serialize(base_doc(which)), gz=False))
    assert trace.quarantine.num_rows == 0
    counts = trace.metadata["counts"]
    assert counts["quarantined_records"] == 0 and counts["events"] == counts["records_expected"]
    check_outcome(tmp_path / "trace.json")


@FUZZ
@given(which=st.sampled_from(["kineto", "chrome", "a100"]),
       changes=st.lists(mutation(), min_size=1, max_size=4), gz=st.booleans())
def test_mutated_traces(which: str, changes: list[tuple[str, Any]], gz: bool) -> None:
    doc = base_doc(which)
    for change in changes:
        doc = apply(doc, change)
    with tempfile.TemporaryDirectory() as tmp:
        check_outcome(write(Path(tmp), serialize(doc), gz=gz))


@settings(FUZZ, max_examples=80)
@given(which=st.sampled_from(["kineto", "chrome", "a100"]), cut=st.floats(0.0, 1.0),
       tail=st.sampled_from([b"", b",", b"]", b"}", b"\x00", b"\xff"]))
def test_truncated_traces(which: str, cut: float, tail: bytes) -> None:
    text = serialize(base_doc(which))
    with tempfile.TemporaryDirectory() as tmp:
        check_outcome(write(Path(tmp), text[:int(len(text) * cut)] + tail, gz=False))


@settings(FUZZ, max_examples=30)
@given(which=st.sampled_from(["kineto", "a100"]), cut=st.floats(0.0, 1.0))
def test_truncated_gzip(which: str, cut: float) -> None:
    data = gzip.compress(serialize(base_doc(which)), compresslevel=1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json.gz"
        path.write_bytes(data[:int(len(data) * cut)])
        check_outcome(path)


@settings(FUZZ, max_examples=40)
@given(changes=st.lists(mutation(), min_size=1, max_size=3), cut=st.none() | st.floats(0.5, 1.0))
def test_collect_to_store_balances(changes: list[tuple[str, Any]], cut: float | None) -> None:
    """Through the store: manifest counts equal the summary's, the quarantine table is written."""
    doc = tiny_kineto()
    for change in changes:
        doc = apply(doc, change)
    text = serialize(doc)
    text = text if cut is None else text[:int(len(text) * cut)]
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), text, gz=False)
        try:
            summary = collect_kineto(path, Path(tmp) / "store")
        except SohuprofError as exc:
            assert "\n" not in str(exc)
            assert not (Path(tmp) / "store").exists()
            return
        store = open_store(Path(tmp) / "store")
        counts = store.manifest["counts"]
        assert counts["files"] == summary["file_counts"]
        assert summary["events"] + summary["quarantined_records"] + summary["records_lost"] \
            == summary["records_expected"]
        assert store.read("events").num_rows == summary["events"]
        quarantine = store.read("quarantine")
        assert quarantine.num_rows == summary["quarantined_pieces"]
        assert sum(quarantine.column("records").to_pylist()) == (
            summary["quarantined_records"] + summary["counter_events_quarantined"])


# -- named cases the issue reports --------------------------------------------------------------

def _one_bad(tmp_path: Path, **changes: Any) -> Any:
    doc = tiny_kineto()
    doc["traceEvents"][3].update(changes)  # the gemm kernel
    path = write(tmp_path, serialize(doc), gz=False)
    return read_kineto(path)


@pytest.mark.parametrize("changes, reason", [
    ({"dur": -5}, "'dur' is negative"),
    ({"ts": 1e20}, "'ts' is out of range"),
    ({"ts": 1e300}, "'ts' is out of range"),
    ({"ts": 10**30}, "'ts' is out of range"),
    ({"ts": "soon"}, "'ts' is not a number"),
    ({"dur": None}, "'dur' is missing"),
    ({"args": [1, 2]}, "'args' is not an object"),
    ({"args": "x"}, "'args' is not an object"),
    ({"args": {"device": 2**40}}, "'args.device' is not an integer"),
    ({"args": {"device": "0"}}, "'args.device' is not an integer"),
    ({"args": {"stream": [7]}}, "'args.stream' is not"),
    ({"args": {"correlation": 2**70}}, "'args.correlation' is not"),
    ({"args": {"flops": -1}}, "'args.flops' is not"),
    ({"tid": {"a": 1}}, "'tid' is not"),
    ({"name": 5}, "'name' is not a string"),
])
def test_bad_event_is_set_aside(tmp_path: Path, changes: dict[str, Any], reason: str) -> None:
    trace = _one_bad(tmp_path, **changes)
    clean = read_kineto(_clean_path(tmp_path))
    assert trace.events.num_rows == clean.events.num_rows - 1
    q = trace.quarantine.to_pylist()
    assert len(q) == 1 and q[0]["records"] == 1 and q[0]["reason"].startswith(reason)
    assert q[0]["source"] == "trace.json" and q[0]["raw"].startswith(b'{"ph": "X", "cat": "kernel"')
    text = (tmp_path / "trace.json").read_bytes()
    assert text[q[0]["offset"]:q[0]["offset"] + q[0]["length"]] == q[0]["raw"]
    f = trace.metadata["counts"]["files"][0]
    assert (f["expected"], f["kept"], f["quarantined"]) == (clean.events.num_rows,
                                                            clean.events.num_rows - 1, 1)


def _clean_path(tmp_path: Path) -> Path:
    (tmp_path / "clean").mkdir(exist_ok=True)
    return write(tmp_path / "clean", serialize(tiny_kineto()), gz=False)


def test_a_million_bad_events_make_one_row(tmp_path: Path) -> None:
    """Quarantine rows are per reason, not per event; the device ids are never an array size."""
    doc = tiny_kineto()
    bad = [_kernel(200.0 + i, "gemm", device=2**40 + i) for i in range(20_000)]
    doc["traceEvents"] += bad + [dict(e, dur=-1.0) for e in bad[:5_000]]
    trace = read_kineto(write(tmp_path, serialize(doc), gz=False))
    rows = {r["reason"].split(" is ")[0]: r["records"] for r in trace.quarantine.to_pylist()}
    assert rows == {"'args.device'": 20_000, "'dur'": 5_000}


@pytest.mark.parametrize("top, message", [
    ({"baseTimeNanoseconds": 2**63 - 10}, "'baseTimeNanoseconds' should be an integer"),
    ({"baseTimeNanoseconds": -1}, "'baseTimeNanoseconds' should be an integer"),
    ({"baseTimeNanoseconds": "1700000000000000000"}, "'baseTimeNanoseconds' should be an integer"),
    ({"distributedInfo": {"rank": 2**40}}, r"'distributedInfo.rank' should be an integer in \[0, 2\*\*31\)"),
    ({"distributedInfo": {"rank": True}}, "'distributedInfo.rank'"),
])
def test_bad_file_level_field_is_one_line(tmp_path: Path, top: dict[str, Any], message: str) -> None:
    doc = {**tiny_kineto(), **top}
    with pytest.raises(SohuprofError, match=message) as info:
        read_kineto(write(tmp_path, serialize(doc), gz=False))
    assert "\n" not in str(info.value) and "trace.json" in str(info.value)


def test_base_time_near_the_limit_counts_events_that_would_pass_it(tmp_path: Path) -> None:
    doc = {**tiny_kineto(), "baseTimeNanoseconds": MAX_NS - 125_000}  # events at 99..140 us
    trace = read_kineto(write(tmp_path, serialize(doc), gz=False))
    assert (trace.events.column("ts").to_numpy() < MAX_NS).all()
    assert trace.metadata["counts"]["quarantined_records"] > 0
    assert all(r["reason"].removeprefix("counter event: ").startswith("'ts' is out of range")
               for r in trace.quarantine.to_pylist())


@pytest.mark.parametrize("text", [
    b'{"traceEvents": [{"ph": "X", "ts": 1, "dur": 1, "args": {"x": ' + b"[" * 100_000
    + b"]" * 100_000 + b"}}]}",
    b"[" * 100_000,
    b'[{"ph": "X", "ts": 1e400, "dur": 1}]',
    b'[{"ph": "X", "ts": NaN, "dur": 1}]',
])
def test_unreadable_json_is_one_line(tmp_path: Path, text: bytes) -> None:
    with pytest.raises(SohuprofError) as info:
        read_kineto(write(tmp_path, text, gz=False))
    assert "\n" not in str(info.value) and "trace.json" in str(info.value)


# -- the CLI ------------------------------------------------------------------------------------

BAD_TRACES = {
    "deep": b"[" * 50_000,
    "all_bad": serialize([{"ph": "X", "name": "k", "ts": 1, "dur": -1}]),
    "base": serialize({**tiny_kineto(), "baseTimeNanoseconds": 2**63 - 1}),
    "rank": serialize({**tiny_kineto(), "distributedInfo": {"rank": 2**40}}),
    "truncated": serialize(tiny_kineto())[:200],
    "not_trace": b'{"foo": 1}',
}


@pytest.mark.parametrize("command", ["collect", "analyze"])
@pytest.mark.parametrize("name", sorted(BAD_TRACES))
def test_cli_bad_trace_is_one_line(tmp_path: Path, command: str, name: str) -> None:
    path = write(tmp_path, BAD_TRACES[name], gz=False)
    args = [command, str(path)] + (["-o", str(tmp_path / "store")] if command == "collect" else [])
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0, result.output
    stderr = result.stderr.strip()
    assert len(stderr.splitlines()) == 1, stderr
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "store").exists()


def test_cli_collect_partly_bad_trace_warns_and_keeps_the_rest(tmp_path: Path) -> None:
    doc = tiny_kineto()
    doc["traceEvents"][3]["dur"] = -1
    path = write(tmp_path, serialize(doc), gz=False)
    result = CliRunner().invoke(cli, ["collect", str(path), "-o", str(tmp_path / "store")])
    assert result.exit_code == 0, result.output
    assert "warning" in result.stderr and "1 quarantined" in result.stderr, result.stderr
    assert len([line for line in result.stderr.splitlines() if not line.startswith("wrote ")]) == 1
    counts = open_store(tmp_path / "store").manifest["counts"]
    assert counts["quarantined_records"] == 1 and counts["records_expected"] == counts["events"] + 1


@pytest.mark.parametrize("cut", ["dur", "args", "name", "ph"])
def test_chrome_trace_cut_mid_event_keeps_the_whole_ones(tmp_path: Path, cut: str) -> None:
    """A writer that died mid-entry: every whole entry kept, the cut complete event lost."""
    events = [{"ph": "X", "name": f"op{i}", "cat": "app", "pid": 1, "tid": 2, "ts": 10.0 * i,
               "dur": 5.0, "args": {"flops": i}} for i in range(6)]
    text = serialize(events)
    last = text.rindex(b'{"ph"')
    text = text[:text.index(f'"{cut}"'.encode(), last) + 3]  # inside the last event
    path = write(tmp_path, text, gz=False)
    trace = read_kineto(path)
    files = trace.metadata["counts"]["files"]
    lost = 0 if cut == "ph" else 1  # cut inside its "ph": nothing says it was a complete event
    assert files == [{"file": "trace.json", "rank": 0, "expected": 5 + lost, "kept": 5,
                      "quarantined": 0, "lost": lost, "duplicates_dropped": 0}]
    assert trace.metadata["counts"]["records_lost"] == lost
    assert trace.events.column("name").to_pylist() == [f"op{i}" for i in range(5)]
    check_outcome(path)


def test_damage_inside_a_chrome_trace_is_refused_not_cut(tmp_path: Path) -> None:
    """Only a cut is recovered: a bad byte mid-file would drop the sound entries after it."""
    text = bytearray(serialize(tiny_chrome()))
    text[len(text) // 2] = ord("\x01")
    with pytest.raises(SohuprofError, match="is not JSON"):
        read_kineto(write(tmp_path, bytes(text)[:-1], gz=False))


def test_directory_accounting_per_file(tmp_path: Path) -> None:
    """Each rank's file balances on its own; a damaged file's bad events are named by file."""
    clean, damaged = tiny_kineto(), tiny_kineto()
    clean["distributedInfo"]["rank"] = 0
    damaged["traceEvents"][1]["dur"] = -1.0
    damaged["traceEvents"][2]["args"] = "oops"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rank0.json").write_bytes(serialize(clean))
    (tmp_path / "in" / "rank1.json.gz").write_bytes(gzip.compress(serialize(damaged)))
    summary = collect_kineto(tmp_path / "in", tmp_path / "store")
    files = {f["file"]: f for f in summary["file_counts"]}
    assert files["rank0.json"]["quarantined"] == 0 and files["rank0.json"]["rank"] == 0
    assert files["rank1.json.gz"]["quarantined"] == 2 and files["rank1.json.gz"]["rank"] == 1
    assert files["rank1.json.gz"]["kept"] == files["rank0.json"]["kept"] - 2
    assert summary["files"] == 2 and summary["quarantined_records"] == 2
    quarantine = open_store(tmp_path / "store").read("quarantine").to_pylist()
    assert {(r["source"], r["reason"].split(" is ")[0]) for r in quarantine} == {
        ("rank1.json.gz", "'dur'"), ("rank1.json.gz", "'args'")}


_A100 = Path(__file__).resolve().parents[1] / "data" / "kineto" / "nccl_data.json.gz"


@pytest.mark.parametrize("pg_config", [[{"pg_name": "0", "pg_size": 0}], [{"pg_name": "0", "pg_size": 2**63 - 1}],
                                       [{"pg_name": "0", "pg_size": "2"}], "not a list", [5, "x"]])
def test_process_groups_that_make_no_sense_are_left_out_and_the_store_opens(pg_config, tmp_path: Path) -> None:
    trace = json.loads(gzip.decompress(_A100.read_bytes()))
    trace["distributedInfo"]["pg_config"] = pg_config
    src = tmp_path / "t.json"
    src.write_text(json.dumps(trace))
    collect(src, tmp_path / "store")
    parallel = open_store(tmp_path / "store").manifest["parallel"]   # opens: nothing it refuses was copied
    assert parallel["process_groups_dropped"] >= 1
    assert all(1 <= g["pg_size"] <= parallel["world_size"] for g in parallel["process_groups"] or [])


def test_ranks_on_different_clock_bases_are_refused(tmp_path: Path) -> None:
    trace = json.loads(gzip.decompress(_A100.read_bytes()))
    (tmp_path / "in").mkdir()
    for rank, base in ((0, trace.get("baseTimeNanoseconds") or 1_700_000_000_000_000_000), (1, None)):
        t = dict(trace, distributedInfo=dict(trace["distributedInfo"], rank=rank))
        t.pop("baseTimeNanoseconds", None)
        if base:
            t["baseTimeNanoseconds"] = base
        (tmp_path / "in" / f"rank{rank}.json").write_text(json.dumps(t))
    with pytest.raises(TraceFormatError, match="no baseTimeNanoseconds while the other ranks"):
        collect(tmp_path / "in", tmp_path / "store")


def test_a_gzip_bomb_is_refused_before_it_inflates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sohuprof.collectors.kineto.decode as kineto

    monkeypatch.setattr(kineto, "GZIP_MIN_CAP", 1 << 20)   # the real floor is 1 GiB
    bomb = tmp_path / "trace.json.gz"
    bomb.write_bytes(gzip.compress(b'{"traceEvents": [' + b" " * (16 << 20) + b"]}"))
    with pytest.raises(TraceFormatError, match="inflates to more than"):
        collect(bomb, tmp_path / "store")


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"\\ud800", b"\x01"])
def test_one_bad_name_does_not_cost_the_file_its_events(bad: bytes, tmp_path: Path) -> None:
    text = gzip.decompress(_A100.read_bytes())
    clean = collect(_write(tmp_path / "clean.json", text), tmp_path / "clean")["events"]
    at = text.index(b'"name": "') + len(b'"name": "')
    damaged = collect(_write(tmp_path / "bad.json", text[:at] + bad + text[at:]), tmp_path / "bad")
    assert damaged["events"] == clean


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_chrome_trace_cut_inside_an_entry_full_of_braces_keeps_the_whole_ones(tmp_path: Path) -> None:
    name = "void at::{lambda(int)#1}" * 10   # 20 braces in each name, none followed by a comma
    entries = [json.dumps({"name": name, "ph": "X", "ts": i, "dur": 1, "pid": 1, "tid": 1,
                           "args": {"k": {"x": 1}}}) for i in range(50)]
    text = ("[" + ",\n".join(entries)).encode()
    cut = tmp_path / "t.json"
    cut.write_bytes(text[:len(text) - 12])   # inside the last entry's args
    summary = collect(cut, tmp_path / "store")
    assert summary["events"] == 49 and summary["records_lost"] == 1


@settings(FUZZ, max_examples=30)
@given(changes=st.lists(mutation(), min_size=1, max_size=3), hta=st.booleans())
def test_every_report_on_a_damaged_trace_answers_or_says_why_not(changes: list[tuple[str, Any]], hta: bool) -> None:
    """What collect keeps of a damaged trace, every report reads: a result, or the one-line
    reason it does not apply; never a traceback."""
    from sohuprof.analyzers.analysis import ReportError
    from sohuprof.analyzers.report import REPORTS, run_reports

    doc = tiny_kineto()
    for change in changes:
        doc = apply(doc, change)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), serialize(doc), gz=False)
        try:
            collect_kineto(path, Path(tmp) / "store")
        except SohuprofError:
            return
        store = open_store(Path(tmp) / "store")
        for name in REPORTS:          # a loop over the reports
            try:
                run_reports(store, [name], hta_compatible=hta, what_if=["comm=free"] if name == "whatif" else ())
            except ReportError as exc:
                assert "\n" not in str(exc)
