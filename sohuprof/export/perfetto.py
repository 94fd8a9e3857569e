"""Perfetto's native protobuf trace (TrackEvent) export of a trace store.

The file is a ``perfetto.protos.Trace``: a run-metadata packet (``chrome_events`` metadata
``sohuprof``, a JSON object), then nested tracks (``TrackDescriptor`` with ``parent_uuid``): a
track per node, under it one per chip, under that one per engine (and ``"matrix #2"`` ... for the
overlap lanes :func:`~sohuprof.export.selection.assign_lanes` deals out, as the Chrome export's
threads), and one counter track per chip and counter. Each engine lane is a packet sequence of
its own whose first packet clears the incremental state, sets the lane's track as the default
(``TracePacketDefaults``) and interns the event names, categories and argument names and values
the lane uses; every event is then a ``SLICE_BEGIN`` and a ``SLICE_END`` packet of a few bytes
(``name_iid``, ``category_iids``, debug annotations for the Chrome export's ``args`` but
``phase``), written in nesting order, its timestamp a delta on the sequence's incremental clock.
Collective members carry ``flow_ids`` (``coll_id + 1``): Perfetto links an instance's members in
time order, ``k - 1`` flows for ``k`` members, as the Chrome export's arrows. Times are ns from
the trace start (the Chrome export's µs, in ns).

Every rank's packets are encoded at once with :mod:`sohuprof.export.protowire` (numpy; Python
loops only per lane, per counter track and per interned string) and streamed into the output
through :func:`sohuprof.atomic.open_output`: a failure leaves no file behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.atomic import open_output
from sohuprof.errors import OutputError
from sohuprof.export import protowire as pw
from sohuprof.export.selection import (LANES, RANK_STRIDE, Plan, no_events, one_batch, prepare_export, rank_events, selection_filter)
from sohuprof.progress import progress
from sohuprof.schema import COUNTERS
from sohuprof.store import TraceStore

__all__ = ["export_perfetto", "PerfettoSummary"]

PathLike = Union[str, "os.PathLike[str]"]

_EVENT_COLUMNS = ["ts", "dur", "rank", "track", "name", "category", "op", "layer", "step",
                  "flops", "hbm_bytes", "coll_id"]
#: The Chrome export's args as debug annotations, (column, interned name iid), string values
#: interned; but not ``phase``: a step's phase is the same for all its events, and at 7 bytes an
#: event it would be a tenth of the file.
_STRING_ARGS = (("op", 1),)
_INT_ARGS = (("layer", 2), ("step", 3), ("flops", 5), ("hbm_bytes", 6), ("coll_id", 7))
_ARG_NAMES = {iid: name for name, iid in _STRING_ARGS + _INT_ARGS}

# Track uuids: a kind in the top byte, then the same numbers the Chrome export's tids use, so a
# (rank, track, lane) has one uuid in every export of a store.
_NODE, _CHIP, _LANE, _COUNTER = (np.uint64(k) << np.uint64(56) for k in (1, 2, 3, 4))

# Field numbers (perfetto/protos/perfetto/trace/...): TracePacket,
_P_TIMESTAMP, _P_CHROME_EVENTS, _P_TRACK_EVENT, _P_INTERNED, _P_FLAGS = 8, 5, 11, 12, 13
_P_SEQUENCE_ID, _P_DEFAULTS, _P_TRACK_DESCRIPTOR, _P_CLOCK_SNAPSHOT = 10, 59, 60, 6
# TrackEvent,
_E_CATEGORY_IIDS, _E_DEBUG, _E_TYPE, _E_NAME_IID, _E_DOUBLE_VALUE, _E_FLOW_IDS = 3, 4, 9, 10, 44, 47
_TYPE_SLICE_BEGIN, _TYPE_SLICE_END, _TYPE_COUNTER = 1, 2, 4
# InternedData (event_categories, event_names, debug_annotation_names, ..._string_values),
_I_CATEGORIES, _I_NAMES, _I_ARG_NAMES, _I_ARG_STRINGS = 1, 2, 3, 29
# and the sequence flags.
_SEQ_CLEARED = 1
# Clocks: BOOTTIME (the trace's clock) and the first sequence-scoped one.
_BOOTTIME, _INCREMENTAL_CLOCK = 6, 64


@dataclass(frozen=True)
class PerfettoSummary:
    """What :func:`export_perfetto` wrote.

    Attributes
    ----------
    path : pathlib.Path
        The file written.
    events : int
        Slices (one per selected store event).
    flows : int
        Flows: for each collective instance with ``k >= 2`` selected members, ``k - 1``.
    counters : int
        Counter samples.
    tracks : int
        Engine lane tracks that hold slices (the Chrome export's threads).
    counter_tracks : int
        Counter tracks (one per chip and counter).
    bytes : int
        Size of the file.
    start_ns, end_ns : int
        The exported window on the store's clock, ``[start_ns, end_ns)``.
    warnings : tuple of str
        Things the user should know (dropped samples).
    """

    path: Path
    events: int
    flows: int
    counters: int
    tracks: int
    counter_tracks: int
    bytes: int
    start_ns: int
    end_ns: int
    warnings: tuple[str, ...] = ()


def export_perfetto(store: TraceStore | PathLike, out: PathLike, *, start_ms: float | None = None,
                    end_ms: float | None = None, ranks: Sequence[int] | None = None,
                    force: bool = False, show_progress: bool | None = None) -> PerfettoSummary:
    """Export a trace store as a Perfetto protobuf trace (``.pftrace``) that ui.perfetto.dev opens.

    Parameters
    ----------
    store : TraceStore or str or os.PathLike
        The trace store (or its directory).
    out : str or os.PathLike
        The file to write, through a temporary sibling renamed into place (a failure leaves
        nothing behind); ``-``, a device or a FIFO is written through.
    start_ms, end_ms : float, optional
        Export only events that *start* in ``[start_ms, end_ms)``, in ms from the trace start,
        as :func:`~sohuprof.export.chrome.export_chrome` does.
    ranks : sequence of int, optional
        Export only these ranks (all when omitted).
    force : bool, default False
        Replace an existing file.
    show_progress : bool, optional
        Progress bar on stderr; ``None`` shows it when stderr is a terminal.

    Returns
    -------
    PerfettoSummary
        Counts and size.

    Raises
    ------
    StoreError
        ``store`` is not a readable trace store.
    SelectionError
        The window or rank selection picks nothing (a ``ValueError`` too).
    OutputError
        ``out`` exists (without ``force``), is a directory, is inside the store, or cannot be
        written.
    """
    store, out, plan = prepare_export(store, out, force=force, start_ms=start_ms, end_ms=end_ms, ranks=ranks,
                                      example="trace.pftrace")
    try:
        return _write(store, plan, out, force, show_progress)
    except OSError as exc:   # disk full, permissions, a path the OS refuses
        raise OutputError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None


class _Writer:
    """Counts what goes into the output and hands out packet sequence ids."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.bytes = 0

    def write(self, data: bytes | np.ndarray) -> None:
        view = memoryview(data)
        self.fh.write(view)
        self.bytes += view.nbytes

    @staticmethod
    def sequences(n: int) -> np.ndarray:
        """Sequence ids for ``n`` sequences written one after another, whole.

        Ids start at 1 for every batch: a sequence's first packet clears its state (names,
        default track, clock), so a later batch reuses the ids and most stay one byte long.
        """
        return np.arange(1, n + 1, dtype=np.uint64)


def _write(store: TraceStore, plan: Plan, out: Path, force: bool,
           show_progress: bool | None) -> PerfettoSummary:
    warnings: list[str] = []
    with open_output(out, force=force) as output:
        w = _Writer(output)
        w.write(_packet(_bytes_field(_P_CHROME_EVENTS, _bytes_field(2, _bytes_field(1, b"sohuprof")
                        + _bytes_field(5, orjson.dumps(_run_metadata(store, plan), default=str,
                                                       option=orjson.OPT_SERIALIZE_NUMPY))))
                        + pw.tag(_P_TIMESTAMP, pw.VARINT) + pw.varint(0)))
        for node in sorted({n for n, _, _ in plan.ranks}):
            w.write(_packet(_descriptor(int(_NODE) + node, f"node {node}", None, node, explicit=True)))
        for node, rank, chip in plan.ranks:
            w.write(_packet(_descriptor(int(_CHIP) + rank, f"chip {chip} (rank {rank})", int(_NODE) + node,
                                        chip, explicit=True)))
        events = tracks = 0
        with progress("export perfetto", len(plan.ranks), enabled=show_progress, unit="ranks") as advance:
            for node, rank, _ in plan.ranks:
                n, lanes = _export_rank(store, plan, w, node, rank)
                events += n
                tracks += lanes
                advance(1)
        if events == 0:   # raised inside open_output: no file is left behind
            raise no_events(plan)
        counters, counter_tracks, dropped = _export_counters(store, plan, w)
        if dropped:
            warnings.append(f"{dropped:,} counter samples that are not finite numbers were left out")
    return PerfettoSummary(path=out, events=events, flows=plan.flows, counters=counters, tracks=tracks,
                           counter_tracks=counter_tracks, bytes=w.bytes, start_ns=plan.start_ns,
                           end_ns=plan.end_ns, warnings=tuple(warnings))


def _run_metadata(store: TraceStore, plan: Plan) -> dict[str, Any]:
    m = store.manifest
    return {"generator": "sohuprof export perfetto", "store": str(store.path),
            "hardware": m.get("hardware"), "model": m.get("model"), "parallel": m.get("parallel"),
            "source": m.get("source"), "clock_alignment": m.get("clock_alignment"),
            "trace_start_ns": plan.t0, "window_ns": [plan.start_ns, plan.end_ns],
            "ranks": [r for _, r, _ in plan.ranks]}


# --------------------------------------------------------------------------- scalar messages

def _bytes_field(field: int, body: bytes) -> bytes:
    return pw.tag(field, pw.LEN) + pw.varint(len(body)) + body


def _varint_field(field: int, value: int) -> bytes:
    return pw.tag(field, pw.VARINT) + pw.varint(value)


def _packet(body: bytes) -> bytes:
    """One TracePacket as an entry of the Trace."""
    return _bytes_field(1, body)


def _descriptor(uuid: int, name: str, parent: int | None, order: int, *, explicit: bool = False,
                counter: bool = False) -> bytes:
    """A TrackDescriptor packet body: its children in explicit order, itself at ``order``."""
    body = _varint_field(1, uuid) + _bytes_field(2, name.encode())
    if parent is not None:
        body += _varint_field(5, parent)
    if counter:
        body += _bytes_field(8, b"")
    if explicit:
        body += _varint_field(11, 3)     # ChildTracksOrdering.EXPLICIT: by sibling_order_rank
    body += _varint_field(12, order)
    return _bytes_field(_P_TRACK_DESCRIPTOR, body)


def _interned(field: int, values: Sequence[str], iids: Sequence[int] | None = None) -> bytes:
    """InternedData entries ``{iid: 1, name: 2}`` (iids 1, 2, ... unless given)."""
    out = b""
    for i, value in enumerate(values):
        iid = iids[i] if iids is not None else i + 1
        out += _bytes_field(field, _varint_field(1, iid) + _bytes_field(2, value.encode()))
    return out


# --------------------------------------------------------------------------- events

def _codes(column: pa.Array, null_as: str | None) -> tuple[np.ndarray, list[str | None]]:
    """A dictionary column's codes (nulls -> an extra last code) and its values."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    values: list[str | None] = column.dictionary.to_pylist()
    if null_as is not None:
        values = [v if v else null_as for v in values]
    codes = pc.fill_null(column.indices, len(values)).to_numpy().astype(np.int64)
    return codes, values + [null_as]


def _intern(seq: np.ndarray, codes: np.ndarray, n_codes: int, n_seq: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-sequence interning: each row's iid (1, 2, ... within its sequence) and each sequence's codes."""
    key = seq.astype(np.int64) * n_codes + codes
    uniq, inverse = np.unique(key, return_inverse=True)
    useq = uniq // n_codes
    first = np.searchsorted(useq, useq)            # the sequence's first entry
    iid = inverse - first[inverse] + 1
    bounds = np.flatnonzero(np.diff(useq)) + 1
    used = np.split(uniq % n_codes, bounds)
    owners = useq[np.append(0, bounds)] if len(uniq) else useq
    tables: list[np.ndarray] = [np.empty(0, np.int64)] * n_seq
    for s, t in zip(owners.tolist(), used):
        tables[s] = t
    return iid.astype(np.uint64), tables


def _export_rank(store: TraceStore, plan: Plan, w: _Writer, node: int, rank: int) -> tuple[int, int]:
    """Write one rank's lane tracks and slices; return (slices, lane tracks)."""
    got = rank_events(store, plan, node, rank, _EVENT_COLUMNS)
    if got is None:
        return 0, 0
    batch, track_idx, lanes = got
    n = batch.num_rows
    lane_key, seq = np.unique(track_idx * LANES + lanes, return_inverse=True)
    seq_ids = w.sequences(len(lane_key))
    uuids = _LANE + (np.uint64(rank * RANK_STRIDE) + lane_key.astype(np.uint64))
    names_by_index = {i: name for name, i in plan.tracks.items()}
    chip_uuid = int(_CHIP) + rank
    desc = b"".join(_packet(_descriptor(int(u), names_by_index[k // LANES] + (f" #{k % LANES + 1}" if k % LANES else ""),
                                        chip_uuid, int(k)))
                    for u, k in zip(uuids.tolist(), lane_key.tolist()))
    w.write(desc)

    name_codes, name_values = _codes(batch.column("name"), "(unnamed)")
    cat_codes, cat_values = _codes(batch.column("category"), "(none)")
    name_iid, name_tables = _intern(seq, name_codes, len(name_values), len(lane_key))
    cat_iid, cat_tables = _intern(seq, cat_codes, len(cat_values), len(lane_key))
    # The string arguments share one table of interned strings (each column's codes offset).
    arg_strings: list[str | None] = []
    string_valid: dict[str, np.ndarray] = {}
    all_codes, all_seq = [], []
    for col, _ in _STRING_ARGS:
        codes, values = _codes(batch.column(col), None)
        valid = batch.column(col).is_valid().to_numpy(zero_copy_only=False)
        all_codes.append(codes[valid] + len(arg_strings))
        all_seq.append(seq[valid])
        string_valid[col] = valid
        arg_strings += values
    iids, arg_tables = _intern(np.concatenate(all_seq), np.concatenate(all_codes), len(arg_strings), len(lane_key))
    split = np.cumsum([v.sum() for v in string_valid.values()])[:-1]
    string_iid = dict(zip(string_valid, np.split(iids, split)))

    # Packets in nesting order per lane: by (lane, time), at one instant closes of slices first,
    # then opens (longest first: the events' order), then closes of zero-length slices (latest
    # opened first), so each lane's begins and ends nest as Perfetto's importer needs.
    ts = batch.column("ts").to_numpy() - plan.t0
    dur = np.maximum(batch.column("dur").to_numpy(), 0)
    idx = np.arange(n)
    t = np.concatenate([ts, ts + dur])
    cls = np.concatenate([np.ones(n, np.int8), np.where(dur == 0, 2, 0).astype(np.int8)])
    tie = np.concatenate([idx, -idx])
    seq2 = np.concatenate([seq, seq])
    order = np.lexsort((tie, cls, t, seq2))
    begin = order < n              # which packets are a slice's begin
    e = order % n                  # each packet's event

    # The TrackEvent of every packet: begins carry name, category, args and flows; ends their type.
    event = pw.Message(2 * n).varint(_E_TYPE, np.where(begin, _TYPE_SLICE_BEGIN, _TYPE_SLICE_END))
    event.varint(_E_NAME_IID, name_iid[e], begin).varint(_E_CATEGORY_IIDS, cat_iid[e], begin)
    for col, arg_iid in _STRING_ARGS:
        rows = begin & string_valid[col][e]
        value = np.zeros(n, dtype=np.uint64)
        value[string_valid[col]] = string_iid[col]
        body = pw.Message(2 * n).raw(_varint_field(1, arg_iid)).varint(17, value[e])
        event.message(_E_DEBUG, body, rows)
    for col, arg_iid in _INT_ARGS:
        values = batch.column(col)
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        ints = pc.fill_null(values, 0).to_numpy().astype(np.int64)
        body = pw.Message(2 * n).raw(_varint_field(1, arg_iid)).varint(4, ints[e])
        event.message(_E_DEBUG, body, begin & valid[e])
    coll = batch.column("coll_id")
    if len(plan.flow_coll) and coll.null_count < n:
        c_int = pc.fill_null(coll, -1).to_numpy()
        i = np.minimum(np.searchsorted(plan.flow_coll, c_int), len(plan.flow_coll) - 1)
        member = (plan.flow_coll[i] == c_int) & (c_int >= 0)
        event.fixed64(_E_FLOW_IDS, (c_int[e] + 1).astype(np.uint64), begin & member[e])

    interned = [_interned(_I_NAMES, [name_values[c] for c in name_tables[s].tolist()])
                + _interned(_I_CATEGORIES, [cat_values[c] for c in cat_tables[s].tolist()])
                + _interned(_I_ARG_NAMES, list(_ARG_NAMES.values()), list(_ARG_NAMES))
                + _interned(_I_ARG_STRINGS, [arg_strings[c] for c in arg_tables[s].tolist()])
                for s in range(len(lane_key))]
    _sequences(w, seq_ids, uuids, interned, seq2[order], t[order], event)
    return n, len(lane_key)


def _sequences(w: _Writer, seq_ids: np.ndarray, uuids: np.ndarray, interned: Sequence[bytes],
               seq: np.ndarray, t: np.ndarray, event: pw.Message) -> None:
    """Write whole sequences: each opens with a state packet, then its events' packets.

    ``seq`` (each event's sequence, ascending: a sequence's events are contiguous) and ``t``
    (time-ordered within a sequence) go with ``event``'s TrackEvent bodies. The state packet
    clears the sequence's incremental state, makes its track the events' default, interns what
    ``interned`` holds and starts a sequence-scoped incremental clock (64) at 0 on BOOTTIME, so
    an event's timestamp is its delta from the sequence's previous one (2-3 bytes, not 5-6).
    """
    n = len(seq)
    first = np.flatnonzero(np.diff(seq, prepend=-1))
    clock = (_bytes_field(1, _varint_field(1, _INCREMENTAL_CLOCK) + _varint_field(2, 0) + _varint_field(3, 1))
             + _bytes_field(1, _varint_field(1, _BOOTTIME) + _varint_field(2, 0)))
    delta = np.diff(t, prepend=0)
    delta[first] = t[first]
    # No sequence flags on the events: the importer reads a sequence's state whether or not a
    # packet says it needs it, and the flag would cost 2 bytes a packet.
    packet = pw.Message(n).varint(_P_TIMESTAMP, delta).varint(_P_SEQUENCE_ID, seq_ids[seq])
    packet.message(_P_TRACK_EVENT, event)
    framed = pw.Message(n).message(1, packet)
    flat = framed.flat()
    ends = np.cumsum(framed.lengths)
    starts = ends - framed.lengths
    last = np.append(first[1:], n) - 1
    for s, (sid, uuid, data) in enumerate(zip(seq_ids.tolist(), uuids.tolist(), interned)):
        w.write(_packet(_varint_field(_P_SEQUENCE_ID, int(sid)) + _varint_field(_P_FLAGS, _SEQ_CLEARED)
                        + _bytes_field(_P_DEFAULTS, _varint_field(58, _INCREMENTAL_CLOCK)
                                       + _bytes_field(11, _varint_field(11, int(uuid))))
                        + (_bytes_field(_P_INTERNED, data) if data else b"")
                        + _bytes_field(_P_CLOCK_SNAPSHOT, clock)))
        w.write(flat[starts[first[s]]:ends[last[s]]])


# --------------------------------------------------------------------------- counters

def _export_counters(store: TraceStore, plan: Plan, w: _Writer) -> tuple[int, int, int]:
    """Write the selected counter samples on counter tracks; return (samples, tracks, dropped)."""
    rank_chip = {r: c for _, r, c in plan.ranks}
    table = store.read(COUNTERS, filters=selection_filter(plan.start_ns, plan.end_ns, rank_chip))
    if table.num_rows == 0:
        return 0, 0, 0
    value = table.column("value").to_numpy()
    finite = np.isfinite(value)
    dropped = int((~finite).sum())
    table = table.filter(pa.array(finite)).unify_dictionaries()
    if table.num_rows == 0:
        return 0, 0, dropped
    table = one_batch(table)
    rank = table.column("rank").to_numpy().astype(np.int64)
    counter = table.column("counter")
    code = counter.indices.to_numpy().astype(np.int64)
    names = counter.dictionary.to_pylist()
    ts = table.column("ts").to_numpy() - plan.t0
    # One track (and sequence) per (rank, counter), its samples in time order.
    key = rank * len(names) + code
    order = np.lexsort((ts, key))
    key, ts, value = key[order], ts[order], table.column("value").to_numpy()[order]
    tracks, seq = np.unique(key, return_inverse=True)
    seq_ids = w.sequences(len(tracks))
    uuids = [int(_COUNTER) + (int(k) // len(names) << 20) + int(k) % len(names) for k in tracks.tolist()]
    w.write(b"".join(_packet(_descriptor(u, names[k % len(names)], int(_CHIP) + k // len(names),
                                         1024 + k % len(names), counter=True))
                     for u, k in zip(uuids, tracks.tolist())))
    n = len(ts)
    event = pw.Message(n).raw(_varint_field(_E_TYPE, _TYPE_COUNTER))
    event.fixed64(_E_DOUBLE_VALUE, value.astype(np.float64))
    _sequences(w, seq_ids, np.array(uuids, dtype=np.uint64), [b""] * len(uuids), seq, ts, event)
    return n, len(tracks), dropped
