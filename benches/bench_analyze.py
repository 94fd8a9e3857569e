"""Analyze speed and memory: all reports vs a bare pyarrow read of the columns they need, and how
the cost grows from 1M to 50M events.

Targets (issues 4, 7 and 17): the default reports (what `sohuprof analyze STORE` runs) on a
10M-event store in at most 3x the time of reading the columns they need with pyarrow; cost growing no faster than n log n; collect and analyze of a
50M-event trace under 2 GB peak RSS.

    python benches/bench_analyze.py                 # builds a ~10M-event emulated store
    python benches/bench_analyze.py --store STORE   # an existing store
    python benches/bench_analyze.py --sweep         # ~1M, 10M, 50M events: time, events/s, peak RSS

Every measurement of the sweep runs in a fresh process, so each peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds

from sohuprof.analyzers.engine import build_context, columns_of, run_analyses
from sohuprof.analyzers.report import _OVERLAP, REPORTS, _choose, load_analysis, run_reports
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

TARGET = 3.0
MEMORY_TARGET_GB = 2.0
#: Emulated Llama-3-70B TP8 runs of about 1M, 10M and 50M events: (nodes, requests).
SWEEP = {"1M": (1, 60), "10M": (2, 2000), "50M": (4, 11400)}


def make_run(work: Path, requests: int, nodes: int) -> Path:
    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=nodes, requests=requests)
    emulate(cfg, work / "run", show_progress=False)
    return work / "run"


def make_store(work: Path, requests: int, nodes: int) -> Path:
    collect(make_run(work, requests, nodes), work / "store", show_progress=False)
    shutil.rmtree(work / "run")
    return work / "store"


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _needed(path: Path) -> tuple[list[str], list[str]]:
    """The reports a plain ``sohuprof analyze STORE`` runs (every one that applies, less those
    that run only when named) and the event columns they read."""
    store = open_store(path)
    ctx = build_context(store)
    names = _choose(None, ctx)
    columns = sorted({c for n in names for c in columns_of(load_analysis(REPORTS[n]), ctx)} | {"rank"})
    return names, columns


def phases(store, names: list[str]) -> str:
    """The read-and-chunk phase and each combine of one run of ``names``, in seconds."""
    ctx = build_context(store)
    analyses = [load_analysis(REPORTS[n]) for n in names]
    if "comm" in names:     # run_reports adds HTA's overlap beside comm
        analyses += [a for a in [load_analysis(_OVERLAP)] if a.applies(ctx) is None]
    timings: dict[str, float] = {}
    run_analyses(ctx, analyses, timings=timings)
    return ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if v >= 0.005)


def measure_analyze(path: Path, repeat: int) -> dict:
    """In this process: all reports (their peak RSS), then a warm bare read of the needed columns
    (which holds them all in memory, so it comes after the peak is taken)."""
    names, columns = _needed(path)
    store = open_store(path)
    t_all = _best(lambda: run_reports(store, names), repeat)
    peak = _peak_rss_gb()
    dataset = ds.dataset(path / "events", partitioning="hive")
    t_read = _best(lambda: dataset.to_table(columns=columns), repeat)
    return {"events": dataset.count_rows(), "read_s": t_read, "analyze_s": t_all, "peak_rss_gb": peak}


def measure_collect(run: Path, out: Path) -> dict:
    t = time.perf_counter()
    collect(run, out, show_progress=False)
    return {"collect_s": time.perf_counter() - t, "peak_rss_gb": _peak_rss_gb()}


def _child(*args: str) -> dict:
    """Run one measurement in a fresh interpreter (its own peak RSS) and return its JSON."""
    done = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def sweep(work: Path, sizes: list[str], repeat: int) -> None:
    rows = []
    for size in sizes:
        nodes, requests = SWEEP[size]
        where = work / size
        where.mkdir(parents=True, exist_ok=True)
        run = make_run(where, requests, nodes)
        col = _child("--measure-collect", str(run), str(where / "store"))
        shutil.rmtree(run)
        ana = _child("--measure-analyze", str(where / "store"), "--repeat", str(repeat))
        rows.append({"size": size, **ana, "collect_s": col["collect_s"], "collect_rss_gb": col["peak_rss_gb"]})
        shutil.rmtree(where)
        r = rows[-1]
        print(f"{size:>4s}: {r['events']:>11,} events | collect {r['collect_s']:6.2f} s, peak {r['collect_rss_gb']:.2f} GB"
              f" | read {r['read_s']:5.2f} s, analyze {r['analyze_s']:6.2f} s ({r['analyze_s'] / r['read_s']:5.2f}x),"
              f" {r['events'] / r['analyze_s'] / 1e6:5.2f} M events/s, peak {r['peak_rss_gb']:.2f} GB", flush=True)
    for a, b in zip(rows, rows[1:]):
        # Time grows as n^k: k = 1 is linear; n log n between 1M and 50M is k ~ 1.06.
        k = math.log(b["analyze_s"] / a["analyze_s"]) / math.log(b["events"] / a["events"])
        nlogn = math.log(b["events"] * math.log(b["events"]) / (a["events"] * math.log(a["events"]))) \
            / math.log(b["events"] / a["events"])
        print(f"{a['size']} -> {b['size']}: time grows as n^{k:.2f} (n log n would be n^{nlogn:.2f}) "
              f"{'OK' if k <= nlogn + 0.05 else 'FASTER THAN n log n'}")
    worst = max(max(r["peak_rss_gb"], r["collect_rss_gb"]) for r in rows)
    print(f"peak RSS over the sweep: {worst:.2f} GB (target < {MEMORY_TARGET_GB} GB) "
          f"{'OK' if worst < MEMORY_TARGET_GB else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--requests", type=int, default=SWEEP["10M"][1])
    parser.add_argument("--nodes", type=int, default=SWEEP["10M"][0])
    parser.add_argument("--sweep", action="store_true", help="measure ~1M, 10M and 50M events")
    parser.add_argument("--sizes", default=",".join(SWEEP), help="sizes for --sweep (of: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--measure-analyze", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-collect", type=Path, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_analyze:
        print(json.dumps(measure_analyze(args.measure_analyze, args.repeat)))
        return
    if args.measure_collect:
        print(json.dumps(measure_collect(*args.measure_collect)))
        return
    work = Path(tempfile.mkdtemp(prefix="sohuprof-bench-"))
    try:
        if args.sweep:
            sweep(work, [s for s in args.sizes.split(",") if s], args.repeat)
            return
        path = args.store or make_store(work, args.requests, args.nodes)
        names, columns = _needed(path)
        store = open_store(path)
        dataset = ds.dataset(path / "events", partitioning="hive")
        rows = dataset.count_rows()
        t_read = _best(lambda: dataset.to_table(columns=columns), args.repeat)
        t_read_1 = _best(lambda: dataset.to_table(columns=columns, use_threads=False), args.repeat)
        print(f"store: {rows:,} events; reports: {', '.join(names)}; columns: {', '.join(columns)}")
        print(f"bare pyarrow read of those columns: {t_read:6.2f} s (threads), {t_read_1:.2f} s (one thread)")
        for name in names:
            print(f"  {name:10s} alone: {_best(lambda: run_reports(store, [name]), args.repeat):6.2f} s")
        t_all = _best(lambda: run_reports(store, names), args.repeat)
        print(f"default reports together:           {t_all:6.2f} s  ({rows / t_all / 1e6:.2f} M events/s)")
        print(f"  where it goes (one more run): {phases(store, names)}")
        print(f"ratio: {t_all / t_read:.2f}x the threaded read, {t_all / t_read_1:.2f}x the one-thread read "
              f"(target <= {TARGET}x) {'OK' if t_all / t_read <= TARGET else 'MISSED'}")
        print(f"peak RSS: {_peak_rss_gb():.2f} GB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
