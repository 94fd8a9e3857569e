"""Dashboard speed: a timeline zoom round-trip (callback + figure serialization) at several zoom
levels on a ~10M-event store, the figure payload, and the server's memory.

Targets (issue: the web dashboard): a zoom round-trip within 300 ms and a payload under 2 MB at
any zoom, with the server under 2 GB.

    python benches/bench_dashboard.py                  # builds a ~10M-event emulated store
    python benches/bench_dashboard.py --store STORE    # an existing store
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_analyze import make_store   # benches/ is the script's own folder
from plotly.io.json import to_json_plotly

from sohuprof.dashboards.app import create_app, current_data
from sohuprof.dashboards.pages import timeline

TARGET_MS = 300.0
TARGET_MB = 2.0
TARGET_GB = 2.0
#: Zoom levels: the fraction of the trace in view.
LEVELS = (1.0, 0.1, 0.01, 0.001, 0.0001)


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--requests", type=int, default=2000, help="emulated requests (2000: ~10M events)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="zooms per level (different offsets)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    try:
        path = args.store or make_store(work, args.requests, args.nodes)
        app = create_app(path)
        with app.server.test_request_context("/"):
            data = current_data()
            t = time.perf_counter()
            index = data.index
            build_s = time.perf_counter() - t
            t = time.perf_counter()
            data.warm()
            reports_s = time.perf_counter() - t
            events = int(index.ts.size)
            print(f"store {path}: {events:,} events, {len(index.lanes)} lanes")
            print(f"timeline index built in {build_s:.2f} s, analyses in {reports_s:.2f} s; "
                  f"server RSS {rss_gb():.2f} GB")
            span = index.end - index.start
            worst_ms = worst_mb = 0.0
            print(f"{'in view':>10} {'mode':>8} {'ops in view':>12} {'round-trip ms (median / max)':>30} {'payload MB':>11}")
            for level in LEVELS:
                times, sizes, mode, ops = [], [], "", 0
                for k in range(args.repeat):
                    width_ms = span * level / 1e6
                    lo_ms = (span / 1e6 - width_ms) * (k + 0.5) / args.repeat
                    relayout = ({"xaxis.autorange": True} if level == 1.0
                                else {"xaxis.range[0]": lo_ms, "xaxis.range[1]": lo_ms + width_ms})
                    selection = {"ranks": None, "window": [index.start, index.end]} if level == 1.0 else None
                    t = time.perf_counter()
                    new_selection, fig, _ = timeline.on_relayout(data, relayout, selection)
                    payload = to_json_plotly({"response": {"timeline": {"figure": fig}}})
                    times.append((time.perf_counter() - t) * 1e3)
                    sizes.append(len(payload) / 1e6)
                    mode, ops = fig["layout"]["meta"]["mode"], fig["layout"]["meta"]["ops"]
                worst_ms, worst_mb = max(worst_ms, max(times)), max(worst_mb, max(sizes))
                print(f"{level:>10.2%} {mode:>8} {ops:>12,} {statistics.median(times):>18.1f} / {max(times):>7.1f} "
                      f"{max(sizes):>11.3f}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"worst round-trip {worst_ms:.1f} ms (target <= {TARGET_MS:.0f}), worst payload {worst_mb:.2f} MB "
              f"(target < {TARGET_MB:.0f}), server RSS now {rss_gb():.2f} GB, peak {peak:.2f} GB (target < {TARGET_GB:.0f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
