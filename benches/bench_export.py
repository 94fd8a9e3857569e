"""Chrome-trace export speed and memory: `export_chrome` vs one dict per event + `orjson.dumps`.

Target (the export issue): the streaming, vectorized export takes at most 0.5x the time of the
naive way (read the events, build one dict per event, ``orjson.dumps`` the list, write it),
although the naive way skips what the export adds (overlap lanes, flows, counters, metadata).
Peak RSS of each is measured in its own child process.

    python benches/bench_export.py                   # emulates llama3-70b, 2 nodes, 64 requests
    python benches/bench_export.py --store STORE     # an existing store (>= 2M events for the target)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.5


def naive(store_path: str, out: str) -> int:
    """One dict per event, orjson.dumps of the whole list, one write: the baseline."""
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    from sohuprof.store import open_store

    store = open_store(store_path)
    table = store.read("events")
    t0 = pc.min(table["ts"]).as_py()
    cols = {name: (table[name].cast(pa.string()) if pa.types.is_dictionary(table[name].type)
                   else table[name]).to_pylist() for name in table.column_names}
    events = []
    for i in range(table.num_rows):
        args = {"op": cols["op"][i], "layer": cols["layer"][i], "step": cols["step"][i],
                "phase": cols["phase"][i], "flops": cols["flops"][i], "hbm_bytes": cols["hbm_bytes"][i],
                "coll_id": cols["coll_id"][i]}
        events.append({"ph": "X", "name": cols["name"][i], "cat": cols["category"][i],
                       "pid": cols["node"][i], "tid": cols["rank"][i] * 64 + 1,
                       "ts": (cols["ts"][i] - t0) / 1000, "dur": cols["dur"][i] / 1000,
                       "args": {k: v for k, v in args.items() if v is not None}})
    with open(out, "wb") as fh:
        fh.write(orjson.dumps({"traceEvents": events}))
    return len(events)


def vectorized(store_path: str, out: str) -> int:
    from sohuprof.export.chrome import export_chrome

    return export_chrome(store_path, out, show_progress=False).events


def child(kind: str, store: str, out: str) -> None:
    t = time.perf_counter()
    n = {"naive": naive, "export": vectorized}[kind](store, out)
    elapsed = time.perf_counter() - t
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"events": n, "seconds": elapsed, "peak_rss_mb": rss_mb,
                      "bytes": Path(out).stat().st_size}))


def measure(kind: str, store: Path, out: Path, repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        proc = subprocess.run([sys.executable, __file__, "--child", kind, str(store), str(out)],
                              check=True, capture_output=True, text=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["seconds"])


def emulated_store(work: Path, nodes: int, requests: int) -> Path:
    """A Llama-3-70B run on Sohu collected into ``work / "store"`` (the exporters' benchmark input)."""
    from sohuprof.collectors import collect
    from sohuprof.emulator import EmulatorConfig, emulate
    from sohuprof.hardware import load_hardware
    from sohuprof.models import load_model

    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=nodes,
                         requests=requests)
    emulate(cfg, work / "run", show_progress=False)
    collect(work / "run", work / "store", show_progress=False)
    return work / "store"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, help="Existing trace store [default: emulate one].")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "STORE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    store = args.store
    if store is None:
        store = emulated_store(work, args.nodes, args.requests)

    base = measure("naive", store, work / "naive.json", args.repeat)
    ours = measure("export", store, work / "export.json", args.repeat)
    gz = measure("export", store, work / "export.json.gz", 1)
    n = ours["events"]
    print(f"store: {store} ({n:,} events)")
    print(f"naive (dict per event + orjson.dumps + write): {base['seconds']:6.2f} s  "
          f"{base['events'] / base['seconds'] / 1e6:5.2f} M ev/s  peak RSS {base['peak_rss_mb']:7.0f} MB  "
          f"{base['bytes'] / 1e6:6.0f} MB")
    print(f"export_chrome (streaming, vectorized):         {ours['seconds']:6.2f} s  "
          f"{n / ours['seconds'] / 1e6:5.2f} M ev/s  peak RSS {ours['peak_rss_mb']:7.0f} MB  "
          f"{ours['bytes'] / 1e6:6.0f} MB")
    print(f"export_chrome to .json.gz:                     {gz['seconds']:6.2f} s  "
          f"{n / gz['seconds'] / 1e6:5.2f} M ev/s  peak RSS {gz['peak_rss_mb']:7.0f} MB  "
          f"{gz['bytes'] / 1e6:6.0f} MB")
    ratio = ours["seconds"] / base["seconds"]
    print(f"ratio export / naive: {ratio:.2f}x (target <= {TARGET}x) -> {'OK' if ratio <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
