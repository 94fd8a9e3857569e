"""Every valid parallel plan runs end to end, and the run estimate matches what runs write."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.report import run_reports
from sohuprof.analyzers.reports.stalls import PARTS, STALLS
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.emulator.estimate import RunEstimate, check_run, estimate_run
from sohuprof.emulator.lowering import lower, stage_positions
from sohuprof.emulator.plan import ParallelPlan
from sohuprof.emulator.runtime import Emulation
from sohuprof.errors import SpecError
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

#: The estimate's records stay within this factor of a real run's (measured: 0.76-1.30).
ESTIMATE_FACTOR = 2.0


def _config(model: str = "llama3-8b", layers: int = 2, hw: str = "sohu", **kw: Any) -> EmulatorConfig:
    """A preset model cut to a few layers (same shapes per layer), on a preset chip."""
    return EmulatorConfig(model=dataclasses.replace(load_model(model), layers=layers), hardware=load_hardware(hw),
                          **{"requests": 4, "prompt_len": 64, "output_len": 4, "clock_skew_us": 10.0, **kw})


#: One of every plan shape: (id, config keywords).
PLANS: list[tuple[str, dict[str, Any]]] = [
    ("tp1-single-chip", dict(nodes=1, chips_per_node=1, tp=1)),
    ("dp-only", dict(nodes=1, chips_per_node=2, tp=1)),
    ("dp-only-h100", dict(hw="h100", nodes=1, chips_per_node=2, tp=1)),   # the example
    ("pp-only", dict(nodes=1, chips_per_node=2, tp=1, pp=2)),
    ("ep-only", dict(model="mixtral-8x7b", nodes=1, chips_per_node=2, tp=1, ep=2)),
    ("tp-pp", dict(nodes=1, chips_per_node=4, tp=2, pp=2)),
    ("tp-ep", dict(model="mixtral-8x7b", nodes=1, chips_per_node=4, tp=2, ep=4)),
    ("dp-tp", dict(nodes=1, chips_per_node=4, tp=2)),
    ("multi-node-dp-tp", dict(nodes=2, chips_per_node=2, tp=2)),
    ("multi-node-tp-spans-nodes", dict(nodes=2, chips_per_node=2, tp=4)),
    ("multi-node-pp", dict(nodes=2, chips_per_node=1, tp=1, pp=2)),
    ("multi-node-ep", dict(model="mixtral-8x7b", nodes=2, chips_per_node=2, tp=1, ep=4)),
    ("mla-ep", dict(model="deepseek-v3", layers=4, nodes=1, chips_per_node=4, tp=1, ep=4)),
    ("tp-rate-straggler", dict(nodes=1, chips_per_node=2, tp=2, rate=500.0, requests=6)),
]


@pytest.fixture(scope="module", params=PLANS, ids=[p[0] for p in PLANS])
def plan_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """Emulate and collect one plan; the config, its estimate, the run summary and the store."""
    _, kw = request.param
    cfg = _config(**kw)
    if kw.get("rate"):
        from sohuprof.emulator import parse_fault
        cfg = dataclasses.replace(cfg, faults=(parse_fault("straggler:rank=1,slowdown=1.5"),))
    root = tmp_path_factory.mktemp("plan")
    summary = emulate(cfg, root / "run", show_progress=False)
    collect(root / "run", root / "store", show_progress=False)
    return cfg, estimate_run(cfg), summary, root / "store"


def test_plan_emulates_collects_and_analyzes(plan_run: tuple) -> None:
    cfg, _, summary, store_path = plan_run
    assert summary.ranks == cfg.world and summary.records > 0
    store = open_store(store_path)
    reports = run_reports(store)
    assert {"summary", "stalls"} <= set(reports.results)
    assert reports.to_json()   # every report renders


def test_plan_stalls_sum_to_wall_per_rank(plan_run: tuple) -> None:
    cfg, _, _, store_path = plan_run
    ranks = run_analyses(build_context(open_store(store_path)), [STALLS])["stalls"].ranks
    assert sorted(ranks["rank"]) == list(range(cfg.world))
    assert (ranks[list(PARTS)].sum(axis=1) == ranks["wall_ns"]).all()
    assert (ranks[list(PARTS)] >= 0).all().all()


def test_plan_estimate_matches_the_run(plan_run: tuple) -> None:
    cfg, est, summary, store_path = plan_run
    assert 1 / ESTIMATE_FACTOR <= est.records / summary.records <= ESTIMATE_FACTOR, (est, summary)
    raw = sum(p.stat().st_size for p in (store_path.parent / "run").rglob("*.strace"))
    assert 1 / ESTIMATE_FACTOR <= est.raw_bytes / raw <= ESTIMATE_FACTOR
    assert est.files == cfg.world
    assert not est.large


@pytest.mark.parametrize("kw", [
    dict(nodes=1, chips_per_node=4, tp=4, requests=100, prompt_len=256, output_len=32, max_seqs=16),
    dict(nodes=1, chips_per_node=4, tp=4, requests=20, prompt_len=256, output_len=16, rate=5.0),
    dict(nodes=1, chips_per_node=4, tp=4, requests=60, prompt_len=256, output_len=32, rate=200.0),
    dict(nodes=1, chips_per_node=4, tp=4, requests=60, prompt_len=256, output_len=32, rate=5000.0),
    dict(nodes=1, chips_per_node=4, tp=4, requests=16, prompt_len=4096, output_len=8),   # two-batch overlap
    dict(model="mixtral-8x7b", nodes=1, chips_per_node=8, tp=1, ep=8, requests=32, prompt_len=128, output_len=8,
         rate=100.0),
    # Pipelines: virtual engines taking turns, in a burst and under sparse arrivals (empty turns).
    dict(nodes=1, chips_per_node=4, tp=1, pp=4, requests=64, prompt_len=2048, output_len=4),
    dict(nodes=1, chips_per_node=4, tp=2, pp=2, requests=32, prompt_len=128, output_len=8, rate=200.0),
], ids=["seq-limited", "rate-sparse", "rate-mid", "rate-dense", "two-batch", "ep-coupled-rate", "pp4-burst",
        "pp2-rate"])
def test_estimate_against_in_memory_runs(kw: dict[str, Any]) -> None:
    cfg = _config(layers=4, **kw)
    est = estimate_run(cfg)
    records = steps = 0
    end = 0.0
    for trace, _ in Emulation(cfg).steps():
        records += len(trace.records)
        steps += 1
        end = max(end, float(trace.end_ns.max(initial=0.0)))
    assert 1 / ESTIMATE_FACTOR <= est.records / records <= ESTIMATE_FACTOR
    assert 1 / ESTIMATE_FACTOR <= est.steps / steps <= ESTIMATE_FACTOR
    # The emulated time too (measured: 0.68-0.93): pipelines, prefill FLOPs and arrivals.
    assert 1 / ESTIMATE_FACTOR <= est.duration_ns / end <= ESTIMATE_FACTOR


@pytest.mark.parametrize("kw", [dict(nodes=1, chips_per_node=4, tp=4), dict(nodes=2, chips_per_node=4, tp=4, pp=2),
                                dict(model="mixtral-8x7b", nodes=1, chips_per_node=4, tp=2, ep=4),
                                dict(model="deepseek-v3", layers=5, nodes=1, chips_per_node=4, tp=1, ep=4)])
@pytest.mark.parametrize("two_batch", [False, True])
def test_stage_positions_count_what_lower_emits(kw: dict[str, Any], two_batch: bool) -> None:
    cfg = _config(**kw)
    plan = ParallelPlan.build(cfg)
    prog = lower(cfg, plan, two_batch=two_batch)
    real = [int(((prog.stage == s) | (prog.peer_stage == s)).sum()) for s in range(plan.pp)]
    assert stage_positions(cfg, plan.stage_layers, two_batch=two_batch).tolist() == real
    tmpl = [prog.templates[i] for i in prog.tmpl]
    colls = [int(sum(1 for k, t in enumerate(tmpl) if t.collective and s in (prog.stage[k], prog.peer_stage[k])))
             for s in range(plan.pp)]
    assert stage_positions(cfg, plan.stage_layers, two_batch=two_batch, collectives_only=True).tolist() == colls


def test_huge_runs_are_estimated_without_allocating() -> None:
    big = _config(model="llama3-70b", layers=80, nodes=65535, tp=8)
    est = estimate_run(big)           # instant: nothing per rank, request or step is built
    assert est.files == 65535 * 8 and est.memory_bytes > 100e9
    with pytest.raises(SpecError, match="of memory"):
        Emulation(big)                # refused before the per-rank arrays exist
    long = estimate_run(_config(nodes=1, chips_per_node=1, tp=1, output_len=1_000_000))
    assert long.large and long.records > 1e7   # 1M decode steps of a 2-layer model


def test_check_run_ceilings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    est = RunEstimate(steps=1, records=2_000_000_000, raw_bytes=10**9, host_bytes=0, memory_bytes=1, files=1,
                      duration_ns=1.0, seconds=1.0)
    with pytest.raises(SpecError, match="allow-large"):
        check_run(est, tmp_path / "run")
    check_run(est, tmp_path / "run", allow_large=True)
    import sohuprof.emulator.estimate as estimate

    monkeypatch.setattr(estimate, "_free_bytes", lambda out: 10**6)   # a nearly full disk
    with pytest.raises(SpecError, match="free"):
        check_run(dataclasses.replace(est, records=10, raw_bytes=10**7), tmp_path / "missing" / "parents" / "run")
    check_run(dataclasses.replace(est, records=10, raw_bytes=10**5), tmp_path / "run")
    with pytest.raises(SpecError, match="of memory"):
        check_run(dataclasses.replace(est, memory_bytes=2**62), tmp_path / "run", allow_large=True)


def test_no_collective_plan_keeps_bool_membership() -> None:
    em = Emulation(_config(nodes=1, chips_per_node=1, tp=1))
    assert em.compiled.coll_member.dtype == np.bool_ and em.compiled.coll_member.shape == (0, 1)
