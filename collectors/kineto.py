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
  (the checks and their ranges: :mod:`sohuprof.collectors.kineto_checks`): negative or
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

import gc
import io
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Annotated, Any, NoReturn

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from isal import igzip, isal_zlib

from sohuprof.collectors.kineto_checks import (MAX_ID, MAX_NELEMS, MAX_NS, REASONS, Verdict,
                                               blank, float_column, id_check, int_column, objects,
                                               quarantine_rows, wrong_type)
from sohuprof.errors import TraceFormatError
from sohuprof.schema import (CATEGORIES, COLLECTIVES, COUNTERS, EVENTS, OP_CLASSES, QUARANTINE, STORE_FORMAT,
                             STORE_VERSION)
from sohuprof.store import PathLike, StoreWriter, manifest_problem

__all__ = ["KinetoTrace", "read_kineto", "collect_kineto"]

log = logging.getLogger("sohuprof.collectors.kineto")

_EXPECTED = "expected a PyTorch profiler (Kineto) or Chrome trace JSON (.json or .json.gz)"
#: Top-level keys only Kineto writes.
_KINETO_KEYS = ("schemaVersion", "distributedInfo", "deviceProperties", "baseTimeNanoseconds")
#: Event categories only Kineto writes (for old Kineto files without the top-level keys).
_KINETO_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "cpu_op", "cuda_runtime", "cuda_driver",
                "gpu_user_annotation", "python_function", "mtia_ccp_events", "mtia_runtime"}
#: Device-side event categories: they sit on a stream track (MTIA's device events are
#: ``mtia_ccp_events``, its DMA transfers among them, named ``dma_*``).
_GPU_CATS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation", "mtia_ccp_events")
#: Device kernels that are memory transfers by name (HTA's MemoryKernelGroupingPattern).
_MEMORY_KERNEL_RE = r"^(hip)?Memcpy|^(hip)?Memset|^dma"
#: Kineto's span over the whole profiling session: not an op.
_SKIP_CATS = ("Trace",)
#: Below this many microseconds a float64 has an ulp under 1 ns, so the ns are recoverable.
_EXACT_US = float(2**43)

_OP_INDEX = {op: i for i, op in enumerate(OP_CLASSES)}
_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
_OTHER = _OP_INDEX["other"]
#: Where an event ran (see :func:`_cat_kind`), and the op class and category each kind implies
#: (kernels take theirs from the name, NCCL kernels are communication).
_KINDS = ("kernel", "gpu_memcpy", "gpu_memset", "gpu_annotation", "host")
_HOST = _KINDS.index("host")
_MEMORY_OP = np.array([_OP_INDEX[o] for o in ("other", "memcpy", "memset", "host", "host")], np.int8)
_CATEGORY_OF_KIND = np.array([_CAT_INDEX[c] for c in ("compute", "memory", "memory", "host", "host")],
                             np.int8)

# Op class of a compute kernel by name: the first pattern that matches wins (attention before
# gemm: fused attention kernels are often cutlass GEMMs underneath). Convolutions count as gemm
# (implicit GEMM on tensor cores), cuDNN batch-norm kernels (bn_fw/bn_bw) as norm.
_OP_PATTERNS = (
    ("attention", r"flash|fmha|attention|attn|sdpa"),
    ("norm", r"norm|bn_fw|bn_bw"),
    ("gemm", r"gemm|cutlass|xmma|cublas|matmul|conv|scudnn|wgrad|dgrad|fprop"),
    ("embedding", r"embedding"),
    ("router", r"router|moe_align|gating"),
    ("sampling", r"topk|top_k|multinomial|sampl|argmax"),
    ("elementwise", r"elementwise|pointwise|triton_poi|reduce|softmax|multi_tensor_apply"
                    r"|catarray|copy|fill|nchwtonhwc|nhwctonchw|transpose|relu|gelu|silu"
                    r"|sigmoid|tanh|dropout|activation|cast"),
)
# Collective kind from an NCCL kernel name or a ``Collective name`` arg, underscores removed.
_COLL_PATTERNS = (
    ("all_reduce", r"allreduce"),
    ("all_gather", r"allgather"),
    ("reduce_scatter", r"reducescatter"),
    ("all_to_all", r"alltoall"),
    ("broadcast", r"broadcast"),
    ("recv", r"^recv|recv$"),
    ("send", r"send"),
)
#: Bytes per element of the c10 dtype names Kineto writes in the ``dtype`` arg.
_DTYPE_BYTES = {"Float": 4, "Half": 2, "BFloat16": 2, "Double": 8, "Int": 4, "Long": 8,
                "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "ComplexFloat": 8,
                "ComplexDouble": 16, "ComplexHalf": 4, "Float8_e4m3fn": 1, "Float8_e5m2": 1,
                "Float8_e4m3fnuz": 1, "Float8_e5m2fnuz": 1, "UInt16": 2, "UInt32": 4,
                "UInt64": 8}
_STEP_RE = r"^ProfilerStep#(?P<step>\d+)$"
#: A cut-off entry's text that says it was a complete event.
_CUT_X = re.compile(rb'"ph"\s*:\s*"X"')
# Exponents are matched too (so the tokens still pair one for one with the events), though only
# plain decimals are re-read exactly.
_TS_TOKEN = re.compile(rb'"ts"\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?=\s*[,}])')


# -- the typed decoder --------------------------------------------------------------------------
# msgspec decodes straight into these structs: keys not named here (most of each event's
# ``args``, the ``id``/``bp`` of flows) are skipped without building Python objects. Each field
# is typed as a sound trace writes it, so msgspec checks every type in C; a file with a wrongly
# typed field fails that decode and is decoded again into the ``_Loose*`` twins (every field
# ``Any``), whose columns kineto_checks then checks. Decoded JSON has no reference cycles,
# hence ``gc=False``.

# Ranges the typed decoder enforces itself (kineto_checks has the reasons): a value outside
# one fails the typed decode, and the loose path then finds and sets aside its event.
_I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
_DEVICE = Annotated[int, msgspec.Meta(ge=-MAX_ID, lt=MAX_ID)]
_NELEMS = Annotated[int, msgspec.Meta(lt=MAX_NELEMS)]
_FLOPS = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | Annotated[float, msgspec.Meta(ge=0, lt=2.0**63)]
_DUR_US = Annotated[float, msgspec.Meta(ge=0, lt=MAX_NS / 1000)]


class _Args(msgspec.Struct, frozen=True, gc=False):
    """The ``args`` keys sohuprof reads."""

    correlation: _I64 | None = None
    stream: _I64 | str | None = None
    device: _DEVICE | None = None
    flops: _FLOPS | None = None
    name: Any = None  # of thread_name / process_name metadata
    collective: str | None = msgspec.field(default=None, name="Collective name")
    group: str | None = msgspec.field(default=None, name="Process Group Name")
    nelems: _NELEMS | None = msgspec.field(default=None, name="In msg nelems")
    dtype: str | None = None


_NO_ARGS = _Args()


class _Event(msgspec.Struct, gc=False):
    ph: str | None = None
    cat: str | None = None
    name: str | None = None
    pid: _I64 | str | None = None
    tid: _I64 | str | None = None
    ts: float | None = None  # ints are read as floats (exact below 2**53)
    dur: _DUR_US | None = None
    args: _Args | None = _NO_ARGS


class _Trace(msgspec.Struct, gc=False):
    """The JSON Object Format: ``traceEvents`` and the top-level keys only Kineto writes."""

    traceEvents: list[_Event] | None = None  # noqa: N815 (the JSON key)
    schemaVersion: Any = msgspec.UNSET  # noqa: N815
    distributedInfo: Any = msgspec.UNSET  # noqa: N815
    deviceProperties: Any = msgspec.UNSET  # noqa: N815
    baseTimeNanoseconds: Any = msgspec.UNSET  # noqa: N815


class _LooseArgs(msgspec.Struct, frozen=True, gc=False):
    """:class:`_Args` with any JSON value in each field."""

    correlation: Any = None
    stream: Any = None
    device: Any = None
    flops: Any = None
    name: Any = None
    collective: Any = msgspec.field(default=None, name="Collective name")
    group: Any = msgspec.field(default=None, name="Process Group Name")
    nelems: Any = msgspec.field(default=None, name="In msg nelems")
    dtype: Any = None


_NO_LOOSE_ARGS = _LooseArgs()
_ARGS_TYPES = (_Args, _LooseArgs)
#: JSON scalars (hashable, unlike lists and objects).
_SCALARS = (int, float, str, type(None))


class _LooseEvent(msgspec.Struct, gc=False):
    """:class:`_Event` with any JSON value in each field (``args`` of any shape)."""

    ph: Any = None
    cat: Any = None
    name: Any = None
    pid: Any = None
    tid: Any = None
    ts: Any = None
    dur: Any = None
    args: _LooseArgs | list[Any] | str | int | float | bool | None = _NO_LOOSE_ARGS


class _LooseTrace(msgspec.Struct, gc=False):
    traceEvents: list[_LooseEvent] | None = None  # noqa: N815 (the JSON key)
    schemaVersion: Any = msgspec.UNSET  # noqa: N815
    distributedInfo: Any = msgspec.UNSET  # noqa: N815
    deviceProperties: Any = msgspec.UNSET  # noqa: N815
    baseTimeNanoseconds: Any = msgspec.UNSET  # noqa: N815


class _CounterEvent(msgspec.Struct, gc=False):
    """A counter's series are arbitrary ``args`` keys: kept raw, decoded for counters only."""

    args: msgspec.Raw = msgspec.Raw(b"null")


class _CounterTrace(msgspec.Struct, gc=False):
    traceEvents: list[_CounterEvent] | None = None  # noqa: N815


_DECODER = msgspec.json.Decoder(_Trace | list[_Event])
_LOOSE_DECODER = msgspec.json.Decoder(_LooseTrace | list[_LooseEvent])
_COUNTER_DECODER = msgspec.json.Decoder(_CounterTrace | list[_CounterEvent])


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


@dataclass(frozen=True)
class _RankTrace:
    """What one file contributes."""

    file: Path
    format: str  # "kineto" or "chrome"
    rank: int
    events: pa.Table
    collectives: pa.Table  # without ``start`` (needs every rank)
    counters: pa.Table
    quarantine: pa.Table
    info: dict[str, Any]


# -- public API ---------------------------------------------------------------------------------

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


# -- files --------------------------------------------------------------------------------------

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


_Doc = _Trace | list[_Event] | _LooseTrace | list[_LooseEvent]


#: Bytes a .json.gz may always inflate to; past that, 64x its compressed size.
GZIP_MIN_CAP = 1 << 30


def _load(path: Path) -> tuple[_Doc, bytes, bool, bytes]:
    """Decode a (possibly gzipped) trace.

    Returns the document, the JSON text it came from, whether it was decoded loosely (some
    field has a type a sound trace never writes; see :func:`_decode`), and the cut-off tail
    of a JSON Array Format file that ends inside an entry (``b""`` for a whole file).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceFormatError(f"cannot read '{path}': {exc.strerror or exc}") from None
    if raw[:2] == b"\x1f\x8b":
        # JSON compresses 10-30x; a file that inflates past 64x (at least 1 GiB) is a bomb or
        # damage, refused before it can take the machine's memory.
        cap = max(GZIP_MIN_CAP, 64 * len(raw))
        try:
            with igzip.GzipFile(fileobj=io.BytesIO(raw)) as gz:
                text = gz.read(cap + 1)
        except (OSError, EOFError, zlib.error, isal_zlib.error) as exc:
            raise TraceFormatError(f"'{path}' is a damaged gzip file ({exc}); {_EXPECTED}") from None
        if len(text) > cap:
            raise TraceFormatError(f"'{path}' inflates to more than {cap:,} bytes ({cap // len(raw)}x its size), "
                                   f"which no trace does: a damaged or hostile gzip file")
        raw = text
    try:
        doc, loose = _decode(path, raw)
        return doc, raw, loose, b""
    except msgspec.DecodeError as exc:
        repaired = _repair_text(path, raw, exc)
        if repaired is not None:   # one bad name must not cost the file its sound events
            return _load_text(path, repaired)
        # The Chrome JSON Array Format allows leaving off the closing bracket.
        body = raw.rstrip().rstrip(b",")
        if body.lstrip()[:1] == b"[" and not body.endswith(b"]"):
            try:
                doc, loose = _decode(path, body + b"]")
                return doc, body + b"]", loose, b""
            except msgspec.DecodeError:
                pass
            # A writer that died mid-entry (why the format allows the missing bracket): keep
            # the whole entries, and the cut one's tail to count. Only for a cut, never for
            # damage inside the text, which would drop sound entries after it.
            if "truncated" in str(exc):
                cut = _cut_entries(path, body)
                if cut is not None:
                    return cut
        raise TraceFormatError(f"'{path}' is not JSON ({exc}); {_EXPECTED}") from None


#: A lone UTF-16 surrogate escape (JSON allows writing one; no UTF-8 decoder takes it).
_LONE_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
                             rb"|(?<![dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}")
#: Control bytes JSON forbids inside strings (tab, newline and carriage return are whitespace).
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _repair_text(path: Path, raw: bytes, exc: msgspec.DecodeError) -> bytes | None:
    """The text with invalid UTF-8, lone surrogate escapes and raw control bytes replaced (by
    U+FFFD and spaces), when that is what failed to decode; else None. Said in one log line."""
    if not any(word in str(exc) for word in ("UTF-8", "surrogate", "control character", "invalid character")):
        return None
    text = raw.decode("utf-8", errors="replace").encode()
    text = _LONE_SURROGATE.sub(rb"\\ufffd", text)
    text = _CONTROL.sub(b" ", text)
    if text == raw:
        return None
    log.warning("%s: replaced invalid text (bad UTF-8, lone surrogates, control bytes) in names with "
                "U+FFFD; the events are kept", path)
    return text


def _load_text(path: Path, raw: bytes) -> tuple[_Doc, bytes, bool, bytes]:
    try:
        doc, loose = _decode(path, raw)
    except msgspec.DecodeError as exc:
        raise TraceFormatError(f"'{path}' is not JSON ({exc}); {_EXPECTED}") from None
    return doc, raw, loose, b""


def _cut_entries(path: Path, body: bytes, attempts: int = 16) -> tuple[_Doc, bytes, bool, bytes] | None:
    """Decode the whole entries of an Array Format text cut inside its last entry.

    The last entry that closes is found by trying the last few ``}`` that a comma follows (an
    entry's end, or an object inside one; braces inside names such as ``{lambda()#1}`` are
    never followed by one), then the last few ``}`` of any kind; None if none gives valid JSON.
    """
    start = max(0, len(body) - (1 << 20))   # no entry is a megabyte long
    ends = [start + m.start() for m in re.finditer(rb"\}\s*,", body[start:])][::-1][:attempts]
    end = len(body)
    for _ in range(attempts):
        brace = body.rfind(b"}", 0, end)
        if brace < 0:
            break
        ends.append(brace)
        end = brace
    for brace in dict.fromkeys(ends):   # each candidate once, commas first
        head = body[:brace + 1] + b"]"
        try:
            doc, loose = _decode(path, head)
        except msgspec.DecodeError:
            continue
        return doc, head, loose, body[brace + 1:].lstrip().lstrip(b",").lstrip()
    return None


def _decode(path: Path, text: bytes) -> tuple[_Doc, bool]:
    """Decode typed; if a field's type is wrong, decode loosely (the damaged-file path only).

    Raises ``msgspec.DecodeError`` for text that is not JSON, :class:`TraceFormatError` for
    JSON that is not a trace.
    """
    try:
        return _DECODER.decode(text), False
    except msgspec.ValidationError:
        pass
    try:
        return _LOOSE_DECODER.decode(text), True
    except msgspec.ValidationError as exc:
        _explain(path, text, exc)


def _explain(path: Path, text: bytes, exc: msgspec.ValidationError) -> NoReturn:
    """Say why JSON the loose decoder rejected is not a trace (the error path only)."""
    try:
        doc = msgspec.json.decode(text)
    except msgspec.DecodeError as err:  # a syntax error past the first type error
        raise TraceFormatError(f"'{path}' is not JSON ({err}); {_EXPECTED}") from None
    except msgspec.ValidationError as err:  # JSON that no decoder takes: 1e400, say
        raise TraceFormatError(f"'{path}' holds a value JSON decoders refuse ({err}); the file is "
                               f"damaged: re-export it from the profiler") from None
    if not (isinstance(doc, list) or isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list)):
        kind = "an object without a 'traceEvents' list" if isinstance(doc, dict) else type(doc).__name__
        raise TraceFormatError(f"'{path}' is JSON but not a trace: {kind}; {_EXPECTED}")
    try:
        msgspec.convert(doc["traceEvents"] if isinstance(doc, dict) else doc, list[dict])
    except msgspec.ValidationError:
        raise TraceFormatError(f"'{path}': 'traceEvents' holds entries that are not objects; "
                               f"{_EXPECTED}") from None
    raise TraceFormatError(f"'{path}' cannot be read as a trace ({exc}); {_EXPECTED}")


# -- one file -----------------------------------------------------------------------------------

def _parse_file(path: Path) -> _RankTrace:
    # The decoder builds ~10^5 acyclic objects; letting the cyclic GC scan them mid-parse costs
    # as much as the parse itself, so it is paused for the load and the column extraction.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        doc, raw, loose, cut = _load(path)
        if isinstance(doc, list):
            return _build(path, {}, doc, raw, loose, cut)
        if doc.traceEvents is None:
            raise TraceFormatError(f"'{path}' is JSON but not a trace: an object without a "
                                   f"'traceEvents' list; {_EXPECTED}")
        top = {k: getattr(doc, k) for k in _KINETO_KEYS if getattr(doc, k) is not msgspec.UNSET}
        return _build(path, top, doc.traceEvents, raw, loose, cut)
    except RecursionError:
        # msgspec recurses per nesting level; no trace nests more than a few levels.
        raise TraceFormatError(f"'{path}' nests JSON deeper than Python can decode (no trace "
                               f"nests more than a few levels); the file is damaged or not a "
                               f"trace: {_EXPECTED}") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _build(path: Path, top: dict[str, Any], trace_events: Sequence[_Event | _LooseEvent],
           raw: bytes, loose: bool, cut: bytes = b"") -> _RankTrace:
    """One file's tables: check every record (first reason wins), keep the sound ones, build
    the columns from those. ``loose``: the file needed the loose decoder (types unchecked);
    ``cut``: the tail of an entry the file ends inside (see :func:`_load`)."""
    ph_l = _field(trace_events, "ph")
    bad_ph = wrong_type(ph_l, (str,)) if loose else np.zeros(len(ph_l), dtype=bool)
    ph = pa.array(blank(ph_l, bad_ph), pa.string())
    cat_l = _field(trace_events, "cat")
    bad_cat = wrong_type(cat_l, (str,)) if loose else np.zeros(len(cat_l), dtype=bool)
    cat = pa.array(blank(cat_l, bad_cat), pa.string())
    fmt = ("kineto" if any(k in top for k in _KINETO_KEYS)
           or set(pc.unique(cat).drop_null().to_pylist()) & _KINETO_CATS else "chrome")
    rank = _rank(path, top)
    base = _base_time(path, top)

    # Records (see the module docstring): complete and counter events, and entries whose ph
    # is damaged. Each check below sets aside the records that fail it (first reason wins).
    is_x = pc.and_(pc.equal(ph, "X"), pc.invert(pc.is_in(cat, pa.array(_SKIP_CATS)))).fill_null(False)
    is_x = is_x.to_numpy(zero_copy_only=False)
    is_c = pc.equal(ph, "C").fill_null(False).to_numpy(zero_copy_only=False)
    is_rec = is_x | is_c | bad_ph
    rec = np.flatnonzero(is_rec)
    rec_x = is_x[rec]
    verdict = Verdict(rec.size)
    verdict.flag(bad_ph[rec], "ph")
    verdict.flag(bad_cat[rec], "cat")
    rev = _take(trace_events, rec)
    names_l = _field(rev, "name")
    if loose:
        bad = wrong_type(names_l, (str,))
        verdict.flag(bad, "name")
        names_l = blank(names_l, bad)
    args_l = _field(rev, "args")
    if loose:
        is_args = np.fromiter(map(isinstance, args_l, repeat(_LooseArgs)), bool, len(args_l))
        verdict.flag(~is_args & (objects(args_l) != None), "args")  # noqa: E711 (elementwise)
        args_l = _fill(args_l, ~is_args, _NO_LOOSE_ARGS)
    elif None in args_l:  # "args": null reads as no args
        args_l = _fill(args_l, objects(args_l) == None, _NO_ARGS)  # noqa: E711 (elementwise)

    # Times: exact ns (see the module docstring), within +-MAX_NS after baseTimeNanoseconds.
    ts_all, bad_ts = float_column(_field(trace_events, "ts"), lenient=loose)
    verdict.flag(bad_ts[rec], "ts")
    verdict.flag(np.isnan(ts_all[rec]), "ts?")
    ts_all_ns, ts_fits, ts_exact = _all_ts_ns(ts_all, raw, base)
    verdict.flag(~ts_fits[rec], "ts>")
    dur_us, bad_dur = float_column(_field(rev, "dur"), lenient=loose)
    verdict.flag(bad_dur & rec_x, "dur")
    verdict.flag(np.isnan(dur_us) & rec_x, "dur?")
    verdict.flag((dur_us < 0) & rec_x, "dur<0")
    dur_fits = np.abs(dur_us) < MAX_NS / 1000.0  # False for NaN and inf: masked before the cast
    dur_ns = _us_to_ns(np.where(dur_fits, dur_us, 0.0))
    verdict.flag((~dur_fits | (dur_ns >= MAX_NS)) & ~np.isnan(dur_us) & rec_x, "dur>")

    # Ids: types and ranges checked on the column (or its distinct values), never indexed by;
    # the typed decoder has checked both already.
    pid_l, tid_l = _field(rev, "pid"), _field(rev, "tid")
    dev_l, stream_l = _field(args_l, "device"), _field(args_l, "stream")
    if loose:
        pid_l, bad = id_check(pid_l, lenient=True, strings=True)
        verdict.flag(bad & rec_x, "pid")
        tid_l, bad = id_check(tid_l, lenient=True, strings=True)
        verdict.flag(bad & rec_x, "tid")
        dev_l, bad = id_check(dev_l, lenient=True, strings=False, low=-MAX_ID, high=MAX_ID)
        verdict.flag(bad & rec_x, "device")
        stream_l, bad = id_check(stream_l, lenient=True, strings=True)
        verdict.flag(bad & rec_x, "stream")
    correlation, bad = int_column(_field(args_l, "correlation"), lenient=loose)
    verdict.flag(bad & rec_x, "correlation")
    flops, bad = int_column(_field(args_l, "flops"), lenient=loose, low=0, floats=True)
    verdict.flag(bad & rec_x, "flops")

    # Op, category and kind are small integer codes (OP_CLASSES / CATEGORIES / _KINDS indices).
    cat_enc = cat.take(pa.array(rec)).dictionary_encode()
    kind_of_cat = np.array([_KINDS.index(_cat_kind(c)) for c in cat_enc.dictionary.to_pylist()]
                           + [_HOST], dtype=np.int8)
    kind = kind_of_cat[_codes(cat_enc)]
    names = pa.array(names_l, pa.string()).fill_null("")
    name_enc = names.dictionary_encode()
    # A device "kernel" that is a transfer by its name (MTIA's dma_*, HIP's hipMemcpy*) is memory.
    is_copy = pc.match_substring_regex(name_enc.dictionary, _MEMORY_KERNEL_RE).to_numpy(zero_copy_only=False)
    kind = np.where((kind == _KINDS.index("kernel")) & is_copy[_codes(name_enc)] if is_copy.size else False,
                    np.int8(_KINDS.index("gpu_memcpy")), kind).astype(np.int8)
    is_nccl = pc.match_substring(name_enc.dictionary, "nccl", ignore_case=True).to_numpy(
        zero_copy_only=False)
    nccl = (kind == _KINDS.index("kernel")) & is_nccl[_codes(name_enc)] & rec_x
    nccl_rows = np.flatnonzero(nccl)
    nccl_fields = _nccl_args(_take(args_l, nccl_rows), nccl_rows, verdict, loose)

    # What is kept: sound complete events, and sound counter events (their samples).
    counters, bad_counter = _counters(rank, trace_events, rec[verdict.ok & ~rec_x & is_c[rec]],
                                      ts_all_ns, raw)
    verdict.flag(np.isin(rec, bad_counter), "counter")
    keep = verdict.ok & rec_x
    x = rec[keep]
    if x.size == 0:
        _refuse_empty(path, ph, rec_x, verdict)
    if not keep.all():  # narrow every per-record column to the kept events
        sel = np.flatnonzero(keep)
        nccl_keep = keep[nccl_rows]
        nccl_fields = {k: v.filter(pa.array(nccl_keep)) for k, v in nccl_fields.items()}
        names, kind, nccl = names.take(pa.array(sel)), kind[sel], nccl[sel]
        name_enc = names.dictionary_encode()
        dur_ns, correlation, flops = dur_ns[sel], correlation.take(pa.array(sel)), flops.take(pa.array(sel))
        pid_l, tid_l, dev_l, stream_l = (list(compress(v, keep)) for v in (pid_l, tid_l, dev_l, stream_l))
    nccl_rows = np.flatnonzero(nccl)
    ts_ns = ts_all_ns[x]
    dur_ns = np.asarray(dur_ns, dtype=np.int64)

    is_gpu = kind != _HOST
    is_kernel = kind == _KINDS.index("kernel")
    name_codes = _codes(name_enc)
    uniq_names = name_enc.dictionary
    name_op = _op_codes(_classify(uniq_names, _OP_PATTERNS, default="other"))
    name_coll = _op_codes(_classify(pc.replace_substring(uniq_names, "_", ""), _COLL_PATTERNS,
                                    default="other"))

    # Collective args, only for the (few) NCCL kernels.
    coll_enc = nccl_fields["collective"].dictionary_encode()
    # The kind an NCCL kernel's ``Collective name`` arg says, else its kernel name, else other.
    coll_from_arg = _op_codes(np.append(_classify(pc.replace_substring(coll_enc.dictionary, "_", ""),
                                                  _COLL_PATTERNS, default="other"), "other"))
    coll_kind = coll_from_arg[_codes(coll_enc, null_code=len(coll_enc.dictionary))]
    coll_kind = np.where(coll_kind != _OTHER, coll_kind, name_coll[name_codes[nccl_rows]])

    op = name_op[name_codes]
    op[nccl_rows] = coll_kind
    op = np.where(is_kernel, op, _MEMORY_OP.take(kind.astype(np.intp)))
    category = _CATEGORY_OF_KIND.take(kind.astype(np.intp))
    category[nccl_rows] = _CAT_INDEX["communication"]

    # Devices and tracks. The main device is the most frequent one (ties: the lowest id),
    # counted over the distinct ids: never an array sized by an id.
    dev = pa.array(dev_l, pa.int64()).fill_null(-1).to_numpy()
    on_dev = is_gpu & (dev >= 0)
    main_dev = 0
    if on_dev.any():
        ids, counts = np.unique(dev[on_dev], return_counts=True)
        main_dev = int(ids[np.argmax(counts)])
    chip = np.where(on_dev, dev, main_dev).astype(np.int32)
    meta = _take(trace_events, np.flatnonzero(pc.equal(ph, "M").fill_null(False).to_numpy(
        zero_copy_only=False))) if fmt == "chrome" else []
    track = _tracks(fmt, meta, is_gpu, chip, pid_l, tid_l, stream_l)

    step = _steps(uniq_names, name_codes, ts_ns, dur_ns)
    coll_id, collectives = _collectives(rank, nccl_rows, ts_ns, dur_ns, coll_kind,
                                        nccl_fields["group"], nccl_fields["nelems"],
                                        nccl_fields["dtype"])

    events = EVENTS.conform(pa.table({
        "ts": ts_ns, "dur": dur_ns,
        "node": np.zeros(x.size, np.int32), "chip": chip,
        "rank": np.full(x.size, rank, np.int32),
        "track": track, "name": name_enc,
        "op": _dict_from_codes(op, OP_CLASSES), "category": _dict_from_codes(category, CATEGORIES),
        "step": step, "flops": flops, "coll_id": coll_id, "correlation": correlation,
        "cat": cat.take(pa.array(x)).fill_null("").dictionary_encode(),
        "stream": _stream_ids(stream_l, is_gpu),
    }))
    # A cut-off entry is a lost record when what survives of it says it was a complete event.
    lost = int(_CUT_X.search(cut) is not None)
    quarantine, info = _account(path, raw, rank, rec, is_c[rec], verdict, int(x.size), lost)
    info.update({
        "format": fmt, "skipped": _value_counts(ph.filter(pa.array(~is_rec)).fill_null("")),
        "base_time_ns": base, "ts_exact": ts_exact, "distributed": top.get("distributedInfo"),
        "devices": _device_names(top.get("deviceProperties")),
    })
    return _RankTrace(path, fmt, rank, events, collectives, counters, quarantine, info)


def _nccl_args(args: Sequence[_Args | _LooseArgs], rows: np.ndarray, verdict: Verdict,
               loose: bool) -> dict[str, pa.Array]:
    """The NCCL kernels' collective args (``rows``: their record indices), checked when the
    file was decoded loosely; a bad one sets its kernel aside."""
    out = {}
    for key in ("collective", "group", "dtype"):  # three columns, not a loop over events
        values = _field(args, key)
        if loose:
            bad = wrong_type(values, (str,))
            verdict.flag(_scatter(bad, rows, verdict.code.size), key)
            values = blank(values, bad)
        out[key] = pa.array(values, pa.string())
    out["nelems"], bad = int_column(_field(args, "nelems"), lenient=loose, high=MAX_NELEMS)
    verdict.flag(_scatter(bad, rows, verdict.code.size), "nelems")
    return out


def _account(path: Path, raw: bytes, rank: int, rec: np.ndarray, rec_c: np.ndarray,
             verdict: Verdict, kept: int, lost: int) -> tuple[pa.Table, dict[str, Any]]:
    """The file's quarantine rows and counts.

    Complete events (and damaged-ph entries) are the records; counter events (``rec_c``) are
    counted on their own, as they become samples, not events.
    """
    set_aside = ~verdict.ok
    parts = [quarantine_rows(path.name, raw, rec[bad], verdict.code[bad], prefix=prefix)
             for bad, prefix in ((set_aside & ~rec_c, ""), (set_aside & rec_c, "counter event: "))
             if bad.any()]
    quarantine = pa.concat_tables(parts) if parts else QUARANTINE.empty()
    records = int(rec.size - rec_c.sum()) + lost
    bad_records = int((set_aside & ~rec_c).sum())
    bad_counters = int((set_aside & rec_c).sum())
    if records != kept + bad_records + lost:  # a bug, not bad input: the counts would not add up
        raise RuntimeError(f"'{path}': accounting mismatch: {records} records, {kept} kept, "
                           f"{bad_records} set aside")
    return quarantine, {
        "file": str(path), "rank": rank,
        "accounting": {"file": path.name, "rank": rank, "expected": records, "kept": kept,
                       "quarantined": bad_records, "lost": lost, "duplicates_dropped": 0},
        "counter_events": int(rec_c.sum()) - bad_counters,
        "counter_events_quarantined": bad_counters,
    }


def _refuse_empty(path: Path, ph: pa.Array, rec_x: np.ndarray, verdict: Verdict) -> NoReturn:
    """Raise for a file with no sound complete event, saying why."""
    bad = rec_x & ~verdict.ok
    if bad.any():
        codes, counts = np.unique(verdict.code[bad], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:3]
        why = ", ".join(f"{int(counts[i]):,} with {REASONS[int(codes[i]) - 1]}" for i in order)
        raise TraceFormatError(f"'{path}': none of its {int(rec_x.sum()):,} complete ('X') events "
                               f"is sound ({why}); nothing to collect: re-export the trace, or "
                               f"move the file out of the input")
    has_be = pc.any(pc.is_in(ph, pa.array(["B", "E"]))).as_py()
    hint = ("it uses 'B'/'E' duration events, which sohuprof does not read; export complete "
            "('X') events" if has_be else _EXPECTED)
    raise TraceFormatError(f"'{path}' holds no complete ('X') trace events; {hint}")


def _base_time(path: Path, top: dict[str, Any]) -> int:
    """``baseTimeNanoseconds``: 0 when absent; refused unless an integer in [0, MAX_NS)."""
    base = top.get("baseTimeNanoseconds")
    if base is None:
        return 0
    if not isinstance(base, int) or isinstance(base, bool) or not 0 <= base < MAX_NS:
        raise TraceFormatError(f"'{path}': 'baseTimeNanoseconds' should be an integer number of ns "
                               f"in [0, 2**62), got {base!r:.40}; the file is damaged: re-export it "
                               f"from the profiler")
    return base


def _device_names(props: Any) -> list[str]:
    """GPU names from ``deviceProperties`` (a list of objects); anything else gives none."""
    if not isinstance(props, list):
        return []
    return [d["name"] for d in props if isinstance(d, dict) and isinstance(d.get("name"), str)]


def _scatter(mask: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    """A length-``n`` mask, True at ``rows[mask]``."""
    out = np.zeros(n, dtype=bool)
    out[rows[mask]] = True
    return out


def _rank(path: Path, top: dict[str, Any]) -> int:
    info = top.get("distributedInfo")
    if info is None:
        return 0
    rank = info.get("rank") if isinstance(info, dict) else None
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < MAX_ID:
        raise TraceFormatError(f"'{path}': 'distributedInfo.rank' should be an integer in [0, 2**31), "
                               f"got {rank!r:.40}; is the file complete?")
    return rank


def _cat_kind(cat: str) -> str:
    """Where a Kineto category runs: one of the GPU kinds, or host."""
    return {"kernel": "kernel", "gpu_memcpy": "gpu_memcpy", "gpu_memset": "gpu_memset",
            "gpu_user_annotation": "gpu_annotation", "mtia_ccp_events": "kernel"}.get(cat, "host")


# -- columns ------------------------------------------------------------------------------------

def _field(items: Sequence[Any], name: str) -> list[Any]:
    """One attribute of every struct, in order (a C-level map, no Python loop)."""
    return list(map(attrgetter(name), items))


def _take(items: Sequence[Any], index: np.ndarray) -> Sequence[Any]:
    """The items at ``index``, in order (a C-level gather)."""
    if index.size <= 1:
        return [items[i] for i in index.tolist()]
    return itemgetter(*index.tolist())(items)


_objects = objects


def _fill(items: Sequence[Any], mask: np.ndarray, fill: Any) -> list[Any]:
    """``items`` with the entries in ``mask`` replaced by ``fill``."""
    out = _objects(items)
    out[mask] = fill
    return out.tolist()


def _codes(encoded: pa.DictionaryArray, null_code: int = -1) -> np.ndarray:
    return encoded.indices.fill_null(null_code).to_numpy(zero_copy_only=False).astype(np.int64)


def _classify(values: pa.Array, patterns: tuple[tuple[str, str], ...], default: str) -> np.ndarray:
    """Label each (unique) string by the first regex that matches it, case-insensitively."""
    labels = np.full(len(values), default, dtype=object)
    unset = np.ones(len(values), dtype=bool)
    for label, pattern in patterns:
        hit = pc.match_substring_regex(values, pattern, ignore_case=True).fill_null(False)
        hit = hit.to_numpy(zero_copy_only=False) & unset
        labels[hit] = label
        unset &= ~hit
    return labels


def _op_codes(labels: np.ndarray) -> np.ndarray:
    """OP_CLASSES indices of op class names."""
    return np.array([_OP_INDEX[label] for label in labels.tolist()], dtype=np.int8)


def _dict_from_codes(codes: np.ndarray, vocabulary: tuple[str, ...]) -> pa.DictionaryArray:
    """A dictionary column over a fixed vocabulary, from indices into it."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(vocabulary))


def _value_counts(values: pa.Array) -> dict[str, int]:
    """Counts of each value, most frequent first, ties in order of first appearance."""
    enc = values.dictionary_encode()
    counts = np.bincount(_codes(enc), minlength=len(enc.dictionary))
    order = np.argsort(-counts, kind="stable")
    return dict(zip(np.asarray(enc.dictionary.to_pylist(), dtype=object)[order].tolist(),
                    counts[order].tolist()))


def _factorize(values: list[Any]) -> tuple[np.ndarray, list[Any]]:
    """Codes and distinct values (None among them) of plain JSON scalars, in first-seen order."""
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        arr = None
    # Ints, strings or nulls keep their Python values through Arrow; anything else (floats
    # mixed with ints, bools, containers) goes through pandas on the objects themselves.
    if arr is not None and (pa.types.is_int64(arr.type) or pa.types.is_string(arr.type)
                            or pa.types.is_null(arr.type)):
        enc = pc.dictionary_encode(arr, null_encoding="encode")
        return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()
    codes, uniques = pd.factorize(_objects(values), use_na_sentinel=False)
    return codes.astype(np.int64), list(uniques)


def _us_to_ns(us: np.ndarray) -> np.ndarray:
    """Microsecond floats (parsed from decimals with at most 3 places) to exact int64 ns.

    A decimal ``n / 1000`` parses to the double nearest it; while the double's ulp is under
    1 ns, ``n`` is the only integer whose ``n / 1000.0`` (also correctly rounded) gives that
    double back, and it lies within 1 of ``round(us * 1000)``. Values with more decimals keep
    the nearest ns.
    """
    guess = np.rint(us * 1000.0)
    for delta in (-1.0, 1.0):
        candidate = guess + delta
        better = (candidate / 1000.0 == us) & (guess / 1000.0 != us)
        guess = np.where(better, candidate, guess)
    return guess.astype(np.int64)


def _all_ts_ns(ts_all: np.ndarray, raw: bytes, base: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Every event's ts in int64 ns plus ``base`` (``base`` where missing or out of range),
    the mask of those within +-MAX_NS, and whether they are exact to the ns.

    Out-of-range values (1e20 us, inf) are masked before any cast, so nothing wraps.
    """
    fits = np.abs(ts_all) < MAX_NS / 1000.0  # False for NaN and inf
    values = np.where(fits, ts_all, 0.0)
    exact = True
    if np.abs(values).max(initial=0.0) < _EXACT_US:
        ns = _us_to_ns(values)
    else:
        from_text = _ts_from_text(raw, ts_all, fits)
        exact = from_text is not None
        ns = from_text if from_text is not None else np.rint(values * 1000.0).astype(np.int64)
    # |ns| <= 2**62 and 0 <= base < 2**62: the sum cannot wrap.
    ns = np.where(fits, ns, 0) + np.int64(base)
    fits &= np.abs(ns) < MAX_NS
    return ns, fits, exact


def _ts_from_text(raw: bytes, ts_all: np.ndarray, fits: np.ndarray) -> np.ndarray | None:
    """Exact ns of every event's ts in range (``fits``), re-read from the JSON text when floats
    cannot hold them; 0 elsewhere.

    The ``"ts": <number>`` tokens are taken in document order and must match, one for one,
    the events that have a ts (checked value by value); otherwise None (the caller falls back
    to the float, and says so in the metadata). So must an in-range ts written with an exponent.
    """
    tokens = _TS_TOKEN.findall(raw)
    present = ~np.isnan(ts_all)
    if len(tokens) != int(present.sum()):
        return None
    text = np.array(tokens, dtype=np.bytes_)
    if not np.array_equal(text.astype(np.float64), ts_all[present]):
        return None
    use = fits[present]
    text = text[use]
    if (np.char.find(text, b"e") >= 0).any() or (np.char.find(text, b"E") >= 0).any():
        return None
    parts = np.char.partition(text, b".")
    whole, frac = parts[:, 0], parts[:, 2]
    negative = np.char.startswith(whole, b"-")
    # ns digits: the first three decimals; the fourth rounds.
    # Fixed-width bytes: astype("S4") truncates, and the uint8 view gives the digits.
    digits = np.char.ljust(frac, 4, b"0").astype("S4").view(np.uint8).reshape(-1, 4).astype(np.int64) - 48
    ns_frac = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2] + (digits[:, 3] >= 5)
    magnitude = np.abs(whole.astype(np.int64)) * 1000 + ns_frac
    out = np.zeros(ts_all.shape, dtype=np.int64)
    out[np.flatnonzero(present)[use]] = np.where(negative, -magnitude, magnitude)
    return out


def _tracks(fmt: str, meta: Sequence[_Event], is_gpu: np.ndarray, chip: np.ndarray,
            pid: list[Any], tid: list[Any], stream: list[Any]) -> pa.DictionaryArray:
    """Track labels, built once per distinct (gpu, chip, pid, stream-or-tid).

    ``meta`` holds the metadata (``M``) events of a Chrome trace: its thread and process names.
    """
    stream_o = _objects(stream)
    lane = np.where(is_gpu & (stream_o != None), stream_o, _objects(tid))  # noqa: E711 (elementwise)
    lane_codes, lanes = pd.factorize(lane, use_na_sentinel=False)
    pid_codes, pids = _factorize(pid)
    chips = int(chip.max(initial=0)) + 1
    if 2 * chips * len(pids) * len(lanes) >= 2**63:
        # A mixed-radix key would wrap int64: number the chips densely first.
        _, dense = np.unique(chip, return_inverse=True)
        chips, chip_key = int(dense.max(initial=0)) + 1, dense.reshape(-1)
    else:
        chip_key = chip
    key = (is_gpu.astype(np.int64) * chips + chip_key) * len(pids) + pid_codes
    if int(key.max(initial=0)) * len(lanes) >= 2**63 - len(lanes):
        _, key = np.unique(key, return_inverse=True)
        key = key.reshape(-1).astype(np.int64)
    key = key * len(lanes) + lane_codes
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    multi_gpu = np.unique(chip[is_gpu]).size > 1
    thread_names: dict[tuple[Any, Any], str] = {}
    process_names: dict[Any, str] = {}
    if fmt == "chrome":
        # Metadata events are not checked as records are: skip unusable ones here.
        named = [m for m in meta if isinstance(m.args, _ARGS_TYPES)
                 and isinstance(m.pid, _SCALARS) and isinstance(m.tid, _SCALARS)]
        thread_names = {(m.pid, m.tid): str(m.args.name) for m in named if m.name == "thread_name"}
        process_names = {m.pid: str(m.args.name) for m in named if m.name == "process_name"}
    several_pids = len(pids) > 1
    labels = []
    for i in first:  # one per distinct track, not per event
        if is_gpu[i]:
            label = f"stream {lane[i]}"
            label = f"gpu {chip[i]} {label}" if multi_gpu else label
        else:
            label = thread_names.get((pid[i], tid[i])) or f"thread {tid[i]}"
            if fmt == "chrome" and several_pids:
                label = f"{process_names.get(pid[i]) or f'pid {pid[i]}'}: {label}"
        labels.append(label)
    # Equal labels from distinct keys share one dictionary entry.
    label_codes, label_values = pd.factorize(np.array(labels, dtype=object))
    return pa.DictionaryArray.from_arrays(pa.array(label_codes[inverse].astype(np.int32)),
                                          pa.array(label_values.astype(str), pa.string()))


def _steps(uniq_names: pa.Array, name_codes: np.ndarray, ts: np.ndarray, dur: np.ndarray) -> pa.Array:
    """ProfilerStep number of the window [ts, ts + dur) holding each event's ts; null outside."""
    step_of_name = pc.extract_regex(uniq_names, _STEP_RE)
    numbers = pc.struct_field(step_of_name, "step").cast(pa.int64()).to_numpy(zero_copy_only=False)
    numbers = np.where(pc.is_valid(step_of_name).to_numpy(zero_copy_only=False), numbers, -1)
    per_event = numbers[name_codes] if len(numbers) else np.full(len(ts), -1)
    windows = np.flatnonzero(per_event >= 0)
    if windows.size == 0:
        return pa.nulls(len(ts), pa.int64())
    order = windows[np.argsort(ts[windows], kind="stable")]
    starts, ends, nums = ts[order], ts[order] + dur[order], per_event[order]
    j = np.searchsorted(starts, ts, side="right") - 1
    inside = (j >= 0) & (ts < ends[np.maximum(j, 0)])
    return pa.array(np.where(inside, nums[np.maximum(j, 0)], 0), pa.int64(), mask=~inside)


def _collectives(rank: int, rows: np.ndarray, ts: np.ndarray, dur: np.ndarray, kind: np.ndarray,
                 pg: pa.Array, nelems: pa.Array, dtype: pa.Array) -> tuple[pa.Array, pa.Table]:
    """``coll_id`` per event, and this rank's collective rows (``start`` still missing).

    ``rows`` are the NCCL kernels' event indices; ``kind`` (their op codes), ``pg`` (process
    group names), ``nelems`` and ``dtype`` hold what belongs to them, in the same order.
    """
    n = len(ts)
    if rows.size == 0:
        return pa.nulls(n, pa.int64()), COLLECTIVES.empty().drop_columns(["start"])
    pg_enc = pg.fill_null("0").dictionary_encode()
    group_of = np.array([_group_id(g) for g in pg_enc.dictionary.to_pylist()], dtype=np.int64)
    group = group_of[_codes(pg_enc)]
    # The n-th NCCL kernel of a group, by ts: a running count within each group.
    order = np.lexsort((ts[rows], group))
    g_sorted = group[order]
    run_start = np.r_[0, np.flatnonzero(np.diff(g_sorted)) + 1]
    seq_sorted = np.arange(order.size) - np.repeat(run_start, np.diff(np.r_[run_start, order.size]))
    seq = np.empty_like(seq_sorted)
    seq[order] = seq_sorted
    ids = group * np.int64(2**32) + seq
    coll_id = np.zeros(n, dtype=np.int64)
    coll_id[rows] = ids
    mask = np.ones(n, dtype=bool)
    mask[rows] = False

    dtype_enc = dtype.dictionary_encode()
    size_of = np.array([_DTYPE_BYTES.get(d, -1) for d in dtype_enc.dictionary.to_pylist()] + [-1])
    elem_bytes = size_of[_codes(dtype_enc, null_code=len(size_of) - 1)]
    nel = nelems.fill_null(-1).to_numpy(zero_copy_only=False)  # below MAX_NELEMS: no wrap
    valid = (elem_bytes >= 0) & (nel >= 0)
    nbytes = pa.array(np.where(valid, nel * elem_bytes, 0), pa.int64(), mask=~valid)
    table = pa.table({
        "coll_id": ids, "kind": pa.array(np.asarray(OP_CLASSES)[kind]).dictionary_encode(),
        "group": group, "rank": np.full(rows.size, rank, np.int32),
        "node": np.zeros(rows.size, np.int32),
        "arrive": ts[rows], "end": ts[rows] + dur[rows], "bytes": nbytes,
    })
    return pa.array(coll_id, pa.int64(), mask=mask), table


def _stream_ids(stream: list[Any], is_gpu: np.ndarray) -> pa.Array:
    """``args.stream`` of device events as int64 (a numeric string counts); null elsewhere."""
    values = pd.to_numeric(pd.Series(_objects(stream), dtype=object), errors="coerce")
    ok = values.notna().to_numpy() & is_gpu
    out = np.where(ok, values.fillna(0).to_numpy(), 0)
    ok &= np.abs(out) < 2.0**62
    return pa.array(out.astype(np.int64), pa.int64(), mask=~ok)


def _group_id(name: str) -> int:
    """A process group's id, the same on every rank: its name if numeric, else a CRC32."""
    if name.isdigit() and int(name) < 2**31:
        return int(name)
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _finish_collectives(parts: list[pa.Table]) -> pa.Table:
    """Join every rank's collective rows and set ``start`` to each instance's last arrival."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return COLLECTIVES.empty()
    table = pa.concat_tables(parts).unify_dictionaries().combine_chunks()
    ids = table.column("coll_id").to_numpy()
    arrive = table.column("arrive").to_numpy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    last = np.full(uniq.size, np.iinfo(np.int64).min)
    np.maximum.at(last, inverse, arrive)
    table = table.append_column("start", pa.array(last[inverse], pa.int64()))
    table = COLLECTIVES.conform(table)
    return table.sort_by([(c, "ascending") for c in COLLECTIVES.sort_by])


def _counters(rank: int, trace_events: Sequence[_Event | _LooseEvent], c_rows: np.ndarray,
              ts_ns: np.ndarray, text: bytes) -> tuple[pa.Table, np.ndarray]:
    """Chrome counter events (``c_rows``, sound so far): one sample per numeric series.

    Returns the samples and the events set aside: those with a series value beyond int64 or
    float range (their other series are not kept either).
    """
    none = np.zeros(0, dtype=np.int64)
    if c_rows.size == 0:
        return COUNTERS.empty(), none
    doc = _COUNTER_DECODER.decode(text)
    raw_args = _field(_take(doc if isinstance(doc, list) else doc.traceEvents, c_rows), "args")
    args = msgspec.json.decode(b"[" + b",".join(raw_args) + b"]")
    keep = np.fromiter(map(isinstance, args, repeat(dict)), bool, len(args))
    if not keep.any():
        return COUNTERS.empty(), none
    series = list(compress(args, keep))
    # Every (event, series) pair flattened in document order, at C speed.
    width = np.fromiter(map(len, series), np.int64, len(series))
    keys = _objects(list(chain.from_iterable(series)))
    values = _objects(list(chain.from_iterable(map(dict.values, series))))
    kinds = _objects(list(map(type, values)))
    numeric = (kinds == int) | (kinds == float)  # not bool, str, None, lists or objects
    if not numeric.any():
        return COUNTERS.empty(), none
    row = np.repeat(np.arange(len(series)), width)[numeric]
    kept = c_rows[keep]
    number, _ = float_column(values[numeric].tolist(), lenient=False)
    # Ints beyond int64 read as +-inf (kineto_checks.float_column): set the event aside.
    bad_row = np.unique(row[~np.isfinite(number)])
    sound = ~np.isin(row, bad_row)
    row, number, numeric_keys = row[sound], number[sound], keys[numeric][sound]
    names = _objects(list(map(str, _field(_take(trace_events, kept), "name"))))[row]
    counter = np.where(width[row] > 1, names + "." + numeric_keys, names)
    return COUNTERS.conform(pa.table({
        "ts": ts_ns[kept][row],
        "rank": np.full(row.size, rank, np.int32),
        "counter": pa.array(counter.tolist(), pa.string()).dictionary_encode(),
        "value": pa.array(number, pa.float64()),
    })), kept[bad_row]


# -- manifest -----------------------------------------------------------------------------------

def _refused_rows(refused: list[tuple[Path, str]]) -> pa.Table:
    """One quarantine row per file that could not be read at all (its first 4 KiB kept)."""
    def head(f: Path) -> bytes:
        try:
            with open(f, "rb") as fh:
                return fh.read(4096)
        except OSError:
            return b""
    return QUARANTINE.conform(pa.table({
        "source": [f.name for f, _ in refused], "offset": pa.array([0] * len(refused), pa.int64()),
        "length": pa.array([f.stat().st_size if f.exists() else 0 for f, _ in refused], pa.int64()),
        "records": pa.array([0] * len(refused), pa.int64()),
        "reason": [f"file refused: {why}" for _, why in refused], "raw": pa.array([head(f) for f, _ in refused], pa.binary())}))


def _metadata(path: PathLike, parts: list[_RankTrace], written: int,
              refused: list[tuple[Path, str]] | None = None) -> dict[str, Any]:
    ranks = sorted(p.rank for p in parts)
    devices = sorted({d for p in parts for d in p.info["devices"] if d})
    dist = next((p.info["distributed"] for p in parts if p.info["distributed"]), None)
    bases = {str(p.rank): p.info["base_time_ns"] for p in parts}
    if any(bases.values()) and not all(bases.values()):
        missing = sorted((p for p in parts if not p.info["base_time_ns"]), key=lambda p: p.rank)
        raise TraceFormatError(f"{missing[0].file}: no baseTimeNanoseconds while the other ranks' traces have one, "
                               f"so its times cannot be put on their clock; collect it apart from them")
    skipped: dict[str, int] = {}
    for p in parts:
        for k, v in p.info["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    return {
        "source": {"format": parts[0].format, "path": str(path),
                   "files": {str(p.rank): Path(p.file).name for p in parts}},
        "hardware": {"devices": devices} if devices else None,
        "model": None,
        "parallel": _parallel(dist) if isinstance(dist, dict) else None,
        "ranks": ranks,
        "clock_alignment": {
            "method": "baseTimeNanoseconds" if any(bases.values()) else "none",
            "base_time_ns": bases,
            "ts_exact_ns": all(p.info["ts_exact"] for p in parts),
        },
        "counts": _counts(parts, written, skipped, refused or []),
    }


#: A world or group larger than this is damage, not a job (bounds every per-group allocation).
_MAX_WORLD = 1 << 20


def _parallel(dist: dict[str, Any]) -> dict[str, Any]:
    """``distributedInfo`` as the manifest keeps it: a world size and process groups whose sizes
    make sense (1 to the world size), the rest left out and counted (a group of size 0 would give
    a bus bandwidth of 0, one of 2**63 a nonsense factor)."""
    world = dist.get("world_size")
    world = world if isinstance(world, int) and not isinstance(world, bool) and 1 <= world <= _MAX_WORLD else None
    groups = dist.get("pg_config")
    kept: list[dict[str, Any]] = []
    dropped = 0
    for g in groups if isinstance(groups, list) else []:   # a loop over process groups
        size = g.get("pg_size") if isinstance(g, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= (world or _MAX_WORLD):
            kept.append(g)
        else:
            dropped += 1
    backend = dist.get("backend")
    out: dict[str, Any] = {"world_size": world, "backend": backend if isinstance(backend, str) else None,
                           "process_groups": kept if isinstance(groups, list) else None}
    if dropped or (groups is not None and not isinstance(groups, list)):
        out["process_groups_dropped"] = dropped or 1
    return out


def _counts(parts: list[_RankTrace], written: int, skipped: dict[str, int],
            refused: list[tuple[Path, str]]) -> dict[str, Any]:
    """The manifest's counts; what a record is: see the module docstring. A file refused whole
    is listed with its reason: how many records it held cannot be known."""
    files = [p.info["accounting"] for p in parts]
    unread = [{"file": f.name, "rank": None, "expected": 0, "kept": 0, "quarantined": 0, "lost": 0,
               "duplicates_dropped": 0, "refused": why} for f, why in refused]
    return {
        "records_expected": sum(f["expected"] for f in files),
        "events": written,
        "quarantined_records": sum(f["quarantined"] for f in files),
        "records_lost": sum(f["lost"] for f in files),
        "duplicates_dropped": 0,
        "quarantined_pieces": sum(p.quarantine.num_rows for p in parts) + len(refused),
        "counter_events": sum(p.info["counter_events"] for p in parts),
        "counter_events_quarantined": sum(p.info["counter_events_quarantined"] for p in parts),
        "refused_files": [{"file": f.name, "reason": why} for f, why in refused],
        "files": files + unread,
        "skipped_by_ph": skipped,
    }
