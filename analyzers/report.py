"""Run the reports a user asks for on a store: pick, check, compute; results keep their order.

Reports are looked up by name in :data:`REPORTS`; each names the module attribute holding its
:class:`~sohuprof.analyzers.analysis.Analysis`. The default is every report that applies to the
store's source. ``comm`` carries HTA's comm/comp overlap under its ``overlap`` key.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sohuprof.analyzers.analysis import Analysis, AnalysisContext, ReportError
from sohuprof.analyzers.engine import Selection, build_context, run_analyses
from sohuprof.store import TraceStore

__all__ = ["REPORTS", "Reports", "load_analysis", "run_reports"]

#: Report name -> "module:attribute" of its Analysis, in the order reports are shown.
REPORTS: dict[str, str] = {
    "findings": "sohuprof.analyzers.diagnosis.findings:FINDINGS",
    "summary": "sohuprof.analyzers.reports.summary:SUMMARY",
    "roofline": "sohuprof.analyzers.reports.roofline:ROOFLINE",
    "stalls": "sohuprof.analyzers.reports.stalls:STALLS",
    "comm": "sohuprof.analyzers.reports.comm:COMM",
    "serving": "sohuprof.analyzers.reports.serving:SERVING",
    "temporal": "sohuprof.analyzers.reports.temporal:TEMPORAL",
    "sequences": "sohuprof.analyzers.reports.sequences:SEQUENCES",
    "kernels": "sohuprof.analyzers.reports.kernels:KERNELS",
    "annotations": "sohuprof.analyzers.reports.annotations:ANNOTATIONS",
    "idle": "sohuprof.analyzers.reports.idle:IDLE",
    "launches": "sohuprof.analyzers.reports.launches:LAUNCHES",
    "queue": "sohuprof.analyzers.reports.queue:QUEUE",
    "memory_bw": "sohuprof.analyzers.reports.memory_bw:MEMORY_BW",
    "memory": "sohuprof.analyzers.reports.memory:MEMORY",
    "critical_path": "sohuprof.analyzers.diagnosis.critical_path:CRITICAL_PATH",
    "whatif": "sohuprof.analyzers.diagnosis.whatif:WHATIF",
}
_OVERLAP = "sohuprof.analyzers.reports.temporal:OVERLAP"


def load_analysis(spec: str) -> Analysis:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Reports:
    """Results by report name, plus the context they were computed in."""

    results: dict[str, Any]
    ctx: AnalysisContext
    overlap: Any = None   # HTA's comm/comp overlap, shown as part of ``comm``

    def to_json(self) -> dict[str, Any]:
        """One object whose keys are the reports (the JSON contract)."""
        out = {name: result.to_json() for name, result in self.results.items()}
        if "comm" in out:
            out["comm"]["overlap"] = self.overlap.to_json().get("ranks", []) if self.overlap is not None else []
        return out


def _choose(names: Sequence[str] | None, ctx: AnalysisContext) -> list[str]:
    if names:
        unknown = [n for n in names if n not in REPORTS]
        if unknown:
            close = difflib.get_close_matches(unknown[0], REPORTS, n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ReportError(f"unknown report {', '.join(map(repr, unknown))}: {guess}choose from {', '.join(REPORTS)}")
        return list(dict.fromkeys(names))
    return [n for n in REPORTS if _in_default(load_analysis(REPORTS[n]), ctx)]


def _in_default(analysis: Analysis, ctx: AnalysisContext) -> bool:
    """Does a plain ``analyze`` run it? When it applies, unless it asks to run only when named
    (``on_request(ctx)``: a costly report with little to say on this kind of store)."""
    if analysis.applies(ctx) is not None:
        return False
    on_request = getattr(analysis, "on_request", None)
    return not (on_request is not None and on_request(ctx))


def run_reports(store: TraceStore, names: Sequence[str] | None = None, *, hta_compatible: bool = False,
                engine: str = "local", scheduler: str | None = None, dask_dashboard: bool = False,
                advance: Callable[[float], None] | None = None, what_if: Sequence[str] = (),
                by: str = "op", selection: Selection | None = None) -> Reports:
    """Compute the named reports (default: all that apply) over ``store``.

    ``engine`` is ``local`` (in-process, a rank at a time) or ``dask`` (the same chunk functions
    as Dask tasks on ``scheduler``, or on a LocalCluster started for the run, serving its dashboard
    only with ``dask_dashboard``); both give the same results. ``by`` groups the roofline's rows
    by op class (``op``) or op name too (``name``). ``selection`` (ranks, a time window) limits
    every report to those events.

    Raises
    ------
    ReportError
        A name is unknown, or a named report does not apply to this store.
    """
    from sohuprof.analyzers.reports.roofline import GROUPINGS

    if by not in GROUPINGS:
        raise ReportError(f"'by' must be one of {', '.join(map(repr, GROUPINGS))}; got {by!r}")
    ctx = build_context(store, hta_compatible=hta_compatible, options={"what_if": list(what_if), "by": by},
                        selection=selection)
    chosen = _choose(names, ctx)
    analyses = [load_analysis(REPORTS[n]) for n in chosen]
    overlap = load_analysis(_OVERLAP) if "comm" in chosen else None
    if overlap is not None and overlap.applies(ctx) is None:
        analyses.append(overlap)
    if engine == "local":
        results = run_analyses(ctx, analyses, advance=advance)
    elif engine == "dask":
        from sohuprof.analyzers.dask_engine import run_analyses_dask

        results = run_analyses_dask(ctx, analyses, scheduler=scheduler, advance=advance,
                                    dashboard=dask_dashboard)
    else:
        raise ReportError(f"unknown engine {engine!r}: choose 'local' or 'dask'")
    return Reports({n: results[n] for n in chosen}, ctx, results.get(overlap.name) if overlap else None)
