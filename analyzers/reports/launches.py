"""HTA's kernel launch statistics: each kernel's runtime call, its duration and the launch delay.

Holistic Trace Analysis' ``get_cuda_kernel_launch_stats`` (``hta/analyzers/cuda_kernel_analysis.py``,
``CudaKernelAnalysis.cuda_kernel_launch_stats``; its outlier rules in
``visualize_cuda_launch_kernel_info``), per rank, on the device events of
:mod:`sohuprof.analyzers.device_events` (kernels, memcpy and memset: HTA's default
``include_memory_events=True``) joined to their launching runtime call by correlation:

- ``runtime_ns``: the runtime call's duration (HTA's ``cpu_duration``); ``kernel_ns`` the
  kernel's (``gpu_duration``);
- ``delay_ns``: from the *end* of the runtime call to the kernel's start, clipped at 0
  (HTA: ``launch_delay = ts_gpu - ts_cpu - dur_cpu``, ``clip(lower=0)``);
- ``short_kernels``: the runtime call took at most ``runtime_cutoff`` and the kernel took less
  than it (HTA: ``cpu_duration <= runtime_cutoff & gpu_duration < cpu_duration``);
  ``runtime_outliers``: the call took more than ``runtime_cutoff`` (50 us, HTA's default);
  ``delay_outliers``: a delay over ``launch_delay_cutoff`` (100 us).

Where sohuprof deliberately differs: HTA takes only the runtime calls named ``cudaLaunchKernel``,
``cudaLaunchKernelExC``, ``cudaMemcpyAsync``, ``cudaMemsetAsync`` and MTIA's
``runFunction - job_prep_and_submit_for_execution``; here every CPU call linked to a device event
by correlation counts, so ROCm's ``hipLaunchKernel``, ``hipExtModuleLaunchKernel``,
``hipExtLaunchKernel``, ``hipMemcpyAsync`` ... and ``cuLaunchKernel`` (which HTA's queue-length
mask lists, ``hta/common/trace_symbol_table.py``) are counted too, each under its own name in
``by_runtime``. And a CUDA/HIP graph launch (``cudaGraphLaunch``, ``hipGraphLaunch``: a runtime
call whose name has ``GraphLaunch``, or any call linked to more than one device event) shares one
correlation among all the kernels of its graph: those kernels are not per-kernel launches (the
delay of the graph's 400th kernel from the launch says nothing about launch overhead), they are
reported per launch in ``graph_launches``: its kernels, the delay to the first one, and the span
from the first kernel's start to the last one's end. With ``--hta-compatible`` the events are
HTA's selection (see ``device_events``).

JSON: ``summary`` (per rank: device events, how many were launched one by one, by a graph, or
have no recorded launch (these three add up to ``device_events``), delay and runtime
percentiles, the outlier counts), ``by_runtime`` (the same per runtime call name), ``outliers``
(the ``top`` longest delays per rank) and ``graph_launches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.device_events import COLUMNS, analysed, check_applies, device_streams, quantiles, rows
from sohuprof.analyzers.intervals import union_length
from sohuprof.analyzers.partition import Partition, as_partition, events_table, rank_partitions

__all__ = ["LAUNCHES", "LaunchesResult", "RUNTIME_CUTOFF_NS", "LAUNCH_DELAY_CUTOFF_NS", "TOP", "SUMMARY_COLUMNS",
           "BY_RUNTIME_COLUMNS", "OUTLIER_COLUMNS", "GRAPH_COLUMNS", "launch_stats"]

#: HTA's ``runtime_cutoff`` default (50 us).
RUNTIME_CUTOFF_NS = 50_000
#: HTA's ``launch_delay_cutoff`` default (100 us).
LAUNCH_DELAY_CUTOFF_NS = 100_000
#: Longest delays kept per rank in ``outliers``.
TOP = 20

_STATS = ("p50", "p90", "p99", "max")
_BRIEF = ("p50", "p90", "max")
SUMMARY_COLUMNS = ("rank", "device_events", "launches", "graph_kernels", "unlaunched", "graph_launches",
                   *(f"delay_{s}_ns" for s in _STATS), *(f"runtime_{s}_ns" for s in _STATS),
                   "short_kernels", "runtime_outliers", "delay_outliers")
BY_RUNTIME_COLUMNS = ("rank", "runtime", "launches", *(f"delay_{s}_ns" for s in _BRIEF),
                      *(f"runtime_{s}_ns" for s in _BRIEF), "kernel_p50_ns", "short_kernels", "runtime_outliers",
                      "delay_outliers")
OUTLIER_COLUMNS = ("rank", "kernel", "runtime", "stream", "ts", "delay_ns", "runtime_ns", "kernel_ns", "correlation")
GRAPH_COLUMNS = ("rank", "runtime", "correlation", "ts", "runtime_ns", "kernels", "streams", "delay_ns", "span_ns",
                 "busy_ns")
_COUNTS = ("rank", "device_events", "launches", "graph_kernels", "unlaunched", "graph_launches", "short_kernels",
           "runtime_outliers", "delay_outliers", "kernels", "streams", "stream", "ts", "correlation")


def _ints(columns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c for c in columns if c.endswith("_ns") or c in _COUNTS)


@dataclass(frozen=True)
class _Cutoffs:
    runtime_ns: int = RUNTIME_CUTOFF_NS
    delay_ns: int = LAUNCH_DELAY_CUTOFF_NS


def _stats(prefix: str, values: np.ndarray, which: tuple[str, ...] = _STATS) -> dict[str, float]:
    """``{prefix}_p50_ns`` ... ``{prefix}_max_ns`` of ``values`` (NaN for none)."""
    q = dict(zip(("p50", "p90", "p99", "max"), quantiles(values, (0.5, 0.9, 0.99, 1.0))))
    return {f"{prefix}_{s}_ns": q[s] for s in which}


def _flags(delay: np.ndarray, runtime: np.ndarray, kernel: np.ndarray, cut: _Cutoffs) -> dict[str, int]:
    return {"short_kernels": int(((runtime <= cut.runtime_ns) & (kernel < runtime)).sum()),
            "runtime_outliers": int((runtime > cut.runtime_ns).sum()),
            "delay_outliers": int((delay > cut.delay_ns).sum())}


def _rank_launches(part: Partition, rank: int, cut: _Cutoffs, top: int) -> dict[str, pd.DataFrame]:
    """One rank's summary, by-runtime, outlier and graph-launch rows."""
    s = device_streams(part)
    if not len(s):                                    # a CPU-only rank: no row (as in temporal)
        return {key: pd.DataFrame(columns=list(columns)) for key, columns in _EMPTY.items()}
    ts, end = part.ts, part.end
    name_codes, values = part.codes("name")
    names = [*values, None]                           # a null name's code is len(values)
    graph_name = np.array(["GraphLaunch" in v for v in values] + [False])    # decided once per name
    linked = np.flatnonzero(s.launch >= 0)            # positions in the sorted device events
    rt = s.launch[linked]
    corr = part.ints("correlation", -1)[s.rows[linked]]
    _, inv, per_corr = np.unique(corr, return_inverse=True, return_counts=True)
    graph = graph_name[name_codes[rt]] | (per_corr[inv] > 1)

    one = linked[~graph]
    rt1 = rt[~graph]
    k_rows = s.rows[one]
    runtime = part.ints("dur")[rt1]
    kernel = s.end[one] - s.ts[one]
    delay = np.maximum(s.ts[one] - end[rt1], 0)

    g_pos, g_rt = linked[graph], rt[graph]
    g_keys, g_first, g_inv = np.unique(corr[graph], return_index=True, return_inverse=True)
    n_graph = len(g_keys)
    summary = {"rank": rank, "device_events": len(s), "launches": len(one), "graph_kernels": len(g_pos),
               "unlaunched": len(s) - len(linked), "graph_launches": n_graph,
               **_stats("delay", delay), **_stats("runtime", runtime), **_flags(delay, runtime, kernel, cut)}

    by_rt = []
    rt_names = name_codes[rt1]
    for code in np.unique(rt_names):                  # a loop over runtime call names
        m = rt_names == code
        by_rt.append({"rank": rank, "runtime": names[code],
                      "launches": int(m.sum()), **_stats("delay", delay[m], _BRIEF),
                      **_stats("runtime", runtime[m], _BRIEF), "kernel_p50_ns": quantiles(kernel[m], (0.5,))[0],
                      **_flags(delay[m], runtime[m], kernel[m], cut)})
    by_runtime = pd.DataFrame(by_rt, columns=list(BY_RUNTIME_COLUMNS))
    if len(by_runtime):
        by_runtime = by_runtime.sort_values("launches", ascending=False, kind="stable").reset_index(drop=True)

    worst = np.argsort(-delay, kind="stable")[:top]
    outliers = pd.DataFrame({"rank": rank, "kernel": [names[c] for c in name_codes[k_rows[worst]]],
                             "runtime": [names[c] for c in name_codes[rt1[worst]]], "stream": s.stream[one[worst]],
                             "ts": s.ts[one[worst]], "delay_ns": delay[worst], "runtime_ns": runtime[worst],
                             "kernel_ns": kernel[worst], "correlation": part.ints("correlation")[k_rows[worst]]},
                            columns=list(OUTLIER_COLUMNS))

    graphs = pd.DataFrame(columns=list(GRAPH_COLUMNS))
    if n_graph:
        first_ts = np.full(n_graph, np.iinfo(np.int64).max)
        last_end = np.full(n_graph, np.iinfo(np.int64).min)
        np.minimum.at(first_ts, g_inv, s.ts[g_pos])
        np.maximum.at(last_end, g_inv, s.end[g_pos])
        kernels = np.bincount(g_inv, minlength=n_graph)
        pairs = np.unique(np.stack([g_inv, s.stream[g_pos]]), axis=1)
        launch = g_rt[g_first]
        graphs = pd.DataFrame({"rank": rank, "runtime": [names[c] for c in name_codes[launch]], "correlation": g_keys,
                               "ts": ts[launch], "runtime_ns": part.ints("dur")[launch], "kernels": kernels,
                               "streams": np.bincount(pairs[0], minlength=n_graph),
                               "delay_ns": np.maximum(first_ts - end[launch], 0), "span_ns": last_end - first_ts,
                               "busy_ns": union_length(s.ts[g_pos], s.end[g_pos], g_inv, n_keys=n_graph)},
                              columns=list(GRAPH_COLUMNS))
    return {"summary": pd.DataFrame([summary], columns=list(SUMMARY_COLUMNS)), "by_runtime": by_runtime,
            "outliers": outliers, "graph_launches": graphs}


_EMPTY = {"summary": SUMMARY_COLUMNS, "by_runtime": BY_RUNTIME_COLUMNS, "outliers": OUTLIER_COLUMNS,
          "graph_launches": GRAPH_COLUMNS}


def _finish(partials: list[dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    out = {}
    for key, columns in _EMPTY.items():               # four tables
        parts = [p[key] for p in partials if len(p[key])]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(columns))
        # Ranks in order; each rank's rows keep the order chunk gave them.
        out[key] = frame.sort_values("rank", kind="stable").reset_index(drop=True)
    return out


def launch_stats(events: pd.DataFrame | pa.Table, *, runtime_cutoff_ns: int = RUNTIME_CUTOFF_NS,
                 launch_delay_cutoff_ns: int = LAUNCH_DELAY_CUTOFF_NS, top: int = TOP) -> dict[str, pd.DataFrame]:
    """HTA's kernel launch statistics per rank (see the module docstring).

    Parameters
    ----------
    events : pandas.DataFrame or pyarrow.Table
        Events of one or more ranks: ``ts``, ``dur`` (ns), ``name``, ``category``, ``stream`` and
        ``correlation`` (``rank`` absent: one rank, 0).
    runtime_cutoff_ns, launch_delay_cutoff_ns : int
        HTA's ``runtime_cutoff`` (50 us) and ``launch_delay_cutoff`` (100 us), in ns.
    top : int, default 20
        Longest delays kept per rank in ``outliers``.

    Returns
    -------
    dict of str to pandas.DataFrame
        ``summary``, ``by_runtime``, ``outliers``, ``graph_launches`` (:data:`SUMMARY_COLUMNS`, ...).

    Raises
    ------
    ValueError
        A needed column is missing.
    """
    table = events_table(events, ("ts", "dur", "name", "category", "stream", "correlation"))
    cut = _Cutoffs(runtime_cutoff_ns, launch_delay_cutoff_ns)
    return _finish([_rank_launches(p, p.rank, cut, top) for p in rank_partitions(table)])


@dataclass(frozen=True)
class LaunchesResult:
    """Per rank: launch ``summary``, ``by_runtime``, delay ``outliers`` and ``graph_launches``."""

    summary: pd.DataFrame
    by_runtime: pd.DataFrame
    outliers: pd.DataFrame
    graph_launches: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {key: rows(getattr(self, key), columns, _ints(columns)) for key, columns in _EMPTY.items()}


class _Launches:
    """``launches``: HTA's kernel launch statistics (runtime call, launch delay, outliers)."""

    name = "launches"
    columns = COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return check_applies(ctx, self.name, "kernel launch statistics")

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> dict[str, pd.DataFrame]:
        part = as_partition(events)
        if not part.num_rows:
            return {key: pd.DataFrame(columns=list(columns)) for key, columns in _EMPTY.items()}
        cut = _Cutoffs(int(ctx.options.get("runtime_cutoff_ns", RUNTIME_CUTOFF_NS)),
                       int(ctx.options.get("launch_delay_cutoff_ns", LAUNCH_DELAY_CUTOFF_NS)))
        return _rank_launches(analysed(part, ctx), part.rank, cut, int(ctx.options.get("top", TOP)))

    def combine(self, partials: list[dict[str, pd.DataFrame]], ctx: AnalysisContext) -> LaunchesResult:
        return LaunchesResult(**_finish(partials))


LAUNCHES = _Launches()
