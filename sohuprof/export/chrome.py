"""Chrome trace-event JSON export of a trace store, for Perfetto and chrome://tracing.

The file follows the Trace Event Format: one process per node (``process_name`` "node N"), one
thread per chip, engine and overlap lane (``thread_name`` "chip C · matrix", "chip C · matrix #2"
...), ``X`` events for ops, collectives linked across ranks by flow fields on their ``X`` events
(``bind_id`` with ``flow_out`` on the first member to arrive, ``flow_in`` on the others: Perfetto's
JSON importer keeps such a flow open, so one source fans out to every member), counters as ``C``
events and the run's metadata in ``otherData``.

The JSON text is assembled a whole batch at a time with Arrow string kernels (no Python loop per
event) and streamed, rank by rank, into the output through :func:`sohuprof.atomic.open_output`,
so memory stays bounded by one rank's events and a failure leaves no file behind (``-``, a device
or a FIFO is written through, as it goes).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, IO, Union, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.atomic import open_output
from sohuprof.errors import OutputError
from sohuprof.export.selection import (ENGINE_ORDER, LANES, RANK_STRIDE, Plan, SelectionError, no_events,
                                       one_batch, parse_ranks, prepare_export, rank_events,
                                       selection_filter)
from sohuprof.progress import progress
from sohuprof.schema import COUNTERS
from sohuprof.store import TraceStore

__all__ = ["export_chrome", "ExportSummary", "SelectionError", "parse_ranks",
           "CHROME_TRACING_LIMIT_BYTES", "ENGINE_ORDER"]

PathLike = Union[str, "os.PathLike[str]"]

#: Uncompressed size past which chrome://tracing fails to load a JSON trace (~500 MB).
CHROME_TRACING_LIMIT_BYTES = 500_000_000
#: Events turned into JSON text at a time (bounds the text held in memory).
CHUNK_ROWS = 65_536
#: gzip level: 1-3 cost a fraction of level 9's time for a few percent more bytes.
GZIP_LEVEL = 3
_EVENT_COLUMNS = ["ts", "dur", "rank", "track", "name", "op", "category", "layer", "step", "phase",
                  "flops", "hbm_bytes", "coll_id"]


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_chrome` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The file written.
    events : int
        ``X`` events (one per selected store event).
    flows : int
        Flow arrows: for each collective instance with ``k >= 2`` selected members, ``k - 1``.
    counters : int
        ``C`` events (counter samples).
    threads : int
        Threads (chip x track x overlap lane) named in the file.
    bytes : int
        Uncompressed size of the JSON text.
    file_bytes : int
        Bytes written to the output (smaller than ``bytes`` when gzipped).
    start_ns, end_ns : int
        The exported window on the store's clock, ``[start_ns, end_ns)``.
    warnings : tuple of str
        Things the user should know (a file too big for chrome://tracing, dropped samples).
    """

    path: Path
    events: int
    flows: int
    counters: int
    threads: int
    bytes: int
    file_bytes: int
    start_ns: int
    end_ns: int
    warnings: tuple[str, ...] = ()



# --------------------------------------------------------------------------- JSON text

def _json_strings(dictionary: pa.Array, empty_as: str | None = None) -> pa.Array:
    """JSON-escaped string literals of a (small) dictionary, via orjson."""
    values = dictionary.to_pylist()
    return pa.array([orjson.dumps(empty_as if (empty_as is not None and not v) else v).decode()
                     for v in values], pa.string())


def _decoded_json(column: pa.Array, empty_as: str | None = None) -> pa.Array:
    """A dictionary column as JSON string literals (null stays null), escaped once per value."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    return pc.take(_json_strings(column.dictionary, empty_as), column.indices)


def _int_text(values: pa.Array | np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values) if isinstance(values, np.ndarray) else values, pa.string())


def _us_text(ns: np.ndarray) -> pa.Array:
    """Non-negative int64 ns as µs with exactly three decimals, exact (no float rounding)."""
    whole, frac = np.divmod(ns, 1000)
    frac_text = pc.utf8_lpad(pc.cast(pa.array(frac), pa.string()), width=3, padding="0")
    return pc.binary_join_element_wise(pc.cast(pa.array(whole), pa.string()), frac_text, ".")


def _field(key: str, text: pa.Array) -> pa.Array:
    """``,"key":text`` where ``text`` is set, else ``""``."""
    return pc.fill_null(pc.binary_join_element_wise(f',"{key}":', text, ""), "")


def _join(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _write_text(fh: IO[bytes], text: pa.Array) -> int:
    """Write a null-free string array's characters back to back (zero copy); return the bytes."""
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    if len(text) == 0:
        return 0
    offsets = text.buffers()[1]
    data = text.buffers()[2]
    off = np.frombuffer(offsets, dtype=np.int32, count=len(text) + 1, offset=text.offset * 4)
    lo, hi = int(off[0]), int(off[-1])
    fh.write(memoryview(data)[lo:hi])
    return hi - lo



def _event_lines(table: pa.RecordBatch, lanes: np.ndarray, track_idx: np.ndarray, pid: int,
                 plan: Plan) -> pa.Array:
    """``,\\n{"ph":"X",...}`` for every row of one rank's (sorted) events."""
    ts = table.column("ts").to_numpy()
    rank = table.column("rank").to_numpy().astype(np.int64)
    tid = rank * RANK_STRIDE + track_idx * LANES + lanes + 1
    coll = table.column("coll_id")
    flow = pa.nulls(len(table), pa.string())
    if len(plan.flow_coll) and coll.null_count < len(coll):
        c_int = pc.fill_null(coll, -1).to_numpy()
        i = np.minimum(np.searchsorted(plan.flow_coll, c_int), len(plan.flow_coll) - 1)
        member = (plan.flow_coll[i] == c_int) & (c_int >= 0)
        source = member & (plan.flow_src_rank[i] == rank) & (plan.flow_src_ts[i] == ts)
        role = np.where(source, ',"flow_out":true', ',"flow_in":true')
        flow_text = _join(',"bind_id":', _int_text(c_int + 1), pa.array(role))
        flow = pc.if_else(pa.array(member), flow_text, pa.scalar(None, pa.string()))
    args = _join('{"op":', _decoded_json(table.column("op")),
                 _field("layer", pc.cast(table.column("layer"), pa.string())),
                 _field("step", pc.cast(table.column("step"), pa.string())),
                 _field("phase", _decoded_json(table.column("phase"))),
                 _field("flops", pc.cast(table.column("flops"), pa.string())),
                 _field("hbm_bytes", pc.cast(table.column("hbm_bytes"), pa.string())),
                 _field("coll_id", pc.cast(coll, pa.string())), "}")
    return _join(',\n{"ph":"X","name":', _decoded_json(table.column("name"), "(unnamed)"),
                 ',"cat":', _decoded_json(table.column("category"), "(none)"),
                 f',"pid":{pid},"tid":', _int_text(tid),
                 ',"ts":', _us_text(ts - plan.t0),
                 ',"dur":', _us_text(np.maximum(table.column("dur").to_numpy(), 0)),
                 ',"args":', args, pc.fill_null(flow, ""), "}")


def _metadata(ph_name: str, pid: int, tid: int | None, args: dict[str, Any]) -> bytes:
    event: dict[str, Any] = {"ph": "M", "name": ph_name, "pid": pid}
    if tid is not None:
        event["tid"] = tid
    event["args"] = args
    return orjson.dumps(event)


def _other_data(store: TraceStore, plan: Plan) -> dict[str, Any]:
    m = store.manifest
    return {"generator": "sohuprof export chrome", "store": str(store.path),
            "hardware": m.get("hardware"), "model": m.get("model"), "parallel": m.get("parallel"),
            "source": m.get("source"), "clock_alignment": m.get("clock_alignment"),
            "trace_start_ns": plan.t0, "window_ns": [plan.start_ns, plan.end_ns],
            "ranks": [r for _, r, _ in plan.ranks]}


# --------------------------------------------------------------------------- the export

class _CountingWriter:
    """Counts the uncompressed bytes going into a (possibly gzip) file."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.bytes = 0
        self.events = self.counters = self.threads = 0
        self.file_bytes = 0   # what reached the output, compressed or not

    def write(self, data: bytes | memoryview) -> None:
        self.fh.write(data)
        self.bytes += len(data) if isinstance(data, bytes) else data.nbytes


class _ByteCount:
    """Counts the bytes reaching an output that cannot be stat'ed for its size (stdout, a pipe)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.bytes = 0

    def write(self, data: bytes | memoryview) -> int:
        self.fh.write(data)
        self.bytes += memoryview(data).nbytes
        return memoryview(data).nbytes

    def flush(self) -> None:
        self.fh.flush()


def export_chrome(store: TraceStore | PathLike, out: PathLike, *, start_ms: float | None = None,
                  end_ms: float | None = None, ranks: Sequence[int] | None = None,
                  force: bool = False, show_progress: bool | None = None) -> ExportSummary:
    """Export a trace store as Chrome trace-event JSON that Perfetto and chrome://tracing open.

    Parameters
    ----------
    store : TraceStore or str or os.PathLike
        The trace store (or its directory).
    out : str or os.PathLike
        The file to write; gzip-compressed when its name ends in ``.gz``. Written to a temporary
        sibling and renamed into place, so a failure leaves nothing behind; a symlink's target is
        written (the link kept). ``-`` (stdout, uncompressed JSON), a device or a FIFO is written
        through.
    start_ms, end_ms : float, optional
        Export only events that *start* in ``[start_ms, end_ms)``, in ms from the trace start
        (the store's first event or counter sample). Times in the file are µs from the trace
        start either way, so a window's events keep the times of the full export.
    ranks : sequence of int, optional
        Export only these ranks (all when omitted); see :func:`parse_ranks`.
    force : bool, default False
        Replace an existing file.
    show_progress : bool, optional
        Progress bar on stderr; ``None`` shows it when stderr is a terminal.

    Returns
    -------
    ExportSummary
        Counts and sizes; ``warnings`` says when the file is too big for chrome://tracing.

    Raises
    ------
    StoreError
        ``store`` is not a readable trace store.
    SelectionError
        The window lies outside the trace or is negative, reversed or not finite; a rank is not
        in the store; or nothing is selected. (A ``ValueError`` too.)
    OutputError
        ``out`` exists (without ``force``), is a directory, is inside the store, or cannot be
        written.

    Examples
    --------
    >>> export_chrome("sample_traces/mixtral-2node/store", tmp / "t.json.gz", ranks=[0, 4])  # doctest: +SKIP
    ExportSummary(path=..., events=17218, flows=..., ...)
    """
    store, out, plan = prepare_export(store, out, force=force, start_ms=start_ms, end_ms=end_ms, ranks=ranks,
                                      example="trace.json.gz")
    warnings: list[str] = []
    try:
        w = _write(store, plan, out, force, show_progress, warnings)
    except OSError as exc:   # disk full, permissions, a path the OS refuses
        raise OutputError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    if w.bytes > CHROME_TRACING_LIMIT_BYTES:
        warnings.append(f"{out} is {w.bytes / 1e6:,.0f} MB uncompressed, more than the ~500 MB "
                        f"chrome://tracing loads (Perfetto's UI opens it); cut it with "
                        f"--start-ms/--end-ms or --ranks")
    return ExportSummary(path=out, events=w.events, flows=plan.flows, counters=w.counters,
                         threads=w.threads, bytes=w.bytes, file_bytes=w.file_bytes,
                         start_ns=plan.start_ns, end_ns=plan.end_ns, warnings=tuple(warnings))


def _write(store: TraceStore, plan: Plan, out: Path, force: bool, show_progress: bool | None,
           warnings: list[str]) -> _CountingWriter:
    """Stream the whole JSON document into ``out`` (atomically); return the writer's counts."""
    threads: list[bytes] = []
    with open_output(out, force=force) as output:
        counted = _ByteCount(output)
        raw = cast(IO[bytes], counted)
        fh = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)
                  if out.name.endswith(".gz") else raw)
        try:
            w = _CountingWriter(fh)
            nodes = sorted({n for n, _, _ in plan.ranks})
            w.write(b'{"traceEvents":[\n')
            w.write(_metadata("process_name", nodes[0], None, {"name": f"node {nodes[0]}"}))
            for i, node in enumerate(nodes):
                if i:
                    w.write(b",\n" + _metadata("process_name", node, None, {"name": f"node {node}"}))
                w.write(b",\n" + _metadata("process_sort_index", node, None, {"sort_index": node}))
            with progress("export chrome", len(plan.ranks), enabled=show_progress, unit="ranks") as advance:
                for node, rank, chip in plan.ranks:
                    n, names = _export_rank(store, plan, w, node, rank, chip)
                    w.events += n
                    threads.extend(names)
                    advance(1)
            if w.events == 0:   # raised inside open_output: no file is left behind
                raise no_events(plan)
            for meta in threads:
                w.write(b",\n" + meta)
            w.threads = len(threads) // 2
            w.counters, dropped = _export_counters(store, plan, w)
            if dropped:
                warnings.append(f"{dropped:,} counter samples that are not finite numbers were left out")
            w.write(b'\n],"displayTimeUnit":"ns","otherData":')
            w.write(orjson.dumps(_other_data(store, plan), default=str,
                                 option=orjson.OPT_SERIALIZE_NUMPY))
            w.write(b"}\n")
        finally:
            if fh is not raw:
                fh.close()   # the gzip trailer; open_output closes (or, for stdout, flushes) the rest
        w.file_bytes = counted.bytes
    return w


def _export_rank(store: TraceStore, plan: Plan, w: _CountingWriter, node: int, rank: int,
                 chip: int) -> tuple[int, list[bytes]]:
    """Write one rank's ``X`` events; return their count and the thread metadata to write."""
    got = rank_events(store, plan, node, rank, _EVENT_COLUMNS)
    if got is None:
        return 0, []
    batch, track_idx, lanes = got.batch, got.track_idx, got.lanes
    pid = node
    for lo in range(0, batch.num_rows, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, batch.num_rows)
        text = _event_lines(batch.slice(lo, hi - lo), lanes[lo:hi], track_idx[lo:hi], pid, plan)
        w.bytes += _write_text(w.fh, text)
    # Thread names for the (track, lane) pairs this rank used.
    key = np.unique(track_idx * LANES + lanes)
    names_by_index = {i: name for name, i in plan.tracks.items()}
    meta: list[bytes] = []
    for k in key.tolist():
        t, lane = divmod(k, LANES)
        tid = rank * RANK_STRIDE + k + 1
        label = f"chip {chip} · {names_by_index[t]}" + (f" #{lane + 1}" if lane else "")
        meta.append(_metadata("thread_name", pid, tid, {"name": label}))
        meta.append(_metadata("thread_sort_index", pid, tid, {"sort_index": tid}))
    return batch.num_rows, meta


def _export_counters(store: TraceStore, plan: Plan, w: _CountingWriter) -> tuple[int, int]:
    """Write the selected counter samples as ``C`` events; return (written, dropped)."""
    rank_node = {r: (n, c) for n, r, c in plan.ranks}
    flt = selection_filter(plan.start_ns, plan.end_ns, rank_node)
    table = store.read(COUNTERS, filters=flt)
    if table.num_rows == 0:
        return 0, 0
    value = table.column("value").to_numpy()
    finite = np.isfinite(value)
    dropped = int((~finite).sum())
    table = table.filter(pa.array(finite)).unify_dictionaries()
    if table.num_rows == 0:
        return 0, dropped
    table = one_batch(table)
    rank = table.column("rank").to_numpy()
    lut_node = np.zeros(max(rank_node) + 1, dtype=np.int64)
    lut_chip = np.zeros(max(rank_node) + 1, dtype=np.int64)
    for r, (n, c) in rank_node.items():
        lut_node[r], lut_chip[r] = n, c
    counter = table.column("counter")
    # '"chip C · ' + the counter's name as a JSON literal without its opening quote.
    tails = pa.array([orjson.dumps(v).decode()[1:] for v in counter.dictionary.to_pylist()], pa.string())
    name_text = _join('"chip ', _int_text(lut_chip[rank]), " · ", pc.take(tails, counter.indices))
    text = _join(',\n{"ph":"C","name":', name_text,
                 ',"pid":', _int_text(lut_node[rank]),
                 ',"ts":', _us_text(table.column("ts").to_numpy() - plan.t0),
                 ',"args":{"value":', pc.cast(table.column("value"), pa.string()), "}}")
    w.bytes += _write_text(w.fh, text)
    return table.num_rows, dropped
