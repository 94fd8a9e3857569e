"""The diagnosis layer against the emulator as ground truth: faults drawn at random inside the
tests must be found, fault-free runs must show none, and what-ifs must predict re-emulated runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sohuprof.analyzers.diagnosis.critical_path import baseline
from sohuprof.analyzers.diagnosis.graph import GRAPH_COLUMNS, Graph, rank_graph
from sohuprof.analyzers.diagnosis.replay import replay
from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.report import run_reports
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig
from sohuprof.emulator.config import parse_fault
from sohuprof.emulator.run import emulate
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"

#: Plans the findings must hold on: (model, nodes, chips per node, tp, ep, pp).
PLANS = {
    "tp+pp": lambda nodes: dict(model="llama3-8b", nodes=nodes, chips_per_node=2, tp=2, pp=nodes, requests=4,
                                prompt_len=128, output_len=8),
    # Mixtral has 8 experts: up to 4 nodes of 2 chips (TP 2 in a node), 8 nodes of 1 chip.
    "ep": lambda nodes: dict(model="mixtral-8x7b", nodes=nodes, chips_per_node=2 if nodes <= 4 else 1,
                             tp=2 if nodes <= 4 else 1, ep=min(2 * nodes, 8), requests=8, prompt_len=64, output_len=4),
    "tp+dp": lambda nodes: dict(model="llama3-8b", nodes=nodes, chips_per_node=2, tp=2, requests=8,
                                prompt_len=128, output_len=8),
}


def _store(tmp: Path, name: str, faults: list[str], hw: str = "sohu", seed: int = 3, **kw) -> Path:
    spec = dict(kw)
    model = spec.pop("model")
    cfg = EmulatorConfig(model=load_model(model), hardware=load_hardware(hw), seed=seed,
                         faults=tuple(parse_fault(f) for f in faults), **spec)
    run = tmp / f"{name}.run"
    emulate(cfg, run)
    store = tmp / f"{name}.store"
    collect(run, store)
    return store


def _wall(store: Path) -> int:
    """The measured wall time of a store (ns), from its rank index."""
    index = open_store(store).manifest["rank_index"]
    return max(r["end_ns"] for r in index) - min(r["start_ns"] for r in index)


def _findings(store: Path) -> list[dict]:
    return run_reports(open_store(store), ["findings"]).to_json()["findings"]["findings"]


def _graph(store: Path):
    ctx = build_context(open_store(store))

    class _G:
        name, columns = "g", GRAPH_COLUMNS

        def applies(self, ctx):
            return None

        def chunk(self, part, ctx):
            return rank_graph(part, ctx)

        def combine(self, parts, ctx):
            return Graph.from_ranks(parts)

    return ctx, run_analyses(ctx, [_G()])["g"]


def test_unchanged_replay_reproduces_the_measured_run() -> None:
    ctx, g = _graph(SAMPLE)
    rep = replay(g)
    assert np.array_equal(rep.arrive[:, 0], g.arrive)
    assert np.array_equal(rep.leave[:, 0], g.leave)
    assert np.array_equal(rep.end[:, 0], g.last)
    assert rep.wall_end[0] == ctx.wall_end
    coll = ~g.is_barrier
    direct = (rep.release[g.inst[coll], 0] - rep.arrive[coll, 0]).sum()
    assert rep.sync_wait(g)[0] == pytest.approx(direct, rel=1e-12)
    assert direct == pytest.approx(float((g.release[coll] - g.arrive[coll]).sum()), abs=2 * int(coll.sum()))


def test_critical_path_covers_the_wall_and_never_waits() -> None:
    cp = run_reports(open_store(SAMPLE), ["critical_path"]).to_json()["critical_path"]
    assert abs(cp["path_ns"] - cp["wall_ns"]) <= 1e-4 * cp["wall_ns"]
    kinds = {k["kind"]: k for k in cp["by_kind"]}
    assert set(kinds) == {"compute", "memory", "transfer", "host", "idle"}     # no "wait" kind
    assert sum(k["time_ns"] for k in cp["by_kind"]) == pytest.approx(cp["path_ns"], abs=len(kinds))
    assert sum(r["time_ns"] for r in cp["by_rank"]) == pytest.approx(cp["path_ns"], rel=1e-3)
    assert all(o["time_ns"] <= kinds["compute"]["time_ns"] + kinds["memory"]["time_ns"] + kinds["host"]["time_ns"]
               for o in cp["by_op"])
    assert cp["steps"] and all(s["start_ns"] <= s["end_ns"] for s in cp["steps"])


@pytest.mark.parametrize("plan,nodes,seed", [("tp+pp", 2, 11), ("tp+pp", 3, 16), ("tp+pp", 4, 12), ("ep", 2, 13),
                                             ("ep", 4, 14), ("ep", 8, 18), ("tp+pp", 8, 19), ("tp+dp", 2, 15),
                                             ("tp+dp", 8, 17)])
def test_findings_name_a_random_straggler_and_slow_nic_and_nothing_on_a_clean_run(tmp_path: Path, plan: str, nodes: int,
                                                                     seed: int) -> None:
    rng = np.random.default_rng(seed)
    kw = PLANS[plan](nodes)
    world = nodes * kw["chips_per_node"]
    rank = int(rng.integers(world))
    slowdown = float(rng.uniform(1.3, 1.5))
    node = int(rng.integers(nodes))
    factor = float(rng.uniform(0.2, 0.4))
    faults = [f"straggler:rank={rank},slowdown={slowdown:.2f}", f"slow-link:node={node},factor={factor:.2f}"]
    faulty = _findings(_store(tmp_path, "fault", faults, seed=seed, **kw))
    stragglers = [f for f in faulty if f["kind"] == "straggler"]
    assert [f["ranks"] for f in stragglers] == [[rank]], (faults, faulty)
    links = [f["nodes"] for f in faulty if f["kind"] == "slow_link"]
    # A TP-only plan whose replicas never talk across nodes: a slow NIC costs nothing.
    assert links == ([] if plan == "tp+dp" else [[node]]), (faults, faulty)
    ratio = stragglers[0]["evidence"]["compute_ratio"]
    assert ratio == pytest.approx(slowdown, rel=0.05)
    cpn = kw["chips_per_node"]
    assert re.search(rf"rank {rank} \(node {rank // cpn}, chip {rank % cpn}\) computes", stragglers[0]["title"])
    clean = _findings(_store(tmp_path, "clean", [], seed=seed, **kw))
    assert not [f for f in clean if f["kind"] in ("straggler", "slow_link")], clean
    for f in faulty + clean:
        assert f["saving_pct"] >= 1.0 and f["saving_ns"] > 0 and f["title"] and f["next"]
    assert [f["saving_ns"] for f in faulty] == sorted((f["saving_ns"] for f in faulty), reverse=True)


def test_whatif_removing_a_straggler_predicts_the_clean_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    kw = PLANS["tp+pp"](3)
    rank = int(rng.integers(6))
    slowdown = 1.4
    slow = _store(tmp_path, "slow", [f"straggler:rank={rank},slowdown={slowdown}"], seed=5, **kw)
    clean = _store(tmp_path, "clean", [], seed=5, **kw)
    spec = f"rank={rank}:compute={1 / slowdown:.6f}"
    out = run_reports(open_store(slow), ["whatif"], what_if=[spec]).to_json()["whatif"]
    predicted = out["scenarios"][0]["wall_ns"]
    wall_clean = _wall(clean)
    assert out["measured"]["wall_ns"] > wall_clean          # the straggler cost something
    assert predicted == pytest.approx(wall_clean, rel=0.05)


def test_whatif_twice_the_hbm_bandwidth_predicts_a_re_emulation(tmp_path: Path) -> None:
    preset = Path(__file__).resolve().parents[2] / "sohuprof" / "presets" / "hardware" / "sohu.toml"
    text = preset.read_text()
    bw = float(re.search(r"^hbm_bandwidth\s*=\s*([0-9.eE+]+)", text, re.M).group(1))
    fast = tmp_path / "sohu-2x-hbm.toml"
    fast.write_text(re.sub(r"^hbm_bandwidth\s*=\s*[0-9.eE+]+", f"hbm_bandwidth = {2 * bw!r}", text, flags=re.M))
    kw = PLANS["tp+pp"](2)
    base = _store(tmp_path, "base", [], seed=9, **kw)
    twice = _store(tmp_path, "twice", [], hw=str(fast), seed=9, **kw)
    out = run_reports(open_store(base), ["whatif"], what_if=["hw:hbm_bandwidth=2"]).to_json()["whatif"]
    wall_twice = _wall(twice)
    assert out["scenarios"][0]["wall_ns"] < out["measured"]["wall_ns"]
    assert out["scenarios"][0]["wall_ns"] == pytest.approx(wall_twice, rel=0.10)


def test_dask_and_local_give_the_same_diagnosis() -> None:
    names = ["findings", "critical_path"]
    local = run_reports(open_store(SAMPLE), names).to_json()
    dask = run_reports(open_store(SAMPLE), names, engine="dask").to_json()
    assert json.dumps(local, sort_keys=True) == json.dumps(dask, sort_keys=True)


def test_median_of_others_matches_the_direct_median() -> None:
    from sohuprof.analyzers.diagnosis.findings import _median_of_others

    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5, 8, 33):
        values = rng.random((n, 4))
        values[0, 0] = values[1, 0]            # ties
        direct = np.array([np.median(np.delete(values, i, axis=0), axis=0) for i in range(n)])
        assert np.allclose(_median_of_others(values), direct)


def _root_causes(store: Path):
    from sohuprof.analyzers.diagnosis.critical_path import CRITICAL_PATH
    from sohuprof.analyzers.diagnosis.root_causes import root_causes

    ctx = build_context(open_store(store))

    class _Base(type(CRITICAL_PATH)):
        name = "base"

        def combine(self, partials, ctx):
            return baseline(partials, ctx)

    g, rep = run_analyses(ctx, [_Base()])["base"]
    return root_causes(g, rep, ctx)


def test_root_causes_charge_every_nanosecond_of_waiting_and_blame_the_straggler(tmp_path: Path) -> None:
    rng = np.random.default_rng(31)
    kw = PLANS["tp+pp"](3)
    rank = int(rng.integers(6))
    rc = _root_causes(_store(tmp_path, "s", [f"straggler:rank={rank},slowdown=1.4"], seed=8, **kw))
    charged = int(rc.causes["cost_ns"].sum()) + sum(rc.structural.values())
    assert abs(charged - rc.total_wait_ns) <= len(rc.causes) + 2      # per-row rounding only
    assert rc.total_wait_ns > 0
    top = rc.by_rank.sort_values("root_cost_ns", ascending=False)
    assert int(top["rank"].iloc[0]) == rank
    # The straggler's peers wait for it but are not its cause: each is charged far less.
    rest = top[top["rank"] != rank]["root_cost_ns"]
    assert rest.empty or rest.max() < 0.2 * top["root_cost_ns"].iloc[0]
    # Its own cause is compute, in the op classes it runs.
    mine = rc.causes[rc.causes["rank"] == rank]
    assert mine.groupby("kind")["cost_ns"].sum().idxmax() == "compute"


def test_root_causes_of_a_clean_run_are_structural(tmp_path: Path) -> None:
    rc = _root_causes(_store(tmp_path, "c", [], seed=8, **PLANS["tp+pp"](3)))
    assert rc.total_wait_ns > 0
    own = int(rc.causes["cost_ns"].sum())
    # Jitter makes every rank a little late now and then; no rank's share is more than noise.
    assert own < 0.1 * rc.total_wait_ns
    assert rc.structural["pipeline_bubble"] > 0.5 * rc.total_wait_ns


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_replay_matches_its_numpy_oracle(tmp_path: Path, seed: int) -> None:
    from sohuprof.analyzers.diagnosis import replay as replay_module

    if replay_module.kernels is None:
        pytest.skip("the compiled kernels are not built (pip install -e .)")
    rng = np.random.default_rng(seed)
    # Two-batch overlap (asynchronous all-reduces), pipeline merges and step barriers.
    store = _store(tmp_path, "tbo", [], seed=seed, model="llama3-8b", nodes=2, chips_per_node=2, tp=2, pp=2,
                   requests=3, prompt_len=2500, output_len=4, max_batch_tokens=8192)
    for path in (SAMPLE, store):
        _, g = _graph(path)
        A, R = g.anchors, len(g.ranks)
        S = 4
        delta = rng.normal(0, 2000, (A + R, S)) * (rng.random((A + R, S)) < 0.3)
        tscale = rng.uniform(0, 2, (len(g.inst_key), S))
        fast = replay(g, delta, tscale)
        slow = replay(g, delta, tscale, use_kernels=False)
        # The wavefront (for graphs whose release order is not topological) agrees too.
        g.memo["schedule"] = replay_module.Schedule(False)
        wave = replay(g, delta, tscale)
        g.memo.pop("schedule")
        for other in (slow, wave):
            for name in ("arrive", "leave", "release", "end", "wait"):
                assert np.allclose(getattr(fast, name), getattr(other, name), rtol=1e-9, atol=1e-6), name


def test_comm_stragglers_rank_the_root_cause_not_the_victims_of_a_slow_link(tmp_path: Path) -> None:
    # The victims of a slow NIC arrive last at their pipeline transfers (the largest delay
    # cost); the straggler is the one whose own excess caused the waiting.
    rng = np.random.default_rng(41)
    kw = PLANS["tp+pp"](4)
    rank = int(rng.integers(2))                       # in the first stage
    store = _store(tmp_path, "v", [f"straggler:rank={rank},slowdown=1.3", "slow-link:node=2,factor=0.3"], seed=4, **kw)
    rows = run_reports(open_store(store), ["comm"]).to_json()["comm"]["stragglers"]
    assert rows[0]["rank"] == rank and rows[0]["cause"].startswith("compute")
    assert rows[0]["peer_ratio"] == pytest.approx(1.3, rel=0.03)
    assert rows == sorted(rows, key=lambda r: (-r["root_cost_ns"], -r["delay_cost_ns"], r["rank"]))


@pytest.mark.parametrize("plan,nodes", [("tp+pp", 4), ("ep", 4), ("tp+dp", 2)])
def test_noise_thresholds_hold_on_fault_free_runs(tmp_path: Path, plan: str, nodes: int) -> None:
    """Why the thresholds are where they are: on fault-free runs (per-op jitter only) no rank
    strays from its peers by more than a fraction of STRAGGLER_RATIO's margin, and no NIC from
    the others', so neither kind can appear by chance."""
    from sohuprof.analyzers.diagnosis.findings import STRAGGLER_RATIO, rank_speed, roles
    from sohuprof.analyzers.reports.comm import SLOW_RATIO

    store = _store(tmp_path, "clean", [], seed=23, **PLANS[plan](nodes))
    ctx, g = _graph(store)
    ratio, _, _ = rank_speed(g, roles(ctx, g.ranks))
    assert ratio.max() - 1 < 0.4 * (STRAGGLER_RATIO - 1), ratio.max()
    nics = run_reports(open_store(store), ["comm"]).to_json()["comm"]["nics"]
    assert all(n["ratio"] is None or n["ratio"] > 0.9 > SLOW_RATIO for n in nics)


@pytest.mark.parametrize("plan,nodes", [("tp+pp", 3), ("ep", 4)])
def test_whatif_mending_a_slow_nic_predicts_the_clean_run(tmp_path: Path, plan: str, nodes: int) -> None:
    # In an all-to-all across nodes the per-hop latency is most of a transfer: only the bytes'
    # part speeds up with the bandwidth.
    rng = np.random.default_rng(51)
    kw = PLANS[plan](nodes)
    node = int(rng.integers(nodes))
    factor = 0.3
    slow = _store(tmp_path, "slow", [f"slow-link:node={node},factor={factor}"], seed=6, **kw)
    clean = _store(tmp_path, "clean", [], seed=6, **kw)
    out = run_reports(open_store(slow), ["whatif"], what_if=[f"link=node{node}:bandwidth={1 / factor:.6f}"]).to_json()
    wall_clean = _wall(clean)
    assert out["whatif"]["measured"]["wall_ns"] > wall_clean
    assert out["whatif"]["scenarios"][0]["wall_ns"] == pytest.approx(wall_clean, rel=0.05)


def test_a_graph_that_cannot_be_replayed_leaves_the_other_reports_standing(monkeypatch) -> None:
    """Clocks that put the collectives in a cycle: the diagnosis says so; the measurements stand."""
    from sohuprof.analyzers.diagnosis import critical_path as cp_module
    from sohuprof.analyzers.diagnosis.replay import ReplayError

    def cycle(*args, **kwargs):
        raise ReplayError("the collectives wait on each other in a cycle")

    monkeypatch.setattr(cp_module, "replay", cycle)
    out = run_reports(open_store(SAMPLE), ["findings", "critical_path", "comm", "stalls"]).to_json()
    assert out["findings"]["findings"] == [] and "cycle" in out["findings"]["notes"][0]
    assert out["critical_path"]["path_ns"] == 0 and "cycle" in out["critical_path"]["notes"][0]
    assert out["comm"]["stragglers"] and "root_cost_ns" not in out["comm"]["stragglers"][0]
    assert out["stalls"]["ranks"]
