"""The Dask engine: the same per-rank chunk functions as Dask tasks, combined on the client.

Every task reads one rank's events from the store (a path every worker can reach: a shared file
system on a real cluster) and runs each analysis's ``chunk``; the client gathers the partials in
rank order and runs ``combine``, so the results are identical to the local engine's. With no
scheduler address a ``dask.distributed.LocalCluster`` is started (and stopped) for the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from typing import Any

from sohuprof.analyzers.analysis import Analysis, AnalysisContext
from sohuprof.analyzers.engine import plan_columns, read_rank
from sohuprof.analyzers.partition import Partition
from sohuprof.errors import SohuprofError

__all__ = ["run_analyses_dask"]


def _chunk_rank(ctx: AnalysisContext, analyses: list[Analysis], columns: list[str], rank: int, node: int) -> list[Any]:
    """One task: a rank's events through every analysis's chunk (runs on a worker)."""
    part = Partition(read_rank(ctx, columns, rank, node))
    return [a.chunk(part, ctx) for a in analyses]


def run_analyses_dask(ctx: AnalysisContext, analyses: Iterable[Analysis], *, scheduler: str | None = None,
                      n_workers: int = 2, advance: Callable[[float], None] | None = None) -> dict[str, Any]:
    """Run ``analyses`` as Dask tasks, one per rank; results equal :func:`run_analyses`'s.

    Raises
    ------
    ReportError
        An analysis does not apply to the store.
    SohuprofError
        Dask is not installed, or the scheduler cannot be reached.
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SohuprofError("--engine dask needs dask.distributed: pip install 'dask[distributed]'") from None
    analyses = list(analyses)
    columns = plan_columns(ctx, analyses)
    with ExitStack() as stack:
        if scheduler:
            try:
                client = stack.enter_context(Client(scheduler, timeout="5s"))
            except (OSError, TimeoutError) as exc:
                raise SohuprofError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        shared = client.scatter(ctx, broadcast=True)   # the small tables travel once per worker
        futures = [client.submit(_chunk_rank, shared, analyses, columns, rank, node, pure=False)
                   for rank, node in zip(ctx.ranks["rank"].tolist(), ctx.ranks["node"].tolist())]
        if advance is not None:
            for _ in as_completed(futures):
                advance(1)
        parts = client.gather(futures)
    partials = {a.name: [p[i] for p in parts] for i, a in enumerate(analyses)}
    return {a.name: a.combine(partials[a.name], ctx) for a in analyses}
