"""What the diagnosis layer costs a user who types ``sohuprof analyze``: fresh processes on a
~10M-event store, this tree against the tree from before the diagnosis (issue 12's start).

Target (issue 12): critical path, root causes and findings add at most as much time as all of
the earlier reports take together; memory bounded as the other analyses. Measured, A B A B ...:

- ``before``: the earlier tree's reports (summary, roofline, stalls, comm, serving);
- ``after``: this tree's default ``analyze`` (the same reports, comm with root causes, plus
  findings and critical_path);
- ``diagnosis``: this tree's ``--report findings,critical_path`` alone.

    python benches/bench_diagnosis.py [--store PATH] [--baseline 1d1972a] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accounting import median, python, unpack  # noqa: E402  (the same fresh-process helpers)
from bench_analyze import SWEEP, make_store  # noqa: E402

BEFORE = "summary,roofline,stalls,comm,serving"
_RUN = """
import resource, sys, time
t = time.perf_counter()
from sohuprof.cli import cli
try:
    cli(sys.argv[1:], prog_name="sohuprof", standalone_mode=False)
finally:
    import sohuprof.analyzers.report as r
    print("BENCH", time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, r.__file__, file=sys.stderr)
"""


def measure(args: list[str], path: Path | None) -> tuple[float, float]:
    """Wall seconds (the process, start-up included) and peak RSS (MB) of ``sohuprof ARGS``."""
    import time

    argv, env, cwd = python(path)
    t = time.perf_counter()
    out = subprocess.run([*argv, "-c", _RUN, *args], env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    line = [x for x in out.stderr.splitlines() if x.startswith("BENCH")][-1]
    return wall, float(line.split()[2]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--baseline", default="1d1972a")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sohuprof-bench-diag-") as tmp:
        work = Path(tmp)
        store = args.store or make_store(work, SWEEP["10M"][1], SWEEP["10M"][0])
        events = json.loads((store / "manifest.json").read_text())["tables"]["events"]
        base = unpack(args.baseline, work / "base")
        out = work / "out.json"
        runs = {"before": ([ "-q", "analyze", str(store), "--report", BEFORE, "--format", "json", "-o", str(out),
                             "--force"], base),
                "after": (["-q", "analyze", str(store), "--format", "json", "-o", str(out), "--force"], None),
                "diagnosis": (["-q", "analyze", str(store), "--report", "findings,critical_path", "--format", "json",
                               "-o", str(out), "--force"], None)}
        times: dict[str, list[float]] = {k: [] for k in runs}
        rss: dict[str, float] = {k: 0.0 for k in runs}
        for _ in range(args.repeat):          # interleaved, so drift cancels
            for name, (argv, path) in runs.items():
                wall, peak = measure(argv, path)
                times[name].append(wall)
                rss[name] = max(rss[name], peak)
        before, after, diag = (median(times[k]) for k in ("before", "after", "diagnosis"))
        print(f"store: {store} ({events:,} events); baseline tree {args.baseline}; median of {args.repeat}")
        for name in runs:
            print(f"  {name:<10} {median(times[name]):6.2f} s   peak RSS {rss[name]:7.0f} MB   "
                  f"runs {', '.join(f'{t:.2f}' for t in times[name])}")
        added = after - before
        print(f"  diagnosis adds {added:.2f} s to analyze = {added / before:.2f}x the earlier reports' "
              f"{before:.2f} s (target <= 1.00x); alone {diag:.2f} s")


if __name__ == "__main__":
    main()
