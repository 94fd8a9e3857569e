"""The Dask engine against rank count: per-partition time and memory, combine time, bytes shipped.

Issue 17: on a ``LocalCluster`` of worker processes, how the cost of ``--engine dask`` grows from
8 to 256 ranks, the figures a 10,000-chip projection is made from. The stores are emulated
Llama-3-8B runs, TP 8 inside each node of 8 chips, one data-parallel replica per node with the
same load on each (8 requests of 256 + 16 tokens at 400/s a replica), so a rank's partition is
the same size at every scale and only the client's share (context, gather, combine) can grow.
They are cached under ``tmp/bench-dask`` (``--fresh`` rebuilds them).

    python benches/bench_dask.py                      # 8, 16, 64, 256 ranks, 2 worker processes
    python benches/bench_dask.py --ranks 8,16 --workers 2

Per store it prints: events and events per chip-second of emulated time; each partition's
(rank's) chunk time on its worker (every default report), the Arrow bytes it read and its
partials' pickled size (what travels to the client); the client's context build, gather and
combine times (and each report's combine); the worker processes' and the client's peak RSS; and
the end-to-end ``run_reports(engine="dask")`` wall time next to the local engine's, with a check
that their JSON is identical. The per-task loop below is the engine's own
(:func:`sohuprof.analyzers.dask_engine._chunk_rank` on the scattered context), timed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sohuprof.analyzers.dask_engine import _chunk_rank, _for_workers
from sohuprof.analyzers.engine import build_context, plan_columns
from sohuprof.analyzers.render import render_json
from sohuprof.analyzers.report import REPORTS, _choose, _OVERLAP, load_analysis, run_reports
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

CACHE = Path(__file__).resolve().parents[1] / "tmp" / "bench-dask"
CHIPS_PER_NODE = 8


def make_reference(*, fresh: bool = False) -> Path:
    """A fully loaded node: Llama-3-70B TP 8, 256 requests of 2048 + 128 tokens at once (the
    events per chip-second of a busy server, and chunk cost on ~250k-event partitions)."""
    out = CACHE / "llama70b-busy" / "store"
    if out.is_dir() and not fresh:
        return out
    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=1, tp=8,
                         requests=256, seed=1)
    raw = out.parent / "raw"
    emulate(cfg, raw, force=True, show_progress=False)
    collect(raw, out, force=True, show_progress=False)
    shutil.rmtree(raw)
    return out


def make_store(ranks: int, *, fresh: bool = False) -> Path:
    """An emulated store of ``ranks`` ranks (a node of 8 chips per replica), cached."""
    out = CACHE / f"dp-{ranks}" / "store"
    if out.is_dir() and not fresh:
        return out
    if ranks % CHIPS_PER_NODE:
        raise SystemExit(f"'--ranks' must be multiples of {CHIPS_PER_NODE}; got {ranks}")
    nodes = ranks // CHIPS_PER_NODE
    cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=nodes,
                         chips_per_node=CHIPS_PER_NODE, tp=8, requests=8 * nodes, rate=400.0 * nodes,
                         prompt_len=256, output_len=16, seed=1)
    raw = out.parent / "raw"
    emulate(cfg, raw, force=True, show_progress=False)
    collect(raw, out, force=True, show_progress=False)
    shutil.rmtree(raw)
    return out


class PeakRss:
    """The process's peak resident set size over a block (sampled every 2 ms, in bytes): what a
    phase adds to what the process already held."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _timed_chunk(ctx: Any, analyses: list, columns: list[str], rank: int, node: int) -> dict:
    """One engine task, timed on its worker: the partials, their pickled size, the chunk time and
    the Arrow bytes of the partition read."""
    from sohuprof.analyzers import dask_engine, engine

    seen: dict[str, int] = {}
    read = engine.read_rank

    def counted(*args: Any) -> Any:
        table = read(*args)
        seen["bytes"] = table.nbytes
        seen["rows"] = table.num_rows
        return table

    with PeakRss() as rss:
        t = time.perf_counter()
        dask_engine.read_rank = counted
        try:
            parts = _chunk_rank(ctx, analyses, columns, rank, node)
        finally:
            dask_engine.read_rank = read
        seconds = time.perf_counter() - t
    return {"parts": parts, "seconds": seconds, "arrow_bytes": seen["bytes"], "rows": seen["rows"],
            "rss_start": rss.start, "rss_peak": rss.peak,
            "pickled_bytes": len(pickle.dumps(parts, protocol=5)),
            "by_report": [len(pickle.dumps(p, protocol=5)) for p in parts]}


def measure(path: Path, client: Any) -> dict:
    """The engine's loop on ``client``, each phase timed (see the module docstring)."""
    store = open_store(path)
    t = time.perf_counter()
    ctx = build_context(store, options={"what_if": [], "by": "op"})
    names = _choose(None, ctx)
    analyses = [load_analysis(REPORTS[n]) for n in names]
    overlap = load_analysis(_OVERLAP)
    if "comm" in names and overlap.applies(ctx) is None:
        analyses.append(overlap)
    columns = plan_columns(ctx, analyses)
    t_context = time.perf_counter() - t
    sent = _for_workers(ctx)
    context_bytes = len(pickle.dumps(sent, protocol=5))
    client.run(lambda: __import__("gc").collect())
    t = time.perf_counter()
    shared = client.scatter(sent, broadcast=True)
    ranks = list(zip(ctx.ranks["rank"].tolist(), ctx.ranks["node"].tolist()))
    futures = [client.submit(_timed_chunk, shared, analyses, columns, r, n, pure=False) for r, n in ranks]
    with PeakRss() as client_rss:
        tasks = client.gather(futures)
        t_tasks = time.perf_counter() - t
        t = time.perf_counter()
        combine: dict[str, float] = {}
        for i, a in enumerate(analyses):
            t1 = time.perf_counter()
            a.combine([task["parts"][i] for task in tasks], ctx)
            combine[a.name] = time.perf_counter() - t1
        t_combine = time.perf_counter() - t
    secs = [task["seconds"] for task in tasks]
    wall_s = ctx.wall_ns / 1e9
    events = int(store.manifest["tables"]["events"])
    return {"ranks": len(ranks), "events": events, "wall_s": wall_s, "events_per_chip_s": events / len(ranks) / wall_s,
            "reports": [a.name for a in analyses], "context_s": t_context, "context_bytes": context_bytes,
            "tasks_s": t_tasks, "combine_s": t_combine, "combine": combine,
            "chunk_median_s": statistics.median(secs), "chunk_max_s": max(secs), "chunk_sum_s": sum(secs),
            "arrow_mb_median": statistics.median(task["arrow_bytes"] for task in tasks) / 1e6,
            "shipped_median": statistics.median(task["pickled_bytes"] for task in tasks),
            "shipped_max": max(task["pickled_bytes"] for task in tasks),
            "shipped_total": sum(task["pickled_bytes"] for task in tasks),
            "shipped_by_report": {a.name: sum(task["by_report"][i] for task in tasks) for i, a in enumerate(analyses)},
            "worker_rss_mb": max(task["rss_peak"] for task in tasks) / 1e6,
            "task_rss_added_mb": max(task["rss_peak"] - task["rss_start"] for task in tasks) / 1e6,
            "client_rss_added_mb": (client_rss.peak - client_rss.start) / 1e6}


def make_big(*, fresh: bool = False) -> Path:
    """The busy node for longer: 2048 requests (~1.2M events a rank), for partition memory."""
    out = CACHE / "llama70b-big" / "store"
    if out.is_dir() and not fresh:
        return out
    cfg = EmulatorConfig(model=load_model("llama3-70b"), hardware=load_hardware("sohu"), nodes=1, tp=8,
                         requests=2048, seed=1)
    raw = out.parent / "raw"
    emulate(cfg, raw, force=True, show_progress=False)
    collect(raw, out, force=True, show_progress=False)
    shutil.rmtree(raw)
    return out


def measure_partition(path: Path) -> dict:
    """In this (fresh) process: rank 0's task as a worker runs it, what it adds to the process's
    RSS the first time (the context built first, as the scattered one arrives built) and its time
    (the better of that run and a second)."""
    import gc

    store = open_store(path)
    ctx = _for_workers(build_context(store, options={"what_if": [], "by": "op"}))
    analyses = [load_analysis(REPORTS[n]) for n in _choose(None, ctx)] + [load_analysis(_OVERLAP)]
    columns = plan_columns(ctx, analyses)
    rank, node = int(ctx.ranks["rank"].iloc[0]), int(ctx.ranks["node"].iloc[0])
    rows = int(ctx.store.manifest["tables"]["events"]) // len(ctx.ranks)
    gc.collect()
    with PeakRss() as rss:
        t = time.perf_counter()
        parts = _chunk_rank(ctx, analyses, columns, rank, node)
        seconds = time.perf_counter() - t
    del parts
    gc.collect()
    t = time.perf_counter()      # again, warm: the time is the better of the two
    parts = _chunk_rank(ctx, analyses, columns, rank, node)
    seconds = min(seconds, time.perf_counter() - t)
    return {"events": rows, "seconds": seconds, "rss_base_mb": rss.start / 1e6,
            "rss_added_mb": (rss.peak - rss.start) / 1e6, "pickled_bytes": len(pickle.dumps(parts, protocol=5))}


def end_to_end(path: Path, scheduler: str) -> dict:
    """``run_reports`` wall time, local and dask, and whether their JSON is identical."""
    store = open_store(path)
    t = time.perf_counter()
    local = render_json(run_reports(store))
    t_local = time.perf_counter() - t
    t = time.perf_counter()
    dask = render_json(run_reports(store, engine="dask", scheduler=scheduler))
    t_dask = time.perf_counter() - t
    return {"local_s": t_local, "dask_s": t_dask, "identical": local == dask}


def show(r: dict, e: dict) -> None:
    print(f"{r['ranks']:>4} ranks: {r['events']:>10,} events over {r['wall_s'] * 1e3:.1f} ms emulated "
          f"({r['events_per_chip_s'] / 1e3:,.0f} k events per chip-second)")
    print(f"      chunk per partition: median {r['chunk_median_s'] * 1e3:.1f} ms, max {r['chunk_max_s'] * 1e3:.1f} ms "
          f"(sum {r['chunk_sum_s']:.2f} s); partition read {r['arrow_mb_median']:.2f} MB Arrow")
    print(f"      shipped to the client: median {r['shipped_median'] / 1e3:.1f} kB, max {r['shipped_max'] / 1e3:.1f} kB "
          f"a partition, total {r['shipped_total'] / 1e6:.2f} MB; context to each worker "
          f"{r['context_bytes'] / 1e3:.0f} kB")
    heavy = sorted(r["shipped_by_report"].items(), key=lambda kv: -kv[1])[:3]
    # Reports sharing one partial object (findings, comm, critical_path: the dependency graph)
    # each count it here; it travels once (pickle keeps one copy per task's result).
    print("      heaviest partials (shared ones counted per report): "
          + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in heavy))
    slow = sorted(r["combine"].items(), key=lambda kv: -kv[1])[:3]
    print(f"      client: context {r['context_s']:.2f} s, tasks+gather {r['tasks_s']:.2f} s, combine "
          f"{r['combine_s']:.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in slow) + ")")
    print(f"      RSS: worker peak {r['worker_rss_mb']:.0f} MB (a task adds up to {r['task_rss_added_mb']:.0f} MB), "
          f"client adds {r['client_rss_added_mb']:.0f} MB gathering and combining; "
          f"end to end: local {e['local_s']:.2f} s, dask {e['dask_s']:.2f} s, "
          f"JSON {'identical' if e['identical'] else 'DIFFERENT'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="8,16,64,256", help="rank counts, multiples of 8")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--fresh", action="store_true", help="rebuild the cached stores")
    parser.add_argument("--no-reference", action="store_true", help="skip the busy Llama-3-70B node")
    parser.add_argument("--measure-partition", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    if args.measure_partition:
        print(json.dumps(measure_partition(args.measure_partition)))
        return
    from distributed import Client, LocalCluster

    counts = [int(x) for x in args.ranks.split(",")]
    stores = {n: make_store(n, fresh=args.fresh) for n in counts}
    reference = None if args.no_reference else make_reference(fresh=args.fresh)
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                      silence_logs=40) as cluster, Client(cluster) as client:
        print(f"LocalCluster: {args.workers} worker processes x 1 thread")
        measure(stores[counts[0]], client)      # warm-up: imports and first-call costs on the workers
        for n in counts:
            r = measure(stores[n], client)
            e = end_to_end(stores[n], cluster.scheduler_address)
            show(r, e)
            rows.append({**r, **e})
        if reference is not None:
            print("busy reference node (Llama-3-70B TP 8, 256 requests of 2048 + 128 tokens):")
            r = measure(reference, client)
            e = end_to_end(reference, cluster.scheduler_address)
            show(r, e)
            per_event = r["chunk_median_s"] / (r["events"] / r["ranks"])
            print(f"      chunk cost {per_event * 1e9:.0f} ns an event, "
                  f"shipped {r['shipped_median'] / (r['events'] / r['ranks']):.1f} B an event")
            rows.append({"reference": True, **r, **e})
    if reference is not None:
        # One partition in a fresh process each, so the RSS it adds is its own.
        for path in (reference, make_big(fresh=args.fresh)):
            out = subprocess.run([sys.executable, __file__, "--measure-partition", str(path)], check=True,
                                 capture_output=True, text=True).stdout
            p = json.loads(out.strip().splitlines()[-1])
            print(f"one partition of {p['events']:,} events in a fresh process: {p['seconds']:.2f} s "
                  f"({p['seconds'] / p['events'] * 1e9:.0f} ns an event), adds {p['rss_added_mb']:.0f} MB RSS "
                  f"({p['rss_added_mb'] * 1e6 / p['events']:.0f} B an event) to {p['rss_base_mb']:.0f} MB, "
                  f"ships {p['pickled_bytes'] / 1e6:.1f} MB ({p['pickled_bytes'] / p['events']:.1f} B an event)")
            rows.append({"partition": str(path), **p})
    rows_scaled = [r for r in rows if "ranks" in r and not r.get("reference")]
    for a, b in zip(rows_scaled, rows_scaled[1:]):
        k = b["ranks"] / a["ranks"]
        print(f"{a['ranks']} -> {b['ranks']} ranks (x{k:g}): combine x{b['combine_s'] / a['combine_s']:.2f}, "
              f"shipped x{b['shipped_total'] / a['shipped_total']:.2f}, context x{b['context_s'] / a['context_s']:.2f}, "
              f"chunk median x{b['chunk_median_s'] / a['chunk_median_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
