"""One file into store tables: every record checked, kept or set aside and counted."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, compress, repeat
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.collectors.kineto.checks import (
    MAX_ID,
    MAX_NELEMS,
    MAX_NS,
    REASONS,
    Verdict,
    blank,
    float_column,
    id_check,
    int_column,
    objects,
    quarantine_rows,
    wrong_type,
)
from sohuprof.collectors.kineto.classify import (
    _CAT_INDEX,
    _CATEGORY_OF_KIND,
    _COLL_PATTERNS,
    _HOST,
    _KINDS,
    _KINETO_CATS,
    _MEMORY_KERNEL_RE,
    _MEMORY_OP,
    _OP_PATTERNS,
    _OTHER,
    _SKIP_CATS,
    _cat_kind,
    _classify,
    _op_codes,
    _steps,
    _stream_ids,
    _tracks,
)
from sohuprof.collectors.kineto.collectives import _collectives, _nccl_args
from sohuprof.collectors.kineto.columns import (
    _int_values,
    _all_ts_ns,
    _codes,
    _dict_from_codes,
    _field,
    _fill,
    _objects,
    _take,
    _us_to_ns,
    _value_counts,
)
from sohuprof.collectors.kineto.decode import (
    _COUNTER_DECODER,
    _CUT_X,
    _EXPECTED,
    _KINETO_KEYS,
    _NO_ARGS,
    _NO_LOOSE_ARGS,
    _Event,
    _load,
    _LooseArgs,
    _LooseEvent,
)

from sohuprof.errors import NotATraceError, TraceFormatError
from sohuprof.schema import CATEGORIES, COUNTERS, EVENTS, OP_CLASSES, QUARANTINE


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
            raise NotATraceError(f"'{path}' is JSON but not a trace: an object without a "
                                   f"'traceEvents' list; {_EXPECTED}")
        top = {k: getattr(doc, k) for k in _KINETO_KEYS if getattr(doc, k) is not msgspec.UNSET}
        if isinstance(doc.host_name, str) and doc.host_name:
            top["host_name"] = doc.host_name
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
    raw_args = _RawArgs(raw)
    counters, bad_counter = _counters(rank, trace_events, rec[verdict.ok & ~rec_x & is_c[rec]],
                                      ts_all_ns, raw_args)
    memory = _memory_samples(rank, trace_events, ph, ts_fits & ~np.isnan(ts_all) & ~bad_ts, ts_all_ns, raw_args)
    if memory.num_rows:
        counters = pa.concat_tables([counters, memory]).unify_dictionaries() if counters.num_rows else memory
    verdict.flag(np.isin(rec, bad_counter), "counter")
    keep = verdict.ok & rec_x
    x = rec[keep]
    if x.size == 0:
        _refuse_empty(path, ph, rec_x, verdict)
    sel = np.flatnonzero(keep)     # the kept events' positions among the records
    cat_kept = cat_enc.take(pa.array(sel)) if sel.size < len(rec) else cat_enc
    if not keep.all():  # narrow every per-record column to the kept events
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
    dist = top.get("distributedInfo")
    world = dist.get("world_size") if isinstance(dist, dict) else None
    world = world if isinstance(world, int) and not isinstance(world, bool) and world > 0 else None
    coll_id, collectives = _collectives(rank, nccl_rows, ts_ns, dur_ns, coll_kind, nccl_fields, world)

    events = EVENTS.conform(pa.table({
        "ts": ts_ns, "dur": dur_ns,
        "node": np.zeros(x.size, np.int32), "chip": chip,
        "rank": np.full(x.size, rank, np.int32),
        "track": track, "name": name_enc,
        "op": _dict_from_codes(op, OP_CLASSES), "category": _dict_from_codes(category, CATEGORIES),
        "step": step, "flops": flops, "coll_id": coll_id, "correlation": correlation,
        # A memcpy / memset's bytes (args.bytes) are the device memory it moved.
        "hbm_bytes": _memory_bytes(args_l, sel, category == _CAT_INDEX["memory"]),
        "cat": cat_kept.fill_null(""),
        "stream": _stream_ids(stream_l, is_gpu),
    }))
    # A cut-off entry is a lost record when what survives of it says it was a complete event.
    lost = int(_CUT_X.search(cut) is not None)
    quarantine, info = _account(path, raw, rank, rec, is_c[rec], verdict, int(x.size), lost)
    info.update({
        "format": fmt, "skipped": _value_counts(ph.filter(pa.array(~is_rec)).fill_null("")),
        "memory_events": memory.num_rows // len(_MEMORY_SERIES),
        "base_time_ns": base, "ts_exact": ts_exact, "distributed": top.get("distributedInfo"),
        "devices": _device_names(top.get("deviceProperties")),
        "host": top.get("host_name"), "rank_known": rank >= 0,
    })
    return _RankTrace(path, fmt, rank, events, collectives, counters, quarantine, info)


#: The CUDA caching allocator's ``[memory]`` instant events: one sample per series and event, the
#: series of one event adjacent and in this order (the store sorts counters stably), so a
#: reader pairs an allocation's ``bytes`` (negative: a free) with its ``addr`` by position.
_MEMORY_SERIES = (("allocated", "Total Allocated"), ("reserved", "Total Reserved"), ("bytes", "Bytes"),
                  ("addr", "Addr"))


class _MemoryArgs(msgspec.Struct, gc=False):
    device_id: Any = msgspec.field(default=None, name="Device Id")
    allocated: Any = msgspec.field(default=None, name="Total Allocated")
    reserved: Any = msgspec.field(default=None, name="Total Reserved")
    bytes: Any = msgspec.field(default=None, name="Bytes")
    addr: Any = msgspec.field(default=None, name="Addr")
    device_type: Any = msgspec.field(default=None, name="Device Type")


_NO_MEMORY_ARGS = _MemoryArgs()
#: ``args`` of any JSON type: an object is read, anything else is not a sample.
_MEMORY_ARGS = msgspec.json.Decoder(list[_MemoryArgs | None | bool | int | float | str | list[Any]])


def _memory_samples(rank: int, trace_events: Sequence[_Event | _LooseEvent], ph: pa.Array, ts_ok: np.ndarray,
                    ts_ns: np.ndarray, raw: _RawArgs) -> pa.Table:
    """``[memory]`` instant events as counter samples: ``memory.allocated``, ``.reserved``,
    ``.bytes`` and ``.addr`` for the rank's device (the one with the most events),
    ``memory.devN.*`` for another device of the same process, ``cpu_memory.*`` for the host's
    (Device Type 0). An event whose values are not all numbers, or whose ``args`` is not an
    object, is not sampled (it stays counted in ``skipped_by_ph``)."""
    inst = np.flatnonzero(pc.equal(ph, "i").fill_null(False).to_numpy(zero_copy_only=False) & ts_ok)
    if inst.size == 0:
        return COUNTERS.empty()
    names = _objects(_field(_take(trace_events, inst), "name"))
    rows = inst[names == "[memory]"]
    if rows.size == 0:
        return COUNTERS.empty()
    decoded = _MEMORY_ARGS.decode(b"[" + b",".join(raw.of(rows)) + b"]")
    args = [a if isinstance(a, _MemoryArgs) else _NO_MEMORY_ARGS for a in decoded]
    cols = [pd.to_numeric(pd.Series(_objects(_field(args, key)), dtype=object), errors="coerce").to_numpy(np.float64)
            for key, _ in _MEMORY_SERIES]
    values = np.stack(cols, axis=1)
    ok = np.isfinite(values).all(axis=1)
    kind, _ = _int_values(_field(args, "device_type"))
    device, _ = _int_values(_field(args, "device_id"))
    values, host, device = values[ok], kind[ok] == 0, device[ok]
    n = int(ok.sum())
    # One series set per memory: the host's, then each device's (the busiest one plain "memory").
    key = np.where(host, -1, device)
    keys, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    gpu = keys >= 0
    main = keys[gpu][np.argmax(counts[gpu])] if gpu.any() else None
    prefix = ["cpu_memory" if k < 0 else "memory" if k == main else f"memory.dev{k}" for k in keys.tolist()]
    series = np.array([f"{p}.{name}" for p in prefix for name, _ in _MEMORY_SERIES])
    which = np.arange(len(_MEMORY_SERIES))[None, :] + (inverse.reshape(-1) * len(_MEMORY_SERIES))[:, None]
    return COUNTERS.conform(pa.table({
        "ts": np.repeat(ts_ns[rows[ok]], len(_MEMORY_SERIES)),
        "rank": np.full(n * len(_MEMORY_SERIES), rank, np.int32),
        "counter": pa.array(series[which.reshape(-1)]).dictionary_encode(),
        "value": values.reshape(-1),
    }))


def _memory_bytes(args: Sequence[Any], kept: np.ndarray, memory: np.ndarray) -> pa.Array:
    """``args.bytes`` of the kept memcpy / memset events (``kept``: their record positions),
    null elsewhere; read for those events only."""
    rows = np.flatnonzero(memory)
    out = np.zeros(len(kept), np.int64)
    valid = np.zeros(len(kept), bool)
    if rows.size:
        sizes = _sizes(_field(_take(args, kept[rows]), "nbytes"))
        out[rows] = sizes.fill_null(0).to_numpy(zero_copy_only=False)
        valid[rows] = sizes.is_valid().to_numpy(zero_copy_only=False)
    return pa.array(out, pa.int64(), mask=~valid)


def _sizes(values: list[Any]) -> pa.Array:
    """Byte counts as int64: integers (or numeric strings) in [0, 2**58); null otherwise."""
    num, ok = _int_values(values)
    ok &= (num >= 0) & (num < MAX_NELEMS)
    return pa.array(np.where(ok, num, 0), pa.int64(), mask=~ok)


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
    raise NotATraceError(f"'{path}' holds no complete ('X') trace events; {hint}")


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


def _rank(path: Path, top: dict[str, Any]) -> int:
    """``distributedInfo.rank``; -1 when the trace does not say (its place is given later)."""
    info = top.get("distributedInfo")
    if info is None or (isinstance(info, dict) and info.get("rank") is None):
        return -1
    rank = info.get("rank") if isinstance(info, dict) else None
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < MAX_ID:
        raise TraceFormatError(f"'{path}': 'distributedInfo.rank' should be an integer in [0, 2**31), "
                               f"got {rank!r:.40}; is the file complete?")
    return rank


class _RawArgs:
    """Every event's ``args`` as raw JSON, decoded from the file's text once and only when a
    counter or ``[memory]`` event needs its arbitrary keys."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.events: Sequence[Any] | None = None

    def of(self, rows: np.ndarray) -> list[bytes]:
        if self.events is None:
            doc = _COUNTER_DECODER.decode(self.text)
            self.events = doc if isinstance(doc, list) else doc.traceEvents
        return _field(_take(self.events, rows), "args")


def _counters(rank: int, trace_events: Sequence[_Event | _LooseEvent], c_rows: np.ndarray,
              ts_ns: np.ndarray, raw: _RawArgs) -> tuple[pa.Table, np.ndarray]:
    """Chrome counter events (``c_rows``, sound so far): one sample per numeric series.

    Returns the samples and the events set aside: those with a series value beyond int64 or
    float range (their other series are not kept either).
    """
    none = np.zeros(0, dtype=np.int64)
    if c_rows.size == 0:
        return COUNTERS.empty(), none
    args = msgspec.json.decode(b"[" + b",".join(raw.of(c_rows)) + b"]")
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
