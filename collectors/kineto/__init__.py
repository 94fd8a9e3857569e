"""PyTorch profiler (Kineto) and Chrome Trace Event Format JSON into trace-store tables.

What is read, and how it maps onto the store (DESIGN.md, "The trace store"):

- Complete events (``ph == "X"``) become events. Flow events (``s``/``f``/``t``, Kineto's
  ``ac2g`` and ``fwdbwd``), metadata (``M``), instants (``i``/``I``) and Kineto's whole-session
  ``Trace`` span are not events; they are counted in the metadata. Counter events (``C``) go to
  the counters table, one counter per series (``name.series``). ``B``/``E`` pairs are not read.
- ``rank`` comes from ``distributedInfo.rank``; files without one take the ranks after the
  highest declared one, in file-name order (:mod:`~sohuprof.collectors.kineto.clocks`, which
  also gives each host its ``node`` and puts every node on node 0's clock). ``chip`` is the GPU's device
  index (``args.device``); CPU events take the rank's GPU (the device most of its GPU events ran
  on), and a plain Chrome trace is chip 0.
- ``track`` is ``stream N`` for GPU events (``args.stream``, else the tid) and ``thread T`` for
  CPU events; with several GPUs in one file GPU tracks read ``gpu D stream N``. Plain Chrome
  traces use their ``thread_name`` metadata where present.
- ``category``: communication for NCCL kernels, memory for ``gpu_memcpy``/``gpu_memset``,
  compute for other GPU kernels, host for everything on the CPU (and ``gpu_user_annotation``,
  which marks GPU time but does none). ``op`` is classified once per unique name (see
  ``_OP_PATTERNS``); NCCL kernels take their kind from the ``Collective name`` arg, else from the
  kernel name.
- Time: ``ts``/``dur`` are decimal microseconds with (at most) ns resolution. Kineto writes
  ``ts`` relative to ``baseTimeNanoseconds``, so the store's ts is
  ``baseTimeNanoseconds + ts * 1000`` (wall-clock ns; ranks line up through it), or plain
  ``ts * 1000`` without that field. The conversion is exact to the ns: for values below 2**43 us
  (every Kineto trace) the float from the parser has an ulp under 1 ns, so of the integers next
  to ``round(x * 1000)`` exactly one divides back to ``x`` (:func:`_us_to_ns`); larger values
  (epoch-microsecond Chrome traces) are re-read from the JSON text (:func:`_ts_from_text`).
- ``coll_id``: NCCL kernels of one process group run in the same order on every member rank,
  so the n-th NCCL kernel (by ts) of process group ``g`` on each rank is instance
  ``g * 2**32 + n`` (:mod:`~sohuprof.collectors.kineto.collectives`: ``g`` is the ``Process
  Group Name`` when numeric and the group is the whole world, else a CRC32 of the name and its
  members, ``Process Group Ranks``; a send/recv is numbered within its pair of ranks).
  ``collectives.start`` is the last member's arrival where every member of the group is in the
  input, else each member's own arrival (a partial instance: no wait is invented); ``bytes``
  is the input message (``In msg nelems`` x dtype size), null when the kernel does not say.
- Decoding: msgspec decodes each event straight into a struct naming only the fields read
  (the other ``args`` keys are skipped unbuilt), and columns are built from those, never per
  event in Python. ``args`` must be an object or null wherever it appears.
- ``correlation`` is ``args.correlation`` (kernel <-> launching ``cuda_runtime`` event);
  ``step`` is N of the ``ProfilerStep#N`` window holding the event's ts; ``flops`` is
  ``args.flops`` when the profiler recorded it (``with_flops=True``), else null.

Records and their accounting (the manifest's ``counts``, per file in ``counts.files``):

- A *record* is a ``traceEvents`` entry that would become an event: a complete event (``X``,
  except Kineto's ``Trace`` span), or an entry whose ``ph`` is present but not a string (it
  may have been one). ``expected`` counts every record read, ``kept`` those stored as events,
  ``quarantined`` those set aside, and ``lost`` the complete event a JSON Array Format file
  ends inside, when it was cut off mid-entry (the whole entries before it are read; its
  surviving text must show ``"ph": "X"`` to count). Any other file that cannot be decoded is
  refused whole. So ``kept + quarantined + lost == expected`` for every file and in total
  (``records_expected == events + quarantined_records + records_lost``). Counter
  events (``C``) become samples, not events: they are counted apart (``counter_events``,
  ``counter_events_quarantined``), their set-aside ones in the same quarantine table under
  a reason starting "counter event:". Flow, metadata (``M``), instant and other phases are
  not stored at all; they are counted by phase in ``skipped_by_ph``.
- A record is set aside, never stored, when a field is of the wrong type or out of range
  (the checks and their ranges: :mod:`sohuprof.collectors.kineto.checks`): negative or
  out-of-range ``ts``/``dur``, ids beyond their range, ``args`` that is not an object, ...
  Each file's set-aside records become one quarantine row per reason, with the count and
  the first such event's JSON as a sample. A file none of whose complete events is sound,
  a JSON nested deeper than Python can decode, or a file-level field out of range
  (``baseTimeNanoseconds``, ``distributedInfo.rank``) is refused with a
  :class:`~sohuprof.errors.TraceFormatError` naming the file and the field.
- Decoding is typed first (msgspec checks every field's type, and the id and ``dur`` ranges,
  in C); only when that finds a bad field is the file decoded again loosely and the columns
  checked one by one, so a sound trace pays for none of the checks.
"""

from __future__ import annotations

import dataclasses

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sohuprof.collectors.kineto.clocks import (assign_ranks, causality, fit_nodes, host_of, node_of_hosts,
                                               parse_hosts, with_place)
from sohuprof.collectors.kineto.collectives import Matching, _finish_collectives
from sohuprof.collectors.kineto.decode import _EXPECTED
from sohuprof.collectors.kineto.events import _parse_file, _RankTrace
from sohuprof.collectors.kineto.manifest import _metadata, _refused_rows, declared_group_sizes, world_size

from sohuprof.errors import NotATraceError, TraceFormatError
from sohuprof.schema import (
    COLLECTIVES,
    COUNTERS,
    EVENTS,
    QUARANTINE,
    STORE_FORMAT,
    STORE_VERSION,
)
from sohuprof.store import PathLike, StoreWriter, manifest_problem

__all__ = ["KinetoTrace", "read_kineto", "collect_kineto"]


log = logging.getLogger("sohuprof.collectors.kineto")


@dataclass(frozen=True)
class KinetoTrace:
    """Store tables read from PyTorch profiler / Chrome traces.

    Attributes
    ----------
    events : pyarrow.Table
        Events, conformed to the events schema, sorted by ``(rank, ts)``.
    collectives : pyarrow.Table
        One row per NCCL kernel (collective instance x rank); empty when there are none.
    counters : pyarrow.Table
        Samples of Chrome counter (``C``) events; usually empty for Kineto.
    metadata : dict
        Manifest keys: source, hardware, parallel plan, ranks, clock alignment, counts (see
        the module docstring for what each count holds).
    quarantine : pyarrow.Table
        The records set aside, one row per file and reason (quarantine schema).
    """

    events: pa.Table
    collectives: pa.Table
    counters: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
    quarantine: pa.Table = field(default_factory=QUARANTINE.empty)


def read_kineto(path: PathLike, *, hosts: str | None = None) -> KinetoTrace:
    """Read a PyTorch profiler (Kineto) or Chrome trace into store tables, in memory.

    Parameters
    ----------
    path : str or os.PathLike
        One ``.json`` / ``.json.gz`` trace (gzip is detected from the content), or a directory
        of per-rank Kineto files (``*.json``, ``*.json.gz``; not searched recursively).
    hosts : str, optional
        ``RANKS=HOST`` pieces joined by commas (``0-7=a,8-15=b``): which host each rank ran on,
        where the traces do not say (see :mod:`~sohuprof.collectors.kineto.clocks`).

    Returns
    -------
    KinetoTrace

    Raises
    ------
    TraceFormatError
        A path is missing, a file is not a Kineto or Chrome trace (or none of its complete
        events is sound), a directory holds no traces, or has two files for one rank (files
        that are not traces, and plain Chrome files beside Kineto ones, are skipped with a
        warning and listed in the manifest). Damaged events are not an error: they are set aside in
        ``quarantine`` and counted.
    """
    job = _Job(path, hosts=parse_hosts(hosts), skipped=[])
    for part in _iter_rank_traces(path, skipped=job.skipped):
        job.hold(part)
    parts = job.place()
    events = pa.concat_tables([p.events for p in parts]).unify_dictionaries()
    events = events.sort_by([("rank", "ascending"), ("ts", "ascending"), ("dur", "descending")])
    counters = pa.concat_tables([p.counters for p in parts]).unify_dictionaries()
    collectives, matching, _ = job.collectives(parts)
    return KinetoTrace(events.combine_chunks(), collectives, counters.combine_chunks(),
                       job.metadata(parts, events.num_rows, matching, collectives),
                       pa.concat_tables([p.quarantine for p in parts]))


def collect_kineto(path: PathLike, store_path: PathLike, *, force: bool = False,
                   hosts: str | None = None) -> dict[str, Any]:
    """Collect a PyTorch profiler (Kineto) or Chrome trace into a trace store.

    Files are read and written one at a time, so memory is bounded by the largest file, except
    for ranks whose place or clock is known only once every file is read (ranks on hosts other
    than the first file's, files naming no rank): those are held until then.

    Parameters
    ----------
    path : str or os.PathLike
        A trace file or a directory of per-rank files, as for :func:`read_kineto`.
    store_path : str or os.PathLike
        The store directory to create.
    force : bool, default False
        Replace an existing store.
    hosts : str, optional
        Which host each rank ran on, as for :func:`read_kineto`.

    Returns
    -------
    dict
        ``store``, ``format``, ``ranks``, ``collectives``, ``counters`` (samples), ``files``
        (how many), ``file_counts`` (the manifest's per-file list: ``{file, rank, expected,
        kept, quarantined, lost, duplicates_dropped}``) and the manifest's other counts:
        ``records_expected == events + quarantined_records + records_lost``,
        ``duplicates_dropped`` (0), ``quarantined_pieces`` (quarantine rows),
        ``counter_events``, ``counter_events_quarantined`` and ``skipped_by_ph``.

    Raises
    ------
    TraceFormatError
        The input is not a readable trace (see :func:`read_kineto`); nothing is written.
    OutputError
        The store exists and ``force`` is not set, or cannot be written.
    """
    refused: list[tuple[Path, str]] = []
    job = _Job(path, hosts=parse_hosts(hosts), skipped=[])
    parts: list[_RankTrace] = []
    written = 0
    with StoreWriter(store_path, force=force) as writer:
        def write(part: _RankTrace) -> None:
            nonlocal written
            writer.write_events(part.events)
            writer.write_table(QUARANTINE, part.quarantine)
            written += part.events.num_rows
            # Keep the small tables and the metadata; let the events go.
            parts.append(dataclasses.replace(part, events=EVENTS.empty()))

        for part in _iter_rank_traces(path, refused, skipped=job.skipped):
            if job.streams(part):      # on node 0 with a known rank: its place and clock are final
                write(part)
            else:
                job.hold(part)
        for part in job.place(written=parts):
            write(part)
        parts.sort(key=lambda p: p.rank)
        collectives, matching, _ = job.collectives(parts)
        counters = pa.concat_tables([p.counters for p in parts]).unify_dictionaries()
        writer.write_table(COLLECTIVES, collectives)
        writer.write_table(COUNTERS, counters)
        if refused:
            writer.write_table(QUARANTINE, _refused_rows(refused))
        metadata = job.metadata(parts, written, matching, collectives, refused)
        # What came from the traces must pass the store reader's own checks, or the store
        # written would refuse to open (and "re-run collect" would rebuild the same one).
        problem = manifest_problem({"format": STORE_FORMAT, "version": STORE_VERSION, **metadata})
        if problem is not None:
            raise TraceFormatError(f"{path}: {problem.replace('field', 'the trace field for the manifest', 1)}")
        writer.write_manifest(metadata)
    counts = metadata["counts"]
    # As the Sohu collector's summary: ``files`` is a count there, the list is ``file_counts``.
    return {"store": str(store_path), "format": metadata["source"]["format"],
            "ranks": metadata["ranks"], "collectives": collectives.num_rows,
            "counters": counters.num_rows, **counts, "files": len(parts),
            "file_counts": counts["files"], "counts": counts}


def _trace_files(path: Path) -> list[Path]:
    """The trace files at ``path``: itself, or the ``.json``/``.json.gz`` files in it."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and (p.name.endswith(".json") or p.name.endswith(".json.gz")))
        if not files:
            raise TraceFormatError(f"'{path}' holds no .json or .json.gz trace files; {_EXPECTED}, "
                                   f"or a directory of per-rank ones")
        return files
    raise TraceFormatError(f"'{path}' does not exist; {_EXPECTED}, or a directory of per-rank ones")


def _iter_rank_traces(path: PathLike, refused: list[tuple[Path, str]] | None = None, *,
                      skipped: list[tuple[Path, str]]) -> Iterator[_RankTrace]:
    """Parse each file, checking that formats agree.

    In a directory, a file that is not a trace (JSON without ``traceEvents``, no complete event:
    a sidecar file) is skipped with a warning and noted in ``skipped``, and so are plain Chrome
    files beside Kineto ones; with ``refused``, a file that cannot be read at all is noted there
    (file, reason) and the other ranks are still collected, as the raw collector does with a
    damaged chip file. If no file can be read, the first one's error is raised."""
    root = Path(path)
    files = _trace_files(root)
    errors: list[TraceFormatError] = []
    chrome: list[_RankTrace] = []
    kineto = 0
    for file in files:
        try:
            part = _parse_file(file)
        except NotATraceError as exc:
            if len(files) == 1:
                raise
            log.warning("skipped %s: not a trace (%s)", file.name, str(exc).split(": ", 1)[-1][:120])
            skipped.append((file, str(exc)))
            errors.append(exc)
            continue
        except TraceFormatError as exc:
            if refused is None or len(files) == 1:
                raise
            refused.append((file, str(exc)))
            errors.append(exc)
            continue
        if part.format == "chrome" and len(files) > 1:
            chrome.append(part)     # beside Kineto files it is a sidecar: known only at the end
            continue
        kineto += 1
        yield part
    if kineto:
        for part in chrome:
            log.warning("skipped %s: a plain Chrome trace beside PyTorch profiler traces", part.file.name)
            skipped.append((part.file, "a plain Chrome trace beside PyTorch profiler traces"))
    else:
        yield from chrome
    if not kineto and not chrome:
        raise errors[0] if errors else TraceFormatError(f"'{root}' holds no traces; {_EXPECTED}")


class _Job:
    """The files of one job: where each rank goes (rank, node) and on which clock.

    Parts on the first file's host with a rank of their own are final as read (``streams``);
    the others are held (``hold``) until every file is read, then placed (``place``): ranks
    for the files naming none, a node per host, and each node's clock fitted onto node 0's
    from the collectives they share (:mod:`~sohuprof.collectors.kineto.clocks`)."""

    def __init__(self, path: PathLike, *, hosts: dict[int, str], skipped: list[tuple[Path, str]]) -> None:
        self.path, self.hosts, self.skipped = path, hosts, skipped
        self.held: list[_RankTrace] = []
        self.first_host: Any = _UNSET
        self.host_table: list[dict[str, Any]] = []
        self.clock: dict[str, Any] | None = None

    def streams(self, part: _RankTrace) -> bool:
        host = host_of(part, self.hosts)[0]
        if self.first_host is _UNSET:    # the first file's host is node 0, whatever its rank
            self.first_host = host
        return part.rank >= 0 and host == self.first_host

    def hold(self, part: _RankTrace) -> None:
        self.held.append(part)

    def place(self, written: Sequence[_RankTrace] = ()) -> list[_RankTrace]:
        """The held parts, placed; ``written`` are the parts already stored (node 0)."""
        every = assign_ranks(list(written) + self.held)
        nodes, self.host_table = node_of_hosts(every, self.hosts)
        placed = [with_place(p, p.rank, n) for p, n in zip(every, nodes, strict=True)]
        held = placed[len(written):]
        if len(self.host_table) > 1:
            # The clock fit reads every rank's collectives with its node set, on local clocks.
            matching = self.collectives(placed)
            self.clock = fit_nodes(matching.table.select(["coll_id", "node", "end"]), matching.complete,
                                   len(self.host_table))
            shifts = self.clock.pop("_shifts")
            held = [with_place(p, p.rank, n, shifts[n]) if shifts[n] is not None else p
                    for p, n in zip(held, nodes[len(written):], strict=True)]
        return held

    def collectives(self, parts: list[_RankTrace]) -> Matching:
        """Every rank's collectives matched, by the first ``distributedInfo`` in rank order."""
        dist = next((p.info["distributed"] for p in sorted(parts, key=lambda p: p.rank)
                     if isinstance(p.info.get("distributed"), dict)), None)
        return _finish_collectives([p.collectives for p in parts], declared_group_sizes(dist), world_size(dist))

    def metadata(self, parts: list[_RankTrace], written: int, matching: dict[str, Any], collectives: pa.Table,
                 refused: list[tuple[Path, str]] | None = None) -> dict[str, Any]:
        meta = _metadata(self.path, parts, written, refused)
        meta["collectives"] = matching
        world = (meta.get("parallel") or {}).get("world_size")
        ranks = sorted(p.rank for p in parts)
        if isinstance(world, int):
            missing = np.setdiff1d(np.arange(world), np.asarray(ranks))
            meta["missing_ranks"] = rank_ranges(missing)
        align = meta["clock_alignment"]
        if not self.host_table:
            _, self.host_table = node_of_hosts(parts, self.hosts)
        align["hosts"] = self.host_table
        if self.clock is not None:
            align["method"] = "collectives"
            align.update({k: v for k, v in self.clock.items()})
            align.update(causality(collectives))
        meta["counts"]["skipped_files"] = [{"file": f.name, "reason": why} for f, why in self.skipped]
        return meta


_UNSET = object()


def rank_ranges(ranks: np.ndarray) -> list[str]:
    """Sorted ranks as ``["2-127", "130"]``: compact for a world of 10^5 ranks."""
    if not len(ranks):
        return []
    ranks = np.asarray(ranks, np.int64)
    breaks = np.flatnonzero(np.diff(ranks) != 1) + 1
    lo = ranks[np.r_[0, breaks]]
    hi = ranks[np.r_[breaks - 1, len(ranks) - 1]]
    return [f"{a}-{b}" if b > a else f"{a}" for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
