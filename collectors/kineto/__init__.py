"""PyTorch profiler (Kineto) and Chrome Trace Event Format JSON into trace-store tables.

What is read, and how it maps onto the store (DESIGN.md, "The trace store"):

- Complete events (``ph == "X"``) become events. Flow events (``s``/``f``/``t``, Kineto's
  ``ac2g`` and ``fwdbwd``), metadata (``M``), instants (``i``/``I``) and Kineto's whole-session
  ``Trace`` span are not events; they are counted in the metadata. Counter events (``C``) go to
  the counters table, one counter per series (``name.series``). ``B``/``E`` pairs are not read.
- ``rank`` comes from ``distributedInfo.rank``; a trace without it is rank 0. Kineto does not
  say which host a rank ran on, so ``node`` is 0 for every rank. ``chip`` is the GPU's device
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
  ``g * 2**32 + n`` (``g`` = the ``Process Group Name`` when numeric, else its CRC32, and 0 when
  absent). ``collectives.start`` is the last member's arrival among the ranks collected
  together; ``bytes`` is the input message (``In msg nelems`` x dtype size).
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

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from sohuprof.collectors.kineto.collectives import _finish_collectives
from sohuprof.collectors.kineto.decode import _EXPECTED
from sohuprof.collectors.kineto.events import _parse_file, _RankTrace
from sohuprof.collectors.kineto.manifest import _metadata, _refused_rows

from sohuprof.errors import TraceFormatError
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


def read_kineto(path: PathLike) -> KinetoTrace:
    """Read a PyTorch profiler (Kineto) or Chrome trace into store tables, in memory.

    Parameters
    ----------
    path : str or os.PathLike
        One ``.json`` / ``.json.gz`` trace (gzip is detected from the content), or a directory
        of per-rank Kineto files (``*.json``, ``*.json.gz``; not searched recursively).

    Returns
    -------
    KinetoTrace

    Raises
    ------
    TraceFormatError
        A path is missing, a file is not a Kineto or Chrome trace (or none of its complete
        events is sound), a directory holds no traces, mixes Kineto and plain Chrome files, or
        has two files for one rank. Damaged events are not an error: they are set aside in
        ``quarantine`` and counted.
    """
    parts = list(_iter_rank_traces(path))
    events = pa.concat_tables([p.events for p in parts]).unify_dictionaries()
    events = events.sort_by([("rank", "ascending"), ("ts", "ascending"), ("dur", "descending")])
    counters = pa.concat_tables([p.counters for p in parts]).unify_dictionaries()
    collectives = _finish_collectives([p.collectives for p in parts])
    return KinetoTrace(events.combine_chunks(), collectives, counters.combine_chunks(),
                       _metadata(path, parts, events.num_rows),
                       pa.concat_tables([p.quarantine for p in parts]))


def collect_kineto(path: PathLike, store_path: PathLike, *, force: bool = False) -> dict[str, Any]:
    """Collect a PyTorch profiler (Kineto) or Chrome trace into a trace store.

    Files are read and written one at a time, so memory is bounded by the largest file.

    Parameters
    ----------
    path : str or os.PathLike
        A trace file or a directory of per-rank files, as for :func:`read_kineto`.
    store_path : str or os.PathLike
        The store directory to create.
    force : bool, default False
        Replace an existing store.

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
    parts: list[_RankTrace] = []
    refused: list[tuple[Path, str]] = []
    written = 0
    with StoreWriter(store_path, force=force) as writer:
        for part in _iter_rank_traces(path, refused):
            writer.write_events(part.events)
            writer.write_table(QUARANTINE, part.quarantine)
            written += part.events.num_rows
            # Keep the small tables and the metadata; let the events go.
            parts.append(_RankTrace(part.file, part.format, part.rank, EVENTS.empty(),
                                    part.collectives, part.counters, part.quarantine, part.info))
        collectives = _finish_collectives([p.collectives for p in parts])
        counters = pa.concat_tables([p.counters for p in parts]).unify_dictionaries()
        writer.write_table(COLLECTIVES, collectives)
        writer.write_table(COUNTERS, counters)
        if refused:
            writer.write_table(QUARANTINE, _refused_rows(refused))
        metadata = _metadata(path, parts, written, refused)
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


def _iter_rank_traces(path: PathLike, refused: list[tuple[Path, str]] | None = None) -> Iterator[_RankTrace]:
    """Parse each file, checking that formats agree and each rank appears once.

    With ``refused``, a directory's file that cannot be read at all is noted there (file,
    reason) and the other ranks are still collected, as the raw collector does with a damaged
    chip file; if no file can be read, the first one's error is raised."""
    root = Path(path)
    seen: dict[int, Path] = {}
    first: _RankTrace | None = None
    files = _trace_files(root)
    errors: list[TraceFormatError] = []
    for file in files:
        try:
            part = _parse_file(file)
        except TraceFormatError as exc:
            if refused is None or len(files) == 1:
                raise
            refused.append((file, str(exc)))
            errors.append(exc)
            if len(errors) == len(files):
                raise errors[0] from None
            continue
        if first is not None and part.format != first.format:
            raise TraceFormatError(f"'{root}' mixes a {first.format} trace ({first.file.name}) and a "
                                   f"{part.format} trace ({file.name}); collect them separately")
        if part.rank in seen:
            raise TraceFormatError(f"'{seen[part.rank].name}' and '{file.name}' in '{root}' are both "
                                   f"rank {part.rank} (from distributedInfo); put one run per directory")
        seen[part.rank] = file
        first = first or part
        yield part
