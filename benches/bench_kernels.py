"""The kernels and annotations reports on the A100 trace, in process: store read, chunk, combine.

    python benches/bench_kernels.py [--repeat 7]

Collects ``tests/data/kineto/nccl_data.json.gz`` once into a temporary store, then times
``run_analyses`` (the local engine: read the rank's events, chunk, combine) for ``kernels`` and
``annotations``, every event and with ``--hta-compatible``, and prints the median and best of
``--repeat`` runs. Then the annotations' CPU side on a synthetic rank of 1M launched kernels
under 10, 100 and 1,000 range names (``--scaling``): its cost must not grow with the names.
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


def _synthetic(n_kernels: int, n_names: int):
    """One rank: a runtime call and a kernel per launch on one thread and stream, and
    user_annotation ranges of ``n_names`` names tiling the thread's time (50 calls each)."""
    import numpy as np
    import pyarrow as pa

    from sohuprof.analyzers.partition import as_partition

    call_ts = np.arange(n_kernels, dtype=np.int64) * 1000
    span = 50_000
    n_spans = n_kernels * 1000 // span
    names = pa.array(np.array([f"layer{i % n_names}" for i in range(n_names)])[np.arange(n_spans) % n_names])
    col = {
        "ts": np.r_[call_ts, call_ts + 10**11, np.arange(n_spans, dtype=np.int64) * span],
        "dur": np.r_[np.full(n_kernels, 500), np.full(n_kernels, 300), np.full(n_spans, span)],
        "cat": pa.concat_arrays([pa.array(["cuda_runtime"] * n_kernels), pa.array(["kernel"] * n_kernels),
                                 pa.array(["user_annotation"] * n_spans)]).dictionary_encode(),
        "category": pa.array(["host"] * n_kernels + ["compute"] * n_kernels + ["host"] * n_spans).dictionary_encode(),
        "name": pa.concat_arrays([pa.array(["cudaLaunchKernel"] * n_kernels), pa.array(["gemm"] * n_kernels),
                                  names]).dictionary_encode(),
        "correlation": pa.array(np.r_[np.arange(n_kernels), np.arange(n_kernels), np.zeros(n_spans, np.int64)],
                                mask=np.r_[np.zeros(2 * n_kernels, bool), np.ones(n_spans, bool)]),
        "track": pa.array(["thread 1"] * n_kernels + ["stream 7"] * n_kernels + ["thread 1"] * n_spans).dictionary_encode(),
        "stream": pa.array(np.r_[np.zeros(n_kernels), np.full(n_kernels, 7), np.zeros(n_spans)].astype(np.int64),
                           mask=np.r_[np.ones(n_kernels, bool), np.zeros(n_kernels, bool), np.ones(n_spans, bool)]),
        "rank": np.zeros(2 * n_kernels + n_spans, np.int32),
    }
    return as_partition(pa.table(col))


def scaling() -> None:
    from sohuprof.analyzers.reports.annotations import _cpu_side
    from sohuprof.analyzers.reports.kernels import kernel_launches

    class _Ctx:
        hta_compatible = False

    for names in (10, 100, 1000):
        part = _synthetic(1_000_000, names)
        kernels, calls = kernel_launches(part, _Ctx())
        t = time.perf_counter()
        out = _cpu_side(part, kernels, calls)
        print(f"annotations, CPU side: 1M kernels under {names:5,} names: {time.perf_counter() - t:6.2f} s "
              f"({int(out['kernels'].sum()):,} kernels placed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--scaling", action="store_true", help="only the synthetic scaling case")
    args = parser.parse_args()
    if args.scaling:
        scaling()
        return
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
    scaling()


if __name__ == "__main__":
    main()
