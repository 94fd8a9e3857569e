"""The trace store: a directory of Parquet tables plus ``manifest.json``, written atomically.

Layout (see DESIGN.md, "The trace store")::

    STORE/
      manifest.json              format, version, source, hardware, ranks, counts ...
      events/node=N/part-K.parquet   hive-partitioned by node; rows sorted by (rank, ts) per file
      collectives.parquet  counters.parquet  requests.parquet  quarantine.parquet

:class:`StoreWriter` writes one into a temporary sibling directory and renames it into place on
success, so a crash never leaves half a store, recording each file's size and CRC-32 (and its
footer's) in the manifest and a CRC in every Parquet page. :func:`open_store` reads one back
after cheap checks (manifest field types, layout, sizes, footers, schemas, row-group statistics,
row counts: milliseconds, no page decoded); every read verifies page CRCs, and a read that fails
inside pyarrow is a :class:`StoreError` naming the file. :func:`sohuprof.check.check_store`
(``sohuprof check``) verifies every byte.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Optional, Union

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from isal import isal_zlib

import sohuprof

from sohuprof.atomic import atomic_directory
from sohuprof.errors import StoreError
from sohuprof.schema import ALL_TABLES, EVENTS, STORE_FORMAT, STORE_VERSION, TableSpec

__all__ = ["StoreWriter", "TraceStore", "Finding", "open_store", "open_store_or_collect", "read_manifest",
           "inspect_store", "value_problem", "file_crc32", "MANIFEST_NAME", "REBUILD", "TIME_LIMIT_NS"]


MANIFEST_NAME = "manifest.json"
#: Rows per Parquet row group: a time-window read of one rank touches a handful of them.
ROW_GROUP_ROWS = 128 * 1024
#: Buffered event rows (all nodes together) before the largest buffers are flushed early.
MAX_BUFFERED_ROWS = 8 * ROW_GROUP_ROWS
#: Event partition files kept open at once; past this the least recently used one is closed.
MAX_OPEN_FILES = 64
#: Threads encoding event files; row batches queued for them at once (bounds the memory held).
WRITER_THREADS = 2
MAX_PENDING_WRITES = 2
_COMPRESSION = "zstd"
# Ties at one ts put the longer (enclosing) event first, so nesting reads top-down.
_EVENT_ORDER = [("rank", "ascending"), ("ts", "ascending"), ("dur", "descending")]

PathLike = Union[str, "os.PathLike[str]"]
Filters = Union[pc.Expression, Sequence[Any], None]

_read_params_doc = """\
table : str or TableSpec
    Table name: ``events``, ``collectives``, ``counters``, ``requests`` or ``quarantine``.
columns : list of str, optional
    Columns to read; all when omitted.
filters : pyarrow.compute.Expression or list of tuples, optional
    Row filter, either an Arrow expression (``pc.field("rank") == 3``) or the DNF tuples
    :func:`pyarrow.parquet.read_table` accepts (``[("ts", ">=", t0), ("node", "=", 1)]``).
    On ``events``, filters on ``node`` prune partitions and filters on ``ts`` prune row groups."""


def _ensure_spec(table: str | TableSpec) -> TableSpec:
    """Turn a table name (or spec) into its :class:`TableSpec`."""
    if isinstance(table, TableSpec):
        return table
    for spec in ALL_TABLES:
        if table in (spec.name, spec.path):
            return spec
    names = ", ".join(repr(s.name) for s in ALL_TABLES)
    raise ValueError(f"'table' must be one of {names}; got {table!r}")


def _ensure_columns(spec: TableSpec, columns: Sequence[str] | None) -> None:
    """Refuse column names the table lacks (before pyarrow would, in words that blame the store)."""
    unknown = [c for c in columns or () if c not in spec.column_names]
    if unknown:
        raise ValueError(f"'columns' must be columns of table '{spec.name}'; got {unknown}")


def _ensure_filter(filters: Filters) -> pc.Expression | None:
    """Turn DNF filter tuples (or an Expression, or None) into one Arrow expression."""
    if filters is None or isinstance(filters, pc.Expression):
        return filters
    if isinstance(filters, (list, tuple)):
        return pq.filters_to_expression(list(filters))
    raise TypeError(f"'filters' must be a pyarrow.compute.Expression or a list of tuples; "
                    f"got {type(filters).__name__}")


def _parquet_format() -> ds.ParquetFileFormat:
    """Parquet reading that verifies each page's CRC (written by :class:`StoreWriter`; pages of
    older stores have none and are read as before), so a damaged page is an error, not data."""
    return ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
        page_checksum_verification=True))


def _events_partitioning() -> ds.Partitioning:
    return ds.partitioning(pa.schema([EVENTS.schema.field("node")]), flavor="hive")


def _file_schema() -> pa.Schema:
    """The events schema as stored in a part file: ``node`` lives in the directory name."""
    schema = EVENTS.schema
    return schema.remove(schema.get_field_index("node"))


@dataclass
class _NodePartition:
    """Write state of one ``events/node=N`` directory."""

    directory: Path
    parts: int = 0
    writer: pq.ParquetWriter | None = None
    last_key: tuple[int, int] | None = None
    buffer: list[pa.Table] = field(default_factory=list)
    buffered: int = 0
    rows: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while the file is written
    last_write: Future[None] | None = None   # the node's previous queued write, to keep order
    index: list[np.ndarray] = field(default_factory=list)   # per write: rank, chip, rows, start, end


def _is_store(path: Path) -> bool:
    """Is ``path`` a trace store (what ``--force`` may replace)? Its manifest says so."""
    try:
        return json.loads((path / MANIFEST_NAME).read_bytes()).get("format") == STORE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class StoreWriter:
    """Write a trace store atomically; use as a context manager.

    Everything goes to a temporary sibling directory (``.NAME.tmp-XXXX``) that is renamed to
    ``path`` when the ``with`` block ends without an exception; on an exception it is removed
    and nothing is left behind.

    Parameters
    ----------
    path : str or os.PathLike
        The store directory to create.
    force : bool, default False
        Replace an existing ``path``. The old store is moved aside, the new one renamed into
        place, and only then is the old one removed.
    row_group_rows : int, default 131072
        Rows per Parquet row group in the event files.

    Raises
    ------
    OutputError
        ``path`` exists and ``force`` is not set, or its parent cannot be written.

    Examples
    --------
    >>> with StoreWriter(tmp / "store") as w:  # doctest: +SKIP
    ...     w.write_events(events)
    ...     w.write_manifest({"source": {"format": "kineto"}})
    """

    def __init__(self, path: PathLike, *, force: bool = False,
                 row_group_rows: int = ROW_GROUP_ROWS) -> None:
        if row_group_rows < 1:
            raise ValueError(f"'row_group_rows' must be at least 1; got {row_group_rows}")
        self.path = Path(path)
        self.force = force
        self.row_group_rows = row_group_rows
        self._tmp: Path | None = None
        self._nodes: dict[int, _NodePartition] = {}
        self._open: OrderedDict[int, None] = OrderedDict()  # LRU of nodes with an open writer
        # Writer threads encode different node partitions at once (pyarrow releases the GIL); one
        # node's writes are chained so its file stays in order.
        self._executor = ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="sohuprof-store")
        self._open_lock = threading.RLock()   # re-entered when an eviction closes a file
        self._pending: deque[Future[None]] = deque()
        self._buffered = 0
        self._small: dict[str, list[pa.Table]] = {}
        self._manifest: dict[str, Any] = {}

    # -- context manager ------------------------------------------------------------------

    def __enter__(self) -> StoreWriter:
        self._atomic = atomic_directory(self.path, force=self.force, replaces=_is_store)
        self._tmp = self._atomic.__enter__()
        (self._tmp / EVENTS.path).mkdir()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._tmp is None:
            return
        try:
            if exc_type is None:
                self._finish()
        except BaseException as failure:
            self._close_writers()
            self._tmp = None
            if not self._atomic.__exit__(type(failure), failure, failure.__traceback__):
                raise
            return
        self._close_writers()
        self._tmp = None
        self._atomic.__exit__(exc_type, exc, tb)

    def _require_open(self) -> Path:
        if self._tmp is None:
            raise RuntimeError("StoreWriter is not open; use it as 'with StoreWriter(path) as w:'")
        return self._tmp

    # -- events ---------------------------------------------------------------------------

    def write_events(self, batch: pa.Table | pa.RecordBatch) -> None:
        """Append events, conformed to the events schema, to their node partitions.

        Parameters
        ----------
        batch : pyarrow.Table or pyarrow.RecordBatch
            Events of any ranks and nodes. Rows are sorted by ``(rank, ts)`` before writing;
            memory held is bounded by the batch plus one row group per node being written.

        Raises
        ------
        SchemaError
            A required column is missing or has the wrong type.
        """
        self._require_open()
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        table = EVENTS.conform(table)
        if table.num_rows == 0:
            return
        nodes = pc.unique(table.column("node")).to_pylist()
        for node in sorted(nodes):
            part = table if len(nodes) == 1 else table.filter(pc.equal(table.column("node"), node))
            state = self._node(node)
            state.buffer.append(part.drop_columns(["node"]))
            state.buffered += part.num_rows
            self._buffered += part.num_rows
            if state.buffered >= self.row_group_rows:
                self._flush(node, final=False)
        # Bound memory across many nodes: flush the biggest buffers until under budget.
        while self._buffered > MAX_BUFFERED_ROWS:
            biggest = max(self._nodes, key=lambda n: self._nodes[n].buffered)
            self._flush(biggest, final=True)

    def _node(self, node: int) -> _NodePartition:
        state = self._nodes.get(node)
        if state is None:
            directory = self._require_open() / EVENTS.path / f"node={node}"
            directory.mkdir()
            state = self._nodes[node] = _NodePartition(directory)
        return state

    def _flush(self, node: int, *, final: bool) -> None:
        """Write a node's buffered rows: whole row groups, or everything when ``final``.

        The main thread splits off the rows; sorting and encoding run on the background writer
        thread (pyarrow releases the GIL), so the caller decodes the next batch meanwhile. At most
        ``MAX_PENDING_WRITES`` writes are queued, which bounds the memory they hold.
        """
        state = self._nodes[node]
        if not state.buffer:
            return
        keep = 0 if final else state.buffered % self.row_group_rows
        parts, state.buffer = state.buffer, []
        if keep:
            tail = parts[-1]
            if tail.num_rows >= keep:
                parts[-1], rest = tail.slice(0, tail.num_rows - keep), tail.slice(tail.num_rows - keep)
            else:   # the rows to keep span several parts: split once, after concatenating
                whole = pa.concat_tables(parts)
                parts, rest = [whole.slice(0, whole.num_rows - keep)], whole.slice(whole.num_rows - keep)
            state.buffer = [rest]
        self._buffered -= state.buffered - keep
        state.buffered = keep
        while len(self._pending) >= MAX_PENDING_WRITES:
            self._pending.popleft().result()
        state.last_write = self._executor.submit(self._write_rows, node, parts, state.last_write)
        self._pending.append(state.last_write)

    def _write_rows(self, node: int, parts: list[pa.Table], after: Future[None] | None) -> None:
        """Writer thread: sort (unless already sorted) and append rows to the node's file."""
        if after is not None:
            after.result()    # queued earlier, so already running or done: no deadlock
        state = self._nodes[node]
        with state.lock:
            self._write_locked(node, state, parts)

    def _write_locked(self, node: int, state: _NodePartition, parts: list[pa.Table]) -> None:
        out = pa.concat_tables(parts).unify_dictionaries()
        if out.num_rows == 0:
            return
        if not _is_sorted(out):
            out = out.sort_by(_EVENT_ORDER)
        first = (out.column("rank")[0].as_py(), out.column("ts")[0].as_py())
        # A file stays sorted by (rank, ts): rows that would go backwards start a new part.
        if state.writer is not None and state.last_key is not None and first < state.last_key:
            self._close_node(node)
        writer = state.writer if state.writer is not None else self._open_node(node)
        writer.write_table(out, row_group_size=self.row_group_rows)
        state.index.append(_rank_summary(out))
        with self._open_lock:
            self._open.move_to_end(node)
        state.last_key = (out.column("rank")[-1].as_py(), out.column("ts")[-1].as_py())
        state.rows += out.num_rows

    def _drain(self) -> None:
        """Wait for every queued write (re-raising the first failure)."""
        while self._pending:
            self._pending.popleft().result()

    def _open_node(self, node: int) -> pq.ParquetWriter:
        with self._open_lock:
            if len(self._open) >= MAX_OPEN_FILES:
                # Close the least recently written file not being written right now.
                for victim in list(self._open):
                    vstate = self._nodes[victim]
                    if victim != node and vstate.lock.acquire(blocking=False):
                        try:
                            self._close_node(victim)
                        finally:
                            vstate.lock.release()
                        break
        state = self._nodes[node]
        path = state.directory / f"part-{state.parts}.parquet"
        state.parts += 1
        schema = _file_schema()
        state.writer = pq.ParquetWriter(path, schema, compression=_COMPRESSION, write_statistics=True,
                                        write_page_checksum=True, **_encodings(schema))
        state.last_key = None
        with self._open_lock:
            self._open[node] = None
        return state.writer

    def _close_node(self, node: int) -> None:
        state = self._nodes[node]
        if state.writer is not None:
            state.writer.close()
            state.writer = None
        with self._open_lock:
            self._open.pop(node, None)

    def _close_writers(self) -> None:
        try:
            self._drain()
        finally:
            self._executor.shutdown(wait=True)
        for node in list(self._open):
            self._close_node(node)

    # -- small tables and manifest --------------------------------------------------------

    def write_table(self, spec: TableSpec | str, table: pa.Table) -> None:
        """Append rows to one of the small tables (collectives, counters, requests, quarantine).

        Rows are held in memory and written, sorted by the spec's ``sort_by``, when the writer
        closes; a table never written is stored empty with its schema. ``events`` is forwarded
        to :meth:`write_events`.

        Raises
        ------
        SchemaError
            ``table`` does not fit the spec.
        """
        self._require_open()
        spec = _ensure_spec(spec)
        if spec.name == EVENTS.name:
            self.write_events(table)
            return
        self._small.setdefault(spec.name, []).append(spec.conform(table))

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Set the manifest's keys (source, hardware, model, parallel plan, ranks, clock
        alignment, counts ...); ``format``, ``version`` and table row counts are added on close.
        Calling it again updates the keys given."""
        self._require_open()
        self._manifest.update(manifest)

    def _finish(self) -> None:
        tmp = self._require_open()
        for node in sorted(self._nodes):
            self._flush(node, final=True)
        self._drain()
        self._close_writers()
        rows: dict[str, int] = {EVENTS.name: sum(s.rows for s in self._nodes.values())}
        for spec in ALL_TABLES:
            if spec.name == EVENTS.name:
                continue
            parts = self._small.pop(spec.name, None)
            table = pa.concat_tables(parts).unify_dictionaries() if parts else spec.empty()
            del parts
            _write_sorted(table, spec, tmp / spec.path)
            rows[spec.name] = table.num_rows
        manifest = {"format": STORE_FORMAT, "version": STORE_VERSION, **self._manifest,
                    "written_by": f"sohuprof {sohuprof.__version__}", "tables": rows,
                    "nodes": sorted(self._nodes), "rank_index": self._rank_index(),
                    "files": _file_checksums(tmp)}
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False,
                                                    default=_json_default) + "\n")

    def _rank_index(self) -> list[dict[str, int]]:
        """Per rank with events: its node, chip, event count and window (first start, last end)."""
        out = []
        for node in sorted(self._nodes):
            parts = self._nodes[node].index
            if not parts:
                continue
            rank, chip, rows, start, end = np.concatenate(parts, axis=1)
            uniq, first, code = np.unique(rank, return_index=True, return_inverse=True)
            lo = np.full(len(uniq), np.iinfo(np.int64).max)
            hi = np.full(len(uniq), np.iinfo(np.int64).min)
            np.minimum.at(lo, code, start)
            np.maximum.at(hi, code, end)
            n = np.bincount(code, weights=rows, minlength=len(uniq)).astype(np.int64)
            out += [{"rank": int(r), "node": node, "chip": int(c), "events": int(k), "start_ns": int(a),
                     "end_ns": int(b)} for r, c, k, a, b in zip(uniq, chip[first], n, lo, hi)]
        return sorted(out, key=lambda r: r["rank"])


#: Rows of a small table sorted and written at a time (bounds the sorted copy held).
_SORTED_SLICE = 4 * ROW_GROUP_ROWS


def _write_sorted(table: pa.Table, spec: TableSpec, path: Path) -> None:
    """Write ``table`` sorted by ``spec.sort_by``, a slice of the sort order at a time: a big
    collectives table (millions of instance x member rows) is never held twice."""
    order = (pc.sort_indices(table, sort_keys=[(c, "ascending") for c in spec.sort_by])
             if spec.sort_by and table.num_rows and not _sorted_by(table, spec.sort_by) else None)
    with pq.ParquetWriter(path, table.schema, compression=_COMPRESSION, use_dictionary=True,
                          write_page_checksum=True) as writer:
        if order is None:
            writer.write_table(table.combine_chunks())
            return
        for lo in range(0, table.num_rows, _SORTED_SLICE):   # a loop over slices, not rows
            writer.write_table(table.take(order.slice(lo, _SORTED_SLICE)).combine_chunks())


def _sorted_by(table: pa.Table, keys: Sequence[str]) -> bool:
    """Are the rows already in ``keys`` order (numeric keys; False when unsure)?"""
    tied = np.ones(max(table.num_rows - 1, 0), bool)
    ordered = np.zeros(len(tied), bool)
    for key in keys:   # a loop over sort keys
        column = table.column(key)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)) or column.null_count:
            return False
        v = column.to_numpy()
        ordered |= tied & (v[1:] > v[:-1])
        tied &= v[1:] == v[:-1]
    return bool((ordered | tied).all())


def _rank_summary(table: pa.Table) -> np.ndarray:
    """``[5, ranks]`` int64: rank, chip, rows, first start, last end of a ``(rank, ts)``-sorted table."""
    rank = table.column("rank").to_numpy()
    ts = table.column("ts").to_numpy()
    first = np.flatnonzero(np.r_[True, rank[1:] != rank[:-1]])
    end = ts + table.column("dur").to_numpy()
    rows = np.diff(np.r_[first, len(rank)])
    return np.stack([rank[first], table.column("chip").to_numpy()[first], rows, ts[first],
                     np.maximum.reduceat(end, first)]).astype(np.int64)


#: Sorted or slowly varying integer columns: delta encoding is smaller than dictionary pages and
#: cheaper to write (measured: 2.2M events, 0.43 s -> 0.38 s with zstd, 12.2 -> 10.8 MB).
_DELTA_COLUMNS = ("ts", "dur", "step")


def _encodings(schema: pa.Schema) -> dict[str, Any]:
    """Parquet encodings: dictionaries for the string columns only, delta for ``_DELTA_COLUMNS``.

    Dictionary-encoding every integer column (Parquet's default) costs write time and usually
    falls back to plain pages anyway.
    """
    strings = [f.name for f in schema if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type)]
    delta = {name: "DELTA_BINARY_PACKED" for name in _DELTA_COLUMNS if name in schema.names}
    return {"use_dictionary": strings, "column_encoding": delta}


def _is_sorted(table: pa.Table) -> bool:
    """Rows already in ``(rank, ts)`` order? (Collectors mostly hand over sorted runs.)"""
    rank = table.column("rank").to_numpy()
    ts = table.column("ts").to_numpy()
    step = np.diff(rank)
    return bool((step >= 0).all() and ((step > 0) | (np.diff(ts) >= 0)).all())


def _json_default(value: Any) -> Any:
    """JSON for numpy scalars and paths that callers put in the manifest."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"manifest value of type {type(value).__name__} is not JSON serializable")


#: What to do about a damaged store, ending every message about one.
REBUILD = "re-run `sohuprof collect` to rebuild the store"
#: Bytes read at a time when checksumming a file (bounds the memory held).
_CRC_CHUNK = 1 << 22


def file_crc32(path: PathLike) -> tuple[int, int]:
    """Size and CRC-32 of a file's bytes (ISA-L: several GB/s, so checksumming a store costs
    little next to writing it).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    tuple of int
        ``(bytes, crc32)``.
    """
    crc, size = 0, 0
    buffer = bytearray(_CRC_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while True:   # a loop over 4 MB chunks
            n = fh.readinto(buffer)
            if not n:
                return size, crc
            crc = isal_zlib.crc32(view[:n], crc)
            size += n


def _footer_crc32(path: Path, size: int) -> tuple[int, int] | None:
    """Length and CRC-32 of a Parquet file's footer (its metadata, length and magic: the file's
    last bytes), or None when the file does not end like Parquet. Checked at open, it catches a
    damaged footer that would still parse (statistics that would prune the wrong row groups)."""
    if size < 12:
        return None
    with open(path, "rb") as fh:
        fh.seek(size - 8)
        tail = fh.read(8)
        length = int.from_bytes(tail[:4], "little") + 8
        if tail[4:] != b"PAR1" or length > size - 4:
            return None
        fh.seek(size - length)
        return length, isal_zlib.crc32(fh.read(length))


def _file_checksums(root: Path) -> dict[str, dict[str, int]]:
    """``{relative path: {"bytes", "crc32", "footer_bytes", "footer_crc32"}}`` of every table
    file of the store at ``root`` (measured: 10 ms for the 60 MB of a 10M-event store)."""
    parts, _ = _layout(root)
    out = {}
    for rel in [*parts, *(s.path for s in ALL_TABLES if s.name != EVENTS.name)]:   # a loop over files
        size, crc = file_crc32(root / rel)
        out[rel] = {"bytes": size, "crc32": crc}
        footer = _footer_crc32(root / rel, size)
        if footer is not None:
            out[rel].update(footer_bytes=footer[0], footer_crc32=footer[1])
    return out


# -- validation at open: the manifest's fields and each file's footer, never its pages -----------

_Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Id = Annotated[int, msgspec.Meta(ge=0, lt=2**31)]   # ranks, nodes and chips are int32 columns
_Unset = msgspec.UnsetType
_Crc = Annotated[int, msgspec.Meta(ge=0, lt=2**32)]
_Int64 = Annotated[int, msgspec.Meta(ge=-2**63, le=2**63 - 1)]


class _Source(msgspec.Struct):
    format: str = "unknown"


class _Model(msgspec.Struct):
    name: Optional[str] = None
    dtype: Optional[str] = None


class _ProcessGroup(msgspec.Struct):
    pg_size: Optional[_Count] = None


class _Parallel(msgspec.Struct):
    process_groups: Optional[list[_ProcessGroup]] = None


class _RankEntry(msgspec.Struct):
    rank: _Id
    node: _Id = 0
    chip: _Id = 0


class _IndexEntry(msgspec.Struct):
    rank: _Id
    node: _Id
    chip: _Id
    events: _Count
    start_ns: _Int64
    end_ns: _Int64


class _Tables(msgspec.Struct):
    events: Union[_Count, _Unset] = msgspec.UNSET
    collectives: Union[_Count, _Unset] = msgspec.UNSET
    counters: Union[_Count, _Unset] = msgspec.UNSET
    requests: Union[_Count, _Unset] = msgspec.UNSET
    quarantine: Union[_Count, _Unset] = msgspec.UNSET


class _FileEntry(msgspec.Struct):
    bytes: _Count
    crc32: _Crc
    footer_bytes: Optional[_Count] = None
    footer_crc32: Optional[_Crc] = None


class _Manifest(msgspec.Struct):
    """The manifest fields readers use, with their types; other keys (``counts``, ``workload``,
    ...) pass through unchecked. A key readers test with ``in`` may be absent but not null."""

    format: str
    version: int
    source: _Source = msgspec.field(default_factory=_Source)
    hardware: Optional[dict[str, Any]] = None
    model: Optional[_Model] = None
    parallel: Optional[_Parallel] = None
    ranks: Union[list[Union[_Id, _RankEntry]], _Unset] = msgspec.UNSET
    nodes: Union[list[_Id], _Unset] = msgspec.UNSET
    tables: Optional[_Tables] = None
    rank_index: Optional[list[_IndexEntry]] = None
    files: Optional[dict[str, _FileEntry]] = None


@dataclass(frozen=True)
class Finding:
    """One damaged part of a trace store.

    Attributes
    ----------
    file : str
        The file, relative to the store (``manifest.json``, ``events/node=0/part-0.parquet``).
    problem : str
        What is wrong with it, as the rest of a sentence naming the file.
    """

    file: str
    problem: str

    def message(self, root: Path) -> str:
        """One line naming the store, the file, what is wrong and the fix."""
        return f"trace store '{root}': '{self.file}' {self.problem}; {REBUILD}"


def _converts(value: Any, kind: type) -> bool:
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError:
        return False
    return True


def _manifest_problem(manifest: dict[str, Any]) -> Finding | None:
    """The first manifest field of the wrong type or range, if any."""
    try:
        msgspec.convert(manifest, _Manifest)
    except msgspec.ValidationError as exc:
        what, _, where = str(exc).partition(" - at `")
        field_name = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
        files = manifest.get("files")
        if field_name.startswith("files[...]") and isinstance(files, dict):
            # msgspec does not name a mapping's key: find the entry that fails on its own.
            key = next((k for k, v in files.items() if not _converts(v, _FileEntry)), None)
            field_name = field_name.replace("files[...]", f"files[{key!r}]", 1) if key else field_name
        return Finding(MANIFEST_NAME, f"field '{field_name}' is invalid: {what[0].lower()}{what[1:]}")
    index = manifest.get("rank_index") or []
    if index:   # the analyses take their window and ranks from it: it must agree with itself
        ranks = [e["rank"] for e in index]
        events = (manifest.get("tables") or {}).get("events")
        if any(e["start_ns"] > e["end_ns"] for e in index):
            return Finding(MANIFEST_NAME, "field 'rank_index' has a rank whose window ends before it starts")
        if len(set(ranks)) != len(ranks):
            return Finding(MANIFEST_NAME, "field 'rank_index' lists a rank twice")
        if isinstance(events, int) and sum(e["events"] for e in index) != events:
            return Finding(MANIFEST_NAME, f"field 'rank_index' counts {sum(e['events'] for e in index):,} "
                                          f"events where 'tables.events' says {events:,}")
    hardware = manifest.get("hardware") or {}
    for key, value in hardware.items():   # a handful of keys; roofs must be numbers
        if (key.startswith("peak_flops") or key == "hbm_bandwidth") and value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            return Finding(MANIFEST_NAME, f"field 'hardware.{key}' is invalid: expected a number, "
                                          f"got {type(value).__name__}")
    return None


def manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What :func:`open_store` would find wrong with these manifest fields (their types and
    ranges), as the rest of a sentence; None when they are sound. Collectors check what they copy
    from an input into the manifest with it, so a store they write always opens."""
    finding = _manifest_problem(manifest)
    return finding.problem if finding is not None else None


# A node fits int32 (the partition column's type): up to 9 digits, no leading zeros but "0".
_NODE_DIR = re.compile(r"node=(0|[1-9][0-9]{0,8})")
_PART_FILE = re.compile(r"part-\d+\.parquet")
_UNEXPECTED = "is not part of a trace store (an unexpected file inside it: remove it)"


def _hidden(name: str) -> bool:
    # pyarrow's dataset discovery skips these names, so they never reach a read.
    return name.startswith((".", "_"))


def _layout(root: Path) -> tuple[list[str], list[Finding]]:
    """The event part files (relative paths) and the layout's problems: missing table files,
    files that do not belong in ``events/``."""
    found: list[Finding] = []
    parts: list[str] = []
    events = root / EVENTS.path
    if not events.is_dir():
        found.append(Finding(EVENTS.path + "/", "is missing"))
    else:
        for entry in sorted(os.scandir(events), key=lambda e: e.name):   # a loop over partitions
            rel = f"{EVENTS.path}/{entry.name}"
            if _hidden(entry.name):
                continue
            if not (entry.is_dir() and _NODE_DIR.fullmatch(entry.name)):
                found.append(Finding(rel, _UNEXPECTED))
                continue
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):   # a loop over files
                if _hidden(sub.name):
                    continue
                if sub.is_file() and _PART_FILE.fullmatch(sub.name):
                    parts.append(f"{rel}/{sub.name}")
                else:
                    found.append(Finding(f"{rel}/{sub.name}", _UNEXPECTED))
    for spec in ALL_TABLES:
        if spec.name != EVENTS.name and not (root / spec.path).is_file():
            found.append(Finding(spec.path, "is missing"))
    return parts, found


def _table_files(root: Path, parts: list[str]) -> list[tuple[str, TableSpec]]:
    """Every table file present: the event parts, then the small tables."""
    small = [(s.path, s) for s in ALL_TABLES if s.name != EVENTS.name and (root / s.path).is_file()]
    return [(rel, EVENTS) for rel in parts] + small


def _stored_schema(spec: TableSpec) -> pa.Schema:
    """The schema of one of ``spec``'s files (an event part has no ``node``: it is in the path)."""
    return _file_schema() if spec.name == EVENTS.name else spec.schema


#: Largest magnitude of an ns column: two of them add (``ts + dur``) or subtract without leaving
#: int64. 2**62 ns is 146 years, beyond any trace's clock.
TIME_LIMIT_NS = 2**62


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _spec_column(spec: TableSpec, name: str) -> Any:
    return next(c for c in spec.columns if c.name == name)


def _schema_problem(arrow: pa.Schema, spec: TableSpec) -> str | None:
    """Is every column of ``spec`` present with its Arrow type? (Extra columns are never read.)"""
    for want in _stored_schema(spec):   # a loop over columns
        at = arrow.get_all_field_indices(want.name)
        if not at and _spec_column(spec, want.name).optional:
            continue    # a later addition: an older store reads it as null
        if not at:
            return f"lacks column '{want.name}'"
        got = arrow.field(at[0]).type
        if len(at) > 1 or not got.equals(want.type):
            return f"has column '{want.name}' of type {got}, expected {want.type}"
    return None


def value_problem(spec: TableSpec, column: str, *, nulls: int, lo: Any, hi: Any) -> str | None:
    """Do a column's null count and range (of a row group, or of decoded rows) break the schema:
    nulls where none may be, a negative ``dur``, an ns value beyond :data:`TIME_LIMIT_NS`?"""
    col = next(c for c in spec.columns if c.name == column)
    if nulls and not col.nullable:
        return f"has {nulls:,} null values in column '{column}', which may not be null"
    if lo is None or not isinstance(lo, int) or col.unit != "ns":
        return None
    if column == "dur" and lo < 0:
        return f"has a negative duration in column 'dur' ({lo:,} ns)"
    worst = lo if -lo > hi else hi
    if abs(worst) >= TIME_LIMIT_NS:
        return f"has {worst:,} ns in column '{column}', beyond the +-2**62 ns a time may take"
    return None


def _checked_columns(spec: TableSpec) -> list[str]:
    """Columns whose statistics are checked: non-nullable ones and ns times."""
    stored = set(_stored_schema(spec).names)
    return [c.name for c in spec.columns if c.name in stored
            and (not c.nullable or (c.unit == "ns" and pa.types.is_integer(c.type)))]


def _footer_problem(path: Path, spec: TableSpec) -> tuple[str | None, int]:
    """Read a file's footer only: is it Parquet, of ``spec``'s schema, with row-group statistics
    that fit it? Returns ``(problem or None, rows)``."""
    try:
        with pq.ParquetFile(path) as pf:
            meta, arrow = pf.metadata, pf.schema_arrow
            problem = _schema_problem(arrow, spec)
            if problem is not None:
                return problem, meta.num_rows
            leaf = {meta.schema.column(j).path: j for j in range(meta.num_columns)}
            columns = [(name, leaf[name]) for name in _checked_columns(spec) if name in leaf]
            for i in range(meta.num_row_groups):   # a loop over row groups and columns, not rows
                group = meta.row_group(i)
                for name, j in columns:
                    stats = group.column(j).statistics
                    if stats is None:
                        continue
                    nulls = stats.null_count if stats.has_null_count else 0
                    lo, hi = (stats.min, stats.max) if stats.has_min_max else (None, None)
                    problem = value_problem(spec, name, nulls=nulls, lo=lo, hi=hi)
                    if problem is not None:
                        return f"{problem} (row group {i})", meta.num_rows
            return None, meta.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        return f"is not readable Parquet ({_short(exc)})", 0


def inspect_store(root: Path, manifest: dict[str, Any]) -> tuple[list[Finding], dict[str, int]]:
    """The cheap checks of a store (manifest types, layout, recorded sizes, footers, row counts):
    every problem found, and the rows of each readable table file from its footer."""
    problem = _manifest_problem(manifest)
    if problem is not None:
        return [problem], {}
    parts, found = _layout(root)
    files = _table_files(root, parts)
    recorded = manifest.get("files")
    if recorded is not None:
        present = {rel for rel, _ in files}
        found += [Finding(rel, "is missing") for rel in recorded if rel not in present
                  and not any(f.file == rel for f in found)]
    rows: dict[str, int] = {}
    for rel, spec in files:   # a loop over files
        if recorded is not None:
            entry = recorded.get(rel)
            if entry is None:
                found.append(Finding(rel, "is not recorded in the manifest (added after the store "
                                          "was written: remove it)"))
                continue
            size = os.stat(root / rel).st_size
            if size != entry["bytes"]:
                found.append(Finding(rel, f"has {size:,} bytes where {entry['bytes']:,} were written "
                                          f"(truncated or replaced)"))
                continue
            if entry.get("footer_crc32") is not None and _footer_crc32(root / rel, size) != (
                    entry.get("footer_bytes"), entry["footer_crc32"]):
                found.append(Finding(rel, "has a damaged footer (its CRC-32 differs from the one written)"))
                continue
        problem, rows[rel] = _footer_problem(root / rel, spec)
        if problem is not None:
            found.append(Finding(rel, problem))
    tables = manifest.get("tables") or {}
    if not found:
        counts = {EVENTS.name: sum(n for rel, n in rows.items() if rel.startswith(EVENTS.path + "/"))}
        counts.update({s.name: rows[s.path] for s in ALL_TABLES if s.path in rows})
        for spec in ALL_TABLES:
            want = tables.get(spec.name)
            if want is not None and counts.get(spec.name) != want:
                where = EVENTS.path + "/" if spec.name == EVENTS.name else spec.path
                found.append(Finding(where, f"holds {counts.get(spec.name, 0):,} rows where the "
                                            f"manifest recorded {want:,}"))
    return found, rows


class TraceStore:
    """A trace store opened for reading (see :func:`open_store`).

    Attributes
    ----------
    path : pathlib.Path
        The store directory.
    manifest : dict
        The parsed ``manifest.json``.
    origin : pathlib.Path
        What the user named: the store itself, or the run or trace a temporary store was collected
        from (what a hint to run another command should say).
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.origin = path
        self._dataset: ds.Dataset | None = None

    def __repr__(self) -> str:
        return f"TraceStore({str(self.path)!r}, ranks={len(self.ranks)}, nodes={len(self.nodes)})"

    def __getstate__(self) -> dict[str, Any]:
        # Travels to Dask workers as a path and a manifest; each process opens its own dataset.
        return {"path": self.path, "manifest": self.manifest, "origin": self.origin, "_dataset": None}

    def dataset(self) -> ds.Dataset:
        """The events as a lazy :class:`pyarrow.dataset.Dataset` (``node`` from the partitions)."""
        if self._dataset is None:
            with self._reading(EVENTS):
                self._dataset = ds.dataset(self.path / EVENTS.path, format=_parquet_format(),
                                           schema=EVENTS.schema, partitioning=_events_partitioning())
        return self._dataset

    def read(self, table: str | TableSpec, *, columns: list[str] | None = None,
             filters: Filters = None) -> pa.Table:
        spec = _ensure_spec(table)
        expr = _ensure_filter(filters)
        _ensure_columns(spec, columns)
        if spec.name == EVENTS.name:
            dataset = self.dataset()
            with self._reading(spec, columns):
                return dataset.to_table(columns=columns, filter=expr)
        path = self._table_path(spec)
        with self._reading(spec):
            return ds.dataset(path, format=_parquet_format(), schema=spec.schema).to_table(
                columns=columns, filter=expr)

    def scan(self, *, columns: list[str] | None = None, filters: Filters = None,
             batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        """Stream the events as record batches, without loading them all (pyarrow's dataset
        scanner, which reads ahead of a slow consumer; :meth:`stream_events` does not)."""
        expr = _ensure_filter(filters)
        _ensure_columns(EVENTS, columns)
        dataset = self.dataset()
        with self._reading(EVENTS, columns):
            batches = dataset.to_batches(columns=columns, filter=expr, batch_size=batch_size)
        return self._guarded(batches, EVENTS, columns)

    def stream_table(self, table: str | TableSpec, *, columns: list[str] | None = None,
                     batch_size: int = 4 * ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        """A small table's rows (``collectives`` ...) in file order, a batch at a time."""
        spec = _ensure_spec(table)
        _ensure_columns(spec, columns)
        path = self._table_path(spec)
        with self._reading(spec):
            batches = pq.ParquetFile(path, page_checksum_verification=True).iter_batches(
                batch_size=batch_size, columns=columns, use_threads=True)
        return self._guarded(batches, spec)

    def _table_path(self, spec: TableSpec) -> Path:
        path = self.path / spec.path
        if not path.is_file():
            raise StoreError(Finding(spec.path, "is missing").message(self.path))
        return path

    def stream_events(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The events, file by file and row group by row group (each file sorted by
        ``(rank, ts)``), decoded on pyarrow's threads but never ahead of the consumer: memory
        is bounded by one row group, where a dataset scan would buffer up to a gigabyte ahead."""
        _ensure_columns(EVENTS, columns)
        return self._guarded(self._stream_events(columns), EVENTS, columns)

    def _stream_events(self, columns: list[str] | None) -> Iterator[pa.RecordBatch]:
        want = None if columns is None else [c for c in columns if c != "node"]
        for path in self.dataset().files:
            node = int(Path(path).parent.name.split("=", 1)[1])
            try:
                pages = pq.ParquetFile(path, page_checksum_verification=True)
                batches = pages.iter_batches(batch_size=ROW_GROUP_ROWS, columns=want, use_threads=True)
                for batch in batches:
                    if columns is None or "node" in columns:
                        batch = batch.append_column("node", pa.array(np.full(batch.num_rows, node, np.int32)))
                    yield batch if columns is None else batch.select(columns)
            except (pa.ArrowException, OSError) as exc:   # this file, by name, without a search
                rel = f"{EVENTS.path}/{Path(path).parent.name}/{Path(path).name}"
                raise StoreError(Finding(rel, f"cannot be read ({_short(exc)})").message(self.path)) from None

    # A read that fails inside pyarrow (a page that does not decode, a file cut short since the
    # store was opened) becomes a StoreError naming the file, here rather than in every analysis.

    @contextmanager
    def _reading(self, spec: TableSpec, columns: Sequence[str] | None = None) -> Iterator[None]:
        try:
            yield
        except (pa.ArrowException, OSError) as exc:
            raise StoreError(self._unreadable(spec, exc, columns)) from None

    def _guarded(self, batches: Iterator[pa.RecordBatch], spec: TableSpec,
                 columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        with self._reading(spec, columns):
            yield from batches

    def _unreadable(self, spec: TableSpec, exc: BaseException, columns: Sequence[str] | None) -> str:
        """The message for a failed read, naming the file: the one pyarrow names, else the first
        that fails to decode those columns again (a dataset scan's errors name none)."""
        text = str(exc)
        try:
            parts, _ = _layout(self.path)
        except OSError:
            parts = []
        files = parts if spec.name == EVENTS.name else [spec.path]
        where = next((rel for rel in files if rel in text), None)
        if where is None and len(files) > 1:
            where = _first_unreadable(self.path, files, [c for c in columns or () if c != "node"] or None)
        if where is None:
            where = files[0] if len(files) == 1 else spec.path + ("/" if spec.name == EVENTS.name else "")
        return Finding(where, f"cannot be read ({_short(exc)})").message(self.path)

    @property
    def nodes(self) -> list[int]:
        """Node indices present in ``events/``."""
        if "nodes" in self.manifest:
            return [int(n) for n in self.manifest["nodes"]]
        names = (p.name for p in (self.path / EVENTS.path).glob("node=*"))
        return sorted(int(n.split("=", 1)[1]) for n in names)

    @property
    def ranks(self) -> list[int]:
        """Ranks in the store: the manifest's list, else those found in the events."""
        if "ranks" in self.manifest:   # ints, or {"rank", "node", "chip"} entries
            return sorted(int(r["rank"] if isinstance(r, dict) else r) for r in self.manifest["ranks"])
        ranks = pc.unique(self.read(EVENTS, columns=["rank"]).column("rank"))
        return sorted(ranks.to_pylist())


TraceStore.read.__doc__ = f"""Read one table of the store into memory.

Parameters
----------
{_read_params_doc}

Returns
-------
pyarrow.Table
    With the table's schema (``events`` includes ``node`` as int32).

Raises
------
StoreError
    The table's file is missing, or cannot be read (the message names the file).
"""


def _first_unreadable(root: Path, files: list[str], columns: list[str] | None) -> str | None:
    """The first of ``files`` whose ``columns`` do not decode (only ever run after a read failed)."""
    for rel in files:   # a loop over files, then row groups
        try:
            with pq.ParquetFile(root / rel, page_checksum_verification=True) as pf:
                for batch in pf.iter_batches(columns=columns, batch_size=ROW_GROUP_ROWS):
                    del batch
        except (pa.ArrowException, OSError):
            return rel
    return None


def open_store(path: PathLike) -> TraceStore:
    """Open a trace store for reading, after cheap checks that it is sound.

    The checks read metadata only, never a data page: every manifest field readers use has its
    type; every table file is present, of the size the manifest recorded, readable Parquet (its
    footer) with every column of the schema at its Arrow type; row-group statistics show no
    nulls in non-nullable columns, no negative ``dur`` and no time beyond +-2**62 ns (so
    ``ts + dur`` cannot overflow); row counts match the manifest; nothing foreign sits in an
    ``events/node=N`` partition. ``sohuprof check`` (:func:`sohuprof.check.check_store`) also
    decodes every page and verifies the checksums.

    Parameters
    ----------
    path : str or os.PathLike
        A directory written by :class:`StoreWriter` (``sohuprof collect``).

    Returns
    -------
    TraceStore

    Raises
    ------
    StoreError
        ``path`` is not a store, its format or version is not one this sohuprof reads, or it
        is damaged (the message names the first damaged file and says how to rebuild it).
    """
    root = Path(path)
    manifest = read_manifest(root)
    found, _ = inspect_store(root, manifest)
    if found:
        more = f" ({len(found) - 1} more damaged file(s): `sohuprof check {root}` lists them)" if len(found) > 1 else ""
        raise StoreError(found[0].message(root) + more)
    return TraceStore(root, manifest)


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse a store's ``manifest.json`` and check its format and version (not its other fields).

    Raises
    ------
    StoreError
        ``root`` is not a store, the manifest is not JSON, or its format or version is not one
        this sohuprof reads.
    """
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir() or not manifest_path.is_file():
        raise StoreError(f"'{root}' is not a sohuprof trace store (no {MANIFEST_NAME}); "
                         f"create one with `sohuprof collect`")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:   # RecursionError: absurdly deep nesting
        raise StoreError(f"'{manifest_path}' cannot be read ({_short(exc)}); {REBUILD}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StoreError(f"'{root}' has format {found!r}, expected {STORE_FORMAT!r}: "
                         f"not a sohuprof trace store")
    version = manifest.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"'{manifest_path}' has no valid integer 'version' (got {version!r}); {REBUILD}")
    if version > STORE_VERSION:
        raise StoreError(f"trace store '{root}' is version {version}, newer than this sohuprof "
                         f"{sohuprof.__version__} reads (up to {STORE_VERSION}); upgrade sohuprof")
    return manifest


@contextmanager
def open_store_or_collect(source: PathLike, *, show_progress: bool | None = None) -> Iterator[TraceStore]:
    """Open ``source`` as a store, or collect it (anything ``collect`` accepts) into a temporary
    store that lives for the ``with`` block."""
    path = Path(source)
    if (path / MANIFEST_NAME).is_file():
        yield open_store(path)
        return
    from sohuprof.collectors import collect

    with tempfile.TemporaryDirectory(prefix="sohuprof-") as tmp:
        collect(path, Path(tmp) / "store", show_progress=show_progress)
        store = open_store(Path(tmp) / "store")
        store.origin = path
        yield store
