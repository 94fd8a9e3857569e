"""Raw Sohu run directories (``run.json`` + per-chip ``.strace``) into the trace store.

Two streaming passes over the chip files: the first checks every chunk (the accounting of
:mod:`sohuprof.collectors.strace_reader`) and reads only collective records, to align the
nodes' clocks (:mod:`sohuprof.collectors.alignment`); the second converts every kept chunk to
events on the aligned clock and writes them, one chip at a time, so memory is bounded by a batch,
not the trace. Every record written is kept, quarantined or counted as lost, per file, in the
manifest's ``counts``; records that passed their chunk's CRC but make no physical sense (an op
ending before it starts, an op-name id run.json does not list) are quarantined per reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.collectors.alignment import ClockMap, causality_violations, fit_clocks
from sohuprof.collectors.run_info import (MAX_TS_NS, NIC_FIELDS, RUN_FILE, RunInfo, decode_host_line,
                                          read_run_info)
from sohuprof.collectors.strace_reader import ChipFile, FileAccount, Piece, RawBudget
from sohuprof import kernels
from sohuprof.errors import TraceFormatError
from sohuprof.progress import progress
from sohuprof.schema import COLLECTIVES, COUNTERS, EVENTS, QUARANTINE, REQUESTS
from sohuprof.schema import STORE_FORMAT, STORE_VERSION
from sohuprof.store import PathLike, StoreWriter, manifest_problem
from sohuprof.strace import FORMAT_NAME, NO_GROUP, NO_LAYER, RECORD_DTYPE

__all__ = ["RunInfo", "read_run_info", "collect_sohu", "RUN_FILE", "RECORD_CHECKS"]

BATCH_RECORDS = 1 << 18   # records converted and handed to the store writer at once


def _dict_array(codes: np.ndarray, vocab: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(vocab, pa.string()))


def _ns(cycles: np.ndarray, chip: dict[str, Any]) -> np.ndarray:
    """Local cycles to local ns."""
    return cycles.astype(np.float64) * (1e9 / float(chip["clock_hz"]))


def _coll_id(rec: np.ndarray) -> np.ndarray:
    """A collective instance is (group, sequence number): ``group * 2**32 + seq``."""
    return (rec["group"].astype(np.int64) << 32) | rec["seq"].astype(np.int64)


# ------------------------------------------------------------------------------ record checks

#: Why a record inside a sound chunk is refused, in the order checked (code = index + 1).
RECORD_CHECKS = (
    "op-name id not in run.json's op_names",
    "engine code not in run.json's engines",
    "phase code not in run.json's phases",
    "ends before it starts",
    "time past 2**55 ns on the chip's clock",
    "collective group not in run.json's groups",
    "layer below -1",
    "a FLOP or byte count of 2**63 or more",
    "memory stall longer than the op",
)
#: Record fields the checks read, with the dtype each is gathered in.
_CHECKED = {"start": np.float64, "end": np.float64, "name_id": np.int32, "engine": np.int32, "phase": np.int32,
            "group": np.int64, "layer": np.int32, "flops": np.int64, "hbm_bytes": np.int64,
            "net_bytes": np.int64, "stall_cycles": np.float64}


def _unpack(chunks: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The checked fields (:data:`_CHECKED`, in their dtypes) and ``seq`` and ``step`` (int64) of
    many chunks of records, each as one contiguous array: one compiled pass over the records'
    bytes (``kernels.unpack_records``) instead of a strided copy per field."""
    n = sum(len(c) for c in chunks)
    out = {k: np.empty(n, t) for k, t in {**_CHECKED, "seq": np.int64, "step": np.int64}.items()}
    if sys.byteorder != "little":       # the kernel reads the records' little-endian bytes as they lie
        return {k: np.concatenate([c[k] for c in chunks]).astype(v.dtype) if chunks else v for k, v in out.items()}
    pos = 0
    for c in chunks:    # a loop over chunks, not records
        kernels.unpack_records(np.ascontiguousarray(c).view(np.uint8), pos, out["start"], out["end"],
                               out["name_id"], out["engine"], out["phase"], out["group"], out["layer"],
                               out["flops"], out["hbm_bytes"], out["net_bytes"], out["stall_cycles"],
                               out["seq"], out["step"])
        pos += len(c)
    return out


#: Largest chip-local time a record may carry (about 1.1 years of a chip's counter). With clock
#: offsets bounded the same way, a store's whole window stays under the 2**57 ns the analyses
#: take (engine.MAX_SPAN_NS), far inside the store's +-2**62 ns.
MAX_LOCAL_NS = 1 << 55


def _end_limit(chip: dict[str, Any]) -> float:
    """Largest end cycle whose local time in ns stays below MAX_LOCAL_NS."""
    return MAX_LOCAL_NS / (1e9 / float(chip["clock_hz"]))


def _invalid(cols: dict[str, np.ndarray], info: RunInfo, end_limit: float) -> np.ndarray | None:
    """Per record, the 1-based index into RECORD_CHECKS of the first check it fails (0: sound);
    None when every record passes.

    The common case costs a few reductions (range checks as min/max, the two relations between
    fields as one difference each); per-record codes are built only when something fails."""
    name, group, layer = cols["name_id"], cols["group"], cols["layer"]
    start, end, stall = cols["start"], cols["end"], cols["stall_cycles"]
    if not len(name):
        return None
    span = end - start
    # NO_GROUP (2**32 - 1) + 1 wraps to 0 in 32 bits: every group is sound iff the wrapped max <= groups.
    wrapped = (group + 1) & 0xFFFFFFFF
    if (name.min() >= 0 and name.max() < len(info.names) and cols["engine"].max() < len(info.engines)
            and cols["phase"].max() < len(info.phases) and end.max() < end_limit
            and wrapped.max() <= info.groups and layer.min() >= NO_LAYER
            and min(cols["flops"].min(), cols["hbm_bytes"].min(), cols["net_bytes"].min()) >= 0
            and (stall - span).max() <= 0):   # stall >= 0, so this also says span >= 0
        return None
    ok = [(name >= 0) & (name < len(info.names)),
          cols["engine"] < len(info.engines),
          cols["phase"] < len(info.phases),
          span >= 0,
          end < end_limit,
          wrapped <= info.groups,
          layer >= NO_LAYER,
          (cols["flops"] >= 0) & (cols["hbm_bytes"] >= 0) & (cols["net_bytes"] >= 0),
          stall <= span]
    code = np.zeros(len(start), np.uint8)
    for i in range(len(ok) - 1, -1, -1):   # a loop over the checks: the first one failed wins
        code[~ok[i]] = i + 1
    return code


@dataclass
class _Refused:
    """Records of one file refused on inspection, per reason: counted, the first few kept raw."""

    count: dict[int, int]
    first: dict[int, int]          # byte offset of the first refused record
    raw: dict[int, list[bytes]]

    SAMPLE = 64   # records kept raw per reason

    @classmethod
    def empty(cls) -> _Refused:
        return cls({}, {}, {})

    def add(self, code: np.ndarray, chunks: list[tuple[int, np.ndarray]]) -> np.ndarray:
        """Note the refused records of a batch (``code`` from :func:`_invalid`); return the keep mask."""
        starts = np.cumsum([0] + [len(r) for _, r in chunks])
        for c in np.unique(code[code > 0]):   # a loop over reasons
            idx = np.flatnonzero(code == c)
            self.count[int(c)] = self.count.get(int(c), 0) + len(idx)
            if int(c) not in self.first:
                k = int(np.searchsorted(starts, idx[0], side="right") - 1)
                self.first[int(c)] = chunks[k][0] + (int(idx[0]) - int(starts[k])) * RECORD_DTYPE.itemsize
            have = self.raw.setdefault(int(c), [])
            for i in idx[:max(self.SAMPLE - len(have), 0)]:   # at most SAMPLE records
                k = int(np.searchsorted(starts, i, side="right") - 1)
                have.append(chunks[k][1][int(i) - int(starts[k])].tobytes())
        return code == 0

    def pieces(self, source: str) -> list[Piece]:
        return [Piece(source, self.first[c], n * RECORD_DTYPE.itemsize, n,
                      f"records refused: {RECORD_CHECKS[c - 1]} (the first {len(self.raw[c])} kept raw)",
                      b"".join(self.raw[c])) for c, n in sorted(self.count.items())]


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
    first_local: list[tuple[int, float]]   # (node, local ns) of each file's earliest sound record


def _first_start(rec: np.ndarray, info: RunInfo, limit: float) -> float | None:
    """Start cycle of a chunk's earliest sound record (records are in time order: look at the
    first few, the whole chunk only if none of those is sound)."""
    for part in (rec[:16], rec):
        cols = _unpack([part])
        code = _invalid(cols, info, limit)
        good = cols["start"] if code is None else cols["start"][code == 0]
        if len(good):
            return float(good.min())
    return None


def _scan_collectives(info: RunInfo, files: list[tuple[ChipFile, dict]],
                      advance: Callable[[float], None]) -> _Collectives:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("coll", "rank", "node", "name", "start", "end", "bytes")}
    first: list[tuple[int, float]] = []
    for f, chip in files:
        limit, to_ns = _end_limit(chip), 1e9 / float(chip["clock_hz"])
        earliest: list[float] = []

        def take(seq: int, rec: np.ndarray) -> None:
            t = _first_start(rec, info, limit)
            if t is not None:
                earliest.append(t)
            coll = rec[rec["group"] != NO_GROUP]
            if not len(coll):
                return
            code = _invalid(_unpack([coll]), info, limit)
            if code is not None:   # pass 2 refuses (and counts) the same records
                coll = coll[code == 0]
            parts["coll"].append(_coll_id(coll))
            parts["rank"].append(np.full(len(coll), chip["rank"], np.int32))
            parts["node"].append(np.full(len(coll), chip["node"], np.int32))
            parts["name"].append(coll["name_id"].astype(np.int32))
            parts["start"].append(coll["start"] * to_ns)
            parts["end"].append(coll["end"] * to_ns)
            parts["bytes"].append(coll["net_bytes"].astype(np.int64))

        f.scan(take)
        if earliest:
            first.append((chip["node"], min(earliest) * to_ns))
        advance(f.size)
    dtypes = {"coll": np.int64, "rank": np.int32, "node": np.int32, "name": np.int32, "start": np.float64,
              "end": np.float64, "bytes": np.int64}
    arrays = {k: np.concatenate(v) if v else np.zeros(0, dtypes[k]) for k, v in parts.items()}
    return _Collectives(**arrays, first_local=first)


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

def _events_table(info: RunInfo, chunks: list[tuple[int, np.ndarray]], chip: dict[str, Any], clock: ClockMap,
                  origin: float, refused: _Refused) -> pa.Table:
    recs = [r for _, r in chunks]
    cols = _unpack(recs)
    seq, step = cols.pop("seq"), cols.pop("step")
    code = _invalid(cols, info, _end_limit(chip))
    if code is not None:
        keep = refused.add(code, chunks)
        cols = {k: v[keep] for k, v in cols.items()}
        seq, step = seq[keep], step[keep]
    node = chip["node"]
    n = len(seq)
    to_ns = 1e9 / float(chip["clock_hz"])
    ts = np.rint(clock.apply(cols["start"] * to_ns, node) - origin).astype(np.int64)
    end_ns = np.rint(clock.apply(cols["end"] * to_ns, node) - origin).astype(np.int64)
    name, layer, group = cols["name_id"], cols["layer"], cols["group"]
    columns = {
        "ts": ts, "dur": end_ns - ts,
        "node": np.full(n, node, np.int32), "chip": np.full(n, chip["chip"], np.int32),
        "rank": np.full(n, chip["rank"], np.int32),
        "track": _dict_array(cols["engine"], info.engines),
        "name": _dict_array(name, info.names),
        "op": _dict_array(info.op_of_name[name], info.ops),
        "category": _dict_array(info.category_of_name[name], info.categories),
        "layer": pa.array(layer, pa.int32(), mask=layer == NO_LAYER),
        "step": step,
        "phase": _dict_array(cols["phase"], info.phases),
        "flops": cols["flops"], "hbm_bytes": cols["hbm_bytes"], "net_bytes": cols["net_bytes"],
        "stall_mem_ns": np.rint(cols["stall_cycles"] * to_ns).astype(np.int64),
        "coll_id": pa.array((group << 32) | seq, pa.int64(), mask=group == NO_GROUP),
        "correlation": pa.nulls(n, pa.int64()),
        "cat": pa.nulls(n, EVENTS.schema.field("cat").type), "stream": pa.nulls(n, pa.int64()),
    }
    return pa.table(columns, schema=EVENTS.schema)


def _write_events(info: RunInfo, files: list[tuple[ChipFile, dict]], clock: ClockMap, origin: float,
                  writer: StoreWriter, advance: Callable[[float], None]) -> int:
    """Pass 2: every kept chunk (CRC32 checked again) to events; refused records counted per file."""
    events = 0
    for f, chip in files:
        refused = _Refused.empty()
        for batch in f.kept_batches(BATCH_RECORDS):
            table = _events_table(info, batch, chip, clock, origin, refused)
            writer.write_events(table)
            events += table.num_rows
            del batch, table   # views of the reader's buffer, refilled for the next batch
        f.account.set_aside(sum(refused.count.values()))
        f.pieces += refused.pieces(f.source)
        advance(f.size)
    return events


# ------------------------------------------------------------------------------ host events

#: Host event fields kept per line, beside its time, type and node.
_HOST_FIELDS = ("request", "replica", "prompt_tokens", "output_tokens", "prefill_tokens", "decode_tokens", "rank",
                *NIC_FIELDS)


def _host_tables(info: RunInfo, clock: ClockMap, origin: float) -> tuple[pa.Table, pa.Table, list[Piece], dict]:
    """requests.parquet from request lifecycle events, counters.parquet from scheduler steps and
    NIC port counters, what was set aside, and the lines' accounting.

    Lines are decoded one by one by a typed decoder (the parser's minimum; a line that is not a
    valid host event is quarantined with why, the rest kept); everything after that is columnar."""
    rows: list[dict[str, Any]] = []
    damaged: list[Piece] = []
    lines = 0
    world = len(info.chips)
    chip_node = {c["rank"]: c["node"] for c in info.chips}   # a loop over chips
    for entry in info.meta["nodes"]:
        node, rel = int(entry["node"]), entry["host_events"]
        path = info.root / rel
        if not path.is_file():
            damaged.append(Piece(rel, 0, 0, 0, "host event file missing", b""))
            continue
        if path.stat().st_size > MAX_HOST_FILE:
            raise TraceFormatError(f"{path}: {path.stat().st_size:,} bytes is far more than any run's host "
                                   f"events; the run directory is damaged")
        for start, line in _host_lines(path, rel):   # a loop over lines: the JSON parser's unit
            if not line.strip():
                continue
            lines += 1
            ev = decode_host_line(line) if len(line) <= MAX_HOST_LINE else "host event line longer than 64 KiB"
            if not isinstance(ev, str) and ev.replica is not None and ev.replica * info.tp >= world:
                ev = f"invalid host event (replica {ev.replica} has no chips in this run)"
            if not isinstance(ev, str) and ev.type == "nic" and chip_node.get(ev.rank) != node:
                # A host reads its own chips' NIC counters, on its own clock.
                ev = f"invalid host event (rank {ev.rank} is not a chip of node {node})"
            if isinstance(ev, str):
                damaged.append(Piece(rel, start, len(line), 1, ev, line[:4096]))
                continue
            rows.append({"ts": ev.ts, "type": ev.type, "node": node, **{k: getattr(ev, k) for k in _HOST_FIELDS},
                         "_source": rel, "_offset": start, "_line": line[:4096]})
    frame = pd.DataFrame(rows, columns=["ts", "type", "node", *_HOST_FIELDS, "_source", "_offset", "_line"])
    frame["t"] = np.rint(clock.apply(frame["ts"].to_numpy(float), frame["node"].to_numpy(int)) - origin)
    # A time the store cannot hold once aligned (the line said 2**62 - 1 on a skewed node) is set
    # aside like any other bad line.
    far = ~(np.abs(frame["t"].to_numpy(float)) < MAX_TS_NS)
    for src, off, line in zip(frame["_source"][far], frame["_offset"][far], frame["_line"][far]):   # rare rows
        damaged.append(Piece(src, int(off), len(line), 1, "host event time beyond 2**62 ns once aligned", line))
    frame = frame[~far]
    steps = frame[frame["type"] == "step"]
    nic = frame[frame["type"] == "nic"]
    counters = pd.concat([pd.DataFrame({"ts": steps["t"].astype("int64"),
                                        "rank": (steps["replica"].astype("int64") * info.tp).astype("int32"),
                                        "counter": name, "value": steps[name].astype(float).fillna(0)})
                          for name in ("prefill_tokens", "decode_tokens")]
                         # A counter a nic line lacks is not recorded, never taken as 0.
                         + [pd.DataFrame({"ts": nic["t"].astype("int64"), "rank": nic["rank"].astype("int32"),
                                          "counter": f"nic_{name}", "value": nic[name].astype(float)})
                            .dropna(subset=["value"]) for name in NIC_FIELDS], ignore_index=True)
    life = frame[frame["type"].isin(["arrival", "first_token", "finish"]) & frame["request"].notna()]
    times = life.pivot_table(index="request", columns="type", values="t", aggfunc="first")
    arrived = times.index[times["arrival"].notna()] if "arrival" in times else times.index[:0]
    times = times.reindex(index=arrived, columns=["arrival", "first_token", "finish"])
    info_rows = life.groupby("request").agg(replica=("replica", "first"), prompt_tokens=("prompt_tokens", "max"),
                                            output_tokens=("output_tokens", "max")).reindex(arrived)

    def ns(col: str) -> pa.Array:
        v = times[col].to_numpy(float)
        return pa.array(np.nan_to_num(v).astype(np.int64), pa.int64(), mask=np.isnan(v))

    replica = info_rows["replica"].to_numpy(float)
    requests = pa.table({
        "request_id": arrived.to_numpy().astype(np.int64),
        "replica": pa.array(np.nan_to_num(replica, nan=0).astype(np.int64), pa.int32(), mask=np.isnan(replica)),
        "arrival": ns("arrival"), "first_token": ns("first_token"), "finish": ns("finish"),
        "prompt_tokens": info_rows["prompt_tokens"].astype(float).fillna(0).to_numpy().astype(np.int64),
        "output_tokens": info_rows["output_tokens"].astype(float).fillna(0).to_numpy().astype(np.int64)})
    counter_table = pa.table({"ts": counters["ts"].to_numpy(), "rank": counters["rank"].to_numpy(),
                              "counter": pa.array(counters["counter"].to_numpy(), pa.string()),
                              "value": counters["value"].to_numpy()})
    bad = sum(d.records for d in damaged)
    return requests, counter_table, damaged, {"lines": lines, "kept": lines - bad, "quarantined": bad}


#: Longest host event line decoded (a real one is ~100 bytes); longer is set aside unread.
MAX_HOST_LINE = 64 << 10
#: Largest host.jsonl read (10 M requests' lifecycle and step events are ~4 GB).
MAX_HOST_FILE = 16 << 30


def _host_lines(path: Path, rel: str) -> Iterator[tuple[int, bytes]]:
    """``(offset, line)`` of each line, read a bounded line at a time: a file of one endless
    line (or a sparse 100 GB one) costs a read, never its size in memory."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            line = f.readline(MAX_HOST_LINE + 1)
            if not line:
                return
            start = offset
            offset += len(line)
            if len(line) > MAX_HOST_LINE and not line.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):   # skip the rest of it
                    offset += len(rest)
                offset += len(rest)
                yield start, line + b"..."   # longer than the limit: set aside by the caller
                continue
            yield start, line.rstrip(b"\n")


def _quarantine_table(damaged: list[Piece]) -> pa.Table:
    return pa.table({"source": pa.array([d.source for d in damaged], pa.string()),
                     "offset": pa.array([d.offset for d in damaged], pa.int64()),
                     "length": pa.array([d.length for d in damaged], pa.int64()),
                     "records": pa.array([d.records for d in damaged], pa.int64()),
                     "reason": pa.array([d.reason for d in damaged], pa.string()),
                     "raw": pa.array([d.raw for d in damaged], pa.binary())})


# ------------------------------------------------------------------------------ driver

def _open_files(info: RunInfo) -> tuple[list[tuple[ChipFile, dict]], list[FileAccount], list[Piece]]:
    """Open every chip file run.json lists; a missing one is accounted for as lost."""
    files: list[tuple[ChipFile, dict]] = []
    missing: list[FileAccount] = []
    pieces: list[Piece] = []
    budget = RawBudget()   # shared: bounds the damaged bytes held over the whole collect
    try:
        for slot, chip in zip(info.slots, info.chips):
            path = info.root / slot.source
            if not path.is_file():
                missing.append(FileAccount(slot.source, slot.rank, slot.records, lost=slot.records,
                                           refused="chip trace file missing"))
                pieces.append(Piece(slot.source, 0, 0, 0, "chip trace file missing", b""))
                continue
            files.append((ChipFile(path, slot, budget), chip))
    except BaseException:
        for f, _ in files:
            f.close()
        raise
    return files, missing, pieces


def _check_clock(clock: ClockMap, root: Path) -> None:
    """A fitted clock must be physical: drift far below 1 %, offsets well inside int64 ns."""
    if not (np.all(np.isfinite(clock.scale)) and np.all(np.abs(clock.scale - 1) < 0.01)
            and np.all(np.isfinite(clock.offset)) and np.all(np.abs(clock.offset) < MAX_LOCAL_NS)):
        raise TraceFormatError(f"{root}: aligning the nodes' clocks gave a drift or offset no real clock has "
                               f"(scales {np.round(clock.scale, 6).tolist()}); its collectives or clock_sync "
                               f"snapshots are damaged")


def collect_sohu(root: PathLike, store_path: PathLike, *, force: bool = False,
                 show_progress: bool | None = None) -> dict[str, Any]:
    """Collect a raw Sohu run directory into the trace store at ``store_path``.

    Returns a summary: ``events`` (records kept), ``records_expected`` (what run.json says was
    written), ``quarantined_records``, ``records_lost`` (their sum with ``events`` is
    ``records_expected``, per file too: ``files``), ``quarantined_pieces``,
    ``duplicates_dropped``, ``refused_files``, the clock alignment and its causality violations.

    Raises
    ------
    TraceFormatError
        ``root`` is not a readable Sohu run directory, or a chip file changed while it was read.
    OutputError
        ``store_path`` exists (without ``force``) or cannot be written.
    """
    info = read_run_info(Path(root))
    _check_copied(info, {"hardware": info.hardware, "model": info.meta.get("model"),
                         "parallel": info.meta.get("parallel")})   # before any work
    files, missing, missing_pieces = _open_files(info)
    try:
        if not files:
            raise TraceFormatError(f"{info.root}: none of the {len(info.chips)} chip trace files listed in "
                                   f"run.json exist")
        return _collect(info, files, missing, missing_pieces, store_path, force=force, show_progress=show_progress)
    finally:
        for f, _ in files:
            f.close()


def _collect(info: RunInfo, files: list[tuple[ChipFile, dict]], missing: list[FileAccount],
             missing_pieces: list[Piece], store_path: PathLike, *, force: bool,
             show_progress: bool | None) -> dict[str, Any]:
    total = sum(f.size for f, _ in files)
    with progress("collecting", 2 * total, enabled=show_progress, unit="bytes") as advance:
        found = _scan_collectives(info, files, advance)
        clock = fit_clocks(info.nodes, found.coll, found.node, found.end, info.clock_sync)
        _check_clock(clock, info.root)
        origin = min(float(clock.apply(np.array([t]), n)[0]) for n, t in found.first_local) if found.first_local else 0.0
        with StoreWriter(store_path, force=force) as writer:
            # Alternate nodes so the store's writer threads encode two node partitions at once;
            # each node still receives its ranks in increasing order.
            interleaved = sorted(files, key=lambda f: (f[1]["chip"], f[1]["node"]))
            events = _write_events(info, interleaved, clock, origin, writer, advance)
            requests, counters, host_damaged, host_counts = _host_tables(info, clock, origin)
            accounts = sorted([f.account for f, _ in files] + missing, key=lambda a: a.rank)
            damaged = missing_pieces + [p for f, _ in files for p in f.pieces] + host_damaged
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
            counts = _counts(accounts, damaged, host_counts, events)
            writer.write_manifest(_manifest(info, clock, origin, alignment, counts))
    return {"store": str(store_path), "format": FORMAT_NAME, "clock_alignment": alignment, **counts,
            "files": len(files), "file_counts": counts["files"], "counts": counts}


def _manifest(info: RunInfo, clock: ClockMap, origin: float, alignment: dict[str, Any],
              counts: dict[str, Any]) -> dict[str, Any]:
    """The store's manifest; what it copies from run.json must pass the checks the store's
    reader makes, or the store written would refuse to open."""
    meta = info.meta
    manifest = {
        "source": {"format": FORMAT_NAME, "version": meta.get("version"), "path": str(info.root),
                   "generator": meta.get("generator"), "run_id": meta.get("run_id")},
        "hardware": info.hardware, "model": meta.get("model"), "parallel": meta.get("parallel"),
        "workload": meta.get("workload"),
        "ranks": [{"rank": c["rank"], "node": c["node"], "chip": c["chip"]} for c in info.chips],
        "time_origin": {"node": clock.reference, "local_ns": origin},
        "clock_alignment": alignment, "counts": counts}
    _check_copied(info, manifest)
    return manifest


def _check_copied(info: RunInfo, fields: dict[str, Any]) -> None:
    problem = manifest_problem({"format": STORE_FORMAT, "version": STORE_VERSION, **fields})
    if problem is not None:
        raise TraceFormatError(f"{info.root / RUN_FILE}: {problem.replace('field', 'run.json field', 1)}; "
                               f"the run directory is damaged")


def _counts(accounts: list[FileAccount], damaged: list[Piece], host: dict, events: int) -> dict[str, Any]:
    """The manifest's ``counts``: per file and in total, kept + quarantined + lost = expected."""
    kept = sum(a.kept for a in accounts)
    if kept != events:   # a bug, not bad input: the store would not match its own accounting
        raise RuntimeError(f"accounting mismatch: {kept} records kept, {events} events written")
    return {"records_expected": sum(a.expected for a in accounts), "events": events,
            "quarantined_records": sum(a.quarantined for a in accounts),
            "records_lost": sum(a.lost for a in accounts),
            "duplicates_dropped": sum(a.duplicates_dropped for a in accounts),
            "quarantined_pieces": len(damaged),
            "refused_files": [{"file": a.file, "reason": a.refused} for a in accounts if a.refused],
            "host_events": host,
            "files": [a.to_dict() for a in accounts]}
