"""Chrome-trace export: every event's structure, nesting per thread, counts against the store,
flows, window and rank selection, gzip, the CLI and its one-line errors."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from sohuprof.export.chrome import export_chrome
from sohuprof.export.selection import SelectionError, _crossing, _greedy_lanes, assign_lanes, parse_ranks
from sohuprof.cli import cli
from sohuprof.schema import EVENTS
from sohuprof.store import StoreWriter, open_store

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"
KINETO = REPO / "tests" / "data" / "kineto" / "nccl_data.json.gz"
U32 = 2**32 - 1
TS_TEXT = re.compile(rb'"(ts|dur)":(-?\d+(?:\.\d+)?)')


def load(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return json.loads(raw)


def raw_text(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("export") / "sample.json"
    summary = export_chrome(SAMPLE, out, show_progress=False)
    return summary, load(out), out


@pytest.fixture(scope="module")
def kineto_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sohuprof.collectors import collect
    out = tmp_path_factory.mktemp("kineto") / "store"
    collect(KINETO, out, show_progress=False)
    return out


def synthetic_store(path: Path, rows: list[tuple[int, int, int, str, str]],
                    counters: list[tuple[int, int, str, float]] = ()) -> Path:
    """A store of (rank, ts, dur, track, name) events on node rank // 2, chip rank % 2."""
    ranks = [r for r, *_ in rows]
    events = pa.table({
        "ts": pa.array([t for _, t, _, _, _ in rows], pa.int64()),
        "dur": pa.array([d for _, _, d, _, _ in rows], pa.int64()),
        "node": pa.array([r // 2 for r in ranks], pa.int32()),
        "chip": pa.array([r % 2 for r in ranks], pa.int32()),
        "rank": pa.array(ranks, pa.int32()),
        "track": pa.array([t for *_, t, _ in rows]).dictionary_encode(),
        "name": pa.array([n for *_, n in rows]).dictionary_encode(),
        "op": pa.array(["gemm"] * len(rows)).dictionary_encode(),
        "category": pa.array(["compute"] * len(rows)).dictionary_encode(),
    })
    with StoreWriter(path) as w:
        w.write_events(EVENTS.conform(events))
        if counters:
            w.write_table("counters", pa.table({
                "ts": pa.array([c[0] for c in counters], pa.int64()),
                "rank": pa.array([c[1] for c in counters], pa.int32()),
                "counter": pa.array([c[2] for c in counters]).dictionary_encode(),
                "value": pa.array([c[3] for c in counters], pa.float64())}))
        w.write_manifest({"source": {"format": "test"}, "hardware": {"name": "test"}})
    return path


# ---------------------------------------------------------------------------- structure

def check_structure(doc: dict[str, Any], text: bytes) -> dict[str, Any]:
    """Assert the invariants of every event; return X events grouped by (pid, tid)."""
    events = doc["traceEvents"]
    assert isinstance(events, list) and events
    for match in TS_TEXT.finditer(text):      # at most 3 decimals, never an exponent
        number = match.group(2)
        assert b"." not in number or len(number.split(b".")[1]) <= 3, match.group(0)
    threads: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    named_threads, named_processes = set(), set()
    for e in events:
        assert isinstance(e.get("name"), str) and e["name"], e
        assert e["ph"] in ("X", "M", "C"), e
        assert isinstance(e["pid"], int) and 0 <= e["pid"] <= U32, e
        if "tid" in e or e["ph"] == "X":
            assert isinstance(e["tid"], int) and 0 <= e["tid"] <= U32, e
        if e["ph"] == "X":
            assert isinstance(e["cat"], str) and e["cat"]
            assert e["ts"] >= 0 and e["dur"] >= 0
            assert isinstance(e["args"], dict) and e["args"]["op"]
            threads[(e["pid"], e["tid"])].append((round(e["ts"] * 1000), round(e["dur"] * 1000)))
        elif e["ph"] == "C":
            assert isinstance(e["args"]["value"], (int, float)) and e["ts"] >= 0
        elif e["name"] == "thread_name":
            named_threads.add((e["pid"], e["tid"]))
        elif e["name"] == "process_name":
            named_processes.add(e["pid"])
    assert set(threads) <= named_threads, "every thread with events has a thread_name"
    assert {pid for pid, _ in threads} <= named_processes
    for key, spans in threads.items():
        assert_nested(spans), key
    return threads


def assert_nested(spans: list[tuple[int, int]]) -> None:
    """Intervals (ts, dur) of one thread are properly nested or disjoint."""
    stack: list[int] = []
    for ts, dur in sorted(spans, key=lambda s: (s[0], -s[1])):
        while stack and stack[-1] <= ts:
            stack.pop()
        assert not stack or ts + dur <= stack[-1], f"[{ts}, {ts + dur}) crosses an open slice ending {stack[-1]}"
        stack.append(ts + dur)


def test_every_event_is_well_formed(sample_export) -> None:
    summary, doc, out = sample_export
    check_structure(doc, out.read_bytes())
    assert summary.bytes == out.stat().st_size == summary.file_bytes


def test_counts_match_the_store(sample_export) -> None:
    summary, doc, _ = sample_export
    store = open_store(SAMPLE)
    events = store.read("events", columns=["rank", "name", "ts", "dur"])
    phases = Counter(e["ph"] for e in doc["traceEvents"])
    assert phases["X"] == summary.events == events.num_rows
    assert phases["C"] == summary.counters == store.read("counters").num_rows
    # Same multiset of (name, ts, dur): nothing lost, duplicated or shifted.
    t0 = min(pc.min(events["ts"]).as_py(), pc.min(store.read("counters")["ts"]).as_py())
    exported = Counter((e["name"], round(e["ts"] * 1000) + t0, round(e["dur"] * 1000))
                       for e in doc["traceEvents"] if e["ph"] == "X")
    expected = Counter(zip(events["name"].cast(pa.string()).to_pylist(), events["ts"].to_pylist(),
                           events["dur"].to_pylist()))
    assert exported == expected


def test_processes_threads_and_metadata(sample_export) -> None:
    _, doc, _ = sample_export
    meta = [e for e in doc["traceEvents"] if e["ph"] == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert processes == {0: "node 0", 1: "node 1"}
    assert {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"} == {0: 0, 1: 1}
    names = {e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert "chip 0 · matrix" in names and "chip 3 · collective" in names
    assert all(re.fullmatch(r"chip \d+ · (matrix|vector|dma|collective|host)( #\d+)?", n) for n in names)
    sort = {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_sort_index"}
    assert sort == {(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name"}
    other = doc["otherData"]
    manifest = open_store(SAMPLE).manifest
    for key in ("hardware", "model", "parallel", "source", "clock_alignment"):
        assert other[key] == manifest[key]
    x = next(e for e in doc["traceEvents"] if e["ph"] == "X" and e["args"].get("layer") is not None)
    assert {"op", "layer", "step", "phase", "flops", "hbm_bytes"} <= set(x["args"])


def test_tids_are_stable_across_exports(sample_export, tmp_path: Path) -> None:
    _, doc, _ = sample_export
    out = tmp_path / "r5.json"
    export_chrome(SAMPLE, out, ranks=[5], start_ms=30, show_progress=False)
    part = load(out)
    full = {(e["pid"], e["tid"]): e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    some = {(e["pid"], e["tid"]): e["args"]["name"] for e in part["traceEvents"] if e["name"] == "thread_name"}
    assert some and all(full[k] == v for k, v in some.items())


def test_flows_link_every_collective(sample_export) -> None:
    summary, doc, _ = sample_export
    by_bind: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in doc["traceEvents"]:
        if e["ph"] == "X" and "bind_id" in e:
            by_bind[e["bind_id"]].append(e)
    collectives = open_store(SAMPLE).read("events", columns=["coll_id"], filters=pc.is_valid(pc.field("coll_id")))
    sizes = Counter(collectives["coll_id"].to_pylist())
    assert len(by_bind) == sum(1 for n in sizes.values() if n >= 2)
    flows = 0
    for members in by_bind.values():
        out = [e for e in members if e.get("flow_out")]
        into = [e for e in members if e.get("flow_in")]
        assert len(out) == 1 and len(into) == len(members) - 1
        assert not any(e.get("flow_out") and e.get("flow_in") for e in members)
        assert {e["args"]["coll_id"] for e in members} == {members[0]["args"]["coll_id"]}
        # The source is read first by Perfetto: earliest, then longest.
        src = out[0]
        assert all((src["ts"], -src["dur"]) <= (e["ts"], -e["dur"]) for e in into)
        flows += len(into)
    assert flows == summary.flows


def test_times_are_exact_ns(tmp_path: Path) -> None:
    store = synthetic_store(tmp_path / "s", [(0, 1_000_000_000_123, 1, "matrix", "a"),
                                              (0, 1_000_000_001_000, 999_999_999_999, "matrix", "b"),
                                              (0, 1_000_000_000_000, 5, "vector", 'q"uote\\n')])
    out = tmp_path / "t.json"
    export_chrome(store, out, show_progress=False)
    text = out.read_bytes()
    assert b'"ts":0.123,"dur":0.001' in text
    assert b'"ts":1.000,"dur":999999999.999' in text
    assert b'"name":"q\\"uote\\\\n"' in text
    check_structure(load(out), text)


# ---------------------------------------------------------------------------- overlap lanes

def test_overlapping_events_move_to_their_own_thread(tmp_path: Path) -> None:
    rows = [(0, 0, 100, "matrix", "outer"), (0, 10, 20, "matrix", "inner"),     # nested: stays
            (0, 50, 100, "matrix", "cross"),                                     # crosses outer
            (0, 60, 10, "matrix", "in-cross"),                                   # nests in cross
            (0, 200, 10, "matrix", "after"), (1, 0, 10, "vector", "other")]
    store = synthetic_store(tmp_path / "s", rows)
    out = tmp_path / "t.json"
    summary = export_chrome(store, out, show_progress=False)
    doc = load(out)
    check_structure(doc, out.read_bytes())
    thread = {e["tid"]: e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    where = {e["name"]: thread[e["tid"]] for e in doc["traceEvents"] if e["ph"] == "X"}
    assert where["outer"] == where["inner"] == where["after"] == "chip 0 · matrix"
    assert where["cross"] == "chip 0 · matrix #2"
    assert where["other"] == "chip 1 · vector"
    assert summary.events == len(rows)


def reference_is_nested(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Slow reference: per interval, does it cross any other interval?"""
    n = len(start)
    bad = np.zeros(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i != j and start[i] < start[j] < end[i] < end[j]:
                bad[i] = bad[j] = True
    return bad


@pytest.mark.parametrize("seed", range(40))
def test_lane_assignment_against_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 40))
    group = np.sort(rng.integers(0, 3, n))
    start = rng.integers(0, 200, n)
    end = start + rng.integers(0, 60, n)
    order = np.lexsort((-end, start, group))
    group, start, end = group[order], start[order], end[order]
    lanes = assign_lanes(start, end, group)
    for g in np.unique(group):
        sel = group == g
        crossing = reference_is_nested(start[sel], end[sel]).any()
        assert crossing == (lanes[sel] > 0).any() or not crossing
        if not crossing:
            assert (lanes[sel] == 0).all()           # nested groups are left alone
            assert not _crossing(start[sel], end[sel], group[sel]).any()
        for lane in np.unique(lanes[sel]):
            m = sel & (lanes == lane)
            assert_nested(list(zip(start[m].tolist(), (end[m] - start[m]).tolist())))


def test_greedy_lanes_uses_the_lowest_lane() -> None:
    start = np.array([0, 5, 12, 30])
    end = np.array([10, 15, 20, 40])
    assert _greedy_lanes(start, end).tolist() == [0, 1, 0, 0]


# ---------------------------------------------------------------------------- selection

def test_window_and_ranks_select_exactly(tmp_path: Path) -> None:
    out = tmp_path / "w.json.gz"
    summary = export_chrome(SAMPLE, out, start_ms=10, end_ms=20.5, ranks=[0, 3, 5], show_progress=False)
    doc = load(out)
    check_structure(doc, raw_text(out))
    store = open_store(SAMPLE)
    t0 = min(pc.min(store.read("events", columns=["ts"])["ts"]).as_py(),
             pc.min(store.read("counters")["ts"]).as_py())
    lo, hi = t0 + 10_000_000, t0 + 20_500_000
    expected = store.read("events", columns=["rank", "ts", "dur", "name"],
                          filters=[("ts", ">=", lo), ("ts", "<", hi), ("rank", "in", [0, 3, 5])])
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == summary.events == expected.num_rows > 0
    assert Counter((e["name"], round(e["ts"] * 1000) + t0) for e in xs) == Counter(
        zip(expected["name"].cast(pa.string()).to_pylist(), expected["ts"].to_pylist()))
    assert min(e["ts"] for e in xs) >= 10_000 and max(e["ts"] for e in xs) < 20_500
    chips = {e["args"]["name"].split(" · ")[0] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert chips == {"chip 0", "chip 3", "chip 1"}                 # rank 5 = node 1 chip 1
    # Flows only among the selected members; counters only of the selected ranks and window.
    assert all(lo - t0 <= round(e["ts"] * 1000) < hi - t0 for e in doc["traceEvents"] if e["ph"] == "C")
    assert doc["otherData"]["ranks"] == [0, 3, 5]


def test_gzip_output_is_valid_gzip_json(tmp_path: Path, sample_export) -> None:
    out = tmp_path / "t.json.gz"
    summary = export_chrome(SAMPLE, out, show_progress=False)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    assert summary.file_bytes < summary.bytes / 4
    assert gzip.decompress(out.read_bytes()) == sample_export[2].read_bytes()


def test_kineto_store_exports_nested_cpu_ops(kineto_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    summary = export_chrome(kineto_store, out, show_progress=False)
    doc = load(out)
    threads = check_structure(doc, out.read_bytes())
    assert summary.events == open_store(kineto_store).read("events", columns=["ts"]).num_rows
    assert len(threads) == summary.threads


def test_parse_ranks() -> None:
    assert parse_ranks("0,3,8-10") == [0, 3, 8, 9, 10]
    assert parse_ranks(" 2 , 2,1") == [1, 2]
    for bad in ("", "a", "3-1", "-2", "1-", "1,,2"):
        with pytest.raises(ValueError, match="ranks"):
            parse_ranks(bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"start_ms": 10_000}, "outside the trace"),
    ({"start_ms": 5, "end_ms": 4}, "greater than"),
    ({"start_ms": -1}, ">= 0"),
    ({"ranks": [0, 99]}, "99 are not in the store"),
    ({"ranks": []}, "selection is empty"),
    ({"ranks": [0], "start_ms": 0.000001, "end_ms": 0.000002}, "no events"),
])
def test_bad_selections_raise_and_leave_nothing(tmp_path: Path, kwargs: dict, match: str) -> None:
    out = tmp_path / "t.json"
    with pytest.raises(SelectionError, match=match):
        export_chrome(SAMPLE, out, show_progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- CLI

def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_writes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "t.json.gz"
    result = run("export", "chrome", str(SAMPLE), "-o", str(out), "--ranks", "0-1,4", "--start-ms", "5",
                 "--end-ms", "9")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "events" in result.output
    doc = load(out)
    assert {e["args"]["name"].split(" · ")[0] for e in doc["traceEvents"] if e["name"] == "thread_name"} \
        == {"chip 0", "chip 1"}


@pytest.mark.parametrize("make_args, match", [
    (lambda p: [str(p / "missing"), "-o", str(p / "o.json")], "does not exist"),
    (lambda p: [str(SAMPLE), "-o", str(p / "o.json"), "--start-ms", "1e6"], "outside the trace"),
    (lambda p: [str(SAMPLE), "-o", str(p / "o.json"), "--ranks", "40-41"], "not in the store"),
    (lambda p: [str(SAMPLE), "-o", str(p / "o.json"), "--ranks", "x"], "Invalid value for '--ranks'"),
    (lambda p: [str(SAMPLE), "-o", str(p / "file" / "o.json")], "is a file, not a directory"),
    (lambda p: [str(SAMPLE), "-o", str(p)], "is a directory"),
    (lambda p: [str(SAMPLE), "-o", "/proc/sohuprof-o.json"], "cannot"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, make_args, match: str) -> None:
    (tmp_path / "file").write_text("x")
    before = sorted(tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["export", "chrome", *make_args(tmp_path)])
    assert result.exit_code != 0, result.output
    assert match in result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert sorted(tmp_path.iterdir()) == before            # no partial file, no temp file


def test_cli_warns_when_too_big_for_chrome_tracing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sohuprof.export.chrome as ce
    monkeypatch.setattr(ce, "CHROME_TRACING_LIMIT_BYTES", 1000)
    result = CliRunner().invoke(cli, ["export", "chrome", str(SAMPLE), "-o", str(tmp_path / "t.json"),
                                      "--ranks", "0"])
    assert result.exit_code == 0, result.output
    assert "--start-ms/--end-ms" in result.stderr and "--ranks" in result.stderr
    assert "chrome://tracing" in result.stderr


def test_help() -> None:
    for args in (["export", "--help"], ["export", "chrome", "--help"]):
        result = run(*args)
        assert result.exit_code == 0, result.output
    assert "sohuprof export chrome store/" in run("export", "chrome", "--help").output
