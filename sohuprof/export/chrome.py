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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, IO, Union, cast

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.atomic import check_file_output, open_output
from sohuprof.errors import OutputError, SohuprofError
from sohuprof.progress import progress
from sohuprof.schema import COUNTERS, EVENTS
from sohuprof.store import TraceStore, open_store

__all__ = ["export_chrome", "ExportSummary", "SelectionError", "parse_ranks",
           "CHROME_TRACING_LIMIT_BYTES", "ENGINE_ORDER"]

PathLike = Union[str, "os.PathLike[str]"]

#: Uncompressed size past which chrome://tracing fails to load a JSON trace (~500 MB).
CHROME_TRACING_LIMIT_BYTES = 500_000_000
#: Display order of a chip's engines; other tracks (GPU streams, CPU threads) follow, sorted.
ENGINE_ORDER = ("matrix", "vector", "dma", "collective", "host")
#: Events turned into JSON text at a time (bounds the text held in memory).
CHUNK_ROWS = 65_536
#: gzip level: 1-3 cost a fraction of level 9's time for a few percent more bytes.
GZIP_LEVEL = 3

# tid = rank * _RANK_STRIDE + track_index * _LANE_STRIDE + lane + 1, an unsigned 32-bit int that is
# the same for a (rank, track, lane) in every export of a store (0 is avoided: Perfetto reserves it).
_LANES = 64
_TRACKS = 1024
_RANK_STRIDE = _TRACKS * _LANES
_MAX_RANK = (2**32 - 1) // _RANK_STRIDE - 1
_EVENT_COLUMNS = ["ts", "dur", "rank", "track", "name", "op", "category", "layer", "step", "phase",
                  "flops", "hbm_bytes", "coll_id"]


class SelectionError(SohuprofError, ValueError):
    """The time window or rank selection of an export picks nothing the store holds."""


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


#: Bounds of a parsed rank selection (see :func:`parse_ranks`).
_MAX_RANK_ID = 2**31 - 1
_MAX_SELECTED_RANKS = 2**20


def parse_ranks(text: str) -> list[int]:
    """Parse a rank list such as ``"0,3,8-15"`` into sorted unique ranks.

    Ranks are bounded before any range is expanded: each is below ``2**31`` (ranks are int32 in
    the store) and a selection spans at most ``2**20`` ranks (more than any cluster has), so a
    typo such as ``0-999999999999`` is one clear error rather than a list of a trillion ints.

    Raises
    ------
    ValueError
        ``text`` is not a comma-separated list of ranks and ``A-B`` ranges, or a rank or the
        selection's size is past those bounds.

    Examples
    --------
    >>> parse_ranks("0,3,8-10")
    [0, 3, 8, 9, 10]
    """
    spans: list[tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",")):
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"'ranks' must be ranks and ranges like 0,3,8-15; got {text!r}") from None
        if a < 0 or b < a:
            raise ValueError(f"'ranks' range {part!r} is empty or negative; write it low-high, like 8-15")
        if b > _MAX_RANK_ID:
            raise ValueError(f"'ranks' {part!r} names rank {b:,}, past the largest a store holds ({_MAX_RANK_ID:,})")
        spans.append((a, b))
    size = sum(b - a + 1 for a, b in spans)
    if size > _MAX_SELECTED_RANKS:
        raise ValueError(f"'ranks' {text!r} selects {size:,} ranks, more than the {_MAX_SELECTED_RANKS:,} "
                         "a selection may name; list the ranks the store has")
    ranks: set[int] = set()
    for a, b in spans:
        ranks.update(range(a, b + 1))
    return sorted(ranks)


# --------------------------------------------------------------------------- the plan

@dataclass(frozen=True)
class _Plan:
    t0: int                       # trace start: the store's first event or counter sample (ns)
    start_ns: int                 # window, [start_ns, end_ns)
    end_ns: int
    ranks: list[tuple[int, int, int]]   # (node, rank, chip) selected, in output order
    tracks: dict[str, int]        # track name -> stable index
    flow_coll: np.ndarray         # sorted coll_ids with >= 2 selected members
    flow_src_rank: np.ndarray     # the member each flow starts from (first to arrive)
    flow_src_ts: np.ndarray
    flows: int


def _ensure_store(store: TraceStore | PathLike) -> TraceStore:
    return store if isinstance(store, TraceStore) else open_store(store)


def _track_key(name: str) -> tuple[int, str, int]:
    """Engines in ENGINE_ORDER, then other tracks by name with their trailing number as a number."""
    if name in ENGINE_ORDER:
        return (ENGINE_ORDER.index(name), "", 0)
    head, _, tail = name.rpartition(" ")
    if tail.lstrip("-").isdigit():
        return (len(ENGINE_ORDER), head, int(tail))
    return (len(ENGINE_ORDER), name, 0)


def _ms_to_ns(value: float, what: str) -> int:
    if not np.isfinite(value):
        raise SelectionError(f"'{what}' must be a finite number of ms; got {value!r}")
    return int(round(value * 1_000_000))


def _plan(store: TraceStore, start_ms: float | None, end_ms: float | None,
          ranks: Sequence[int] | None) -> _Plan:
    if start_ms is not None and start_ms < 0:
        raise SelectionError(f"'start_ms' must be >= 0 (ms from the trace start); got {start_ms:g}")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise SelectionError(f"'end_ms' ({end_ms:g}) must be greater than 'start_ms' ({start_ms:g})")
    # Pass 1 (few columns): which ranks live where, the tracks, and the trace's extent.
    triples: set[tuple[int, int, int]] = set()
    tracks: set[str] = set()
    t_first, t_last = None, None
    for batch in store.scan(columns=["node", "rank", "chip", "track", "ts", "dur"]):
        if batch.num_rows == 0:
            continue
        keys = pa.table({"node": batch.column("node"), "rank": batch.column("rank"),
                         "chip": batch.column("chip")}).group_by(["node", "rank", "chip"]).aggregate([])
        triples.update(zip(*(keys.column(c).to_pylist() for c in ("node", "rank", "chip"))))
        track = batch.column("track")
        used = pc.unique(track.indices)
        tracks.update(pc.take(track.dictionary, used).to_pylist())
        lo = pc.min(batch.column("ts")).as_py()
        hi = pc.max(pc.add(batch.column("ts"), batch.column("dur"))).as_py()
        t_first = lo if t_first is None else min(t_first, lo)
        t_last = hi if t_last is None else max(t_last, hi)
    if t_first is None:
        raise SelectionError(f"trace store '{store.path}' holds no events; nothing to export")
    counters_ts = store.read(COUNTERS, columns=["ts"]).column("ts")
    t0 = min(t_first, pc.min(counters_ts).as_py()) if len(counters_ts) else t_first
    span_ms = (t_last - t0) / 1e6
    start_ns = t0 + _ms_to_ns(start_ms, "start_ms") if start_ms is not None else t0
    end_ns = t0 + _ms_to_ns(end_ms, "end_ms") if end_ms is not None else max(t_last, t0) + 1
    if start_ns >= t_last or end_ns <= t0:
        raise SelectionError(f"window {_fmt_window(start_ms, end_ms)} is outside the trace, "
                             f"which spans 0-{span_ms:,.3f} ms; pick --start-ms/--end-ms inside it")

    available = sorted(triples, key=lambda t: (t[0], t[1]))
    if ranks is not None:
        wanted = set(int(r) for r in ranks)
        have = {r for _, r, _ in available}
        missing = sorted(wanted - have)
        if missing:
            raise SelectionError(f"ranks {_fmt_ranks(missing)} are not in the store, which has ranks "
                                 f"{_fmt_ranks(sorted(have))}")
        available = [t for t in available if t[1] in wanted]
    if not available:
        raise SelectionError("the rank selection is empty; pass at least one rank to --ranks")
    if available[-1][1] > _MAX_RANK:
        raise SelectionError(f"rank {available[-1][1]} is beyond the {_MAX_RANK} ranks a Chrome trace's "
                             f"32-bit thread ids can hold; export fewer with --ranks")
    ordered_tracks = sorted(tracks, key=_track_key)
    if len(ordered_tracks) > _TRACKS:
        raise SelectionError(f"the store has {len(ordered_tracks)} tracks per rank, more than the "
                             f"{_TRACKS} a Chrome trace export can number")
    track_index = {name: i for i, name in enumerate(ordered_tracks)}

    # Pass 2 (collective members only): the first member of each instance, where its flow starts.
    sel = _selection_filter(start_ns, end_ns, [r for _, r, _ in available]) & pc.is_valid(pc.field("coll_id"))
    members = store.read(EVENTS, columns=["coll_id", "rank", "ts", "dur"], filters=sel)
    order_of_rank = {r: i for i, (_, r, _) in enumerate(available)}
    coll = members.column("coll_id").to_numpy()
    rank = members.column("rank").to_numpy()
    ts = members.column("ts").to_numpy()
    if len(coll):
        lut = np.full(max(order_of_rank) + 1, -1, dtype=np.int64)
        lut[list(order_of_rank)] = list(order_of_rank.values())
        emit = lut[rank]
        # The source must be the member Perfetto reads first: its importer orders X events by ts,
        # then longest first, then as written (measured on Perfetto v52).
        dur = members.column("dur").to_numpy()
        order = np.lexsort((emit, -dur, ts, coll))
        coll, rank, ts = coll[order], rank[order], ts[order]
        first = np.ones(len(coll), dtype=bool)
        first[1:] = coll[1:] != coll[:-1]
        starts = np.flatnonzero(first)
        sizes = np.diff(np.append(starts, len(coll)))
        keep = starts[sizes >= 2]
        flow_coll, flow_rank, flow_ts = coll[keep], rank[keep], ts[keep]
        flows = int((sizes[sizes >= 2] - 1).sum())
    else:
        flow_coll = flow_rank = flow_ts = np.empty(0, dtype=np.int64)
        flows = 0
    return _Plan(t0=t0, start_ns=start_ns, end_ns=end_ns, ranks=available, tracks=track_index,
                 flow_coll=flow_coll, flow_src_rank=flow_rank.astype(np.int64),
                 flow_src_ts=flow_ts, flows=flows)


def _selection_filter(start_ns: int, end_ns: int, ranks: Iterable[int]) -> pc.Expression:
    return ((pc.field("ts") >= start_ns) & (pc.field("ts") < end_ns)
            & pc.field("rank").isin(pa.array(sorted(set(ranks)), pa.int32())))


def _fmt_window(start_ms: float | None, end_ms: float | None) -> str:
    if end_ms is None:
        return f"from {start_ms:g} ms"
    return f"{0 if start_ms is None else start_ms:g}-{end_ms:g} ms"


def _fmt_ranks(ranks: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    out: list[str] = []
    i = 0
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        out.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(out)


# --------------------------------------------------------------------------- overlap lanes

def assign_lanes(start: np.ndarray, end: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Lane of each interval so that, per ``group`` and lane, intervals are nested or disjoint.

    Intervals are ``[start, end)`` and must be sorted by ``(group, start, end descending)``. Most
    groups are already properly nested (one engine runs one op at a time; CPU ops nest), which
    a vectorized parenthesis check finds without a loop: all of them stay in lane 0. Only the
    clusters of mutually overlapping intervals that contain a crossing are dealt out greedily,
    each interval to the lowest lane where it nests.
    """
    n = len(start)
    lanes = np.zeros(n, dtype=np.int64)
    if n < 2:
        return lanes
    # Clusters: a new one begins where an interval starts at or after every earlier one's end
    # (or in a new group).
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    run_end = _grouped_running_max(end, new_group)
    cluster_start = new_group.copy()
    cluster_start[1:] |= start[1:] >= run_end[:-1]
    if cluster_start.all():
        return lanes
    bad = _crossing(start, end, group)
    if not bad.any():
        return lanes
    cluster = np.cumsum(cluster_start) - 1
    bad_clusters = np.unique(cluster[bad])
    in_bad = np.isin(cluster, bad_clusters)
    idx = np.flatnonzero(in_bad)
    bounds = np.flatnonzero(np.diff(cluster[idx])) + 1
    for part in np.split(idx, bounds):        # loop over the few crossing clusters
        lanes[part] = _greedy_lanes(start[part], end[part])
    return lanes


def _grouped_running_max(values: np.ndarray, new_group: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` restarting at each ``new_group``."""
    seg = np.cumsum(new_group) - 1
    # Offset each group above every earlier one so one global accumulate restarts per group.
    lo, hi = values.min(), values.max()
    shifted = (values - lo) + seg.astype(values.dtype) * (hi - lo + 1)
    return np.maximum.accumulate(shifted) - seg.astype(values.dtype) * (hi - lo + 1) + lo


def _crossing(start: np.ndarray, end: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Mask of intervals whose open and close disagree in a parenthesis walk (a crossing).

    Every endpoint becomes +1 (open) or -1 (close), sorted by group and time, closes before opens
    at one instant, the longer interval opened first and the later-opened closed first. In a
    properly nested group each interval closes at the depth it opened at; every group is
    balanced, so the depth is back at 0 where the next group begins.
    """
    n = len(start)
    ids = np.arange(n)
    t = np.concatenate([start, end])
    g = np.concatenate([group, group])
    kind = np.concatenate([np.ones(n, dtype=np.int8), np.zeros(n, dtype=np.int8)])  # 0 = close
    tie = np.concatenate([ids, n - ids])     # opens in given order, closes latest-opened first
    order = np.lexsort((tie, kind, t, g))
    depth = np.cumsum(np.where(kind[order] == 1, 1, -1))
    pos = np.empty(2 * n, dtype=np.int64)
    pos[order] = np.arange(2 * n)
    return depth[pos[:n]] != depth[pos[n:]] + 1


def _greedy_lanes(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Deal intervals (sorted by start, end descending) to the lowest lane where they nest."""
    stacks: list[list[int]] = []
    out = np.empty(len(start), dtype=np.int64)
    for i, (s, e) in enumerate(zip(start.tolist(), end.tolist())):
        for lane, stack in enumerate(stacks):
            while stack and stack[-1] <= s:
                stack.pop()
            if not stack or e <= stack[-1]:
                stack.append(e)
                out[i] = lane
                break
        else:
            stacks.append([e])
            out[i] = len(stacks) - 1
    return out


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


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """The table's columns as one record batch (one contiguous array each)."""
    table = table.combine_chunks()
    return pa.RecordBatch.from_arrays([col.chunk(0) if col.num_chunks else pa.array([], col.type)
                                       for col in table.columns], schema=table.schema)


def _event_lines(table: pa.RecordBatch, lanes: np.ndarray, track_idx: np.ndarray, pid: int,
                 plan: _Plan) -> pa.Array:
    """``,\\n{"ph":"X",...}`` for every row of one rank's (sorted) events."""
    ts = table.column("ts").to_numpy()
    rank = table.column("rank").to_numpy().astype(np.int64)
    tid = rank * _RANK_STRIDE + track_idx * _LANES + lanes + 1
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


def _other_data(store: TraceStore, plan: _Plan) -> dict[str, Any]:
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
    store = _ensure_store(store)
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"{str(out)!r} is a directory; give a file name such as trace.json.gz")
    check_file_output(out, force=force, inputs=[store.path])   # before the work, not after
    plan = _plan(store, start_ms, end_ms, ranks)
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


def _write(store: TraceStore, plan: _Plan, out: Path, force: bool, show_progress: bool | None,
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
                raise SelectionError(f"no events of ranks {_fmt_ranks([r for _, r, _ in plan.ranks])} "
                                     f"start in the window {plan.start_ns - plan.t0:,}-"
                                     f"{plan.end_ns - plan.t0:,} ns; widen --start-ms/--end-ms "
                                     f"or pick other --ranks")
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


def _export_rank(store: TraceStore, plan: _Plan, w: _CountingWriter, node: int, rank: int,
                 chip: int) -> tuple[int, list[bytes]]:
    """Write one rank's ``X`` events; return their count and the thread metadata to write."""
    flt = (pc.field("node") == node) & _selection_filter(plan.start_ns, plan.end_ns, [rank])
    table = store.read(EVENTS, columns=_EVENT_COLUMNS, filters=flt)
    if table.num_rows == 0:
        return 0, []
    table = table.unify_dictionaries().combine_chunks()
    track = table.column("track").chunk(0) if table.column("track").num_chunks else table.column("track")
    track_lut = np.array([plan.tracks[name] for name in track.dictionary.to_pylist()], dtype=np.int64)
    track_idx = track_lut[track.indices.to_numpy()]
    ts = table.column("ts").to_numpy()
    dur = table.column("dur").to_numpy()
    order = np.lexsort((-dur, ts, track_idx))
    if not (order[1:] > order[:-1]).all():
        table = table.take(pa.array(order))
        track_idx, ts, dur = track_idx[order], ts[order], dur[order]
    batch = _one_batch(table)
    lanes = assign_lanes(ts, ts + dur, track_idx)
    if lanes.max(initial=0) >= _LANES:
        raise SelectionError(f"rank {rank} has events overlapping {lanes.max() + 1} deep on one track, "
                             f"more than the {_LANES} lanes an export numbers")
    pid = node
    for lo in range(0, batch.num_rows, CHUNK_ROWS):
        hi = min(lo + CHUNK_ROWS, batch.num_rows)
        text = _event_lines(batch.slice(lo, hi - lo), lanes[lo:hi], track_idx[lo:hi], pid, plan)
        w.bytes += _write_text(w.fh, text)
    # Thread names for the (track, lane) pairs this rank used.
    key = np.unique(track_idx * _LANES + lanes)
    names_by_index = {i: name for name, i in plan.tracks.items()}
    meta: list[bytes] = []
    for k in key.tolist():
        t, lane = divmod(k, _LANES)
        tid = rank * _RANK_STRIDE + k + 1
        label = f"chip {chip} · {names_by_index[t]}" + (f" #{lane + 1}" if lane else "")
        meta.append(_metadata("thread_name", pid, tid, {"name": label}))
        meta.append(_metadata("thread_sort_index", pid, tid, {"sort_index": tid}))
    return table.num_rows, meta


def _export_counters(store: TraceStore, plan: _Plan, w: _CountingWriter) -> tuple[int, int]:
    """Write the selected counter samples as ``C`` events; return (written, dropped)."""
    rank_node = {r: (n, c) for n, r, c in plan.ranks}
    flt = _selection_filter(plan.start_ns, plan.end_ns, rank_node)
    table = store.read(COUNTERS, filters=flt)
    if table.num_rows == 0:
        return 0, 0
    value = table.column("value").to_numpy()
    finite = np.isfinite(value)
    dropped = int((~finite).sum())
    table = table.filter(pa.array(finite)).unify_dictionaries()
    if table.num_rows == 0:
        return 0, dropped
    table = _one_batch(table)
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
