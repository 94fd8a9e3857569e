"""HTA's GPU kernel breakdown: time per kernel type and overlap of types, per kernel name, and
per CPU op (module, annotation) that launched the kernels, from profiler traces.

Follows Holistic Trace Analysis' ``get_gpu_kernel_breakdown``
(``hta/analyzers/breakdown_analysis.py``, as ``TraceAnalysis`` calls it: memory kernels
included, ``num_kernels=10``).

**Device kernels** are the events whose Kineto ``cat`` matches HTA's ``KERNEL_CATEGORY_PATTERN``
(``hta/common/types.py``: ``(kernel)|(gpu_mem.+)|(mtia_ccp_events)`` from the start: kernels,
memcpy, memset, MTIA device events; not ``gpu_user_annotation``); a store without ``cat`` (an
older one) falls back to the store's device categories. With ``--hta-compatible`` they must also
have a stream (HTA reads ``stream != -1``; MTIA writes some DMA events without one).

**Kernel type** is HTA's ``get_kernel_type`` (``hta/utils/utils.py``) of the kernel name, decided
once per distinct name: COMMUNICATION (``^nccl|^hip|^hccl|ncclKernel``), else MEMORY
(``^(hip)?Memcpy|^(hip)?Memset|^dma``), else COMPUTATION unless the name matches HTA's list of
non-compute names (``Memcpy``, ``Sync``, ``Stream Wait Event``, ``cudaLaunchKernel`` ...), which
makes it OTHER. (The store's ``category`` is close but not HTA's: it reads ``cat``, not names.)

JSON contract (``to_json``; times int ns, percentages only because HTA has them):

- ``types``: HTA's kernel-type table (``_get_gpu_kernel_type_time``): each rank's time split by
  the exact set of types running (:func:`~sohuprof.analyzers.intervals.mask_coverage`, each
  type's kernels merged first, every stream together), summed over ranks. Rows ``{kernel_type,
  sum_ns, pct}``, one per non-empty set, named as HTA names them: a single type
  (``COMPUTATION``) is time when only it runs; ``COMPUTATION overlapping COMMUNICATION``,
  ``COMMUNICATION overlapping MEMORY``, ``COMPUTATION overlapping COMMUNICATION overlapping
  MEMORY`` ... when exactly those run (types in HTA's order COMPUTATION, COMMUNICATION, MEMORY).
  Sorted by ``sum_ns`` descending. ``pct = 100 * sum_ns / pct_base_ns`` rounded to 1 decimal
  (HTA's ``round({"percentage": 1})``), where the base is the sum of those rows: HTA's table
  holds only COMPUTATION, COMMUNICATION and MEMORY, so the base is the time any of them runs,
  idle time and OTHER kernels excluded. OTHER kernels, which HTA leaves out of the table, get
  one row of their own (the time any OTHER kernel runs, whatever else does) with ``pct`` null.
- ``types_by_rank``: the same per rank ``{rank, kernel_type, sum_ns, pct}`` (each rank's own base).
- ``names``: per kernel name over all ranks ``{kernel_type, name, count, sum_ns, mean_ns, min_ns,
  max_ns, std_ns, pct}`` (``std_ns`` the sample standard deviation, pandas' ``std``, 0 for one
  kernel; ``pct`` the share of its type's summed kernel time, 2 decimals): per type the top
  ``num_kernels`` names by ``sum_ns``, then one ``others`` row aggregating the rest of that type.
  Types in order of their kernel time, names by ``sum_ns``. ``names_by_rank``: the same per rank
  (top names of each rank), with ``rank`` first.
- ``launchers``: kernel time per launching CPU op ``{cpu_op, kernels, gpu_ns, count, pct}``: each
  kernel's launching call (the host event with its ``correlation``: a ``cuda_runtime``,
  ``hip_runtime``, ``mtia_runtime`` or ``cuda_driver`` call in Kineto's traces), then the innermost ``cpu_op`` on the call's
  thread enclosing it: the latest-starting one whose end reaches the call's end
  (:func:`~sohuprof.analyzers.spans.enclosing`). ``kernels`` counts kernels,
  ``gpu_ns`` sums their durations, ``count`` the op instances that launched them, ``pct`` is of
  all kernel time (2 decimals). The top ``num_kernels`` ops, an ``others`` row, and
  ``(no launch recorded)`` / ``(outside any cpu_op)`` rows where kernels have no recorded call or
  their call no enclosing op: the rows' ``gpu_ns`` sum to ``kernel_ns``.
- ``modules``: the same ``{module, ...}`` by the outermost ``nn.Module: X`` ``python_function``
  span enclosing the call (X; ``with_stack``/``with_modules`` traces); ``annotations``: by the
  outermost ``user_annotation`` (``record_function``) other than ``ProfilerStep#N``. Each sums to
  ``kernel_ns`` too (a rank without such spans has all its kernels outside); empty when no rank
  has such spans. Containment is on the call's own thread: kernels that autograd's backward
  thread launches are outside the main thread's modules and ``## backward ##`` range.
- ``num_kernels`` (the top-N option, ``ctx.options["num_kernels"]``, default HTA's 10),
  ``kernel_ns`` (all device kernels' summed durations), ``pct_base_ns``, and ``notes``.

Chunk returns, per rank, the coverage of every set of types (int ns), exact sufficient
statistics per kernel name (count, sum, sum of squares as an exact Python int, min, max) and
the launcher sums, so ``combine`` gives the same result in any partition order.

Where sohuprof deliberately differs from HTA: its ``names`` table also folds names past the 80 %
cumulative-time quantile (``duration_ratio``) into ``others`` and computes that row's statistics
over the per-name sums (its ``groupby(...)["sum"]``), where here ``others`` is only what falls
outside the top N and its statistics are those of its kernels; rows are per name over ranks
(``names``) as well as per rank; HTA has no launcher attribution; OTHER kernels are reported
rather than dropped; sets whose time is zero get no row (HTA's unstable sort can leave
zero-sum rows). Without ``--hta-compatible`` every event counts at ns resolution; with it,
events first go through :func:`~sohuprof.analyzers.hta_selection.hta_select` (last
ProfilerStep and unlaunched kernels dropped, times rounded to whole microseconds) and the type
shares are HTA's (within 0.1 pp on the shared traces).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.device_events import analysed, device_profile
from sohuprof.analyzers.hta_selection import GPU_CATEGORIES
from sohuprof.analyzers.intervals import mask_coverage
from sohuprof.analyzers.partition import Partition, rank_partitions
from sohuprof.analyzers.spans import enclosing, launch_calls

__all__ = ["KERNELS", "KERNEL_TYPES", "KernelsResult", "device_kernels", "kernel_launches", "kernel_type"]

#: HTA's kernel types in its naming order (a set is named in this order); OTHER is outside HTA's table.
KERNEL_TYPES = ("COMPUTATION", "COMMUNICATION", "MEMORY", "OTHER")
_OTHER = KERNEL_TYPES.index("OTHER")
_HTA_BITS = 7                    # COMPUTATION | COMMUNICATION | MEMORY
_KERNEL_CAT = re.compile(r"(kernel)|(gpu_mem.+)|(mtia_ccp_events)")
_COMM = re.compile(r"(^nccl.*)|(^hip)|(^hccl)|(.*ncclKernel.*)")
_MEMORY = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")
_NOT_COMPUTE = re.compile(r"(^nccl)|(.*Memcpy)|(.*Memset)|(.*dma)|(^.*Sync)|(^Stream Wait Event)"
                          r"|(cuda.*LaunchKernel)|(^runFunction)|(^hip)|(^job_exe)|(^packet)|(^pe_exe)"
                          r"|(^cpum_exe_subgraph)|(^hccl)|(^collective_subgraph_execution)")
_MODULE_PREFIX = "nn.Module: "
_STEP = re.compile(r"^ProfilerStep#\d+")
_NO_LAUNCH = "(no launch recorded)"
_COLUMNS = ("rank", "ts", "dur", "name", "category", "correlation", "cat", "stream", "track")
_GPU_SOURCES = ("kineto", "chrome")
#: Attribution scopes: JSON key, its label column, the row of kernels whose call no such span encloses.
_SCOPES = (("launchers", "cpu_op", "(outside any cpu_op)"), ("modules", "module", "(outside any module)"),
           ("annotations", "annotation", "(outside any annotation)"))
_NAME_STATS = ("count", "sum_ns", "min_ns", "max_ns")
_NAME_COLUMNS = ("kernel_type", "name", "count", "sum_ns", "mean_ns", "min_ns", "max_ns", "std_ns", "pct")
_LAUNCH_STATS = ("kernels", "gpu_ns", "count")


def kernel_type(name: str) -> str:
    """HTA's ``get_kernel_type`` of a kernel name: COMMUNICATION, MEMORY, COMPUTATION or OTHER.

    >>> [kernel_type(n) for n in ("ncclKernel_AllReduce", "Memcpy DtoH", "volta_sgemm", "cudaStreamSync")]
    ['COMMUNICATION', 'MEMORY', 'COMPUTATION', 'OTHER']
    """
    if _COMM.match(name):
        return "COMMUNICATION"
    if _MEMORY.match(name):
        return "MEMORY"
    return "OTHER" if _NOT_COMPUTE.match(name) else "COMPUTATION"


def set_name(mask: int) -> str:
    """HTA's name of an exact set of types (bits in :data:`KERNEL_TYPES` order)."""
    return " overlapping ".join(t for i, t in enumerate(KERNEL_TYPES[:_OTHER]) if mask >> i & 1)


# --- what a partition's events are -----------------------------------------------------------

def _by_value(part: Partition, column: str, predicate: Any) -> np.ndarray:
    """``predicate(value)`` of a string column per event, decided once per distinct value (null: False)."""
    codes, values = part.codes(column)
    hits = np.array([isinstance(v, str) and bool(predicate(v)) for v in values] + [False])
    return hits[codes]


def _cat_is(part: Partition, cat: str) -> np.ndarray:
    return part.equals("cat", cat) if part.has("cat") else np.zeros(part.num_rows, bool)


def device_kernels(part: Partition, *, need_stream: bool = False) -> np.ndarray:
    """Which events are device kernels (HTA's ``KERNEL_CATEGORY_PATTERN`` over ``cat``; where
    ``cat`` is empty or absent, the store's device categories), as a bool mask. ``need_stream``:
    only those with a stream, as HTA's breakdown reads them."""
    by_category = _by_value(part, "category", lambda v: v in GPU_CATEGORIES)
    if part.has("cat"):
        codes, values = part.codes("cat")
        unknown = (codes == len(values)) | _by_value(part, "cat", lambda v: v == "")
        out = _by_value(part, "cat", _KERNEL_CAT.match) | (unknown & by_category)
    else:
        out = by_category
    if need_stream and part.has("stream"):
        out &= part.ints("stream", -1) >= 0
    return out


def kernel_launches(part: Partition, ctx: AnalysisContext) -> tuple[np.ndarray, np.ndarray]:
    """Device kernels (event indices) and each one's launching runtime call (event index, -1 for
    none): the host event with the kernel's ``correlation``. Cached on the partition."""
    out = part.cache.get("kernel_launches")
    if out is None:
        kernels = np.flatnonzero(device_kernels(part, need_stream=ctx.hta_compatible))
        call = np.full(len(kernels), -1, np.int64)
        if part.has("correlation") and len(kernels):
            corr = part.ints("correlation", -1)
            calls = np.flatnonzero(part.equals("category", "host") & (corr >= 0))
            found = launch_calls(corr[kernels], corr[calls])
            call[found >= 0] = calls[found[found >= 0]]
        out = part.cache["kernel_launches"] = (kernels, call)
    return out


# --- one rank's sufficient statistics ----------------------------------------------------------

def _exact_sumsq(values: np.ndarray, starts: np.ndarray) -> list[int]:
    """Per run of ``values`` (runs begin at ``starts``), the exact sum of squares as Python ints:
    each value (below 2**62 ns, as the store holds) split into four 16-bit limbs, whose cross
    products sum in int64 without overflow for runs below 2**27 kernels."""
    v = values.astype(np.int64)
    limbs = [(v >> shift) & 0xFFFF for shift in (48, 32, 16, 0)]
    # (sum_i l_i 2**(16 (3 - i)))**2: the products of limbs i and j weigh 2**(16 (6 - i - j)).
    terms = [sum((1 if i == j else 2) * limbs[i] * limbs[j] for i in range(4) for j in range(i, 4) if i + j == w)
             for w in range(7)]
    sums = [np.add.reduceat(t, starts).tolist() if len(v) else [] for t in terms]
    return [sum(t << (16 * (6 - w)) for w, t in enumerate(run)) for run in zip(*sums)]


def _grouped(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order of ``keys``, the distinct keys and where each one's run starts in that order."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    return order, k[starts], starts


def _name_stats(part: Partition, rank: int, kernels: np.ndarray, dur: np.ndarray,
                types: np.ndarray) -> pd.DataFrame:
    """Per kernel name: type, count, sum, exact sum of squares, min and max of durations."""
    codes, values = part.codes("name")
    order, uniq, starts = _grouped(codes[kernels])
    d = dur[order]
    ends = np.r_[starts[1:], len(d)]
    labels = [values[c] if c < len(values) else "" for c in uniq.tolist()]
    return pd.DataFrame({
        "rank": rank, "name": labels, "kernel_type": [KERNEL_TYPES[t] for t in types[order][starts].tolist()],
        "count": (ends - starts).astype(np.int64),
        "sum_ns": np.add.reduceat(d, starts) if len(d) else np.zeros(0, np.int64),
        "sumsq": pd.Series(_exact_sumsq(d, starts), dtype=object),
        "min_ns": np.minimum.reduceat(d, starts) if len(d) else np.zeros(0, np.int64),
        "max_ns": np.maximum.reduceat(d, starts) if len(d) else np.zeros(0, np.int64)})


def _attribute(part: Partition, scope: str, spans: np.ndarray, label_of: Any, outside: str, rank: int,
               calls: np.ndarray, dur: np.ndarray, *, outermost: bool) -> pd.DataFrame:
    """Kernel time per enclosing span name: each launch call (``calls``, -1: none) to the innermost
    (``outermost``: outermost) of ``spans`` on its thread enclosing it, summed by that span's name."""
    launched = calls >= 0
    owner = np.full(len(calls), -1, np.int64)
    if launched.any() and len(spans):
        track, _ = part.codes("track")
        c = calls[launched]
        found = enclosing(part.ts[spans], part.end[spans], track[spans], part.ts[c], part.end[c], track[c],
                          outermost=outermost)
        owner[launched] = np.where(found >= 0, spans[np.maximum(found, 0)], -1)
    codes, values = part.codes("name")
    # Label codes: span names' codes, then the two rows for kernels no span takes.
    no_launch, outside_code = len(values) + 1, len(values) + 2
    key = np.where(owner >= 0, codes[np.maximum(owner, 0)], np.where(launched, outside_code, no_launch))
    order, uniq, starts = _grouped(key)
    kernels = np.diff(np.r_[starts, len(key)])
    gpu = np.add.reduceat(dur[order], starts) if len(key) else np.zeros(0, np.int64)
    # Span instances per name: distinct owners of each label (none for the rows outside).
    pairs = np.unique(np.stack([key[owner >= 0], owner[owner >= 0]]), axis=1)
    inst = dict(zip(*np.unique(pairs[0], return_counts=True))) if pairs.size else {}
    names = {len(values): "(unnamed)", no_launch: _NO_LAUNCH, outside_code: outside}
    return pd.DataFrame({"rank": rank, "scope": scope,
                         "label": [names[k] if k in names else label_of(values[k]) for k in uniq.tolist()],
                         "kernels": kernels.astype(np.int64), "gpu_ns": gpu.astype(np.int64),
                         "count": [int(inst.get(k, 0)) for k in uniq.tolist()]})


@dataclass
class _Partial:
    """One partition's sufficient statistics (ns, exact)."""

    ranks: list[int] = field(default_factory=list)
    coverage: list[np.ndarray] = field(default_factory=list)    # per rank: [16] ns per set of types
    names: list[pd.DataFrame] = field(default_factory=list)
    scopes: list[pd.DataFrame] = field(default_factory=list)
    kernels: int = 0
    with_correlation: int = 0
    has_cat: bool = True


def _rank_partial(part: Partition, ctx: AnalysisContext, out: _Partial) -> None:
    kernels, calls = kernel_launches(part, ctx)
    out.has_cat &= part.has("cat") and part.table.column("cat").null_count < part.num_rows
    if not len(kernels):
        return
    rank = int(part.ints("rank")[kernels[0]])
    ts, end = part.ts[kernels], part.end[kernels]
    dur = end - ts
    codes, values = part.codes("name")
    used = np.unique(codes[kernels])
    type_of = np.full(len(values) + 1, _OTHER, np.int64)
    type_of[used] = [KERNEL_TYPES.index(kernel_type(values[c])) if c < len(values) else _OTHER
                     for c in used.tolist()]            # a loop over distinct kernel names
    types = type_of[codes[kernels]]
    cover = mask_coverage(ts, end, types, np.zeros(len(ts), np.int64), len(KERNEL_TYPES), 1,
                          np.array([ts.min()]), np.array([end.max()]))[0]
    out.ranks.append(rank)
    out.coverage.append(cover)
    out.names.append(_name_stats(part, rank, kernels, dur, types))
    out.kernels += len(kernels)
    if part.has("correlation"):
        out.with_correlation += int((part.ints("correlation", -1)[kernels] >= 0).sum())
    spans = {"launchers": np.flatnonzero(_cat_is(part, "cpu_op")),
             "modules": np.flatnonzero(_cat_is(part, "python_function")
                                       & _by_value(part, "name", lambda v: v.startswith(_MODULE_PREFIX))),
             "annotations": np.flatnonzero(_cat_is(part, "user_annotation")
                                           & ~_by_value(part, "name", _STEP.match))}
    # Every scope on every rank, spans or not: a rank without modules still has its kernels in the
    # table (outside any), so each table sums to all kernel time; combine drops a scope no rank has.
    for scope, _, outside in _SCOPES:
        label = (lambda v: v[len(_MODULE_PREFIX):]) if scope == "modules" else (lambda v: v)
        out.scopes.append(_attribute(part, scope, spans[scope], label, outside, rank, calls, dur,
                                     outermost=scope != "launchers"))


# --- the result ---------------------------------------------------------------------------------

def _round_pct(part: np.ndarray | pd.Series, whole: Any, decimals: int) -> np.ndarray:
    whole = np.asarray(whole, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.round(np.where(whole > 0, 100.0 * np.asarray(part, dtype=np.float64) / whole, np.nan), decimals)


#: Which HTA set (column) each of the 16 exact sets of the four types falls in; OTHER's own column last.
_SET_OF_MASK = np.zeros((1 << len(KERNEL_TYPES), _HTA_BITS + 2), np.int64)
_SET_OF_MASK[np.arange(1 << len(KERNEL_TYPES)), np.arange(1 << len(KERNEL_TYPES)) & _HTA_BITS] = 1
_SET_OF_MASK[np.arange(1 << len(KERNEL_TYPES)) >> _OTHER & 1 == 1, _HTA_BITS + 1] = 1
_SET_NAMES = np.array(["", *(set_name(m) for m in range(1, _HTA_BITS + 1)), "OTHER"], dtype=object)


def _type_rows(ranks: np.ndarray, cover: np.ndarray) -> pd.DataFrame:
    """HTA's type table of each rank (a row of ``cover``, its 16 exact-set times), all ranks at once:
    ``rank, kernel_type, sum_ns, pct``, sorted by rank, then time descending (ties: name)."""
    sets = cover.astype(np.int64) @ _SET_OF_MASK                   # [ranks, 9]: none, 7 HTA sets, OTHER
    base = sets[:, 1:_HTA_BITS + 1].sum(axis=1)
    r, col = np.nonzero(sets[:, 1:] > 0)
    col += 1
    sums = sets[r, col]
    pct = np.where(col <= _HTA_BITS, _round_pct(sums, base[r], 1), np.nan)
    frame = pd.DataFrame({"rank": ranks[r].astype(np.int64), "kernel_type": _SET_NAMES[col], "sum_ns": sums,
                          "pct": pct})
    frame = frame.sort_values(["rank", "sum_ns", "kernel_type"], ascending=[True, False, True], kind="stable")
    return frame.reset_index(drop=True)


def _exact_sums(group: np.ndarray, values: list[int], n: int) -> list[int]:
    """Per group, the sum of Python ints (exact: sums of squares overflow int64). A loop over
    table rows (names x ranks), not events."""
    out = [0] * n
    for g, v in zip(group.tolist(), values):
        out[g] += int(v)
    return out


def _std(count: int, total: int, sumsq: int) -> float:
    """Sample standard deviation from exact integer sums (pandas' ``std``; 0 for one value)."""
    if count < 2:
        return 0.0
    return math.sqrt(max(count * sumsq - total * total, 0) / (count * (count - 1)))


def _top_names(stats: pd.DataFrame, top: int, by: list[str]) -> pd.DataFrame:
    """Per ``by`` group (a rank, or all) and type, the top ``top`` names by summed time, then one
    ``others`` row of the rest; types in order of their time. One pass for every group."""
    keys = [*by, "kernel_type"]
    stats = stats.assign(type_ns=stats.groupby(keys)["sum_ns"].transform("sum"))
    stats = stats.sort_values([*by, "type_ns", "kernel_type", "sum_ns", "name"],
                              ascending=[True] * len(by) + [False, True, False, True], kind="stable")
    stats["pos"] = stats.groupby(keys, sort=False).cumcount()
    stats.loc[stats["pos"] >= top, "name"] = "others"
    grouped = stats.groupby([*keys, "name"], sort=False)
    out = grouped.agg(count=("count", "sum"), sum_ns=("sum_ns", "sum"), min_ns=("min_ns", "min"),
                      max_ns=("max_ns", "max"), type_ns=("type_ns", "first"), pos=("pos", "min")).reset_index()
    sumsq = _exact_sums(grouped.ngroup().to_numpy(), stats["sumsq"].tolist(), len(out))
    out["mean_ns"] = np.round(out["sum_ns"] / out["count"]).astype(np.int64)
    out["std_ns"] = [round(_std(n, s, q)) for n, s, q in zip(out["count"].tolist(), out["sum_ns"].tolist(), sumsq)]
    out["pct"] = _round_pct(out["sum_ns"], out["type_ns"], 2)
    out = out.sort_values([*by, "type_ns", "kernel_type", "pos"], ascending=[True] * len(by) + [False, True, True],
                          kind="stable")
    return out[[*by, *_NAME_COLUMNS]].reset_index(drop=True)


def _top_scope(rows: pd.DataFrame, label: str, top: int, kernel_ns: int) -> pd.DataFrame:
    """The top ``top`` spans by kernel time, an ``others`` row, then the rows of kernels no span took."""
    sums = rows.groupby("label", sort=False)[list(_LAUNCH_STATS)].sum().reset_index()
    special = sums["label"].isin([_NO_LAUNCH, *(outside for _, _, outside in _SCOPES)])
    if label != "cpu_op" and special.all():      # no rank has such spans (or no launch is known)
        sums = sums.iloc[:0]
        special = special.iloc[:0]
    named = sums[~special].sort_values(["gpu_ns", "label"], ascending=[False, True], kind="stable")
    head, rest = named.iloc[:top], named.iloc[top:]
    parts = [head]
    if len(rest):
        parts.append(pd.DataFrame({"label": ["others"], **{c: [int(rest[c].sum())] for c in _LAUNCH_STATS}}))
    parts.append(sums[special].sort_values("label"))
    out = pd.concat(parts, ignore_index=True).astype({c: "int64" for c in _LAUNCH_STATS})
    out["pct"] = _round_pct(out["gpu_ns"], kernel_ns, 2)
    return out.rename(columns={"label": label})[[label, *_LAUNCH_STATS, "pct"]]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Flat JSON records: NaN as null, numpy scalars as Python ones."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict(orient="records")]


@dataclass(frozen=True)
class KernelsResult:
    """The kernel breakdown (see the module docstring for every table's columns)."""

    types: pd.DataFrame
    types_by_rank: pd.DataFrame
    names: pd.DataFrame
    names_by_rank: pd.DataFrame
    scopes: dict[str, pd.DataFrame]
    num_kernels: int
    kernel_ns: int
    pct_base_ns: int
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_kernels": self.num_kernels, "kernel_ns": self.kernel_ns,
                               "pct_base_ns": self.pct_base_ns}
        for key in ("types", "types_by_rank", "names", "names_by_rank"):
            out[key] = _records(getattr(self, key))
        for key, _, _ in _SCOPES:
            out[key] = _records(self.scopes[key])
        out["notes"] = list(self.notes)
        return out


def _notes(p: _Partial, scopes: dict[str, pd.DataFrame], launch_rows: pd.DataFrame, kernel_ns: int,
           types: pd.DataFrame) -> list[str]:
    notes = []
    if not p.kernels:
        return ["no device kernels in the analysed events: every table is empty"]
    if not p.with_correlation:
        notes.append("the trace has no correlation ids linking kernels to their launches (a Chrome trace or "
                     "a profile without them): launchers, modules and annotations cannot be attributed")
    elif not p.has_cat:
        notes.append("the store has no Kineto event categories (cat): collected before they were kept, "
                     "re-collect it to attribute kernels to CPU ops")
    else:
        lost = launch_rows[launch_rows["label"] == _NO_LAUNCH]
        if len(lost) and int(lost["kernels"].sum()):
            share = 100.0 * int(lost["gpu_ns"].sum()) / kernel_ns if kernel_ns else 0.0
            notes.append(f"{int(lost['kernels'].sum()):,} kernels ({share:.1f} % of kernel time) have no recorded "
                         f"launching call (launched before profiling began, by an untraced thread, or a "
                         f"device-side transfer): they are the '{_NO_LAUNCH}' rows")
    if "OTHER" in types["kernel_type"].tolist():
        notes.append("OTHER kernels (names HTA counts neither as computation, communication nor memory: "
                     "syncs, stream waits ...) are outside HTA's type table: their row has no pct and "
                     "their time is not in pct_base_ns")
    if p.with_correlation and p.has_cat and scopes["modules"].empty:
        notes.append("no nn.Module spans (python_function 'nn.Module: X', recorded with with_stack=True): "
                     "modules is empty")
    return notes


class _Kernels:
    """``kernels``: HTA's GPU kernel breakdown of profiler traces."""

    name = "kernels"
    columns = _COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        if ctx.is_sohu:
            return ("kernels is HTA's GPU kernel breakdown of profiler traces; use `roofline` for Sohu runs "
                    "(time, FLOPs and bytes per op class against the chip's roofs)")
        if ctx.source not in _GPU_SOURCES:
            return f"kernels needs a GPU profiler trace (kineto or chrome), this store's source is '{ctx.source}'"
        if not device_profile(ctx).device:
            return "the trace has no GPU/device kernels (CPU-only profile): kernels does not apply"
        return None

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> _Partial:
        out = _Partial()
        if events.num_rows:
            for part in rank_partitions(analysed(events, ctx)):   # one rank; a table of several in tests
                _rank_partial(part, ctx, out)
        return out

    def combine(self, partials: list[_Partial], ctx: AnalysisContext) -> KernelsResult:
        p = _Partial()
        for q in partials:
            p.ranks += q.ranks
            p.coverage += q.coverage
            p.names += q.names
            p.scopes += q.scopes
            p.kernels += q.kernels
            p.with_correlation += q.with_correlation
            p.has_cat &= q.has_cat
        top = int(ctx.options.get("num_kernels") or 10)
        width = 1 << len(KERNEL_TYPES)
        cover = np.array(p.coverage, np.int64).reshape(-1, width)
        ranks = np.array(p.ranks, np.int64)
        types = _type_rows(np.zeros(1, np.int64), cover.sum(axis=0, keepdims=True)).drop(columns="rank")
        names = pd.concat(p.names, ignore_index=True) if p.names else _empty_names()
        kernel_ns = int(names["sum_ns"].sum())
        grouped = names.groupby(["kernel_type", "name"], sort=False)
        over = grouped.agg(count=("count", "sum"), sum_ns=("sum_ns", "sum"), min_ns=("min_ns", "min"),
                           max_ns=("max_ns", "max")).reset_index()
        over["sumsq"] = pd.Series(_exact_sums(grouped.ngroup().to_numpy(), names["sumsq"].tolist(), len(over)),
                                  dtype=object)
        rows = pd.concat(p.scopes, ignore_index=True) if p.scopes else _empty_scopes()
        scopes = {key: _top_scope(rows[rows["scope"] == key], label, top, kernel_ns) for key, label, _ in _SCOPES}
        return KernelsResult(
            types=types, types_by_rank=_type_rows(ranks, cover), names=_top_names(over, top, []),
            names_by_rank=_top_names(names, top, ["rank"]), scopes=scopes, num_kernels=top, kernel_ns=kernel_ns,
            pct_base_ns=int(types.loc[types["kernel_type"] != "OTHER", "sum_ns"].sum()),
            notes=_notes(p, scopes, rows[rows["scope"] == "launchers"], kernel_ns, types))


def _empty_names() -> pd.DataFrame:
    return pd.DataFrame({"rank": pd.Series(dtype="int64"), "name": pd.Series(dtype=object),
                         "kernel_type": pd.Series(dtype=object), **{c: pd.Series(dtype="int64") for c in _NAME_STATS},
                         "sumsq": pd.Series(dtype=object)})


def _empty_scopes() -> pd.DataFrame:
    return pd.DataFrame({"rank": pd.Series(dtype="int64"), "scope": pd.Series(dtype=object),
                         "label": pd.Series(dtype=object), **{c: pd.Series(dtype="int64") for c in _LAUNCH_STATS}})


KERNELS = _Kernels()
