"""Analyze speed: all reports vs a bare pyarrow read of the columns they need.

Target (issue 4): every report on a 10M-event store in at most 3x the time of reading the
columns they need with pyarrow; memory bounded by one rank's events.

    python benches/bench_analyze.py                 # builds a ~10M-event emulated store
    python benches/bench_analyze.py --store STORE   # an existing store
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

from sohuprof.analyzers.report import REPORTS, load_analysis, run_reports
from sohuprof.analyzers.engine import build_context
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

TARGET = 3.0


def make_store(work: Path, requests: int, nodes: int) -> Path:
    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=nodes, requests=requests)
    emulate(cfg, work / "run", show_progress=False)
    collect(work / "run", work / "store", show_progress=False)
    shutil.rmtree(work / "run")
    return work / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--requests", type=int, default=288)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    path = args.store or make_store(work, args.requests, args.nodes)
    store = open_store(path)
    ctx = build_context(store)
    names = [n for n in REPORTS if load_analysis(REPORTS[n]).applies(ctx) is None]
    columns = sorted({c for n in names for c in load_analysis(REPORTS[n]).columns})
    def timed(fn, repeat: int = 3) -> float:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return best

    dataset = ds.dataset(path / "events", partitioning="hive")
    rows = dataset.count_rows()
    t_read = timed(lambda: dataset.to_table(columns=columns))
    t_read_1 = timed(lambda: dataset.to_table(columns=columns, use_threads=False))
    t_all = timed(lambda: run_reports(store, names))
    print(f"store: {rows:,} events; reports: {', '.join(names)}; columns: {', '.join(columns)}")
    print(f"bare pyarrow read of those columns: {t_read:6.2f} s (threads), {t_read_1:.2f} s (one thread)")
    for name in names:
        t = time.perf_counter()
        run_reports(store, [name])
        print(f"  {name:10s} alone: {time.perf_counter() - t:6.2f} s")
    print(f"all reports:                        {t_all:6.2f} s  ({rows / t_all / 1e6:.2f} M events/s)")
    print(f"ratio: {t_all / t_read:.2f}x the threaded read, {t_all / t_read_1:.2f}x the one-thread read "
          f"(target <= {TARGET}x) {'OK' if t_all / t_read <= TARGET else 'MISSED'}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
