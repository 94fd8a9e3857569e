"""`sohuprof check` speed: a deep check of a ~10M-event store vs a bare pyarrow read of all its columns.

Target (issue 11): ``sohuprof check`` (checksums of every file, every page decoded, values,
row counts and rank index verified) in under 2x the time of ``pyarrow.parquet.read_table`` of
every table file. Each side runs in a fresh process, best of ``--repeat`` after one warm-up run
(so both read from the page cache); the figures are whole-process wall times, and the time
inside the process after its imports.

    python benches/bench_check.py                   # builds a ~10M-event store once, cached
    python benches/bench_check.py --store STORE     # an existing store
    python benches/bench_check.py --rebuild         # rebuild the cached store

The cached store lives in ``$SOHUPROF_BENCH_CACHE`` (default ``/tmp/sohuprof-bench-cache``).

Measured (2 shared cores, quiet machine; 10,036,704 events, 6 files, 60 MB): bare read 0.81 s,
check 1.17 s per process: 1.45x. Under load from other jobs the two swing by up to 2x each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGET = 2.0
#: An emulated Llama-3-70B TP8 run of about 10M events (as benches/bench_analyze.py's "10M").
NODES, REQUESTS = 2, 2000

_BARE = """
import sys, time
t = time.perf_counter()
import pyarrow.parquet as pq
rows = sum(pq.read_table(f).num_rows for f in sys.argv[1:])
print(rows, time.perf_counter() - t)
"""

_CHECK = """
import sys, time
t = time.perf_counter()
from sohuprof.cli import cli
try:
    cli.main(["check", sys.argv[1]], prog_name="sohuprof", standalone_mode=False)
finally:
    print(time.perf_counter() - t, file=sys.stderr)
"""


def cached_store(rebuild: bool) -> Path:
    """The cached ~10M-event store, built with the emulator when missing (or without checksums)."""
    where = Path(os.environ.get("SOHUPROF_BENCH_CACHE", "/tmp/sohuprof-bench-cache")) / "check-10M"
    store = where / "store"
    manifest = store / "manifest.json"
    if not rebuild and manifest.is_file() and "files" in json.loads(manifest.read_text()):
        return store
    from sohuprof.collectors import collect
    from sohuprof.emulator import EmulatorConfig, emulate
    from sohuprof.hardware import load_hardware
    from sohuprof.models import load_model

    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    print(f"building a ~10M-event store in {where} (once) ...", flush=True)
    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=NODES, requests=REQUESTS)
    emulate(cfg, where / "run", show_progress=False)
    collect(where / "run", store, show_progress=False)
    shutil.rmtree(where / "run")
    return store


def _run(code: str, *args: str) -> tuple[float, str, str]:
    """Run ``code`` in a fresh interpreter: its wall time, stdout and stderr."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        raise SystemExit(f"child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return wall, done.stdout, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    store = args.store or cached_store(args.rebuild)
    files = sorted(str(p) for p in store.rglob("*.parquet"))
    size = sum(Path(f).stat().st_size for f in files) / 1e6
    events = json.loads((store / "manifest.json").read_text())["tables"]["events"]
    print(f"store: {store}: {events:,} events, {len(files)} files, {size:,.0f} MB")
    bare, check = [], []
    for i in range(args.repeat + 1):   # the first round warms the page cache
        wall, out, _ = _run(_BARE, *files)
        bare.append((wall, float(out.split()[1])))
        wall, out, err = _run(_CHECK, str(store))
        check.append((wall, float(err.strip().splitlines()[-1])))
        if i == 0:
            print(f"  {out.strip()}")
    bare_wall, bare_in = min(b[0] for b in bare[1:]), min(b[1] for b in bare[1:])
    check_wall, check_in = min(c[0] for c in check[1:]), min(c[1] for c in check[1:])
    ratio = check_wall / bare_wall
    print(f"bare pyarrow read_table of every file: {bare_wall:6.2f} s process ({bare_in:.2f} s in the interpreter)")
    print(f"sohuprof check:                        {check_wall:6.2f} s process ({check_in:.2f} s in the interpreter)")
    print(f"ratio check / bare read: {ratio:.2f}x process, {check_in / bare_in:.2f}x in the interpreter "
          f"(target < {TARGET}x) {'OK' if ratio < TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
