"""Kineto import + temporal breakdown + comm/comp overlap + kernel breakdown: sohuprof vs
Holistic Trace Analysis.

Both read the same A100 trace and must print the same numbers. HTA runs in its own virtualenv
(it pins its own pandas); make one once:

    python -m venv .hta-venv && .hta-venv/bin/pip install traceinsight
    python benches/bench_hta.py [--hta-python .hta-venv/bin/python] [--cli-runs 5]

Two measurements: in-process (what ``sohuprof analyze TRACE`` runs: the trace collected on the
fly into a temporary store + the three analyses, against HTA's load + the same three), and what
a user waits for (issue 13): ``sohuprof analyze TRACE --report temporal,comm,kernels
--hta-compatible`` in a fresh process, start-up and imports included, against a fresh
``python`` that imports HTA, loads the trace and runs the same three analyses. Targets (issue
17): >= 20x in-process, >= 10x through the CLI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sohuprof.analyzers.report import run_reports
from sohuprof.store import open_store_or_collect

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / "kineto" / "nccl_data.json.gz"
TARGET = 20.0
CLI_TARGET = 10.0

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
kb = a.get_gpu_kernel_breakdown(visualize=False)[0]
t_an = time.perf_counter() - t
print(json.dumps({"import": t_import, "load": t_load, "analyses": t_an,
                  "idle_pct": float(tb["idle_time_pctg"][0]), "compute_pct": float(tb["compute_time_pctg"][0]),
                  "non_compute_pct": float(tb["non_compute_time_pctg"][0]),
                  "overlap_pct": float(ov["comp_comm_overlap_pctg"][0]),
                  "computation_share": float(kb.loc[kb["kernel_type"] == "COMPUTATION", "percentage"].iloc[0])}))
"""


def sohuprof_run() -> tuple[float, float, dict]:
    """Wall time of what ``sohuprof analyze TRACE`` does in-process (collect on the fly into a
    temporary store, the three reports), of the collect alone, and the figures."""
    t = time.perf_counter()
    with open_store_or_collect(TRACE) as store:
        t_read = time.perf_counter() - t
        out = run_reports(store, ["temporal", "comm", "kernels"], hta_compatible=True).to_json()
        elapsed = time.perf_counter() - t
    return elapsed, t_read, _figures(out)


def _figures(out: dict) -> dict:
    tb, ov = out["temporal"]["ranks"][0], out["comm"]["overlap"][0]
    share = next(r["pct"] for r in out["kernels"]["types"] if r["kernel_type"] == "COMPUTATION")
    return {"idle_pct": tb["idle_pct"], "compute_pct": tb["compute_pct"], "non_compute_pct": tb["non_compute_pct"],
            "overlap_pct": ov["overlap_pct"], "computation_share": share}


def _fresh(argv: list[str], runs: int) -> tuple[float, str]:
    """Median wall time of ``argv`` in fresh processes, and the last run's stdout."""
    times, out = [], ""
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hta-python", default=".hta-venv/bin/python")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cli-runs", type=int, default=5)
    args = parser.parse_args()
    runs = sorted(sohuprof_run()[:2] for _ in range(args.repeat))
    ours, ours_read = runs[args.repeat // 2]
    numbers = sohuprof_run()[2]
    print(f"sohuprof in-process (what analyze TRACE runs): collect on the fly + temporal, comm (overlap), kernels (--hta-compatible): {ours * 1e3:7.1f} ms "
          f"(collect {ours_read * 1e3:.1f} ms; median of {args.repeat})  {numbers}")
    cli = [sys.executable, "-m", "sohuprof", "analyze", str(TRACE), "--report", "temporal,comm,kernels",
           "--hta-compatible", "--format", "json"]
    cli_time, cli_out = _fresh(cli, args.cli_runs)
    same_cli = _figures(json.loads(cli_out)) == numbers
    start_time, _ = _fresh([sys.executable, "-c", "import sohuprof.cli, sohuprof.analyzers.report, pandas, pyarrow"],
                           args.cli_runs)
    # What the start-up is made of: the floor any numpy/pyarrow path pays, and pandas on top.
    base_time, _ = _fresh([sys.executable, "-c", "import numpy, pyarrow, pyarrow.compute"], args.cli_runs)
    pandas_time, _ = _fresh([sys.executable, "-c", "import pandas"], args.cli_runs)
    print(f"sohuprof CLI, fresh process: {cli_time * 1e3:.0f} ms (median of {args.cli_runs}; same figures: {same_cli}); "
          f"of which importing the CLI, the report engine, pandas and pyarrow: {start_time * 1e3:.0f} ms "
          f"(a bare python importing numpy, pyarrow and pyarrow.compute: {base_time * 1e3:.0f} ms; pandas alone: "
          f"{pandas_time * 1e3:.0f} ms)")
    if not Path(args.hta_python).exists():
        sys.exit(f"no HTA interpreter at {args.hta_python}: see this script's docstring")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(_HTA_SCRIPT)
    # -I: the temporary script's directory must not shadow HTA's imports.
    hta_runs = []
    for _ in range(max(3, args.cli_runs)):
        t = time.perf_counter()
        done = subprocess.run([args.hta_python, "-I", f.name, str(TRACE)], capture_output=True, text=True, check=True)
        hta_runs.append((time.perf_counter() - t, json.loads(done.stdout.strip().splitlines()[-1])))
    hta_runs.sort(key=lambda r: r[1]["load"] + r[1]["analyses"])
    hta = hta_runs[len(hta_runs) // 2][1]
    hta_time = hta["load"] + hta["analyses"]
    hta_fresh = sorted(t for t, _ in hta_runs)[len(hta_runs) // 2]
    same = all(abs(hta[k] - numbers[k]) <= 0.05 for k in numbers)
    print(f"HTA: load {hta['load'] * 1e3:.0f} ms + analyses {hta['analyses'] * 1e3:.0f} ms "
          f"(+ import {hta['import'] * 1e3:.0f} ms); fresh process {hta_fresh * 1e3:.0f} ms  "
          f"{dict((k, hta[k]) for k in numbers)}")
    print(f"same numbers: {same}; in-process speed-up {hta_time / ours:.1f}x (target >= {TARGET:.0f}x); "
          f"through the CLI {hta_fresh / cli_time:.1f}x (target >= {CLI_TARGET:.0f}x); "
          f"the CLI less its start-up {hta_fresh / max(cli_time - start_time, 1e-3):.1f}x")


if __name__ == "__main__":
    main()
