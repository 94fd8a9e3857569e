"""Collect speed: `collect` of a raw Sohu run vs pyarrow alone writing the same events table.

Target (issue 3): collect within 1.5x the time of ``pyarrow.parquet.write_table`` of the events
table it produces (the table already in memory: the floor any collector pays).

    python benches/bench_collect.py [--requests 64] [--nodes 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model

TARGET = 1.5


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=args.nodes,
                         requests=args.requests)
    run = work / "run"
    summary = emulate(cfg, run, show_progress=False)
    raw_mb = sum(p.stat().st_size for p in run.rglob("*") if p.is_file()) / 1e6
    store = work / "store"

    def do_collect() -> None:
        collect(run, store, force=True, show_progress=False)

    t_collect = best_of(args.repeat, do_collect)
    events = ds.dataset(store / "events", partitioning="hive").to_table()
    t_write_default = best_of(args.repeat, lambda: pq.write_table(events, work / "plain.parquet"))
    t_write_zstd = best_of(args.repeat, lambda: pq.write_table(events, work / "zstd.parquet", compression="zstd"))
    n = events.num_rows
    print(f"events: {n:,} from {summary.ranks} chips ({raw_mb:.0f} MB raw)")
    print(f"collect (decode, align, convert, sort, write):     {t_collect:6.2f} s  {n / t_collect / 1e6:5.2f} M events/s")
    print(f"pyarrow write_table, default (snappy):              {t_write_default:6.2f} s")
    print(f"pyarrow write_table, zstd (the store's codec):      {t_write_zstd:6.2f} s")
    ratio = t_collect / t_write_default
    print(f"ratio collect / pyarrow write: {ratio:.2f}x (target <= {TARGET}x) "
          f"{'OK' if ratio <= TARGET else 'MISSED'}; vs zstd write {t_collect / t_write_zstd:.2f}x")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
