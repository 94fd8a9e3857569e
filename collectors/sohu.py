"""Raw Sohu run directories (``run.json`` + per-chip ``.strace``) into the trace store.

Two streaming passes over the chip files: the first reads only collective records, to align the
nodes' clocks (:mod:`sohuprof.collectors.alignment`); the second converts every sound chunk to
events on the aligned clock and writes them, one chip at a time, so memory is bounded by a
batch, not the trace. Damaged chunks are quarantined and counted, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from sohuprof.collectors.alignment import ClockMap, causality_violations, fit_clocks
from sohuprof.collectors.strace_reader import Damaged, open_chip_file
from sohuprof.errors import TraceFormatError
from sohuprof.progress import progress
from sohuprof.schema import COLLECTIVES, COUNTERS, EVENTS, QUARANTINE, REQUESTS
from sohuprof.store import PathLike, StoreWriter
from sohuprof.strace import FORMAT_NAME, FORMAT_VERSION, NO_GROUP, NO_LAYER

__all__ = ["RunInfo", "read_run_info", "collect_sohu", "RUN_FILE"]

RUN_FILE = "run.json"
BATCH_RECORDS = 1 << 18   # records converted and handed to the store writer at once


@dataclass(frozen=True)
class RunInfo:
    """What run.json says, shaped for the collector (the emulator's ``truth`` is never read)."""

    root: Path
    meta: dict[str, Any]
    names: list[str]
    op_of_name: np.ndarray        # [names] code into ``ops``
    ops: list[str]
    category_of_name: np.ndarray  # [names] code into ``categories``
    categories: list[str]
    kind_of_name: np.ndarray      # [names] code into ``kinds`` (collective kind; send/recv are one p2p kind)
    kinds: list[str]
    engines: list[str]
    phases: list[str]
    chips: list[dict[str, Any]]
    nodes: int


def _codes(values: list[str]) -> tuple[np.ndarray, list[str]]:
    vocab = sorted(set(values))
    index = {v: i for i, v in enumerate(vocab)}
    return np.array([index[v] for v in values], dtype=np.int32), vocab


def read_run_info(root: Path) -> RunInfo:
    """Parse and check ``root/run.json``."""
    path = root / RUN_FILE
    try:
        meta = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise TraceFormatError(f"{root}: no {RUN_FILE}; a Sohu run directory has one beside node*/") from None
    except orjson.JSONDecodeError as exc:
        raise TraceFormatError(f"{path}: not valid JSON ({exc}); the run directory is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise TraceFormatError(f"{path}: format is {found!r}, expected {FORMAT_NAME!r}")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise TraceFormatError(f"{path}: format version {meta['version']} is newer than this sohuprof reads "
                               f"({FORMAT_VERSION}); upgrade sohuprof")
    try:
        table = sorted(meta["op_names"], key=lambda e: e["id"])
        op_codes, ops = _codes([e["op"] for e in table])
        cat_codes, cats = _codes([e["category"] for e in table])
        kind_codes, kinds = _codes(["send_recv" if e["op"] in ("send", "recv") else e["op"] for e in table])
        return RunInfo(root=root, meta=meta, names=[e["name"] for e in table], op_of_name=op_codes, ops=ops,
                       category_of_name=cat_codes, categories=cats, kind_of_name=kind_codes, kinds=kinds,
                       engines=list(meta["engines"]), phases=list(meta["phases"]),
                       chips=sorted(meta["chips"], key=lambda c: c["rank"]), nodes=len(meta["nodes"]))
    except (KeyError, TypeError) as exc:
        raise TraceFormatError(f"{path}: missing or malformed {exc}; the run directory is damaged") from None


def _dict_array(codes: np.ndarray, vocab: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(vocab, pa.string()))


def _ns(cycles: np.ndarray, chip: dict[str, Any]) -> np.ndarray:
    """Local cycles to local ns."""
    return cycles.astype(np.float64) * (1e9 / float(chip["clock_hz"]))


def _coll_id(rec: np.ndarray) -> np.ndarray:
    """A collective instance is (group, sequence number): ``group * 2**32 + seq``."""
    return (rec["group"].astype(np.int64) << 32) | rec["seq"].astype(np.int64)


# ------------------------------------------------------------------------------ pass 1

@dataclass
class _Collectives:
    """Collective records of the whole run (one row per member rank), local ns."""

    coll: np.ndarray
    rank: np.ndarray
    node: np.ndarray
    name: np.ndarray
    start: np.ndarray
    end: np.ndarray
    bytes: np.ndarray
    first_local: list[tuple[int, float]]   # (node, local ns) of each file's first record
    sound: dict[str, list[tuple[int, int]]]   # per file: the chunks found sound
    damaged: dict[str, list[Damaged]]         # per file: what was set aside


def _scan_collectives(files: list[tuple[dict, Path]], advance: Callable[[float], None]) -> _Collectives:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("coll", "rank", "node", "name", "start", "end", "bytes")}
    first: list[tuple[int, float]] = []
    sound: dict[str, list[tuple[int, int]]] = {}
    damaged: dict[str, list[Damaged]] = {}
    for chip, path in files:
        with open_chip_file(path, chip["file"]) as f:
            for rec in f.chunks():
                if len(first) == 0 or first[-1][0] != -chip["rank"] - 1:
                    first.append((-chip["rank"] - 1, float(_ns(rec["start"][:1], chip)[0])))
                coll = rec[rec["group"] != NO_GROUP]
                parts["coll"].append(_coll_id(coll))
                parts["rank"].append(np.full(len(coll), chip["rank"], np.int32))
                parts["node"].append(np.full(len(coll), chip["node"], np.int32))
                parts["name"].append(coll["name_id"].astype(np.int32))
                parts["start"].append(_ns(coll["start"], chip))
                parts["end"].append(_ns(coll["end"], chip))
                parts["bytes"].append(coll["net_bytes"].astype(np.int64))
                del rec, coll
            sound[chip["file"]], damaged[chip["file"]] = f.sound, f.damaged
        advance(f.size)
    dtypes = {"coll": np.int64, "rank": np.int32, "node": np.int32, "name": np.int32, "start": np.float64,
              "end": np.float64, "bytes": np.int64}
    arrays = {k: np.concatenate(v) if v else np.zeros(0, dtypes[k]) for k, v in parts.items()}
    node_of_rank = {c["rank"]: c["node"] for c, _ in files}
    return _Collectives(**arrays, first_local=[(node_of_rank[-r - 1], t) for r, t in first],
                        sound=sound, damaged=damaged)


def _collectives_table(info: RunInfo, c: _Collectives, clock: ClockMap, origin: float) -> tuple[pa.Table, int, float]:
    """collectives.parquet rows (aligned, sorted by ``(coll_id, rank)``) and the causality check
    on them. Consumes ``c``'s arrays: each is dropped once its sorted column is built, so the
    member rows are held about once, not twice."""
    order = np.lexsort((c.rank, c.coll))

    def take(field: str) -> np.ndarray:
        out = getattr(c, field)[order]
        setattr(c, field, None)
        return out

    coll, rank, node = take("coll"), take("rank"), take("node")
    arrive = np.rint(clock.apply(take("start"), node) - origin).astype(np.int64)
    end = np.rint(clock.apply(take("end"), node) - origin).astype(np.int64)
    kind = _dict_array(info.kind_of_name[take("name")], info.kinds)
    size = take("bytes")
    del order
    first = np.r_[True, coll[1:] != coll[:-1]] if len(coll) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    last = np.repeat(np.maximum.reduceat(arrive, starts), np.diff(np.r_[starts, len(coll)])) if len(coll) \
        else np.zeros(0, np.int64)
    del first, starts
    violations, worst = causality_violations(coll, arrive, end)
    table = pa.table({"coll_id": coll, "kind": kind, "group": coll >> 32, "rank": rank, "node": node,
                      "arrive": arrive, "start": last, "end": end, "bytes": size})
    return table, violations, worst


# ------------------------------------------------------------------------------ pass 2

def _gather(chunks: list[np.ndarray], field: str, dtype: type) -> np.ndarray:
    """One field of many chunks into one contiguous array (a single strided copy each)."""
    out: np.ndarray = np.empty(sum(len(c) for c in chunks), dtype)
    pos = 0
    for c in chunks:
        out[pos:pos + len(c)] = c[field]
        pos += len(c)
    return out


def _events_table(info: RunInfo, chunks: list[np.ndarray], chip: dict[str, Any], clock: ClockMap,
                  origin: float) -> pa.Table:
    node = chip["node"]
    start, end = _gather(chunks, "start", np.float64), _gather(chunks, "end", np.float64)
    n = len(start)
    to_ns = 1e9 / float(chip["clock_hz"])
    ts = np.rint(clock.apply(start * to_ns, node) - origin).astype(np.int64)
    end_ns = np.rint(clock.apply(end * to_ns, node) - origin).astype(np.int64)
    name = _gather(chunks, "name_id", np.int32)
    layer = _gather(chunks, "layer", np.int32)
    group = _gather(chunks, "group", np.int64)
    seq = _gather(chunks, "seq", np.int64)
    columns = {
        "ts": ts, "dur": end_ns - ts,
        "node": np.full(n, node, np.int32), "chip": np.full(n, chip["chip"], np.int32),
        "rank": np.full(n, chip["rank"], np.int32),
        "track": _dict_array(_gather(chunks, "engine", np.int32), info.engines),
        "name": _dict_array(name, info.names),
        "op": _dict_array(info.op_of_name[name], info.ops),
        "category": _dict_array(info.category_of_name[name], info.categories),
        "layer": pa.array(layer, pa.int32(), mask=layer == NO_LAYER),
        "step": _gather(chunks, "step", np.int64),
        "phase": _dict_array(_gather(chunks, "phase", np.int32), info.phases),
        "flops": _gather(chunks, "flops", np.int64), "hbm_bytes": _gather(chunks, "hbm_bytes", np.int64),
        "net_bytes": _gather(chunks, "net_bytes", np.int64),
        "stall_mem_ns": np.rint(_gather(chunks, "stall_cycles", np.float64) * to_ns).astype(np.int64),
        "coll_id": pa.array((group << 32) | seq, pa.int64(), mask=group == NO_GROUP),
        "correlation": pa.nulls(n, pa.int64()),
    }
    return pa.table(columns, schema=EVENTS.schema)


def _write_events(info: RunInfo, files: list[tuple[dict, Path]], found: _Collectives, clock: ClockMap,
                  origin: float, writer: StoreWriter, advance: Callable[[float], None]) -> int:
    """Pass 2: every sound chunk (as pass 1 found them, CRCs not re-checked) to events."""
    events = 0
    for chip, path in files:
        with open_chip_file(path, chip["file"]) as f:
            batch: list[np.ndarray] = []
            held = 0
            for rec in f.chunks(trusted=found.sound[chip["file"]]):
                batch.append(rec)
                held += len(rec)
                if held >= BATCH_RECORDS:
                    writer.write_events(_events_table(info, batch, chip, clock, origin))
                    events += held
                    batch, held = [], 0
            if held:
                writer.write_events(_events_table(info, batch, chip, clock, origin))
                events += held
            del batch
        advance(f.size)
    return events


# ------------------------------------------------------------------------------ host events

def _host_tables(info: RunInfo, clock: ClockMap, origin: float) -> tuple[pa.Table, pa.Table, list[Damaged]]:
    """requests.parquet from request lifecycle events, counters.parquet from scheduler steps.

    Lines are parsed one by one (the parser's minimum; an unreadable line is quarantined, the
    rest kept); everything after that is columnar."""
    rows: list[dict[str, Any]] = []
    damaged: list[Damaged] = []
    tp = int(info.meta.get("parallel", {}).get("tp", 1))
    for entry in info.meta["nodes"]:
        node, rel = int(entry["node"]), entry["host_events"]
        path = info.root / rel
        if not path.is_file():
            damaged.append(Damaged(rel, 0, 0, 0, "host event file missing", b""))
            continue
        offset = 0
        for line in path.read_bytes().split(b"\n"):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                ev = orjson.loads(line)
                ev["ts"] = float(ev["ts"])
                ev["type"] = str(ev["type"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                damaged.append(Damaged(rel, start, len(line), 1, "unreadable host event line", line))
                continue
            ev["node"] = node
            rows.append(ev)
    frame = pd.DataFrame(rows, columns=sorted({k for r in rows for k in r} | {"ts", "type", "node", "request",
                                                                             "replica", "prompt_tokens",
                                                                             "output_tokens", "prefill_tokens",
                                                                             "decode_tokens"}))
    frame["t"] = np.rint(clock.apply(frame["ts"].to_numpy(float), frame["node"].to_numpy(int)) - origin)
    steps = frame[frame["type"] == "step"]
    counters = pd.concat([pd.DataFrame({"ts": steps["t"].astype("int64"), "rank": (steps["replica"] * tp).astype("int32"),
                                        "counter": name, "value": steps[name].fillna(0).astype(float)})
                          for name in ("prefill_tokens", "decode_tokens")], ignore_index=True)
    life = frame[frame["type"].isin(["arrival", "first_token", "finish"]) & frame["request"].notna()]
    times = life.pivot_table(index="request", columns="type", values="t", aggfunc="first")
    arrived = times.index[times["arrival"].notna()] if "arrival" in times else times.index[:0]
    times = times.reindex(index=arrived, columns=["arrival", "first_token", "finish"])
    info_rows = life.groupby("request").agg(replica=("replica", "first"), prompt_tokens=("prompt_tokens", "max"),
                                            output_tokens=("output_tokens", "max")).reindex(arrived)

    def ns(col: str) -> pa.Array:
        v = times[col].to_numpy(float)
        return pa.array(np.nan_to_num(v).astype(np.int64), pa.int64(), mask=np.isnan(v))

    requests = pa.table({
        "request_id": arrived.to_numpy().astype(np.int64),
        "replica": pa.array(info_rows["replica"].to_numpy(float).astype(np.int64), pa.int32()),
        "arrival": ns("arrival"), "first_token": ns("first_token"), "finish": ns("finish"),
        "prompt_tokens": info_rows["prompt_tokens"].fillna(0).to_numpy().astype(np.int64),
        "output_tokens": info_rows["output_tokens"].fillna(0).to_numpy().astype(np.int64)})
    counter_table = pa.table({"ts": counters["ts"].to_numpy(), "rank": counters["rank"].to_numpy(),
                              "counter": pa.array(counters["counter"].to_numpy(), pa.string()),
                              "value": counters["value"].to_numpy()})
    return requests, counter_table, damaged


def _rel(info: RunInfo, path: Path) -> str:
    return path.relative_to(info.root).as_posix()


def _quarantine_table(damaged: list[Damaged]) -> pa.Table:
    return pa.table({"source": pa.array([d.source for d in damaged], pa.string()),
                     "offset": pa.array([d.offset for d in damaged], pa.int64()),
                     "length": pa.array([d.length for d in damaged], pa.int64()),
                     "records": pa.array([d.records for d in damaged], pa.int64()),
                     "reason": pa.array([d.reason for d in damaged], pa.string()),
                     "raw": pa.array([d.raw for d in damaged], pa.binary())})


# ------------------------------------------------------------------------------ driver

def collect_sohu(root: PathLike, store_path: PathLike, *, force: bool = False,
                 show_progress: bool | None = None) -> dict[str, Any]:
    """Collect a raw Sohu run directory into the trace store at ``store_path``.

    Returns a summary: ``events``, ``quarantined_pieces``, ``quarantined_records``,
    ``records_expected`` (what run.json says was written), the clock alignment and its
    causality violations.

    Raises
    ------
    TraceFormatError
        ``root`` is not a readable Sohu run directory.
    OutputError
        ``store_path`` exists (without ``force``) or cannot be written.
    """
    info = read_run_info(Path(root))
    files: list[tuple[dict, Path]] = []
    missing: list[Damaged] = []
    for chip in info.chips:
        path = info.root / chip["file"]
        if path.is_file():
            files.append((chip, path))
        else:
            missing.append(Damaged(chip["file"], 0, 0, int(chip.get("records", 0)), "chip trace file missing", b""))
    if not files:
        raise TraceFormatError(f"{info.root}: none of the {len(info.chips)} chip trace files listed in run.json exist")
    total = sum(p.stat().st_size for _, p in files)
    with progress("collecting", 2 * total, enabled=show_progress, unit="bytes") as advance:
        found = _scan_collectives(files, advance)
        clock = fit_clocks(info.nodes, found.coll, found.node, found.end, info.meta.get("clock_sync"))
        origin = min(float(clock.apply(np.array([t]), n)[0]) for n, t in found.first_local) if found.first_local else 0.0
        with StoreWriter(store_path, force=force) as writer:
            # Alternate nodes so the store's writer threads encode two node partitions at once;
            # each node still receives its ranks in increasing order.
            interleaved = sorted(files, key=lambda f: (f[0]["chip"], f[0]["node"]))
            events = _write_events(info, interleaved, found, clock, origin, writer, advance)
            requests, counters, host_damaged = _host_tables(info, clock, origin)
            damaged = missing + [d for _, p in files for d in found.damaged[_rel(info, p)]] + host_damaged
            # Built after the events pass, and pass 1's arrays dropped once it is: the two are
            # the largest things a collect holds (tens of bytes per collective member each).
            pa.default_memory_pool().release_unused()   # the events pass's decode buffers
            collectives, violations, worst = _collectives_table(info, found, clock, origin)
            del found
            writer.write_table(COLLECTIVES, collectives)
            del collectives
            writer.write_table(REQUESTS, requests)
            writer.write_table(COUNTERS, counters)
            writer.write_table(QUARANTINE, _quarantine_table(damaged) if damaged else QUARANTINE.empty())
            alignment = dict(clock.to_dict(), causality_violations=violations, worst_violation_ns=worst)
            counts = {"records_expected": int(sum(c.get("records", 0) for c in info.chips)), "events": events,
                      "quarantined_pieces": len(damaged),
                      "quarantined_records": int(sum(d.records for d in damaged)),
                      "files": len(files)}
            meta = info.meta
            writer.write_manifest({
                "source": {"format": FORMAT_NAME, "version": meta.get("version"), "path": str(info.root),
                           "generator": meta.get("generator")},
                "hardware": meta.get("hardware"), "model": meta.get("model"), "parallel": meta.get("parallel"),
                "workload": meta.get("workload"),
                "ranks": [{"rank": c["rank"], "node": c["node"], "chip": c["chip"]} for c in info.chips],
                "time_origin": {"node": clock.reference, "local_ns": origin},
                "clock_alignment": alignment, "counts": counts})
    return {"store": str(store_path), "format": FORMAT_NAME, "clock_alignment": alignment, **counts}
