"""Native Perfetto export: the written protobuf decoded by a small reader of this file's own
(no protobuf package), every slice, flow, counter sample and argument checked against the store,
the nesting Perfetto needs, the selection, the CLI; the vectorized wire encoder fuzzed against a
plain reference."""

from __future__ import annotations

import json
import struct
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from sohuprof.cli import cli
from sohuprof.export import protowire as pw
from sohuprof.export.perfetto import PerfettoSummary, export_perfetto
from sohuprof.export.selection import SelectionError
from sohuprof.schema import COUNTERS, EVENTS
from sohuprof.store import open_store

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_traces" / "mixtral-2node" / "store"
KINETO = REPO / "tests" / "data" / "kineto" / "nccl_data.json.gz"


# ---------------------------------------------------------------------------- a reader

def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field, wire type, value) of one message: ints for varints, bytes for fixed64 and LEN."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        else:
            raise AssertionError(f"wire type {wire} is not written by the exporter")
        out.append((field, wire, value))
    assert i == len(buf), "a message overran its bytes"
    return out


def group(buf: bytes) -> dict[int, list[Any]]:
    by: dict[int, list[Any]] = defaultdict(list)
    for field, _, value in fields(buf):
        by[field].append(value)
    return by


def _interned(entries: list[bytes]) -> dict[int, str]:
    table = {}
    for entry in entries:
        e = group(entry)
        table[e[1][0]] = e[2][0].decode()
    return table


def decode(path: Path) -> dict[str, Any]:
    """Replay the trace as Perfetto's importer reads it: sequences, interning, clocks, defaults."""
    tracks: dict[int, dict[str, Any]] = {}
    state: dict[int, dict[str, Any]] = {}
    slices: list[dict[str, Any]] = []
    counters: list[tuple[int, int, float]] = []
    open_: dict[int, list[dict[str, Any]]] = defaultdict(list)
    metadata: dict[str, Any] = {}
    packets = 0
    for field, _, packet in fields(path.read_bytes()):
        assert field == 1
        packets += 1
        p = group(packet)
        if 60 in p:                                     # TrackDescriptor
            d = group(p[60][0])
            tracks[d[1][0]] = {"name": d[2][0].decode(), "parent": d[5][0] if 5 in d else None,
                               "counter": 8 in d}
            continue
        if 5 in p:                                      # chrome_events: the run metadata
            for m in group(p[5][0])[2]:
                m = group(m)
                metadata[m[1][0].decode()] = json.loads(m[5][0])
            continue
        seq = p[10][0]
        if 13 in p and p[13][0] & 1:                    # SEQ_INCREMENTAL_STATE_CLEARED
            defaults = group(p[59][0])
            interned = group(p[12][0]) if 12 in p else {}
            state[seq] = {"clock": defaults[58][0], "track": group(defaults[11][0])[11][0], "t": None,
                          "names": _interned(interned.get(2, [])), "cats": _interned(interned.get(1, [])),
                          "arg_names": _interned(interned.get(3, [])),
                          "strings": _interned(interned.get(29, []))}
            snapshot = [group(c) for c in group(p[6][0])[1]]
            mine = [c for c in snapshot if c[1][0] == state[seq]["clock"]]
            assert mine and mine[0][3] == [1], "the sequence's clock must be incremental"
            state[seq]["t"] = mine[0][2][0]
            continue
        s = state[seq]
        s["t"] += p[8][0]                               # a delta on the incremental clock
        e = group(p[11][0])
        kind = e[9][0]
        track = s["track"]
        if kind == 4:
            counters.append((track, s["t"], struct.unpack("<d", e[44][0])[0]))
        elif kind == 1:
            args = {}
            for a in e.get(4, []):
                a = group(a)
                name = s["arg_names"][a[1][0]]
                args[name] = s["strings"][a[17][0]] if 17 in a else struct.unpack("<q", struct.pack("<Q", a[4][0]))[0]
            sl = {"track": track, "ts": s["t"], "name": s["names"][e[10][0]], "cat": s["cats"][e[3][0]],
                  "args": args, "flows": [struct.unpack("<Q", f)[0] for f in e.get(47, [])], "depth": len(open_[track])}
            open_[track].append(sl)
            slices.append(sl)
        elif kind == 2:
            sl = open_[track].pop()                     # an end closes the innermost open slice
            sl["dur"] = s["t"] - sl["ts"]
        else:
            raise AssertionError(f"unexpected TrackEvent type {kind}")
    assert not any(open_.values()), "slices left open"
    return {"tracks": tracks, "slices": slices, "counters": counters, "metadata": metadata, "packets": packets}


def path_of(tracks: dict[int, dict[str, Any]], uuid: int) -> list[str]:
    names = []
    while uuid is not None:
        names.append(tracks[uuid]["name"])
        uuid = tracks[uuid]["parent"]
    return names[::-1]


# ---------------------------------------------------------------------------- against the store

def expected(store_path: Path, summary: PerfettoSummary, ranks: list[int] | None = None) -> dict[str, Any]:
    store = open_store(store_path)
    ev = store.read(EVENTS).to_pandas()
    co = store.read(COUNTERS).to_pandas()
    t0 = min(ev["ts"].min(), co["ts"].min()) if len(co) else ev["ts"].min()
    lo, hi = summary.start_ns, summary.end_ns
    ev = ev[(ev.ts >= lo) & (ev.ts < hi) & (ev["rank"].isin(ranks) if ranks else True)]
    co = co[(co.ts >= lo) & (co.ts < hi) & (co["rank"].isin(ranks) if ranks else True)]
    return {"events": ev, "counters": co[np.isfinite(co.value)], "t0": t0}


def check_against_store(store_path: Path, out: Path, summary: PerfettoSummary,
                        ranks: list[int] | None = None) -> dict[str, Any]:
    got = decode(out)
    want = expected(store_path, summary, ranks)
    ev, t0 = want["events"], want["t0"]

    # Every slice: where it sits (node > chip > engine), name, category, times and arguments.
    def arg(v: Any) -> Any:
        return None if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)
    store_keys = Counter(
        (f"node {r.node}", f"chip {r.chip} (rank {r.rank})", r.track, r.name or "(unnamed)", r.category,
         int(r.ts - t0), max(int(r.dur), 0), r.op, arg(r.layer), arg(r.step), arg(r.flops), arg(r.hbm_bytes),
         arg(r.coll_id))
        for r in ev.itertuples())
    file_keys = Counter()
    for sl in got["slices"]:
        node, chip, lane = path_of(got["tracks"], sl["track"])
        a = sl["args"]
        file_keys[(node, chip, lane.split(" #")[0], sl["name"], sl["cat"], sl["ts"], sl["dur"], a.get("op"),
                   a.get("layer"), a.get("step"), a.get("flops"), a.get("hbm_bytes"), a.get("coll_id"))] += 1
    assert len(got["slices"]) == summary.events == len(ev)
    assert file_keys == store_keys

    # Flows: an instance's k selected members carry one id, coll_id + 1: k - 1 flows.
    members = Counter(f for sl in got["slices"] for f in sl["flows"])
    coll = ev.coll_id.dropna().astype(np.int64)
    sizes = coll.value_counts()
    assert members == Counter({int(c) + 1: int(k) for c, k in sizes.items() if k >= 2})
    assert sum(k - 1 for k in members.values()) == summary.flows == int((sizes[sizes >= 2] - 1).sum())

    # Counter samples on counter tracks named after the counter, under their chip.
    co = want["counters"]
    chip_of = open_store(store_path).read(EVENTS, columns=["rank", "chip"]).to_pandas() \
        .groupby("rank").chip.first().to_dict()
    store_counters = Counter((f"chip {chip_of[r.rank]} (rank {r.rank})", r.counter, int(r.ts - t0), float(r.value))
                             for r in co.itertuples())
    file_counters = Counter((path_of(got["tracks"], u)[1], got["tracks"][u]["name"], t, v) for u, t, v in got["counters"])
    assert all(got["tracks"][u]["counter"] for u, _, _ in got["counters"])
    assert len(got["counters"]) == summary.counters == len(co)
    assert file_counters == store_counters

    # Lanes: slices on one track nest (the reader's stack walk), each lane a track of its own.
    lanes = {sl["track"] for sl in got["slices"]}
    assert len(lanes) == summary.tracks
    meta = got["metadata"]["sohuprof"]
    assert meta["trace_start_ns"] == t0 and meta["generator"] == "sohuprof export perfetto"
    return got


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[PerfettoSummary, Path]:
    out = tmp_path_factory.mktemp("pftrace") / "sample.pftrace"
    return export_perfetto(SAMPLE, out, show_progress=False), out


def test_sample_store_exactly(sample_export: tuple[PerfettoSummary, Path]) -> None:
    summary, out = sample_export
    got = check_against_store(SAMPLE, out, summary)
    assert summary.bytes == out.stat().st_size
    assert sorted(n for n, t in got["tracks"].items() if t["parent"] is None) \
        and {t["name"] for t in got["tracks"].values() if t["parent"] is None} == {"node 0", "node 1"}


def test_window_and_ranks(tmp_path: Path) -> None:
    out = tmp_path / "part.pftrace"
    summary = export_perfetto(SAMPLE, out, start_ms=20, end_ms=45, ranks=[0, 3, 5], show_progress=False)
    check_against_store(SAMPLE, out, summary, ranks=[0, 3, 5])


def test_kineto_store_nests_overlapping_cpu_ops(tmp_path: Path) -> None:
    from sohuprof.collectors import collect
    store = tmp_path / "store"
    collect(KINETO, store, show_progress=False)
    out = tmp_path / "k.pftrace"
    summary = export_perfetto(store, out, show_progress=False)
    got = check_against_store(store, out, summary)
    assert max(sl["depth"] for sl in got["slices"]) >= 1      # CPU ops nest on their track


def test_same_counts_as_the_chrome_export(tmp_path: Path, sample_export: tuple[PerfettoSummary, Path]) -> None:
    from sohuprof.export.chrome import export_chrome
    summary, out = sample_export
    chrome = export_chrome(SAMPLE, tmp_path / "t.json", show_progress=False)
    assert (summary.events, summary.flows, summary.counters, summary.tracks) \
        == (chrome.events, chrome.flows, chrome.counters, chrome.threads)
    assert chrome.bytes > 2.5 * summary.bytes


@pytest.mark.parametrize("kwargs, match", [
    ({"start_ms": 10_000}, "outside the trace"),
    ({"ranks": [0, 99]}, "99 are not in the store"),
    ({"ranks": [0], "start_ms": 0.000001, "end_ms": 0.000002}, "no events"),
])
def test_bad_selections_raise_and_leave_nothing(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(SelectionError, match=match):
        export_perfetto(SAMPLE, tmp_path / "t.pftrace", show_progress=False, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- CLI

def test_cli_writes_refuses_and_forces(tmp_path: Path) -> None:
    out = tmp_path / "t.pftrace"
    args = ["export", "perfetto", str(SAMPLE), "-o", str(out), "--ranks", "0-1", "--end-ms", "9"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "flows" in result.output
    first = out.read_bytes()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "--force" in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("Error")] != []
    result = CliRunner().invoke(cli, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == first                                   # deterministic


@pytest.mark.parametrize("make_args, match", [
    (lambda p: [str(p / "missing"), "-o", str(p / "o.pftrace")], "does not exist"),
    (lambda p: [str(SAMPLE), "-o", str(p / "o.pftrace"), "--start-ms", "1e6"], "outside the trace"),
    (lambda p: [str(SAMPLE), "-o", str(p / "o.pftrace"), "--ranks", "40-41"], "not in the store"),
    (lambda p: [str(SAMPLE), "-o", str(p)], "is a directory"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, make_args, match: str) -> None:
    before = sorted(tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["export", "perfetto", *make_args(tmp_path)])
    assert result.exit_code != 0, result.output
    assert match in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1, result.output
    assert sorted(tmp_path.iterdir()) == before


def test_help() -> None:
    result = CliRunner().invoke(cli, ["export", "perfetto", "--help"])
    assert result.exit_code == 0, result.output
    assert "sohuprof export perfetto store/" in result.output


# ---------------------------------------------------------------------------- the wire encoder

def ref_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), max_size=60))
def test_varints_match_reference_unsigned(values: list[int]) -> None:
    rows = pw.encode_varints(np.array(values, dtype=np.uint64))
    assert rows.flat().tobytes() == b"".join(ref_varint(v) for v in values)
    assert rows.lengths.tolist() == [len(ref_varint(v)) for v in values]
    assert pw.varint_lengths(np.array(values, dtype=np.uint64)).tolist() == rows.lengths.tolist()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2**63, 2**63 - 1), max_size=60))
def test_varints_match_reference_signed(values: list[int]) -> None:
    assert pw.encode_varints(np.array(values, dtype=np.int64)).flat().tobytes() \
        == b"".join(ref_varint(v) for v in values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.booleans(), st.floats(allow_nan=False), st.booleans(),
                          st.integers(-2**63, 2**63 - 1)), min_size=1, max_size=40))
def test_messages_match_reference(rows: list[tuple[int, bool, float, bool, int]]) -> None:
    """Optional and nested fields, row by row, against protobuf's encoding written out by hand."""
    n = len(rows)
    a = np.array([r[0] for r in rows], dtype=np.uint64)
    has_b = np.array([r[1] for r in rows])
    b = np.array([r[2] for r in rows], dtype=np.float64)
    has_c = np.array([r[3] for r in rows])
    c = np.array([r[4] for r in rows], dtype=np.int64)
    inner = pw.Message(n).raw(b"\x08\x07").varint(4, c)
    msg = pw.Message(n).varint(1, a).fixed64(44, b, has_b).message(4, inner, has_c)
    framed = pw.Message(n).message(1, msg)
    want = b""
    for av, hb, bv, hc, cv in rows:
        body = b"\x08" + ref_varint(av)
        if hb:
            body += ref_varint((44 << 3) | 1) + struct.pack("<d", bv)
        if hc:
            sub = b"\x08\x07" + b"\x20" + ref_varint(cv)
            body += b"\x22" + ref_varint(len(sub)) + sub
        want += b"\x0a" + ref_varint(len(body)) + body
    assert framed.flat().tobytes() == want
    assert int(framed.lengths.sum()) == len(want)
