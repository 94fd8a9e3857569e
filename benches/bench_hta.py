"""Kineto import + temporal breakdown + comm/comp overlap: sohuprof vs Holistic Trace Analysis.

Both read the same A100 trace and must print the same numbers. HTA runs in its own virtualenv
(it pins its own pandas); make one once:

    python -m venv .hta-venv && .hta-venv/bin/pip install traceinsight
    python benches/bench_hta.py [--hta-python .hta-venv/bin/python]

Target (issue 7): sohuprof >= 20x faster than HTA's load + the two analyses.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sohuprof.analyzers.hta_selection import hta_select
from sohuprof.analyzers.reports.temporal import comm_comp_overlap, temporal_breakdown
from sohuprof.collectors.kineto import read_kineto

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / "kineto" / "nccl_data.json.gz"
TARGET = 20.0

_HTA_SCRIPT = """
import json, shutil, sys, tempfile, time
t = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
t_import = time.perf_counter() - t
d = tempfile.mkdtemp(); shutil.copy(sys.argv[1], d)
t = time.perf_counter()
a = TraceAnalysis(trace_dir=d)
t_load = time.perf_counter() - t
t = time.perf_counter()
tb = a.get_temporal_breakdown(visualize=False)
ov = a.get_comm_comp_overlap(visualize=False)
t_an = time.perf_counter() - t
print(json.dumps({"import": t_import, "load": t_load, "analyses": t_an,
                  "idle_pct": float(tb["idle_time_pctg"][0]), "compute_pct": float(tb["compute_time_pctg"][0]),
                  "non_compute_pct": float(tb["non_compute_time_pctg"][0]),
                  "overlap_pct": float(ov["comp_comm_overlap_pctg"][0])}))
"""


def sohuprof_run() -> tuple[float, float, dict]:
    """Wall time of the whole run, of read_kineto alone, and the four figures."""
    t = time.perf_counter()
    events = read_kineto(TRACE).events
    t_read = time.perf_counter() - t
    selected = hta_select(events)      # HTA's event selection, once for both analyses
    tb = temporal_breakdown(selected)
    ov = comm_comp_overlap(selected)
    elapsed = time.perf_counter() - t
    return elapsed, t_read, {
        "idle_pct": float(tb["idle_pct"][0]), "compute_pct": float(tb["compute_pct"][0]),
        "non_compute_pct": float(tb["non_compute_pct"][0]), "overlap_pct": float(ov["overlap_pct"][0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hta-python", default=".hta-venv/bin/python")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = sorted(sohuprof_run()[:2] for _ in range(args.repeat))
    ours, ours_read = runs[args.repeat // 2]
    numbers = sohuprof_run()[2]
    print(f"sohuprof: read_kineto + temporal + overlap (HTA selection): {ours * 1e3:7.1f} ms "
          f"(read_kineto {ours_read * 1e3:.1f} ms; median of {args.repeat})  {numbers}")
    if not Path(args.hta_python).exists():
        sys.exit(f"no HTA interpreter at {args.hta_python}: see this script's docstring")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_HTA_SCRIPT)
    # -I: the temporary script's directory must not shadow HTA's imports.
    runs = [json.loads(subprocess.run([args.hta_python, "-I", f.name, str(TRACE)], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for _ in range(3)]
    hta = sorted(runs, key=lambda r: r["load"] + r["analyses"])[1]
    hta_time = hta["load"] + hta["analyses"]
    same = all(abs(hta[k] - numbers[k]) <= 0.005 for k in numbers)
    print(f"HTA: load {hta['load'] * 1e3:.0f} ms + analyses {hta['analyses'] * 1e3:.0f} ms "
          f"(+ import {hta['import'] * 1e3:.0f} ms)  {dict((k, hta[k]) for k in numbers)}")
    print(f"same numbers: {same}; speed-up {hta_time / ours:.1f}x (target >= {TARGET:.0f}x), "
          f"{(hta_time + hta['import']) / ours:.1f}x counting HTA's import")


if __name__ == "__main__":
    main()
