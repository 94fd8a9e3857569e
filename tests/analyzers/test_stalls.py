"""The stall partition: exact on a hand-built store, invariant on real ones."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sohuprof.analyzers.engine import build_context, rank_partitions, run_analyses
from sohuprof.analyzers.reports.stalls import PARTS, STALLS
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.schema import COLLECTIVES
from sohuprof.store import StoreWriter, open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "mixtral-2node" / "store"


def _events(rows: list[tuple]) -> pa.Table:
    cols = ["ts", "dur", "rank", "category", "stall_mem_ns", "coll_id"]
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    n = len(rows)
    return pa.table({**data, "node": [0] * n, "chip": data["rank"], "track": ["x"] * n, "name": ["op"] * n,
                     "op": ["gemm"] * n})


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory) -> Path:
    """Two ranks, one collective; every number below is worked out by hand."""
    path = tmp_path_factory.mktemp("hand") / "store"
    with StoreWriter(path) as w:
        w.write_events(_events([
            # rank 0: compute [0,100) of which the last 20 stalled on memory; arrives at 100
            (0, 100, 0, "compute", 20, None), (100, 100, 0, "communication", 0, 7),
            (200, 10, 0, "host", 0, None), (250, 50, 0, "memory", 0, None),
            # rank 1: computes until 150 (the last arrival); a DMA copy hidden under compute
            (0, 150, 1, "compute", 0, None), (10, 30, 1, "memory", 0, None), (150, 50, 1, "communication", 0, 7),
        ]))
        w.write_table(COLLECTIVES, pa.table({"coll_id": [7, 7], "kind": ["all_reduce"] * 2, "group": [0, 0],
                                             "rank": [0, 1], "node": [0, 0], "arrive": [100, 150],
                                             "start": [150, 150], "end": [200, 200], "bytes": [64, 64]}))
        w.write_manifest({"source": {"format": "test"}})
    return path


def test_hand_built_partition(hand_store: Path) -> None:
    ranks = run_analyses(build_context(open_store(hand_store)), [STALLS])["stalls"].ranks.set_index("rank")
    assert ranks.loc[0, "wall_ns"] == 300
    assert ranks.loc[0, ["compute_ns", "memory_stall_ns", "sync_wait_ns", "comm_transfer_ns", "idle_ns"]].tolist() == \
        [80, 20 + 50, 50, 50, 50]
    assert ranks.loc[0, "idle_host_ns"] == 10
    assert ranks.loc[1, ["compute_ns", "memory_stall_ns", "sync_wait_ns", "comm_transfer_ns", "idle_ns"]].tolist() == \
        [150, 0, 0, 50, 100]


@pytest.mark.parametrize("store", [SAMPLE, ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"])
def test_parts_sum_exactly_to_wall(store: Path, tmp_path: Path) -> None:
    if not (store / "manifest.json").exists():
        collect(store, tmp_path / "s", show_progress=False)
        store = tmp_path / "s"
    ranks = run_analyses(build_context(open_store(store)), [STALLS])["stalls"].ranks
    assert len(ranks)
    assert (ranks[list(PARTS)].sum(axis=1) == ranks["wall_ns"]).all()
    assert (ranks[list(PARTS)] >= 0).all().all()
    assert (ranks["overlapped_comm_ns"] >= 0).all()


def test_straggler_waits_least(tmp_path: Path) -> None:
    # The sample run injects straggler:rank=5 into one EP8 group: everyone else waits for it.
    ranks = run_analyses(build_context(open_store(SAMPLE)), [STALLS])["stalls"].ranks.set_index("rank")
    assert ranks["sync_wait_ns"].idxmin() == 5
    assert ranks.loc[5, "compute_ns"] + ranks.loc[5, "memory_stall_ns"] == \
        (ranks["compute_ns"] + ranks["memory_stall_ns"]).max()


def test_two_batch_overlap_shows_as_overlapped_communication(tmp_path: Path) -> None:
    cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=1, chips_per_node=4,
                         tp=4, requests=4, prompt_len=2048, output_len=4)
    emulate(cfg, tmp_path / "run", show_progress=False)
    collect(tmp_path / "run", tmp_path / "store", show_progress=False)
    ranks = run_analyses(build_context(open_store(tmp_path / "store")), [STALLS])["stalls"].ranks
    assert (ranks["overlapped_comm_ns"] > 0).all()
    cfg_off = EmulatorConfig(**{**cfg.__dict__, "two_batch_overlap": False})
    emulate(cfg_off, tmp_path / "run2", show_progress=False)
    collect(tmp_path / "run2", tmp_path / "store2", show_progress=False)
    off = run_analyses(build_context(open_store(tmp_path / "store2")), [STALLS])["stalls"].ranks
    assert (off["overlapped_comm_ns"] == 0).all()
    assert off["wall_ns"].iloc[0] > ranks["wall_ns"].iloc[0]   # overlap pays


def test_combine_is_order_free() -> None:
    ctx = build_context(open_store(SAMPLE))
    partials = [STALLS.chunk(t, ctx) for t in rank_partitions(ctx, list(STALLS.columns))]
    shuffled = partials[:]
    random.Random(0).shuffle(shuffled)
    assert STALLS.combine(shuffled, ctx).to_json() == STALLS.combine(partials, ctx).to_json()


def _random_sequential(rng, n: int, gap: int) -> tuple:
    """n back-to-back-ish events: sorted, never overlapping (a chip's engine stream)."""
    dur = rng.integers(0, 40, n)
    start = np.cumsum(rng.integers(0, gap, n) + np.r_[0, dur[:-1]])
    return start, start + dur


@pytest.mark.parametrize("seed", range(30))
def test_sequential_breakdown_equals_the_sweep(seed: int) -> None:
    """The prefix-sum breakdown of sequential chains gives the sweep's integers exactly."""
    from sohuprof.analyzers import activity as act
    from sohuprof.analyzers.partition import Partition

    rng = np.random.default_rng(seed)
    # Some seeds leave a stream empty (a rank without compute, DMA, collectives or host work).
    sizes = [0 if seed % 5 == k else n for k, n in enumerate((400, 60, 80, 10))]
    p_ts, p_end = _random_sequential(rng, sizes[0], 3)
    split = p_end - rng.integers(0, 40, len(p_ts)).clip(0, p_end - p_ts)
    m_ts, m_end = _random_sequential(rng, sizes[1], 80)
    c_ts, c_end = _random_sequential(rng, sizes[2], 60)
    c_from = np.minimum(c_ts + rng.integers(0, 30, len(c_ts)), c_end)
    h_ts, h_end = _random_sequential(rng, sizes[3], 500)
    chains = [([p_ts, split, p_end], [act.BODY, act.TAIL]), ([m_ts, m_end], [act.DMA]),
              ([c_ts, c_from, c_end], [act.WAIT, act.TRANSFER]), ([h_ts, h_end], [act.HOST])]
    lo = int(min(b[0].min() for b, _ in chains if len(b[0]))) + int(rng.integers(0, 20))   # a window cutting some
    hi = max(int(max(b[-1].max() for b, _ in chains if len(b[0]))) - int(rng.integers(0, 20)), lo)
    ctx = type("Ctx", (), {"wall_start": lo, "wall_end": hi})()
    part = Partition(pa.table({"rank": [0]}))
    part.cache["chains"] = chains
    fast = act._sequential_breakdown(part, ctx)
    swept = act._swept_breakdown(act.chain_sweep(chains, act.N_CLASSES, lo, hi).coverage())
    assert fast == swept
    assert fast.compute + fast.memory_stall + fast.comm_transfer + fast.sync_wait + fast.idle == hi - lo
