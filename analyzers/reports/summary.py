"""The one-glance summary: how long, how many nodes, ranks and events, from what source."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.partition import Partition

__all__ = ["SUMMARY", "Summary"]


@dataclass(frozen=True)
class Summary:
    wall_ns: int
    nodes: int
    ranks: int
    events: int
    source: str

    def to_json(self) -> dict:
        return {"wall_ns": self.wall_ns, "nodes": self.nodes, "ranks": self.ranks, "events": self.events,
                "source": self.source}


class _Summary:
    name = "summary"
    columns = ("rank",)

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> int:
        return events.num_rows

    def combine(self, partials: list[int], ctx: AnalysisContext) -> Summary:
        return Summary(wall_ns=ctx.wall_ns, nodes=int(ctx.ranks["node"].nunique()), ranks=len(ctx.ranks),
                       events=int(sum(partials)), source=ctx.source)


SUMMARY = _Summary()
