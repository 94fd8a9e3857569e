"""Per-rank cost of each default report's chunk: the part of `analyze` the compiled kernels cut.

For the first ``--ranks`` ranks of STORE, each rank's events are read once, then every default
report's ``chunk`` runs on a fresh partition in the engine's order (the first one pays for
decoding the columns they share), timed in thread CPU time; context-level work (the member and
instance indexes) is built before and reported apart.

    python benches/bench_chunks.py --store STORE [--ranks 6]

Measured 2026-12-02 on the 10M-event store of bench_analyze (627k events a rank, 6 ranks), the
tree before the kernels (e907d8a, run from an unpacked copy with ``python -S``) against this one,
back to back on a loaded machine: all default chunks 464 -> 225 ms a rank (739 -> 358 ns an
event); findings (the dependency graph, and the shared column decoding) 312 -> 124, roofline
76 -> 55, stalls 63 -> 32, comm 11 -> 11; sequences alone (``--reports sequences``) 344 -> 119.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from sohuprof.analyzers.engine import build_context, plan_columns, rank_partitions
from sohuprof.analyzers.partition import Partition
from sohuprof.analyzers.report import _OVERLAP, REPORTS, _choose, load_analysis
from sohuprof.store import open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--ranks", type=int, default=6)
    parser.add_argument("--reports", help="comma-separated (default: what `sohuprof analyze STORE` runs)")
    args = parser.parse_args()
    store = open_store(args.store)
    ctx = build_context(store)
    names = args.reports.split(",") if args.reports else _choose(None, ctx)
    # `comm` shows HTA's comm/comp overlap too: run_reports adds that analysis beside it.
    analyses = [load_analysis(REPORTS[n]) for n in names] + ([load_analysis(_OVERLAP)] if "comm" in names else [])
    analyses = [a for a in analyses if a.applies(ctx) is None]
    columns = plan_columns(ctx, analyses)
    t = time.thread_time()
    ctx.rank_collectives(0)
    for a in analyses:
        if hasattr(a, "prepare"):
            a.prepare(ctx)
    print(f"context (member and instance indexes, prepare): {(time.thread_time() - t) * 1e3:.0f} ms, once")
    tables = []
    for table in rank_partitions(ctx, columns):
        tables.append(table)
        if len(tables) == args.ranks:
            break
    cost: dict[str, list[float]] = {a.name: [] for a in analyses}
    for table in tables:           # a loop over ranks
        part = Partition(table)
        for a in analyses:
            t = time.thread_time()
            a.chunk(part, ctx)
            cost[a.name].append(time.thread_time() - t)
    rows = sum(t.num_rows for t in tables) / len(tables)
    print(f"{len(tables)} ranks of {rows:,.0f} events on average; thread CPU ms a rank (median, min-max):")
    for name, times in cost.items():
        ms = [x * 1e3 for x in times]
        print(f"  {name:14s} {statistics.median(ms):7.1f}  ({min(ms):.1f}-{max(ms):.1f})")
    total = sum(statistics.median(v) for v in cost.values()) * 1e3
    print(f"  {'all':14s} {total:7.1f}  = {total * 1e6 / rows:.0f} ns an event")


if __name__ == "__main__":
    main()
