"""Import speed of the Kineto collector on the shared A100 trace, against HTA's documented load.

Target: reading the trace (parse, classify, exact-ns times, steps, collectives) in at most
0.19 s, i.e. at least 10x faster than Holistic Trace Analysis 0.6.1's 1.9 s (its README figure
for the same file, 2-core machine). Run: ``python benches/bench_kineto.py [TRACE]``.
"""

from __future__ import annotations

import gzip
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sohuprof.collectors.kineto import collect_kineto, read_kineto

HTA_LOAD_S = 1.9
TARGET_S = HTA_LOAD_S / 10
REPEAT = 5
_REPO = Path(__file__).resolve().parents[1]
_CANDIDATES = (
    _REPO.parent / "shared" / "traces" / "kineto" / "a100-resnet-ddp-rank0" / "nccl_data.json.gz",
    _REPO / "tests" / "data" / "kineto" / "nccl_data.json.gz",
)


def median_time(fn: Callable[[], object], repeat: int = REPEAT) -> float:
    """Median wall time of ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str]) -> int:
    trace = Path(argv[1]) if len(argv) > 1 else next(p for p in _CANDIDATES if p.exists())
    text = gzip.decompress(trace.read_bytes())
    events = read_kineto(trace).events.num_rows

    t_gunzip_json = median_time(lambda: json.loads(gzip.decompress(trace.read_bytes())))
    t_json = median_time(lambda: json.loads(text))
    t_read = median_time(lambda: read_kineto(trace))
    with tempfile.TemporaryDirectory() as tmp:
        t_collect = median_time(lambda: collect_kineto(trace, Path(tmp) / "store", force=True))

    print(f"trace: {trace} ({len(text) / 1e6:.1f} MB JSON, {events} events), median of {REPEAT}")
    print(f"  json.loads (text already gunzipped)  {t_json:7.3f} s")
    print(f"  gunzip + json.loads                  {t_gunzip_json:7.3f} s")
    print(f"  sohuprof read_kineto                 {t_read:7.3f} s   "
          f"{HTA_LOAD_S / t_read:5.1f}x faster than HTA's {HTA_LOAD_S} s, "
          f"takes {t_read / t_json:4.2f}x the time of json.loads")
    print(f"  sohuprof collect_kineto (to a store) {t_collect:7.3f} s   "
          f"{HTA_LOAD_S / t_collect:5.1f}x faster than HTA's {HTA_LOAD_S} s")
    ok = t_read <= TARGET_S
    print(f"target read_kineto <= {TARGET_S:.2f} s (10x HTA): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
