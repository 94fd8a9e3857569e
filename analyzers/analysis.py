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

from sohuprof.analyzers.instances import CollectiveIndex, MemberIndex
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
    requests, counters : pandas.DataFrame
        The store's small tables (collectives.parquet, the large one, is reached through
        :attr:`member_index` and :attr:`collective_index`).
    wall_start, wall_end : int
        The trace's window in ns (first event start, last event end).
    ranks : pandas.DataFrame
        ``rank, node, chip`` of every rank in the store.
    hta_compatible : bool
        Select events as Holistic Trace Analysis does (see :mod:`sohuprof.analyzers.reports.temporal`).
    """

    store: TraceStore
    source: str
    hardware: HardwareSpec | None
    requests: pd.DataFrame
    counters: pd.DataFrame
    wall_start: int
    wall_end: int
    ranks: pd.DataFrame
    hta_compatible: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    #: What combine-side work several reports share (the dependency graph and its replay).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    @cached_property
    def collective_index(self) -> CollectiveIndex:
        """The instance table of collectives.parquet (built on first use)."""
        try:
            index = CollectiveIndex.from_batches(self.store.stream_table("collectives"))
        except ValueError:        # not in the writer's order (written by something else): sort it
            index = CollectiveIndex.from_table(self.store.read("collectives").sort_by([("coll_id", "ascending"),
                                                                                    ("rank", "ascending")]))
        pa.default_memory_pool().release_unused()   # hand the decoded batches' pages back
        return index

    @cached_property
    def member_index(self) -> MemberIndex:
        """Each rank's collectives (coll_id, transfer start, kind, group), built on first use from
        the member rows alone: per-rank kernels need not wait for :attr:`collective_index`."""
        index = MemberIndex.from_batches(lambda columns: self.store.stream_table("collectives", columns=columns))
        pa.default_memory_pool().release_unused()
        return index

    @property
    def instances(self) -> pd.DataFrame:
        """One row per collective instance (see :func:`~sohuprof.analyzers.instances.collective_instances`)."""
        return self.collective_index.instances

    @property
    def collective_kinds(self) -> list[str]:
        """The collective kinds: what :meth:`rank_collectives`'s ``kind`` codes index."""
        return self.member_index.kinds

    @property
    def has_collectives(self) -> bool:
        """Does collectives.parquet have rows? (The manifest says, without reading it.)"""
        rows = (self.store.manifest.get("tables") or {}).get("collectives")
        return int(rows) > 0 if rows is not None else self.member_index.rows > 0

    @property
    def collectives(self) -> pd.DataFrame:
        """collectives.parquet as a DataFrame, read on each access (the analyses use the compact
        :attr:`collective_index`; this is for inspection and small stores)."""
        return self.store.read("collectives").to_pandas()

    def rank_collectives(self, rank: int) -> dict[str, np.ndarray]:
        """``rank``'s rows of collectives.parquet as arrays sorted by ``coll_id``: ``coll_id``,
        ``start``, ``kind`` (codes into :attr:`collective_kinds`) and ``group``."""
        return self.member_index.of_rank(rank)

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
    # Optional: ``columns_for(ctx)``, the columns read when they depend on the options.
    # Optional: ``on_request(ctx) -> bool``, True where it applies but runs only when named.
