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

from sohuprof.analyzers.instances import collective_instances
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
        The store's small tables; ``collectives`` as written, sorted by ``(coll_id, rank)``,
        with a categorical ``kind``.
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
    def _collectives_by_rank(self) -> dict[str, np.ndarray]:
        """collectives.parquet's columns in ``(rank, coll_id)`` order (the file is in
        ``(coll_id, rank)`` order; a stable sort of small integers is a radix sort)."""
        c = self.collectives
        if not len(c):
            empty = np.zeros(0, np.int64)
            return {"row": empty, "rank": empty, "coll_id": empty, "start": empty, "kind": empty, "group": empty}
        rank = c["rank"].to_numpy()
        narrow = rank.astype(np.int16) if len(rank) and int(rank.max()) < 2**15 and int(rank.min()) >= 0 else rank
        row = np.argsort(narrow, kind="stable")
        return {"row": row, "rank": rank[row].astype(np.int64), "coll_id": c["coll_id"].to_numpy(np.int64)[row],
                "start": c["start"].to_numpy(np.int64)[row], "kind": c["kind"].cat.codes.to_numpy()[row],
                "group": c["group"].to_numpy(np.int64)[row]}

    def _rank_slice(self, rank: int) -> slice:
        lo, hi = np.searchsorted(self._collectives_by_rank["rank"], [rank, rank + 1])
        return slice(int(lo), int(hi))

    @property
    def collective_kinds(self) -> list[str]:
        """The ``kind`` categories of collectives.parquet (what :meth:`rank_collectives` codes)."""
        return [str(v) for v in self.collectives["kind"].cat.categories] if len(self.collectives) else []

    def rank_collectives(self, rank: int) -> dict[str, np.ndarray]:
        """``rank``'s rows of collectives.parquet as arrays sorted by ``coll_id``: ``coll_id``,
        ``start``, ``kind`` (codes into :attr:`collective_kinds`), ``group``, ``row`` (file row)."""
        sl = self._rank_slice(rank)
        return {k: v[sl] for k, v in self._collectives_by_rank.items()}

    def collectives_of(self, rank: int) -> pd.DataFrame:
        """``rank``'s rows of collectives.parquet, sorted by ``coll_id`` (``kind`` categorical)."""
        if not len(self.collectives):
            return self.collectives
        return self.collectives.iloc[self.rank_collectives(rank)["row"]]

    def last_arrival(self, rank: int, coll_id: np.ndarray) -> np.ndarray:
        """When each of ``rank``'s collectives ``coll_id`` began its transfer (the last member's
        arrival, from collectives.parquet); -1 where the instance is not in the table."""
        mine = self.rank_collectives(rank)
        ids, starts = mine["coll_id"], mine["start"]
        if not len(ids):
            return np.full(len(coll_id), -1, np.int64)
        pos = np.minimum(np.searchsorted(ids, coll_id), len(ids) - 1)
        return np.where(ids[pos] == coll_id, starts[pos], -1)

    @cached_property
    def instances(self) -> pd.DataFrame:
        """One row per collective instance (see :func:`~sohuprof.analyzers.instances.collective_instances`)."""
        return collective_instances(self.collectives)

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

    # Optional: ``prepare(ctx)``, context-level work ``combine`` will need that depends on no
    # partition (the collective instance table); the local engine runs it beside the chunks.
