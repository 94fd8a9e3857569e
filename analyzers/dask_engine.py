"""The Dask engine: the same per-rank chunk functions as Dask tasks, combined on the client.

Every task reads one rank's events from the store (a path every worker can reach: a shared file
system on a real cluster) and runs each analysis's ``chunk``; the client gathers the partials in
rank order and runs ``combine``, so the results are identical to the local engine's. With no
scheduler address a ``dask.distributed.LocalCluster`` is started (and stopped) for the run.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sohuprof.analyzers.analysis import Analysis, AnalysisContext
from sohuprof.analyzers.engine import plan_columns, read_rank
from sohuprof.analyzers.partition import Partition
from sohuprof.errors import SohuprofError
from sohuprof.store import TraceStore

__all__ = ["run_analyses_dask", "check_scheduler_address", "CONNECT_TIMEOUT_S"]

#: Seconds to reach a scheduler and to see its first worker: a wrong address fails fast.
CONNECT_TIMEOUT_S = 5
#: ``[tcp|tls://]host:port``: a host name, an IPv4 address or a bracketed IPv6 address.
_ADDRESS = re.compile(r"(?:(?P<proto>[a-z][a-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]+)")
_PROTOCOLS = ("tcp", "tls")

log = logging.getLogger("sohuprof")


@contextmanager
def _log_level(name: str, level: int) -> Iterator[None]:
    """``name``'s logger at ``level`` for the block, its own level restored after."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def check_scheduler_address(address: str) -> str:
    """Check a Dask scheduler address before anything connects to it; return it with its protocol.

    Parameters
    ----------
    address : str
        ``tcp://HOST:PORT``, ``tls://HOST:PORT`` or ``HOST:PORT`` (taken as tcp).

    Returns
    -------
    str
        The address with an explicit protocol.

    Raises
    ------
    SohuprofError
        The address is not of that form, names another protocol, or its port is not in 1..65535.

    Examples
    --------
    >>> check_scheduler_address("10.0.0.5:8786")
    'tcp://10.0.0.5:8786'
    """
    m = _ADDRESS.fullmatch(address.strip())
    usage = "expected tcp://HOST:PORT or HOST:PORT, such as tcp://10.0.0.5:8786"
    if m is None:
        raise SohuprofError(f"'--scheduler' {address!r} is not a scheduler address; {usage}")
    proto = m.group("proto") or "tcp"
    if proto not in _PROTOCOLS:
        raise SohuprofError(f"'--scheduler' {address!r}: protocol {proto!r} is not supported; {usage}")
    port = int(m.group("port"))
    if not 1 <= port <= 65535:
        raise SohuprofError(f"'--scheduler' {address!r}: port must be in 1..65535, got {port}")
    return f"{proto}://{m.group('host')}:{port}"


def _for_workers(ctx: AnalysisContext) -> AnalysisContext:
    """``ctx`` as the workers get it: the store by its absolute path (a worker started in another
    directory cannot resolve the client's relative one), without what the client cached on it."""
    store = TraceStore(ctx.store.path.absolute(), ctx.store.manifest)
    store.origin = ctx.store.origin
    return dataclasses.replace(ctx, store=store, memo={})


def _chunk_rank(ctx: AnalysisContext, analyses: list[Analysis], columns: list[str], rank: int, node: int) -> list[Any]:
    """One task: a rank's events through every analysis's chunk (runs on a worker)."""
    part = Partition(read_rank(ctx, columns, rank, node))
    return [a.chunk(part, ctx) for a in analyses]


def run_analyses_dask(ctx: AnalysisContext, analyses: Iterable[Analysis], *, scheduler: str | None = None,
                      n_workers: int = 2, advance: Callable[[float], None] | None = None,
                      dashboard: bool = False) -> dict[str, Any]:
    """Run ``analyses`` as Dask tasks, one per rank; results equal :func:`run_analyses`'s.

    The LocalCluster started without ``scheduler`` listens on 127.0.0.1 only and serves its
    dashboard (on 127.0.0.1:8787) only with ``dashboard``; distributed logs at WARNING unless
    the ``sohuprof`` logger is at INFO or below (``-v``).

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
    # distributed sets its own logger to INFO at import; its lines are noise unless -v asked.
    level = logging.WARNING if logging.getLogger("sohuprof").getEffectiveLevel() > logging.INFO else logging.INFO
    with ExitStack() as stack:
        stack.enter_context(_log_level("distributed", level))
        if scheduler:
            address = check_scheduler_address(scheduler)
            try:
                client = stack.enter_context(Client(address, timeout=f"{CONNECT_TIMEOUT_S}s"))
            except (OSError, TimeoutError, ValueError) as exc:   # refused, unresolvable, no answer
                raise SohuprofError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
            try:   # a scheduler without workers would leave every task waiting forever
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                raise SohuprofError(f"the Dask scheduler at {address} has no workers "
                                    f"(none joined within {CONNECT_TIMEOUT_S} s): {exc}") from None
        else:
            # dashboard_address=None still starts the scheduler's HTTP server on 0.0.0.0:8787;
            # without the dashboard it is bound to a free port of 127.0.0.1 and serves no pages.
            cluster = stack.enter_context(LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:8787" if dashboard else "127.0.0.1:0",
                scheduler_kwargs={"dashboard": dashboard}, silence_logs=level))
            if dashboard:
                log.warning("Dask dashboard at %s", cluster.dashboard_link)
            client = stack.enter_context(Client(cluster))
        shared = client.scatter(_for_workers(ctx), broadcast=True)   # small tables: once per worker
        futures = [client.submit(_chunk_rank, shared, analyses, columns, rank, node, pure=False)
                   for rank, node in zip(ctx.ranks["rank"].tolist(), ctx.ranks["node"].tolist())]
        if advance is not None:
            for _ in as_completed(futures):
                advance(1)
        parts = client.gather(futures)
    partials = {a.name: [p[i] for p in parts] for i, a in enumerate(analyses)}
    return {a.name: a.combine(partials[a.name], ctx) for a in analyses}
