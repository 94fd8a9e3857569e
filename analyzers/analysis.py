"""What an analysis is: a named chunk/combine pair over the store's event partitions.

Every analysis declares the event columns it reads, says whether it applies to a store, turns
one node partition of events into a small partial result (``chunk``), and merges the partials
into its result (``combine``). The engine reads each partition once, with the union of the
columns the chosen analyses need, and hands it to all of them; so memory is bounded by a
partition, and the same functions run in-process or as Dask tasks (after dask's
``<op>_chunk`` / ``<op>_combine`` / ``<op>_agg``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.errors import SohuprofError
from sohuprof.hardware import HardwareSpec
from sohuprof.store import TraceStore

__all__ = ["AnalysisContext", "Analysis", "ReportError"]


class ReportError(SohuprofError):
    """A report was asked for that is unknown or does not apply to the store."""


@dataclass(frozen=True)
class AnalysisContext:
    """What every analysis may read besides the event partitions (all small tables).

    Attributes
    ----------
    store : TraceStore
    source : str
        The store's source format: ``sohu-raw-trace``, ``kineto`` or ``chrome``.
    hardware : HardwareSpec or None
        The roofs (from the manifest of a Sohu run); None for profiler traces.
    collectives, requests, counters : pandas.DataFrame
        The store's small tables; ``collectives`` sorted by ``(rank, coll_id)`` with a
        categorical ``kind``.
    wall_start, wall_end : int
        The trace's window in ns (first event start, last event end).
    ranks : pandas.DataFrame
        ``rank, node, chip`` of every rank in the store.
    hta_compatible : bool
        Select events as Holistic Trace Analysis does (see :mod:`sohuprof.analyzers.temporal`).
    """

    store: TraceStore
    source: str
    hardware: HardwareSpec | None
    collectives: pd.DataFrame
    requests: pd.DataFrame
    counters: pd.DataFrame
    wall_start: int
    wall_end: int
    ranks: pd.DataFrame
    hta_compatible: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def _collectives_by_rank(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.collectives     # sorted by (rank, coll_id) by the engine
        if not len(c):
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        return (c["rank"].to_numpy().astype(np.int64), c["coll_id"].to_numpy().astype(np.int64),
                c["start"].to_numpy().astype(np.int64))

    def collectives_of(self, rank: int) -> pd.DataFrame:
        """``rank``'s rows of collectives.parquet, sorted by ``coll_id`` (``kind`` categorical)."""
        c = self.collectives
        if not len(c):
            return c
        ranks = self._collectives_by_rank[0]
        lo, hi = np.searchsorted(ranks, [rank, rank + 1])
        return c.iloc[lo:hi]

    def last_arrival(self, rank: int, coll_id: np.ndarray) -> np.ndarray:
        """When each of ``rank``'s collectives ``coll_id`` began its transfer (the last member's
        arrival, from collectives.parquet); -1 where the instance is not in the table."""
        ranks, ids, starts = self._collectives_by_rank
        lo, hi = np.searchsorted(ranks, [rank, rank + 1])
        ids, starts = ids[lo:hi], starts[lo:hi]
        pos = np.searchsorted(ids, coll_id)
        pos = np.minimum(pos, max(len(ids) - 1, 0))
        found = (len(ids) > 0) & (ids[pos] == coll_id) if len(ids) else np.zeros(len(coll_id), bool)
        return np.where(found, starts[pos] if len(ids) else -1, -1)

    @property
    def is_sohu(self) -> bool:
        return self.source == "sohu-raw-trace"

    @property
    def wall_ns(self) -> int:
        return self.wall_end - self.wall_start


class Analysis(Protocol):
    """One report. ``columns`` are the event columns ``chunk`` reads."""

    name: str
    columns: tuple[str, ...]

    def applies(self, ctx: AnalysisContext) -> str | None:
        """None when the report applies to ``ctx``'s store, else the reason it does not."""

    def chunk(self, events: pa.Table, ctx: AnalysisContext) -> Any:
        """A partial result (sufficient statistics) from one node partition's events."""

    def combine(self, partials: list[Any], ctx: AnalysisContext) -> Any:
        """The result from every partition's partial (any order, any grouping)."""
