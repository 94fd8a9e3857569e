"""Serving: throughput and latency percentiles cross-checked against the emulator's own record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from sohuprof.analyzers.engine import build_context, rank_partitions, run_analyses
from sohuprof.analyzers.reports.serving import SERVING
from sohuprof.collectors import collect

from sohuprof.emulator import EmulatorConfig, RunSummary, emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"
CFG = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=2, chips_per_node=4,
                     tp=4, requests=24, rate=400.0, prompt_len=384, output_len=12, seed=11)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, RunSummary]:
    """Two replicas on two nodes, Poisson arrivals; returns raw dir, store and the run summary."""
    tmp = tmp_path_factory.mktemp("serving")
    summary = emulate(CFG, tmp / "raw", show_progress=False)
    collect(tmp / "raw", tmp / "store", show_progress=False)
    return tmp / "raw", tmp / "store", summary


def _host_requests(raw: Path) -> pd.DataFrame:
    """Arrival, first token and finish of every request from the raw host logs (local-clock ns;
    a request's events all come from its replica's node, so differences are exact)."""
    host = pd.concat([pd.read_json(p, lines=True) for p in sorted(raw.glob("node*/host.jsonl"))])
    life = host[host["type"].isin(["arrival", "first_token", "finish"])]
    times = life.pivot(index="request", columns="type", values="ts")
    tokens = life.groupby("request")[["prompt_tokens", "output_tokens"]].max()
    return times.join(tokens)


def test_counts_match_the_config(run) -> None:
    _, store, summary = run
    s = run_analyses(build_context(open_store(store)), [SERVING])["serving"]
    assert s.requests == CFG.requests
    assert s.input_tokens == CFG.requests * CFG.prompt_len == summary.input_tokens
    assert s.output_tokens == CFG.requests * CFG.output_len == summary.output_tokens
    # The store's clock is the aligned one; the emulator's is true time: equal up to drift.
    assert s.duration_s == pytest.approx(summary.duration_ns / 1e9, rel=1e-4)
    assert s.tokens_per_s == pytest.approx(summary.tokens_per_s, rel=1e-4)


def test_latencies_match_host_logs(run) -> None:
    raw, store, _ = run
    s = run_analyses(build_context(open_store(store)), [SERVING])["serving"]
    ref = _host_requests(raw)
    ttft = (ref["first_token"] - ref["arrival"]) / 1e6
    e2e = (ref["finish"] - ref["arrival"]) / 1e6
    tpot = (ref["finish"] - ref["first_token"]) / (ref["output_tokens"] - 1) / 1e6
    for got, want in ((s.ttft_ms, ttft), (s.tpot_ms, tpot), (s.e2e_ms, e2e)):
        assert set(got) == {"p50", "p90", "p99"}
        for p in (50, 90, 99):
            # Per-node clock drift separates host-local and aligned times by parts per million.
            assert got[f"p{p}"] == pytest.approx(want.quantile(p / 100), rel=1e-4)
    assert s.ttft_ms["p50"] <= s.ttft_ms["p90"] <= s.ttft_ms["p99"] < s.e2e_ms["p99"]


def test_mfu_is_event_flops_over_peak_time(run) -> None:
    _, store, _ = run
    ctx = build_context(open_store(store))
    s = run_analyses(ctx, [SERVING])["serving"]
    flops = pc.sum(ctx.store.read("events", columns=["flops"]).column("flops")).as_py()
    chips = CFG.nodes * CFG.chips_per_node
    assert s.mfu == pytest.approx(flops / (CFG.hardware.peak_flops(CFG.dtype) * chips * s.duration_s), rel=1e-12)
    assert 0 < s.mfu < 1


def test_combine_in_any_order(run) -> None:
    _, store, _ = run
    ctx = build_context(open_store(store))
    partials = [SERVING.chunk(t, ctx) for t in rank_partitions(ctx, list(SERVING.columns))]
    assert SERVING.combine(partials[::-1], ctx).to_json() == SERVING.combine(partials, ctx).to_json()


def test_unfinished_requests_are_left_out() -> None:
    from sohuprof.analyzers.reports.serving import serving_metrics
    req = pd.DataFrame({"request_id": [0, 1, 2], "arrival": [0, 10, 20],
                        "first_token": pd.array([5, 30, None], dtype="Int64"),
                        "finish": pd.array([105, None, None], dtype="Int64"),
                        "prompt_tokens": [4, 4, 4], "output_tokens": [11, 3, 0]})
    s = serving_metrics(req, flops=0.0, peak_flops=None, chips=1)
    assert s.duration_s == 105e-9 and s.mfu is None
    assert s.e2e_ms == {"p50": 105e-6, "p90": 105e-6, "p99": 105e-6}
    assert s.tpot_ms["p50"] == pytest.approx(10e-6)
    assert s.ttft_ms["p50"] == pytest.approx(12.5e-6)
    assert np.isnan(s.latencies.loc[2, "ttft_ms"])


def test_does_not_apply_to_profiler_traces(tmp_path: Path) -> None:
    collect(KINETO, tmp_path / "store", show_progress=False)
    ctx = build_context(open_store(tmp_path / "store"))
    assert SERVING.applies(ctx) == "the trace has no served requests; `serving` needs a Sohu run"


def test_json_contract(run) -> None:
    out = run_analyses(build_context(open_store(run[1])), [SERVING])["serving"].to_json()
    assert set(out) == {"requests", "input_tokens", "output_tokens", "duration_s", "tokens_per_s",
                        "output_tokens_per_s", "ttft_ms", "tpot_ms", "e2e_ms", "mfu"}
    assert all(isinstance(out[k], int) for k in ("requests", "input_tokens", "output_tokens"))
    assert all(isinstance(out[k], float) for k in ("duration_s", "tokens_per_s", "output_tokens_per_s", "mfu"))
    assert out["output_tokens_per_s"] == pytest.approx(out["output_tokens"] / out["duration_s"])
    assert out["tokens_per_s"] == pytest.approx((out["input_tokens"] + out["output_tokens"]) / out["duration_s"])
