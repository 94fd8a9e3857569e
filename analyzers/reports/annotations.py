"""GPU time per user annotation (``record_function`` ranges) of profiler traces, device side and
CPU side.

A ``torch.profiler.record_function("name")`` range (and the ones PyTorch opens itself:
``ProfilerStep#N``, ``DistributedDataParallel.forward``, ``nccl:all_reduce`` ...) appears twice in
a Kineto trace: as a CPU ``user_annotation`` span on the thread that opened it, and, for every
stream its kernels ran on, as a device-side ``gpu_user_annotation`` span from the first of
those kernels' start to the last one's end. This report reads both, per annotation name:

- device side (``gpu_user_annotation``): ``gpu_count`` spans, ``wall_ns`` the union of its
  spans (every stream together), ``kernel_ns`` the union of the device kernels running inside
  them, each span taking the kernels of its own stream (as HTA's
  ``get_gpu_kernels_with_user_annotations`` matches a kernel to annotations of its own pid/tid),
  so ``kernel_ns <= wall_ns`` and ``wall_ns - kernel_ns`` is the device idle inside the range;
- CPU side (``user_annotation``): ``cpu_count`` spans, ``cpu_ns`` the union of its spans (every
  thread together), and the kernels launched from inside them: each kernel's launching runtime
  call (by ``correlation``) lies within a span of that name on the same thread
  (:func:`~sohuprof.analyzers.spans.enclosing`); ``kernels`` counts them, ``gpu_ns`` sums their
  durations. Kernels launched by another thread (autograd's backward thread, for a range opened
  around ``loss.backward()``) are not inside it: the device-side columns show their time.

A kernel counts once per name however its spans nest, and in every enclosing name (names are
not exclusive: ``## forward ##`` and ``DistributedDataParallel.forward`` both hold the forward
kernels). Unions are per rank, summed over ranks.

JSON contract (``to_json``, int ns): ``names``: one row per annotation name over all ranks
``{name, cpu_count, cpu_ns, kernels, gpu_ns, gpu_count, wall_ns, kernel_ns}`` (0 where the name
has no span of that kind), sorted by the larger of ``kernel_ns`` and ``gpu_ns``, descending;
``names_by_rank``: the same with ``rank`` first, per rank; ``notes``.

Holistic Trace Analysis' ``get_gpu_user_annotation_breakdown``
(``hta/analyzers/breakdown_analysis.py``) reports, per name and rank, the sum / min / max / mean
/ std of the spans' durations (GPU or CPU ones) with a top-N ``others`` fold; here the time is
the spans' union (equal to HTA's sum where a name's spans do not overlap) and what runs inside
them, every name is kept, and CPU ranges are tied to the kernels they launched, which HTA does
not do. With ``--hta-compatible`` events are first selected as HTA does
(:func:`~sohuprof.analyzers.hta_selection.hta_select`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.device_events import analysed
from sohuprof.analyzers.intervals import Merged, merge, union_length
from sohuprof.analyzers.partition import Partition, rank_partitions
from sohuprof.analyzers.reports.kernels import kernel_launches
from sohuprof.analyzers.spans import enclosing, intersect

__all__ = ["ANNOTATIONS", "ANNOTATION_COLUMNS", "AnnotationsResult"]

#: One row of ``names`` (``names_by_rank`` has ``rank`` first).
ANNOTATION_COLUMNS = ("name", "cpu_count", "cpu_ns", "kernels", "gpu_ns", "gpu_count", "wall_ns", "kernel_ns")
_STATS = ANNOTATION_COLUMNS[1:]
_COLUMNS = ("rank", "ts", "dur", "name", "category", "correlation", "cat", "stream", "track")
_KINDS = ("user_annotation", "gpu_user_annotation")


@dataclass
class _Partial:
    rows: list[pd.DataFrame] = field(default_factory=list)
    kernels: int = 0
    with_correlation: int = 0
    cpu_spans: int = 0
    gpu_spans: int = 0


def _spans_by_name(part: Partition, cat: str) -> dict[str, np.ndarray]:
    """Event indices of ``cat`` spans, per name (one stable sort; a dict over distinct names)."""
    if not part.has("cat"):
        return {}
    idx = np.flatnonzero(part.equals("cat", cat))
    codes, values = part.codes("name")
    order = idx[np.argsort(codes[idx], kind="stable")]
    c = codes[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]]) if len(c) else np.zeros(0, np.int64)
    bounds = np.r_[starts, len(c)]
    return {values[c[b]] if c[b] < len(values) else "": order[b:e] for b, e in zip(bounds[:-1].tolist(),
                                                                                  bounds[1:].tolist())}


def _gpu_side(part: Partition, kernels: np.ndarray) -> pd.DataFrame:
    """Per gpu_user_annotation name: spans, union of spans, union of own-stream kernels inside."""
    track, _ = part.codes("track")
    ts, end = part.ts, part.end
    # Kernels merged per stream once: each name's intersection then meets disjoint sorted runs.
    k = merge(ts[kernels], end[kernels], track[kernels])
    groups = _spans_by_name(part, "gpu_user_annotation")
    covered = _covered_inside(list(groups.values()), ts, end, track, k)
    rows = []
    for i, (name, spans) in enumerate(groups.items()):   # a loop over names
        wall = int(union_length(ts[spans], end[spans], n_keys=1)[0])
        if covered is not None and covered[1][i]:
            kernel_ns = int(covered[0][i])
        else:
            inside = intersect(ts[spans], end[spans], k.start, k.end, track[spans], k.key)
            kernel_ns = int(union_length(inside.start, inside.end, n_keys=1)[0])
        rows.append((name, len(spans), wall, kernel_ns))
    return pd.DataFrame(rows, columns=["name", "gpu_count", "wall_ns", "kernel_ns"])


def _covered_inside(groups: list[np.ndarray], ts: np.ndarray, end: np.ndarray, track: np.ndarray,
                    k: Merged) -> tuple[np.ndarray, np.ndarray] | None:
    """Per group of device spans (one name's), the kernel time on each span's own stream inside
    it, and whether that is exact (else None overall, or False for a group).

    From the spans' side: the name's spans merged per stream, and the busy time of the stream's
    merged kernels inside ``[s, e)`` is ``G(e) - G(s)``, ``G`` the stream's cumulative busy time
    (a ``searchsorted`` and a prefix sum). A name whose spans on different streams overlap in
    time could count a moment twice that the union counts once: that name is exact only when its
    per-stream spans add up to their union over streams (the caller asks again for the others)."""
    n = len(groups)
    if not n:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    idx = np.concatenate(groups)
    code = np.repeat(np.arange(n, dtype=np.int64), [len(g) for g in groups])
    tracks = int(max(track.max(initial=0), k.key.max(initial=0), 0)) + 1
    m = merge(ts[idx], end[idx], code * tracks + track[idx])
    whole = merge(ts[idx], end[idx], code)
    per_stream = np.zeros(n, np.int64)
    union = np.zeros(n, np.int64)
    np.add.at(per_stream, m.key // tracks, m.end - m.start)
    np.add.at(union, whole.key, whole.end - whole.start)
    exact = per_stream == union
    if not len(m.key) or not len(k.key):
        return np.zeros(n, np.int64), exact
    lo = min(int(m.start.min()), int(k.start.min()))
    span = max(int(m.end.max()), int(k.end.max())) - lo + 1
    if tracks * span >= 1 << 62:
        return None
    k_start = k.key * span + (k.start - lo)      # merged per stream: disjoint and in order
    k_end = k.key * span + (k.end - lo)
    busy = np.r_[0, np.cumsum(k.end - k.start)]

    def cumulative(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(k_start, x, side="right")          # kernels starting at or before x
        last = np.maximum(i - 1, 0)
        part = np.where(i > 0, np.minimum(x, k_end[last]) - k_start[last], 0)
        return busy[last] + np.maximum(part, 0) if len(k_start) else np.zeros(len(x), np.int64)

    m_track = m.key % tracks
    inside = cumulative(m_track * span + (m.end - lo)) - cumulative(m_track * span + (m.start - lo))
    total = np.zeros(n, np.int64)
    np.add.at(total, m.key // tracks, inside)
    return total, exact


def _cpu_side(part: Partition, kernels: np.ndarray, calls: np.ndarray) -> pd.DataFrame:
    """Per user_annotation name: spans, union of spans, kernels launched from inside them."""
    track, _ = part.codes("track")
    ts, end = part.ts, part.end
    launched = calls >= 0
    c = calls[launched]
    dur = (end - ts)[kernels[launched]]
    groups = _spans_by_name(part, "user_annotation")
    inside = _launched_inside(list(groups.values()), ts, end, track, c, dur)
    rows = []
    for i, (name, spans) in enumerate(groups.items()):       # a loop over names
        if inside is not None:
            count, gpu_ns = int(inside[0][i]), int(inside[1][i])
        else:
            m = merge(ts[spans], end[spans], track[spans])   # a name nested in itself counts once
            hit = enclosing(m.start, m.end, m.key, ts[c], end[c], track[c], outermost=True) >= 0
            count, gpu_ns = int(hit.sum()), int(dur[hit].sum())
        rows.append((name, len(spans), int(union_length(ts[spans], end[spans], n_keys=1)[0]), count, gpu_ns))
    return pd.DataFrame(rows, columns=["name", "cpu_count", "cpu_ns", "kernels", "gpu_ns"])


def _launched_inside(groups: list[np.ndarray], ts: np.ndarray, end: np.ndarray, track: np.ndarray,
                     calls: np.ndarray, dur: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per group of spans (one name's), the kernels whose launching call lies inside one of its
    spans on the call's thread, and their summed durations; None where the fast way does not hold.

    Counted from the spans' side, so the cost is O((spans + calls) log calls) whatever the
    number of names: each name's spans merged per thread, then the calls inside a merged span
    ``[s, e)`` are those from the first starting at or after ``s`` to the last ending by ``e``
    (two ``searchsorted``), since a thread's runtime calls run one after another and so, sorted
    by start, end in order too. Where they overlap (or the times are too far apart for one
    axis) None, and the caller asks per name."""
    n = len(groups)
    zeros = (np.zeros(n, np.int64), np.zeros(n, np.int64))
    if not n or not len(calls):
        return zeros
    idx = np.concatenate(groups)
    code = np.repeat(np.arange(n, dtype=np.int64), [len(g) for g in groups])
    tracks = int(max(track.max(initial=0), 0)) + 1
    m = merge(ts[idx], end[idx], code * tracks + track[idx])
    if not len(m.key):
        return zeros
    p_track, p_start, p_end = track[calls].astype(np.int64), ts[calls], end[calls]
    lo = min(int(p_start.min()), int(m.start.min()))
    span = max(int(p_end.max()), int(m.end.max())) - lo + 1
    if tracks * span >= 1 << 62:
        return None
    order = np.lexsort((p_start, p_track))
    key_start = p_track[order] * span + (p_start[order] - lo)
    key_end = p_track[order] * span + (p_end[order] - lo)
    if (np.diff(key_end) < 0).any():
        return None
    weight = np.r_[0, np.cumsum(dur[order])]
    m_track, m_name = m.key % tracks, m.key // tracks
    first = np.searchsorted(key_start, m_track * span + (m.start - lo), side="left")
    stop = np.searchsorted(key_end, m_track * span + (m.end - lo), side="right")
    stop = np.maximum(stop, first)
    count = np.zeros(n, np.int64)
    total = np.zeros(n, np.int64)
    np.add.at(count, m_name, stop - first)
    np.add.at(total, m_name, weight[stop] - weight[first])
    return count, total


def _rank_rows(part: Partition, ctx: AnalysisContext, out: _Partial) -> None:
    kernels, calls = kernel_launches(part, ctx)
    gpu, cpu = _gpu_side(part, kernels), _cpu_side(part, kernels, calls)
    out.kernels += len(kernels)
    if part.has("correlation") and len(kernels):
        out.with_correlation += int((part.ints("correlation", -1)[kernels] >= 0).sum())
    out.cpu_spans += int(cpu["cpu_count"].sum())
    out.gpu_spans += int(gpu["gpu_count"].sum())
    rows = cpu.merge(gpu, on="name", how="outer")
    if len(rows):
        rows = rows.fillna(0).astype({c: "int64" for c in _STATS})
        rows.insert(0, "rank", int(part.ints("rank")[0]))
        out.rows.append(rows)


def _ordered(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    key = np.maximum(rows["kernel_ns"], rows["gpu_ns"]).rename("key")
    return (rows.assign(key=key).sort_values([*by[:-1], "key", "name"], ascending=[True] * (len(by) - 1) + [False, True],
                                             kind="stable")[by[:-1] + list(ANNOTATION_COLUMNS)]
            .reset_index(drop=True))


@dataclass(frozen=True)
class AnnotationsResult:
    """Per annotation name, over ranks and per rank (:data:`ANNOTATION_COLUMNS`)."""

    names: pd.DataFrame
    names_by_rank: pd.DataFrame
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names.to_dict(orient="records"),
                "names_by_rank": self.names_by_rank.to_dict(orient="records"), "notes": list(self.notes)}


def _notes(p: _Partial) -> list[str]:
    notes = []
    if not p.gpu_spans:
        notes.append("the trace has no gpu_user_annotation spans (device-side record_function ranges): "
                     "gpu_count, wall_ns and kernel_ns are 0")
    if p.cpu_spans and not p.kernels:
        notes.append("the trace has no device kernels (a CPU-only profile): kernels and gpu_ns are 0")
    elif p.cpu_spans and not p.with_correlation:
        notes.append("the trace has no correlation ids linking kernels to their launches: the kernels "
                     "launched inside CPU annotations (kernels, gpu_ns) cannot be found")
    return notes


class _Annotations:
    """``annotations``: GPU time per record_function range of profiler traces."""

    name = "annotations"
    columns = _COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        if ctx.is_sohu:
            return ("annotations are PyTorch profiler record_function ranges, which a Sohu run does not have; "
                    "use `roofline` or `stalls`")
        if ctx.source not in ("kineto", "chrome"):
            return f"annotations needs a profiler trace (kineto or chrome), this store's source is '{ctx.source}'"
        batches = ctx.store.scan(columns=["cat"], filters=pc.field("cat").isin(list(_KINDS)))
        if not any(b.num_rows for b in batches):
            return ("the trace has no user annotations (user_annotation / gpu_user_annotation events, "
                    "from record_function): annotations does not apply")
        return None

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> _Partial:
        out = _Partial()
        if events.num_rows:
            for part in rank_partitions(analysed(events, ctx)):   # one rank; a table of several in tests
                _rank_rows(part, ctx, out)
        return out

    def combine(self, partials: list[_Partial], ctx: AnalysisContext) -> AnnotationsResult:
        p = _Partial()
        for q in partials:
            p.rows += q.rows
            p.kernels += q.kernels
            p.with_correlation += q.with_correlation
            p.cpu_spans += q.cpu_spans
            p.gpu_spans += q.gpu_spans
        if p.rows:
            rows = pd.concat(p.rows, ignore_index=True)
        else:
            rows = pd.DataFrame({"rank": pd.Series(dtype="int64"), "name": pd.Series(dtype=object),
                                 **{c: pd.Series(dtype="int64") for c in _STATS}})
        over = rows.groupby("name", sort=False)[list(_STATS)].sum().reset_index()
        return AnnotationsResult(names=_ordered(over, ["name"]), names_by_rank=_ordered(rows, ["rank", "name"]),
                                 notes=_notes(p))


ANNOTATIONS = _Annotations()
