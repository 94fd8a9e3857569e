"""The kernels and annotations reports on the A100 trace, in process: store read, chunk, combine.

    python benches/bench_kernels.py [--repeat 7]

Collects ``tests/data/kineto/nccl_data.json.gz`` once into a temporary store, then times
``run_analyses`` (the local engine: read the rank's events, chunk, combine) for ``kernels`` and
``annotations``, every event and with ``--hta-compatible``, and prints the median and best of
``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.reports.annotations import ANNOTATIONS
from sohuprof.analyzers.reports.kernels import KERNELS
from sohuprof.collectors import collect
from sohuprof.store import open_store

TRACE = Path(__file__).resolve().parent.parent / "tests" / "data" / "kineto" / "nccl_data.json.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        collect(TRACE, store, show_progress=False)
        s = open_store(store)
        events = s.manifest.get("counts", {}).get("events") or s.read("events", columns=["rank"]).num_rows
        print(f"A100 trace: {events:,} events")
        for label, analyses in (("kernels", [KERNELS]), ("annotations", [ANNOTATIONS]),
                                ("kernels + annotations", [KERNELS, ANNOTATIONS])):
            for hta in (False, True):
                ctx = build_context(s, hta_compatible=hta)
                run_analyses(ctx, analyses)                 # warm: imports, page cache
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    run_analyses(ctx, analyses)
                    times.append(time.perf_counter() - t)
                print(f"{label:22s} {'--hta-compatible' if hta else 'every event':17s} "
                      f"median {1e3 * statistics.median(times):6.1f} ms  best {1e3 * min(times):6.1f} ms")


if __name__ == "__main__":
    main()
