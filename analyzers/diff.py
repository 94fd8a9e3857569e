"""Two runs side by side: what changed per kernel or op name, per rank and per collective kind.

``sohuprof diff A B`` reads two trace stores of any source (Sohu runs, Kineto traces) and says
how B differs from A. Deltas are always ``B - A``; ``*_pct`` is ``100 * delta / A`` (null where A
is 0).

Per name (``names``) this follows Holistic Trace Analysis' trace diff
(``hta/trace_diff.py``: ``TraceDiff.compare_traces`` and ``ops_diff``): each side's count and
total duration of every op or kernel name and their differences. ``status`` folds ``ops_diff``'s
classes into four: ``added`` (only in B), ``removed`` (only in A; HTA's "deleted"), ``changed``
(in both, count or time differs) and ``same``. Where sohuprof differs from HTA:

- HTA compares one rank and one iteration of each trace (the first, by default); here every
  rank the two stores share (matched by rank number) over the whole trace. When the rank sets
  differ, ``notes`` says so and only the shared ranks are compared per name; when they share
  none, each store's ranks are compared as a whole (``top`` then has no rank).
- HTA groups by ``(cat, name)`` and then sums by name; here the key is ``(name, category)``,
  so a CPU op and a kernel of one name stay apart.
- HTA's ``increased`` / ``decreased`` / ``unchanged`` look only at the count (a kernel twice
  as slow is "unchanged"); here ``changed`` means count or time changed.
- ns, not HTA's us. ``match_names="short"`` is HTA's ``use_short_name``
  (``hta/utils/utils.py:shorten_name``: template and function arguments and return types
  removed, memory kernels kept whole) plus a trailing number after ``#``, ``_``, ``:``, ``.``,
  ``-`` or a space dropped (``ProfilerStep#12`` and ``ProfilerStep#551`` match).

Beyond HTA:

- ``wait_delta_ns``: the change in the part of a collective's time spent waiting for the last
  member to arrive (``min(last arrival, end) - arrive``, what ``stalls`` calls sync wait). A
  straggler's peers wait longer in their collectives: that is the straggler's change showing
  on them, so ``top`` (the ``--top`` largest changes per rank and name) ranks by the change of
  the op's own time, ``|delta_ns - wait_delta_ns|``.
- ``ranks``: per rank and category (compute, communication, memory, host), the busy time (the
  union of the category's events on the rank, every stream or thread together).
- ``breakdown``: per rank, the store's own time split, from the existing reports: HTA's temporal
  breakdown for GPU profiler traces (:mod:`sohuprof.analyzers.reports.temporal`: idle, compute,
  non_compute, kernel_time) and the stall partition for Sohu runs
  (:mod:`sohuprof.analyzers.reports.stalls`: compute, memory_stall, comm_transfer, sync_wait,
  idle).
- ``collectives``: per kind, instances, buffer bytes and transfer time as the ``comm`` report
  counts them (:func:`sohuprof.analyzers.instances.collective_instances`: an instance's largest
  member buffer, from the last arrival to the end), over instances with a compared rank.

Everything is grouped with numpy (codes, ``bincount``) and pandas ``groupby``; one engine pass per
store, a rank at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.activity import collective_rows
from sohuprof.analyzers.analysis import Analysis, AnalysisContext
from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.intervals import union_length
from sohuprof.analyzers.partition import Partition, as_partition
from sohuprof.analyzers.reports.stalls import PARTS as STALL_PARTS
from sohuprof.analyzers.reports.stalls import STALLS
from sohuprof.analyzers.reports.temporal import TEMPORAL
from sohuprof.store import TraceStore

__all__ = ["DiffResult", "Profile", "MATCH_NAMES", "NAME_COLUMNS", "TOP_COLUMNS", "RANK_COLUMNS",
           "BREAKDOWN_COLUMNS", "COLLECTIVE_COLUMNS", "diff_profiles", "diff_stores", "normalise_names",
           "profile", "short_name"]

#: ``match_names`` choices: names as recorded, or shortened (see the module docstring).
MATCH_NAMES = ("exact", "short")
#: Columns of ``names`` (``top`` adds ``rank`` first).
NAME_COLUMNS = ("name", "category", "count_a", "count_b", "time_a_ns", "time_b_ns", "delta_ns", "delta_pct",
                "wait_delta_ns", "status")
TOP_COLUMNS = ("rank", *NAME_COLUMNS)
RANK_COLUMNS = ("rank", "category", "time_a_ns", "time_b_ns", "delta_ns", "delta_pct")
BREAKDOWN_COLUMNS = ("rank", "report", "part", "time_a_ns", "time_b_ns", "delta_ns", "delta_pct")
COLLECTIVE_COLUMNS = ("kind", "count_a", "count_b", "count_delta", "bytes_a", "bytes_b", "bytes_delta",
                      "time_a_ns", "time_b_ns", "delta_ns", "delta_pct")
_NAME_STATS = ("count", "time_ns", "wait_ns")
_TEMPORAL_PARTS = ("idle", "compute", "non_compute", "kernel_time")


# --- one store's profile ---------------------------------------------------------------------

def _empty(columns: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


_NAMES_SCHEMA = {"rank": "int64", "name": "object", "category": "object", "count": "int64", "time_ns": "int64",
                 "wait_ns": "int64"}
_BUSY_SCHEMA = {"rank": "int64", "category": "object", "time_ns": "int64"}
_BREAKDOWN_SCHEMA = {"rank": "int64", "report": "object", "part": "object", "time_ns": "int64"}
_COLL_SCHEMA = {"kind": "object", "count": "int64", "bytes": "int64", "time_ns": "int64"}


def _sync_wait(part: Partition, ctx: AnalysisContext) -> np.ndarray:
    """Per event, the part of it spent waiting for a collective's last member (0 elsewhere)."""
    wait = np.zeros(len(part), np.int64)
    if not ctx.has_collectives or not part.has("coll_id"):
        return wait
    order, where = part.grouped("category")
    rows = order[where.get("communication", slice(0, 0))]      # the order collective_rows uses
    _, mine, pos, found = collective_rows(part, ctx)
    if not found.any():
        return wait
    hit = rows[found]
    last = mine["start"][pos[found]]
    wait[hit] = np.clip(np.minimum(last, part.end[hit]) - part.ts[hit], 0, part.ints("dur")[hit])
    return wait


def _rank_profile(events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One rank's per-(name, category) count, time and wait, and its busy time per category."""
    part = as_partition(events)
    name, names = part.codes("name")
    cat, cats = part.codes("category")
    key = name * (len(cats) + 1) + cat
    uniq, inverse = np.unique(key, return_inverse=True)
    # float64 sums of int64 ns are exact below 2**53 ns (104 days) per name and rank.
    time = np.bincount(inverse, weights=part.ints("dur"), minlength=len(uniq)).astype(np.int64)
    wait = np.bincount(inverse, weights=_sync_wait(part, ctx), minlength=len(uniq)).astype(np.int64)
    labels = np.array([*names, None], dtype=object)
    cat_labels = np.array([*cats, None], dtype=object)
    per_name = pd.DataFrame({"rank": part.rank, "name": labels[uniq // (len(cats) + 1)],
                             "category": cat_labels[uniq % (len(cats) + 1)],
                             "count": np.bincount(inverse, minlength=len(uniq)).astype(np.int64),
                             "time_ns": time, "wait_ns": wait})
    busy = union_length(part.ts, part.end, cat, n_keys=len(cats) + 1)
    present = np.flatnonzero(np.bincount(cat, minlength=len(cats) + 1))
    per_cat = pd.DataFrame({"rank": part.rank, "category": cat_labels[present], "time_ns": busy[present]})
    return per_name, per_cat


class _Profile:
    """What a diff reads of one store's events, rank by rank (not a report of its own)."""

    name = "diff_profile"
    columns = ("rank", "ts", "dur", "name", "category", "coll_id")

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
        if not events.num_rows:
            return _empty(_NAMES_SCHEMA), _empty(_BUSY_SCHEMA)
        return _rank_profile(events, ctx)

    def combine(self, partials: list[tuple[pd.DataFrame, pd.DataFrame]],
                ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
        names = pd.concat([_empty(_NAMES_SCHEMA), *(p[0] for p in partials)], ignore_index=True)
        busy = pd.concat([_empty(_BUSY_SCHEMA), *(p[1] for p in partials)], ignore_index=True)
        return names, busy


_PROFILE = _Profile()


def _breakdown_analysis(ctx: AnalysisContext) -> Analysis | None:
    """The store's own time split: stalls for a Sohu run, HTA's temporal breakdown for a GPU trace."""
    if ctx.is_sohu:
        return STALLS if STALLS.applies(ctx) is None else None
    return TEMPORAL if TEMPORAL.applies(ctx) is None else None


def _breakdown_long(report: str | None, result: Any) -> pd.DataFrame:
    """One row per (rank, part) of a stalls or temporal result, in ns."""
    if report is None or not len(result.ranks):
        return _empty(_BREAKDOWN_SCHEMA)
    ranks = result.ranks
    if report == "stalls":
        wide = ranks[["rank", *STALL_PARTS]].rename(columns={p: p.removesuffix("_ns") for p in STALL_PARTS})
    else:   # temporal reports us (HTA's unit); its us are exact ns / 1000, so rounding recovers ns
        wide = pd.DataFrame({"rank": ranks["rank"], **{p: (ranks[f"{p}_us"] * 1e3).round() for p in _TEMPORAL_PARTS}})
    long = wide.melt(id_vars="rank", var_name="part", value_name="time_ns")
    long["report"] = report
    long["time_ns"] = long["time_ns"].astype("int64")
    return long[list(_BREAKDOWN_SCHEMA)].astype({"rank": "int64"})


def _collectives(ctx: AnalysisContext, ranks: list[int] | None) -> pd.DataFrame:
    """Per kind: instances with a member among ``ranks`` (None: all), their bytes and transfer time."""
    if not ctx.has_collectives:
        return _empty(_COLL_SCHEMA)
    inst = ctx.instances
    if ranks is not None and set(ranks) != set(ctx.ranks["rank"].tolist()):
        ids = [ctx.rank_collectives(r)["coll_id"] for r in ranks]     # a loop over ranks
        inst = inst[np.isin(inst["coll_id"].to_numpy(), np.concatenate([np.zeros(0, np.int64), *ids]))]
    out = (inst.assign(kind=inst["kind"].astype(str))
           .groupby("kind", as_index=False)
           .agg(count=("coll_id", "size"), bytes=("size", "sum"), time_ns=("time", "sum")))
    return out.astype({"count": "int64", "bytes": "int64", "time_ns": "int64"})[list(_COLL_SCHEMA)]


@dataclass(frozen=True)
class Profile:
    """What a diff compares of one store (small tables, per rank where it says so).

    Attributes
    ----------
    label : str
        What the user named (the store, or the run or trace it was collected from).
    source : str
        The store's source format (``sohu-raw-trace``, ``kineto``, ``chrome``).
    wall_ns : int
        The trace window: first event start to last event end.
    ranks : tuple of int
        Ranks with events.
    names : pandas.DataFrame
        ``rank, name, category, count, time_ns, wait_ns``.
    busy : pandas.DataFrame
        ``rank, category, time_ns``: the union of each category's events on the rank.
    breakdown : pandas.DataFrame
        ``rank, report, part, time_ns``: the stalls or temporal split (empty when neither applies).
    collectives : pandas.DataFrame
        ``kind, count, bytes, time_ns``.
    breakdown_report : str or None
        ``stalls``, ``temporal`` or None.
    """

    label: str
    source: str
    wall_ns: int
    ranks: tuple[int, ...]
    names: pd.DataFrame
    busy: pd.DataFrame
    breakdown: pd.DataFrame = field(default_factory=lambda: _empty(_BREAKDOWN_SCHEMA))
    collectives: pd.DataFrame = field(default_factory=lambda: _empty(_COLL_SCHEMA))
    breakdown_report: str | None = None


def profile(ctx: AnalysisContext, *, collective_ranks: list[int] | None = None, label: str | None = None) -> Profile:
    """One engine pass over ``ctx``'s store: per-name totals, busy time, the breakdown, collectives.

    Parameters
    ----------
    ctx : AnalysisContext
        The store's context (:func:`~sohuprof.analyzers.engine.build_context`).
    collective_ranks : list of int, optional
        Count only collective instances with a member among these ranks (default: all).
    label : str, optional
        What to call the store (default: its origin).
    """
    breakdown = _breakdown_analysis(ctx)
    analyses: list[Analysis] = [_PROFILE] + ([breakdown] if breakdown is not None else [])
    results = run_analyses(ctx, analyses)
    names, busy = results[_PROFILE.name]
    report = breakdown.name if breakdown is not None else None
    return Profile(label=label or str(ctx.store.origin), source=ctx.source, wall_ns=ctx.wall_ns,
                   ranks=tuple(int(r) for r in ctx.ranks["rank"].tolist()), names=names, busy=busy,
                   breakdown=_breakdown_long(report, results[report]) if report else _empty(_BREAKDOWN_SCHEMA),
                   collectives=_collectives(ctx, collective_ranks), breakdown_report=report)


# --- names -------------------------------------------------------------------------------------

_MEMORY_KERNEL = re.compile(r"(^(hip)?Memcpy)|(^(hip)?Memset)|(^dma)")   # HTA's MemoryKernelGroupingPattern
_TRAILING_NUMBER = re.compile(r"(?<=[#_:.\- ])\d+$")


def short_name(name: str) -> str:
    """HTA's ``shorten_name`` (template and function arguments, return types removed), then a
    trailing number after a separator dropped.

    Examples
    --------
    >>> short_name("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >(int, T1)")
    'at::native::vectorized_elementwise_kernel'
    >>> short_name("ProfilerStep#551")
    'ProfilerStep#'
    """
    out = name
    if not _MEMORY_KERNEL.match(name) and ("<" in name or "(" in name):
        stack: list[str] = []
        for c in name.replace("->", ""):       # a loop over one distinct name's characters
            if c in ">)":
                opener = "<" if c == ">" else "("
                while stack and stack[-1] != opener:
                    stack.pop()
                if stack:
                    stack.pop()
            else:
                stack.append(c)
        out = "".join(stack).split(" ")[-1]
    return _TRAILING_NUMBER.sub("", out)


def normalise_names(names: pd.Series, how: str) -> pd.Series:
    """``names`` matched as ``how`` says (``exact`` or ``short``), decided once per distinct name."""
    if how not in MATCH_NAMES:
        raise ValueError(f"'match_names' must be one of {', '.join(map(repr, MATCH_NAMES))}, got {how!r}")
    if how == "exact":
        return names
    codes, uniques = pd.factorize(names, use_na_sentinel=False)
    short = np.array([short_name(u) if isinstance(u, str) else u for u in uniques], dtype=object)
    return pd.Series(short[codes], index=names.index, name=names.name)


# --- comparing ---------------------------------------------------------------------------------

def _pct(delta: pd.Series, base: pd.Series) -> pd.Series:
    base = base.astype("float64")
    return (100.0 * delta.astype("float64") / base.where(base != 0)).round(2)


def _side_by_side(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], stats: tuple[str, ...]) -> pd.DataFrame:
    """Outer join of A's and B's sums of ``stats`` by ``keys``: ``<stat>_a``, ``<stat>_b`` (0 where absent)."""
    sums = [side.groupby(keys, dropna=False)[list(stats)].sum() for side in (a, b)]
    both = sums[0].merge(sums[1], how="outer", left_index=True, right_index=True, suffixes=("_a", "_b"))
    both = both.fillna(0).reset_index()
    return both.astype({f"{s}_{x}": "int64" for s in stats for x in "ab"})


def _name_table(a: pd.DataFrame, b: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    out = _side_by_side(a, b, keys, _NAME_STATS)
    out = out.rename(columns={"time_ns_a": "time_a_ns", "time_ns_b": "time_b_ns"})
    out["delta_ns"] = out["time_b_ns"] - out["time_a_ns"]
    out["delta_pct"] = _pct(out["delta_ns"], out["time_a_ns"])
    out["wait_delta_ns"] = out["wait_ns_b"] - out["wait_ns_a"]
    same = (out["count_a"] == out["count_b"]) & (out["delta_ns"] == 0) & (out["wait_delta_ns"] == 0)
    out["status"] = np.select([out["count_a"] == 0, out["count_b"] == 0, same], ["added", "removed", "same"],
                              "changed")
    own = (out["delta_ns"] - out["wait_delta_ns"]).abs()
    order = np.lexsort((out["name"].astype(str).to_numpy(), -out["delta_ns"].abs().to_numpy(), -own.to_numpy()))
    return out.iloc[order].reset_index(drop=True)


def _rank_table(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], a_ranks: set[int],
                b_ranks: set[int]) -> pd.DataFrame:
    """Per-rank totals side by side; a rank one store lacks has null on that side (not 0)."""
    out = _side_by_side(a, b, keys, ("time_ns",)).rename(columns={"time_ns_a": "time_a_ns", "time_ns_b": "time_b_ns"})
    out = out.astype({"time_a_ns": "Int64", "time_b_ns": "Int64"})
    out.loc[~out["rank"].isin(a_ranks), "time_a_ns"] = pd.NA
    out.loc[~out["rank"].isin(b_ranks), "time_b_ns"] = pd.NA
    out["delta_ns"] = out["time_b_ns"] - out["time_a_ns"]
    out["delta_pct"] = _pct(out["delta_ns"].astype("Float64"), out["time_a_ns"].astype("Float64"))
    return out.sort_values(keys).reset_index(drop=True)


def _collective_table(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    out = _side_by_side(a, b, ["kind"], ("count", "bytes", "time_ns"))
    out = out.rename(columns={"time_ns_a": "time_a_ns", "time_ns_b": "time_b_ns"})
    out["count_delta"] = out["count_b"] - out["count_a"]
    out["bytes_delta"] = out["bytes_b"] - out["bytes_a"]
    out["delta_ns"] = out["time_b_ns"] - out["time_a_ns"]
    out["delta_pct"] = _pct(out["delta_ns"], out["time_a_ns"])
    return out[list(COLLECTIVE_COLUMNS)]


def _records(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """JSON rows: ints as ints, missing values as None."""
    frame = frame[list(columns)]
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


@dataclass(frozen=True)
class DiffResult:
    """B compared with A (see the module docstring); :meth:`to_json` is the JSON contract."""

    a: Profile
    b: Profile
    names: pd.DataFrame
    top: pd.DataFrame
    ranks: pd.DataFrame
    breakdown: pd.DataFrame
    collectives: pd.DataFrame
    notes: list[str]
    compared_ranks: tuple[int, ...]
    match_names: str = "exact"

    @property
    def added(self) -> pd.DataFrame:
        return self.names[self.names["status"] == "added"]

    @property
    def removed(self) -> pd.DataFrame:
        return self.names[self.names["status"] == "removed"]

    def to_json(self) -> dict[str, Any]:
        wall_delta = self.b.wall_ns - self.a.wall_ns
        added = self.added.rename(columns={"count_b": "count", "time_b_ns": "time_ns"})
        removed = self.removed.rename(columns={"count_a": "count", "time_a_ns": "time_ns"})
        return {
            "wall_a_ns": self.a.wall_ns, "wall_b_ns": self.b.wall_ns, "wall_delta_ns": wall_delta,
            "wall_delta_pct": round(100.0 * wall_delta / self.a.wall_ns, 2) if self.a.wall_ns else None,
            "ranks_compared": len(self.compared_ranks), "match_names": self.match_names,
            "runs": [{"run": side, "path": p.label, "source": p.source, "ranks": len(p.ranks), "wall_ns": p.wall_ns,
                      "breakdown": p.breakdown_report} for side, p in (("a", self.a), ("b", self.b))],
            "notes": list(self.notes),
            "top": _records(self.top, TOP_COLUMNS),
            "added": _records(added, ("name", "category", "count", "time_ns")),
            "removed": _records(removed, ("name", "category", "count", "time_ns")),
            "ranks": _records(self.ranks, RANK_COLUMNS),
            "breakdown": _records(self.breakdown, BREAKDOWN_COLUMNS),
            "collectives": _records(self.collectives, COLLECTIVE_COLUMNS),
            "names": _records(self.names, NAME_COLUMNS),
        }


def _ranks_text(ranks: list[int]) -> str:
    listed = ", ".join(map(str, ranks[:8])) + (f" and {len(ranks) - 8} more" if len(ranks) > 8 else "")
    return f"rank{'s' if len(ranks) > 1 else ''} {listed}"


def diff_profiles(a: Profile, b: Profile, *, top: int = 20, match_names: str = "exact") -> DiffResult:
    """Compare two stores' profiles: B against A (see the module docstring).

    Parameters
    ----------
    a, b : Profile
        From :func:`profile`.
    top : int, default 20
        Rows of ``top``: the largest changes per (rank, name).
    match_names : {"exact", "short"}, default "exact"
        How names are matched (see :func:`short_name`).

    Raises
    ------
    ValueError
        ``top`` is below 1 or ``match_names`` is unknown.
    """
    if top < 1:
        raise ValueError(f"'top' must be at least 1, got {top}")
    a_ranks, b_ranks = set(a.ranks), set(b.ranks)
    common = sorted(a_ranks & b_ranks)
    notes: list[str] = []
    if a_ranks != b_ranks:
        only_a, only_b = sorted(a_ranks - b_ranks), sorted(b_ranks - a_ranks)
        parts = ([f"{_ranks_text(only_a)} only in A"] if only_a else []) + \
                ([f"{_ranks_text(only_b)} only in B"] if only_b else [])
        notes.append("the rank sets differ (" + "; ".join(parts) + "): " +
                     (f"names, top changes and collectives compare the {len(common)} shared rank(s) only"
                      if common else "no rank is shared, so each store's ranks are compared as a whole"))
    if a.source != b.source:
        notes.append(f"A is a {a.source} store and B a {b.source} one: names and breakdowns rarely match")
    if a.breakdown_report != b.breakdown_report and a.breakdown_report and b.breakdown_report:
        notes.append(f"A's breakdown is {a.breakdown_report} and B's {b.breakdown_report}: their parts do not pair")
    if match_names != "exact":
        notes.append(f"names matched as '{match_names}' (templates, arguments and trailing numbers dropped)")
    names_a, names_b = (p.names.assign(name=normalise_names(p.names["name"], match_names)) for p in (a, b))
    if common:
        names_a, names_b = names_a[names_a["rank"].isin(common)], names_b[names_b["rank"].isin(common)]
    per_name = _name_table(names_a, names_b, ["name", "category"])
    if common:
        per_rank = _name_table(names_a, names_b, ["rank", "name", "category"])
    else:
        per_rank = per_name.assign(rank=pd.Series(pd.NA, index=per_name.index, dtype="Int64"))
    return DiffResult(a=a, b=b, names=per_name, top=per_rank[per_rank["status"] != "same"].head(top),
                      ranks=_rank_table(a.busy, b.busy, ["rank", "category"], a_ranks, b_ranks),
                      breakdown=_rank_table(a.breakdown, b.breakdown, ["rank", "report", "part"], a_ranks, b_ranks),
                      collectives=_collective_table(a.collectives, b.collectives), notes=notes,
                      compared_ranks=tuple(common or sorted(a_ranks | b_ranks)), match_names=match_names)


def diff_stores(a: TraceStore, b: TraceStore, *, top: int = 20, match_names: str = "exact") -> DiffResult:
    """Profile both stores (one pass each, a rank at a time) and compare them (:func:`diff_profiles`)."""
    normalise_names(pd.Series([], dtype=object), match_names)      # a bad choice fails before any read
    if top < 1:
        raise ValueError(f"'top' must be at least 1, got {top}")
    ctx_a, ctx_b = build_context(a), build_context(b)
    common = sorted(set(ctx_a.ranks["rank"].tolist()) & set(ctx_b.ranks["rank"].tolist())) or None
    return diff_profiles(profile(ctx_a, collective_ranks=common), profile(ctx_b, collective_ranks=common),
                         top=top, match_names=match_names)
