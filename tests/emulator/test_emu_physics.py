"""Physics of in-memory emulated runs: no op beats its roof, engines do one thing at a time, and
the FLOPs and bytes add up to what the model's shapes say they must."""

from __future__ import annotations

import numpy as np
import pytest
from emu_support import SMALL_CONFIGS, MemRun

from sohuprof.strace import NO_GROUP, Engine

ALL = sorted(SMALL_CONFIGS)
DENSE = ["llama8b-tp4", "llama8b-pp2", "llama8b-tp8-2node-h100"]
REL = 1e-6   # rounding of FLOPs and bytes to integers in the record


def _dur_s(run: MemRun) -> np.ndarray:
    return (run.end_ns - run.start_ns) / 1e9


@pytest.mark.parametrize("key", ALL)
def test_no_negative_or_empty_ops(mem_run, key: str) -> None:
    run = mem_run(key)
    dur = run.end_ns - run.start_ns
    assert len(dur) > 0
    assert np.isfinite(run.start_ns).all() and np.isfinite(run.end_ns).all()
    assert (dur > 0).all(), f"{(dur <= 0).sum()} records of zero or negative length"
    assert (run.start_ns >= 0).all()


@pytest.mark.parametrize("key", ALL)
def test_compute_never_beats_matrix_or_vector_peak(mem_run, key: str) -> None:
    run = mem_run(key)
    hw, rec, dur = run.hw, run.rec, _dur_s(run)
    flops = rec["flops"].astype(float)
    for engine, peak in ((Engine.MATRIX, hw.peak_flops(run.cfg.dtype)), (Engine.VECTOR, hw.vector_flops)):
        sel = rec["engine"] == engine
        assert sel.any()
        attained = flops[sel] / dur[sel]
        worst = attained.max() / peak
        assert (flops[sel] <= peak * dur[sel] * (1 + REL) + 1).all(), f"{engine.name} at {worst:.3f} x peak"
    # DMA, collective and host records do no arithmetic.
    other = np.isin(rec["engine"], [Engine.DMA, Engine.COLLECTIVE, Engine.HOST])
    assert (rec["flops"][other] == 0).all()


@pytest.mark.parametrize("key", ALL)
def test_hbm_traffic_never_beats_bandwidth(mem_run, key: str) -> None:
    run = mem_run(key)
    hbm, dur = run.rec["hbm_bytes"].astype(float), _dur_s(run)
    ok = hbm <= run.hw.hbm_bandwidth * dur * (1 + REL) + 1
    assert ok.all(), f"{(~ok).sum()} records above {run.hw.hbm_bandwidth:.3g} B/s"


@pytest.mark.parametrize("key", ALL)
def test_memory_stall_within_op(mem_run, key: str) -> None:
    run = mem_run(key)
    dur_cycles = (run.end_ns - run.start_ns) * run.hw.clock_hz / 1e9
    assert (run.rec["stall_cycles"] <= dur_cycles + 1).all()
    # A compute-bound GEMM (big prefill) has no stall; a memory-bound op has one.
    assert (run.rec["stall_cycles"] > 0).any()


@pytest.mark.parametrize("key", ALL)
def test_one_engine_runs_one_op_at_a_time(mem_run, key: str) -> None:
    """Per rank and engine, records never overlap (different engines may)."""
    run = mem_run(key)
    rec = run.rec
    for engine in (Engine.MATRIX, Engine.VECTOR, Engine.DMA, Engine.COLLECTIVE, Engine.HOST):
        sel = np.flatnonzero(rec["engine"] == engine)
        order = sel[np.lexsort((run.start_ns[sel], run.rank[sel]))]
        r, s, e = run.rank[order], run.start_ns[order], run.end_ns[order]
        same = r[1:] == r[:-1]
        overlap = same & (s[1:] < e[:-1] - 1e-3)   # 1 ps of float rounding
        assert not overlap.any(), (
            f"{engine.name}: {overlap.sum()} overlapping pairs, e.g. rank {r[1:][overlap][0]} "
            f"{run.names[rec['name_id'][order][1:][overlap][0]]}")


@pytest.mark.parametrize("key", ALL)
def test_compute_stream_is_sequential(mem_run, key: str) -> None:
    """Matrix and vector ops of one rank are issued by one stream: they never overlap each other."""
    run = mem_run(key)
    sel = np.flatnonzero(np.isin(run.rec["engine"], [Engine.MATRIX, Engine.VECTOR]))
    order = sel[np.lexsort((run.start_ns[sel], run.rank[sel]))]
    r, s, e = run.rank[order], run.start_ns[order], run.end_ns[order]
    assert not ((r[1:] == r[:-1]) & (s[1:] < e[:-1] - 1e-3)).any()


@pytest.mark.parametrize("key", ALL)
def test_records_lie_inside_their_scheduler_step(mem_run, key: str) -> None:
    run = mem_run(key)
    steps = {(ev["step"], ev["replica"]): (ev["ts"], ev["end"]) for ev in run.host if ev["type"] == "step"}
    replica = run.em.plan.replica[run.rank]
    lo = np.array([steps[(s, r)][0] for s, r in zip(run.rec["step"].tolist(), replica.tolist())])
    hi = np.array([steps[(s, r)][1] for s, r in zip(run.rec["step"].tolist(), replica.tolist())])
    assert (run.start_ns >= lo - 1e-3).all()
    assert (run.end_ns <= hi + 1e-3).all()
    # Each host record covers exactly the step's host overhead, from the step's start.
    host = run.rec["engine"] == Engine.HOST
    assert np.allclose(run.end_ns[host] - run.start_ns[host], run.hw.step_overhead_ns)
    assert np.allclose(run.start_ns[host], lo[host])
    # A virtual engine's steps follow each other in time (with one pipeline stage: the replica's).
    engine = {(ev["step"], ev["replica"]): ev["virtual_engine"] for ev in run.host if ev["type"] == "step"}
    for r in range(run.cfg.dp):
        for v in range(run.cfg.pp):
            spans = sorted(t for (s, rep), t in steps.items() if rep == r and engine[(s, rep)] == v)
            assert all(a[1] <= b[0] + 1e-3 for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("key", ALL)
def test_collective_fields(mem_run, key: str) -> None:
    run = mem_run(key)
    coll = run.rec["engine"] == Engine.COLLECTIVE
    assert coll.any()
    assert (run.rec["group"][coll] != NO_GROUP).all()
    assert (run.rec["group"][~coll] == NO_GROUP).all()
    assert (run.rec["net_bytes"][~coll] == 0).all()


GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


@pytest.mark.parametrize("key", DENSE)
def test_gemm_flops_are_two_per_weight_per_token(mem_run, key: str) -> None:
    """A dense decoder layer's GEMMs do 2 FLOPs per weight per token (summed over TP shards)."""
    run = mem_run(key)
    m = run.cfg.model
    per_token = 2 * m.layers * (m.attention_params() + 3 * m.hidden * m.ffn)
    # Attention + MLP weights of all layers = all weights minus embedding and lm_head.
    assert m.layers * (m.attention_params() + 3 * m.hidden * m.ffn) == m.total_params() - 2 * m.vocab * m.hidden
    gemm = np.isin(run.rec["name_id"], [run.names.index(n) for n in GEMMS])
    flops = np.bincount(run.rec["step"][gemm], weights=run.rec["flops"][gemm].astype(float), minlength=run.steps)
    tokens = np.zeros(run.steps)
    for ev in run.host:
        if ev["type"] == "step":
            tokens[ev["step"]] += ev["prefill_tokens"] + ev["decode_tokens"]
    np.testing.assert_allclose(flops, per_token * tokens, rtol=1e-9, atol=len(GEMMS) * m.layers * run.cfg.world)


@pytest.mark.parametrize("key", DENSE)
def test_every_step_streams_the_weights(mem_run, key: str) -> None:
    """Weights do not fit in SRAM: each step reads every rank's weight shard from HBM at least
    once, so no step can be shorter than shard / HBM bandwidth."""
    run = mem_run(key)
    cfg, m, hw = run.cfg, run.cfg.model, run.hw
    layer_weights = (m.total_params() - 2 * m.vocab * m.hidden) * cfg.weight_bytes
    shard = layer_weights / cfg.tp / cfg.pp
    assert shard > hw.sram_bytes
    key_ = run.rec["step"].astype(np.int64) * cfg.world + run.rank
    hbm = np.bincount(key_, weights=run.rec["hbm_bytes"].astype(float), minlength=run.steps * cfg.world)
    hbm = hbm.reshape(run.steps, cfg.world)
    assert (hbm >= shard * (1 - 1e-9)).all()
    for ev in run.host:
        if ev["type"] == "step":
            assert ev["end"] - ev["ts"] >= shard / hw.hbm_bandwidth * 1e9


def test_decode_step_time_is_memory_bound(mem_run) -> None:
    """A pure decode step of a few sequences is bound by streaming the weights, not by FLOPs:
    on Sohu it takes within a small factor of shard / (HBM bandwidth)."""
    run = mem_run("llama8b-tp4")
    cfg, m, hw = run.cfg, run.cfg.model, run.hw
    shard = (m.total_params() - m.vocab * m.hidden) * cfg.weight_bytes / cfg.tp
    decode = [ev for ev in run.host if ev["type"] == "step" and ev["phase"] == "decode"]
    assert decode
    for ev in decode:
        t = (ev["end"] - ev["ts"]) * 1e-9
        assert shard / hw.hbm_bandwidth <= t <= 3 * shard / hw.hbm_bandwidth
