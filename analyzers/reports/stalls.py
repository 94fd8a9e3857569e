"""Where every nanosecond of every rank went: the stall partition.

Each rank's window (the whole trace's, so ranks compare) is split so the parts sum exactly to
its wall time, every instant going to the first class that covers it:

1. ``compute``: compute ops, minus the memory-stall part each op reports (placed at its end);
2. ``memory_stall``: that part, and memory ops (DMA copies) not hidden under compute;
3. ``comm_transfer``: a collective's transfer (from the last member's arrival to its end) not
   hidden under compute or memory;
4. ``sync_wait``: a collective's wait (from this rank's arrival to the last member's);
5. ``idle``: the rest: host and launch work, dependencies, nothing to do.

Communication that overlaps compute is reported beside the partition (``overlapped_comm_ns``),
as is the part of idle covered by host work (``idle_host_ns``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.activity import breakdown
from sohuprof.analyzers.activity import COLUMNS as ACTIVITY_COLUMNS
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.partition import Partition, as_partition

__all__ = ["STALLS", "StallsResult", "PARTS"]

#: The partition, in priority order; idle is what no class covers.
PARTS = ("compute_ns", "memory_stall_ns", "comm_transfer_ns", "sync_wait_ns", "idle_ns")
_COLUMNS = ("rank", "node", "chip", "wall_ns", *PARTS, "overlapped_comm_ns", "idle_host_ns")


@dataclass(frozen=True)
class StallsResult:
    """One row per rank: the partition (sums exactly to ``wall_ns``) and what lies beside it."""

    ranks: pd.DataFrame

    def to_json(self) -> dict:
        cols = ["rank", "node", "chip", "wall_ns", "compute_ns", "memory_stall_ns", "sync_wait_ns",
                "comm_transfer_ns", "idle_ns", "overlapped_comm_ns", "idle_host_ns"]
        return {"ranks": self.ranks[cols].astype("int64").to_dict(orient="records")}


def rank_stalls(events: pa.Table | Partition, ctx: AnalysisContext) -> pd.DataFrame:
    """The stall partition of one rank's events (a one-row DataFrame)."""
    part = as_partition(events)
    split = breakdown(part, ctx)
    rank = part.rank
    info = ctx.ranks[ctx.ranks["rank"] == rank]
    row = {"rank": rank, "node": int(info["node"].iloc[0]) if len(info) else 0,
           "chip": int(info["chip"].iloc[0]) if len(info) else 0, "wall_ns": ctx.wall_ns,
           "compute_ns": split.compute, "memory_stall_ns": split.memory_stall,
           "comm_transfer_ns": split.comm_transfer, "sync_wait_ns": split.sync_wait, "idle_ns": split.idle,
           "overlapped_comm_ns": split.overlapped_comm, "idle_host_ns": split.idle_host}
    return pd.DataFrame([row], columns=list(_COLUMNS))


class _Stalls:
    name = "stalls"
    columns = ACTIVITY_COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None if ctx.wall_ns > 0 else "the store has no events"

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> pd.DataFrame:
        if not events.num_rows:
            return pd.DataFrame(columns=list(_COLUMNS))
        return rank_stalls(events, ctx)

    def combine(self, partials: list[pd.DataFrame], ctx: AnalysisContext) -> StallsResult:
        parts = [p for p in partials if len(p)]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(_COLUMNS))
        return StallsResult(table.sort_values("rank").reset_index(drop=True))


STALLS = _Stalls()
