"""The memory timeline from [memory] events (analyzers/reports/memory.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sohuprof.analyzers.report import run_reports
from sohuprof.analyzers.reports.memory import POINTS, memory_timeline
from sohuprof.collectors import collect
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
V100 = ROOT.parent / "shared" / "traces" / "kineto-more" / "v100-ddp-rank1of2"


def _counters(events: list[tuple[int, int, int]], start_alloc: int = 0, rank: int = 0) -> pd.DataFrame:
    """(ts, bytes, addr) allocator events as the collector writes them."""
    rows, alloc = [], start_alloc
    for ts, nbytes, addr in events:
        alloc += nbytes
        rows += [(ts, rank, "memory.allocated", alloc), (ts, rank, "memory.reserved", 1 << 30),
                 (ts, rank, "memory.bytes", nbytes), (ts, rank, "memory.addr", addr)]
    return pd.DataFrame(rows, columns=["ts", "rank", "counter", "value"])


def test_peak_and_what_is_alive_at_it_by_hand() -> None:
    # a (100 B @1) and b (50 B @2) allocated, a freed, c (300 B @1, a's address again), b freed.
    res = memory_timeline(_counters([(10, 100, 1), (20, 50, 2), (30, -100, 1), (40, 300, 1), (50, -50, 2)],
                                    start_alloc=1000))
    row = res.ranks.iloc[0]
    assert row["peak_allocated_bytes"] == 1350 and row["peak_ts"] == 40
    assert row["alive_at_peak_bytes"] == 350           # b and c; the other 1,000 B predate the trace
    alive = res.alive_at_peak
    assert alive["bytes"].tolist() == [300, 50] and alive["addr"].tolist() == [1, 2]
    assert alive["free_ts"].isna().tolist() == [True, False] and alive["age_ns"].tolist() == [0, 20]
    assert (row["allocations"], row["frees"]) == (3, 2)


def test_a_store_without_memory_events_says_how_to_record_them(tmp_path: Path) -> None:
    store = open_store(ROOT / "sample_traces" / "mixtral-2node" / "store")
    from sohuprof.analyzers.engine import build_context
    from sohuprof.analyzers.reports.memory import MEMORY

    assert "Sohu" in MEMORY.applies(build_context(store))


@pytest.mark.skipif(not V100.exists(), reason="../shared/traces is not beside the project")
def test_v100_memory_against_an_event_by_event_replay(tmp_path: Path) -> None:
    collect(V100, tmp_path / "s")
    store = open_store(tmp_path / "s")
    out = run_reports(store, ["memory"]).to_json()["memory"]
    counters = pd.read_parquet(tmp_path / "s" / "counters.parquet")
    gpu = counters[counters["counter"].astype(str).str.startswith("memory.")]
    s = {c: gpu.loc[gpu["counter"] == f"memory.{c}", "value"].to_numpy() for c in ("allocated", "bytes", "addr")}
    ts = gpu.loc[gpu["counter"] == "memory.bytes", "ts"].to_numpy()
    # The allocator's running total moves by each event's bytes: the four series line up.
    assert np.array_equal(np.diff(s["allocated"]), s["bytes"][1:])
    row = next(r for r in out["ranks"] if r["kind"] == "memory")
    peak = int(np.argmax(s["allocated"]))
    assert row["peak_allocated_bytes"] == s["allocated"].max() and row["peak_ts"] == ts[peak]
    # The oracle: replay the events one by one (a dict of live allocations).
    live: dict[int, int] = {}
    for i in range(peak + 1):
        addr, nbytes = int(s["addr"][i]), int(s["bytes"][i])
        if nbytes > 0:
            live[addr] = nbytes
        else:
            live.pop(addr, None)
    assert row["alive_at_peak_bytes"] == sum(live.values())
    biggest = sorted(live.values(), reverse=True)[:20]
    assert [r["bytes"] for r in out["alive_at_peak"] if r["kind"] == "memory"] == biggest
    line = [r for r in out["timeline"] if r["kind"] == "memory"]
    assert len(line) <= POINTS and max(r["allocated_bytes"] for r in line) == row["peak_allocated_bytes"]
