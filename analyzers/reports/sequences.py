"""Frequent kernel sequences: the most frequent runs of k consecutive kernels on one stream.

For every rank and stream (the ``track``: ``stream 7`` in a profiler trace, an engine, ``matrix``,
``vector``, ``dma``, ``collective``, in a Sohu run), the device events in start order (category
compute, communication or memory: kernels, memcpy / memset and NCCL kernels; a Sohu run's ops;
host events never), and every window of ``k`` consecutive ones for each ``k`` of the lengths
(default 3, 4 and 5; any of 2..8):

- ``count``: the windows with that sequence of names; overlapping windows all count (``A A A A``
  holds ``A -> A -> A`` twice), so a sequence is at most as frequent as any run inside it;
- ``total_ns``: the sum of the windows' spans (first kernel's start to the last end), ``mean_ns``
  ``total_ns / count``; ``kernel_ns``: the sum of the kernels' own durations (HTA's "GPU kernel
  duration"), less than the span by the gaps between them;
- ``top``: merged across ranks by (track, length, kernels) (``ranks``: on how many), the ``top``
  (default 20) by count, ties to the longer sequence, then to the longer time; ``by_time`` the
  same rows by ``total_ns``; ``per_rank``: the ``top`` (rank, track, length, kernels) by count.

Options (``ctx.options``): ``sequence_lengths`` (``"3-5"``, ``"2,4"`` or a list of ints) and
``top``.

Sohu runs get the report too, over the ops of each engine (``qkv_proj -> attention -> o_proj``
on ``matrix``): the same question, which ops follow which how often and for how long, is as
useful there. A trace with no device events (CPU-only) gets a reason instead.

Holistic Trace Analysis' counterpart is ``get_frequent_cuda_kernel_sequences``
(``hta/analyzers/cuda_kernel_analysis.py``, ``CudaKernelAnalysis``; exposed in
``hta/trace_analysis.py``), which answers a different question: for one rank and a CPU operator
name, it takes the shallowest CPU ops whose name contains it and that launched at least
``min_pattern_len`` kernels, makes each one's pattern (its own name, then every GPU kernel
launched from its call-stack subtree, by start time), and counts the patterns (count, kernel
duration sum, CPU op duration sum), top_k by count, written back into an overlaid trace file and
plotted. It needs an operator name and the call graph and loops over the root ops in Python
(``itertuples``). Here no operator is needed: every rank and stream, fixed-length windows, no
call graph, and Sohu runs too.

Vectorized: names and tracks become int codes; a length-1 key is (name, track) made dense; a length-k key is the length-(k-1) key of the window's first k-1 events combined
with the k-th name code (``key * V + code``, below ``n * V``, so exact: no hash of the names,
no collision) and made dense again by a hash table over those int64s, in the same compiled pass
that sums each key's windows (``kernels.sequence_step``: 255 -> 54 ms a rank of 627k events,
where pandas' factorize and the numpy sums took 4x longer); windows that cross a track boundary
are dropped.
A rank's partial is its distinct keys as name codes with its own name list; ``combine`` maps
every rank's codes onto one vocabulary and sums by key, so ranks merge exactly in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof import kernels
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.partition import Partition, as_partition

__all__ = ["SEQUENCES", "SEQUENCE_COLUMNS", "PER_RANK_COLUMNS", "DEFAULT_LENGTHS", "MAX_LENGTH", "SequencesResult",
           "SequencePartial", "frequent_sequences", "parse_lengths", "sequences_chunk", "sequences_combine"]

#: Sequence lengths by default, and the range accepted.
DEFAULT_LENGTHS = (3, 4, 5)
MIN_LENGTH, MAX_LENGTH = 2, 8
#: Rows of each list by default.
TOP = 20
#: Columns of ``top`` and ``by_time``; ``per_rank`` has ``rank`` instead of ``ranks``.
SEQUENCE_COLUMNS = ("track", "length", "kernels", "count", "ranks", "total_ns", "mean_ns", "kernel_ns")
PER_RANK_COLUMNS = ("rank", "track", "length", "kernels", "count", "total_ns", "mean_ns", "kernel_ns")
_SEPARATOR = " -> "
_STATS = ("count", "total_ns", "kernel_ns")


def parse_lengths(value: Any) -> tuple[int, ...]:
    """Sequence lengths from ``"3-5"``, ``"2,4,8"``, an int or a list of ints (each 2..8).

    Raises
    ------
    ValueError
        A length is not an integer of 2..8.
    """
    if value is None:
        return DEFAULT_LENGTHS
    items: list[Any]
    if isinstance(value, str):
        items = []
        for part in value.replace(" ", "").split(","):   # a few characters of an option
            lo, dash, hi = part.partition("-")
            try:
                items.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
            except ValueError:
                raise ValueError(f"'sequence_lengths' must be like 3-5 or 2,4, got {value!r}") from None
    else:
        items = [value] if isinstance(value, int) else list(value)
    bad = [v for v in items if not isinstance(v, (int, np.integer)) or not MIN_LENGTH <= v <= MAX_LENGTH]
    if bad or not items:
        raise ValueError(f"'sequence_lengths' must be integers of {MIN_LENGTH}..{MAX_LENGTH}, got {value!r}")
    return tuple(sorted({int(v) for v in items}))


@dataclass(frozen=True)
class SequencePartial:
    """One rank's distinct windows: ``windows`` has ``track`` (code into ``tracks``), ``length``,
    ``c0 .. c{max-1}`` (codes into ``names``; -1 past the length), ``count``, ``total_ns``,
    ``kernel_ns``."""

    rank: int
    names: list[str]
    tracks: list[str]
    windows: pd.DataFrame


def _code_columns(width: int) -> list[str]:
    return [f"c{j}" for j in range(width)]


def _empty_windows(width: int) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="int64") for c in ["track", "length", *_code_columns(width), *_STATS]})


def sequences_chunk(events: pa.Table | Partition, rank: int, lengths: tuple[int, ...] = DEFAULT_LENGTHS) -> SequencePartial:
    """Count one rank's windows of each length on each track (see the module docstring)."""
    part = as_partition(events)
    width = max(lengths)
    cat, cats = part.codes("category")
    device = np.array([c is not None and c != "host" for c in cats] + [False])[cat]   # a loop over the dictionary
    rows = np.flatnonzero(device)
    name_codes, names = part.codes("name")
    track_codes, tracks = part.codes("track")
    labels = [str(v) for v in names] + ["?"]          # the null code, len(names), gets a label too
    track_labels = [str(v) for v in tracks] + ["?"]
    if not len(rows):
        return SequencePartial(rank, labels, track_labels, _empty_windows(width))
    track = track_codes[rows]
    # Each track's events in start order. A rank's rows come sorted by start (the store's
    # layout), so a stable sort of the small track codes keeps that order within each track.
    ts = part.ts
    if bool((ts[1:] >= ts[:-1]).all()):
        order = np.argsort(track.astype(np.min_scalar_type(max(len(tracks), 1))), kind="stable")
    else:
        order = np.lexsort((ts[rows], track))
    at = rows[order]
    ts, end, dur, track, name = ts[at], part.end[at], part.ints("dur")[at], track_codes[at], name_codes[at]
    n, vocab = len(order), len(labels)
    csum = np.r_[0, np.cumsum(dur)]
    # Length-1 keys: (name, track), dense; each longer key extends the shorter by one name
    # (kernels.sequence_step, which also sums each key's windows).
    key, first = np.empty(n, np.int64), np.empty(n, np.int64)
    kernels.factorize(name * len(track_labels) + track, key, first)
    parts = []
    reach = end                                        # the latest end over each window so far
    # The sums' buffers, reused: a length's distinct keys are few, and only those are reset.
    count_buf, total_buf, kern_buf = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
    for k in range(2, width + 1):                      # a loop over lengths
        m = n - k + 1
        if m <= 0:
            break
        nxt, first, nxt_reach = np.empty(m, np.int64), np.empty(m, np.int64), np.empty(m, np.int64)
        distinct = kernels.sequence_step(key, name, track, ts, end, reach, csum, vocab, k, k in lengths,
                                         nxt, first, nxt_reach, count_buf, total_buf, kern_buf)
        key, reach = nxt, nxt_reach
        count, total, kern = count_buf[:distinct].copy(), total_buf[:distinct].copy(), kern_buf[:distinct].copy()
        count_buf[:distinct], total_buf[:distinct], kern_buf[:distinct] = 0, 0.0, 0.0
        if k not in lengths:
            continue
        seen = np.flatnonzero(count)
        if not len(seen):
            continue
        # A key is its names and first track, so any window of it (its first, perhaps one that
        # crosses into the next track) gives them. float64 sums of int64 ns are exact below
        # 2**53 ns (104 days) per key.
        start = first[seen]
        codes = {c: (name[start + j] if j < k else np.full(len(start), -1)) for j, c in enumerate(_code_columns(width))}
        parts.append(pd.DataFrame({"track": track[start], "length": k, **codes, "count": count[seen],
                                   "total_ns": total[seen].astype(np.int64), "kernel_ns": kern[seen].astype(np.int64)}))
    windows = pd.concat(parts, ignore_index=True) if parts else _empty_windows(width)
    return SequencePartial(rank, labels, track_labels, windows.astype("int64"))


def _joined(codes: pd.DataFrame, vocabulary: np.ndarray) -> list[str]:
    """Each row's names joined by `` -> `` (codes -1 end a shorter sequence)."""
    if not len(codes):
        return []
    columns = [pa.array(vocabulary[np.maximum(codes[c].to_numpy(), 0)], pa.string(), mask=codes[c].to_numpy() < 0)
               for c in codes.columns]
    # Nulls (past a sequence's length) are skipped, not joined.
    return pc.binary_join_element_wise(*columns, _SEPARATOR, null_handling="skip").to_pylist()


def sequences_combine(partials: list[SequencePartial], top: int = TOP) -> SequencesResult:
    """Merge the ranks' windows onto one vocabulary and pick the rows (see the module docstring)."""
    partials = [p for p in partials if len(p.windows)]
    if not partials:
        empty = pd.DataFrame({c: pd.Series(dtype="object" if c in ("track", "kernels") else "int64")
                              for c in SEQUENCE_COLUMNS})
        return SequencesResult(empty, empty, empty.rename(columns={"ranks": "rank"})[list(PER_RANK_COLUMNS)], ())
    width = max(int(p.windows["length"].max()) for p in partials)
    cols = _code_columns(width)
    vocabulary = pd.Index(sorted({n for p in partials for n in p.names}))
    track_vocabulary = pd.Index(sorted({t for p in partials for t in p.tracks}))
    frames = []
    for p in partials:                                 # a loop over ranks: remap codes to the shared vocabulary
        w = p.windows.reindex(columns=["track", "length", *cols, *_STATS], fill_value=-1)
        remap = np.r_[vocabulary.get_indexer(p.names), -1]
        codes = w[cols].to_numpy()
        w[cols] = remap[np.where(codes < 0, len(p.names), codes)]
        w["track"] = track_vocabulary.get_indexer(p.tracks)[w["track"].to_numpy()]
        frames.append(w.assign(rank=p.rank))
    every = pd.concat(frames, ignore_index=True)
    keys = ["track", "length", *cols]
    merged = every.groupby(keys, as_index=False).agg(count=("count", "sum"), ranks=("rank", "nunique"),
                                                     total_ns=("total_ns", "sum"), kernel_ns=("kernel_ns", "sum"))
    names = vocabulary.to_numpy(dtype=object)

    def finish(rows: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
        out = rows.assign(kernels=_joined(rows[cols], names), track=track_vocabulary.to_numpy(dtype=object)[rows["track"]],
                          mean_ns=(rows["total_ns"] / rows["count"]).round().astype("int64"))
        return out[list(columns)].reset_index(drop=True)

    # The largest rows without sorting them all; ties beyond the keys go to the grouping's order
    # (by track and names), or the lower rank, so the result does not depend on partition order.
    by_count = merged.nlargest(top, ["count", "length", "total_ns"])
    by_time = merged.nlargest(top, ["total_ns", "count"])
    per_rank = every.assign(_rank=-every["rank"]).nlargest(top, ["count", "length", "total_ns", "_rank"])
    lengths = tuple(sorted(int(v) for v in merged["length"].unique()))
    return SequencesResult(finish(by_count, SEQUENCE_COLUMNS), finish(by_time, SEQUENCE_COLUMNS),
                           finish(per_rank, PER_RANK_COLUMNS), lengths)


@dataclass(frozen=True)
class SequencesResult:
    """The frequent sequences (:data:`SEQUENCE_COLUMNS`, :data:`PER_RANK_COLUMNS`)."""

    top: pd.DataFrame
    by_time: pd.DataFrame
    per_rank: pd.DataFrame
    lengths: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"min_length": min(self.lengths, default=None), "max_length": max(self.lengths, default=None),
                "top": self.top.to_dict(orient="records"), "by_time": self.by_time.to_dict(orient="records"),
                "per_rank": self.per_rank.to_dict(orient="records")}


def frequent_sequences(events: pd.DataFrame | pa.Table, *, lengths: Any = DEFAULT_LENGTHS,
                       top: int = TOP) -> SequencesResult:
    """The frequent sequences of ``events`` (any ranks), as the report computes them.

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        ``ts``, ``dur`` (ns), ``name``, ``track``, ``category`` and ``rank`` (absent: one rank, 0).
    lengths : str or sequence of int, default (3, 4, 5)
        Window lengths, 2..8 (:func:`parse_lengths`).
    top : int, default 20
        Rows of each list.

    Examples
    --------
    >>> ev = pd.DataFrame({"ts": [0, 10, 20, 30, 40, 50], "dur": 5, "name": list("abcabc"),
    ...                    "track": "stream 7", "category": "compute"})
    >>> frequent_sequences(ev, lengths=3).to_json()["top"][0]
    {'track': 'stream 7', 'length': 3, 'kernels': 'a -> b -> c', 'count': 2, 'ranks': 1, 'total_ns': 50, 'mean_ns': 25, 'kernel_ns': 30}
    """
    table = pa.Table.from_pandas(events, preserve_index=False) if isinstance(events, pd.DataFrame) else events
    if "rank" not in table.column_names:
        table = table.append_column("rank", pa.array(np.zeros(table.num_rows, np.int32)))
    lengths = parse_lengths(lengths)
    rank = table.column("rank").to_numpy()
    partials = []
    for r in np.unique(rank).tolist():                 # a loop over ranks
        partials.append(sequences_chunk(table.filter(pa.array(rank == r)), int(r), lengths))
    return sequences_combine(partials, top)


class _Sequences:
    """``sequences``: the report (see the module docstring)."""

    name = "sequences"
    columns = ("rank", "ts", "dur", "name", "track", "category")

    def applies(self, ctx: AnalysisContext) -> str | None:
        if ctx.wall_ns <= 0:
            return "the store has no events"
        parse_lengths(ctx.options.get("sequence_lengths"))     # a bad option fails before any read
        for batch in ctx.store.scan(columns=["category"], filters=pc.field("category") != "host"):
            if batch.num_rows:                         # stops at the first device event
                return None
        return "no device kernels or ops in this trace (CPU events only): nothing runs on a stream"

    def on_request(self, ctx: AnalysisContext) -> bool:
        """On a Sohu run the op sequences per engine are the lowering's own program, the same in
        every layer: shown when asked for (``--report sequences``), not in every ``analyze``."""
        return ctx.is_sohu

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> SequencePartial:
        lengths = parse_lengths(ctx.options.get("sequence_lengths"))
        if not events.num_rows:
            return SequencePartial(-1, [], [], _empty_windows(max(lengths)))
        part = as_partition(events)
        return sequences_chunk(part, part.rank, lengths)

    def combine(self, partials: list[SequencePartial], ctx: AnalysisContext) -> SequencesResult:
        return sequences_combine(partials, int(ctx.options.get("top") or TOP))


SEQUENCES = _Sequences()
