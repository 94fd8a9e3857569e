"""Communication: stragglers and slow links found where they were injected, sums that add up."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analyzers_ref import timeline
from sohuprof.analyzers.reports.comm import COMM, busbw_factor
from sohuprof.analyzers.engine import build_context, rank_partitions, run_analyses
from sohuprof.analyzers.reports.stalls import STALLS
from sohuprof.collectors import collect

from sohuprof.emulator import EmulatorConfig, emulate, parse_fault
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import StoreWriter, open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "mixtral-2node" / "store"
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"


def _store(tmp: Path, **kw) -> Path:
    cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), requests=8,
                         prompt_len=512, output_len=16, seed=3, **kw)
    emulate(cfg, tmp / "raw", show_progress=False)
    collect(tmp / "raw", tmp / "store", show_progress=False)
    return tmp / "store"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory) -> Path:
    """4 nodes of 4 chips, TP 8: groups span nodes {0, 1} and {2, 3}; node 2's NIC is slow and
    rank 5 is throttled."""
    return _store(tmp_path_factory.mktemp("faulty"), nodes=4, chips_per_node=4, tp=8,
                  faults=(parse_fault("slow-link:node=2,factor=0.3"), parse_fault("straggler:rank=5,slowdown=1.5")))


@pytest.fixture(scope="module")
def pipeline_slow(tmp_path_factory) -> Path:
    """2 nodes, PP 2: only the stage-0 -> stage-1 sends cross nodes; node 1's NIC is slow."""
    return _store(tmp_path_factory.mktemp("pp"), nodes=2, chips_per_node=4, tp=4, pp=2,
                  faults=(parse_fault("slow-link:node=1,factor=0.3"),))


@pytest.fixture(scope="module")
def kineto(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kineto") / "store"
    collect(KINETO, out, show_progress=False)
    return out


def _run(path: Path, *analyses):
    return run_analyses(build_context(open_store(path)), analyses or [COMM])


def test_injected_straggler_is_top() -> None:
    assert _run(SAMPLE)["comm"].stragglers["rank"].iloc[0] == 5      # the sample injects rank 5


def test_faulty_run_straggler_and_slow_links(faulty: Path) -> None:
    comm = _run(faulty)["comm"]
    top = comm.stragglers.iloc[0]
    assert (top["rank"], top["node"], top["chip"]) == (5, 1, 1)
    assert top["delay_cost_ns"] > 2 * comm.stragglers["delay_cost_ns"].iloc[1]
    links = comm.links
    assert set(zip(links["src_node"], links["dst_node"])) == {(0, 1), (1, 0), (2, 3), (3, 2)}
    slow = set(zip(links.loc[links["slow"], "src_node"], links.loc[links["slow"], "dst_node"]))
    assert slow == {(2, 3), (3, 2)}
    healthy = links.loc[~links["slow"], "bandwidth"]
    # A hierarchical all-reduce moves only a 1/4 shard per chip across nodes, so the per-hop
    # latency (and its jitter) weighs more in each transfer than the 0.3x bandwidth does.
    assert (links.loc[links["slow"], "bandwidth"] < 0.7 * healthy.min()).all()


def test_two_nodes_compare_against_expected(pipeline_slow: Path) -> None:
    links = _run(pipeline_slow)["comm"].links
    assert links[["src_node", "dst_node"]].values.tolist() == [[0, 1]]     # sends go one way
    assert links["slow"].tolist() == [True]
    assert not _run(SAMPLE)["comm"].links["slow"].any()                   # healthy 2-node run


def test_link_bytes_follow_nccl_conventions(faulty: Path) -> None:
    ctx = build_context(open_store(faulty))
    links = run_analyses(ctx, [COMM])["comm"].links.set_index(["src_node", "dst_node"])
    c = ctx.collectives
    inst = c.groupby("coll_id").agg(kind=("kind", "first"), group=("group", "first"), n=("rank", "size"),
                                    size=("bytes", "max"))
    # A hierarchical all-reduce over 2 nodes of 4: each member sends its 1/4 shard across once
    # (2(m-1)/m x S/l, 4 members a node: S a direction); an all-gather's ring crosses each
    # direction once, (n-1)/n x S.
    factor = np.where(inst["kind"] == "all_reduce", 4 * 1 / 4, 7 / 8)
    per_group = (inst["size"] * factor).groupby(inst["group"]).sum()
    assert links.loc[(0, 1), "bytes"] == pytest.approx(per_group.loc[0], rel=1e-9)
    assert links.loc[(2, 3), "bytes"] == pytest.approx(per_group.loc[1], rel=1e-9)


def test_waits_and_delay_costs_add_up(faulty: Path) -> None:
    ctx = build_context(open_store(faulty))
    comm = run_analyses(ctx, [COMM])["comm"]
    c = ctx.collectives
    last = c.groupby("coll_id")["arrive"].transform("max")
    wait = (np.minimum(last, c["end"]) - c["arrive"]).clip(lower=0)
    assert comm.collectives["wait_ns"].sum() == wait.sum()
    assert comm.stragglers["delay_cost_ns"].sum() == pytest.approx(wait.sum(), abs=len(c))
    # The straggler's waits, by the rank: it arrives last, so it waits least.
    assert wait.groupby(c["rank"]).sum().idxmin() == 5


def test_per_group_statistics(faulty: Path) -> None:
    ctx = build_context(open_store(faulty))
    coll = run_analyses(ctx, [COMM])["comm"].collectives
    c = ctx.collectives
    inst = c.groupby("coll_id").agg(kind=("kind", "first"), group=("group", "first"), n=("rank", "size"),
                                    size=("bytes", "max"), start=("start", "max"), end=("end", "max"))
    ref = inst.assign(time=inst["end"] - inst["start"]).groupby(["kind", "group"], observed=True).agg(
        count=("size", "size"), bytes=("size", "sum"), time_ns=("time", "sum"), n=("n", "max"))
    got = coll.set_index(["kind", "group"])
    for col in ("count", "bytes", "time_ns"):
        assert got[col].to_dict() == ref[col].astype("int64").to_dict()
    assert np.allclose(got["algbw"], got["bytes"] / got["time_ns"] * 1e9)
    kinds = got.index.get_level_values(0)
    assert np.allclose(got["busbw"] / got["algbw"], busbw_factor(kinds, ref.loc[got.index, "n"]))
    assert busbw_factor(np.array(["all_reduce", "all_gather", "all_to_all", "send_recv"]), np.full(4, 8)).tolist() \
        == [1.75, 0.875, 0.875, 1.0]


@pytest.mark.parametrize("store", ["faulty", "pipeline_slow"])
def test_exposed_and_overlapped_split_comm_time(store: str, request: pytest.FixtureRequest) -> None:
    ctx = build_context(open_store(request.getfixturevalue(store)))
    res = run_analyses(ctx, [COMM, STALLS])
    coll, stalls = res["comm"].collectives, res["stalls"].ranks
    ev = ctx.store.read("events", columns=["rank", "ts", "dur", "category"]).to_pandas()
    comm = ev[ev["category"] == "communication"].sort_values(["rank", "ts"])
    # One collective engine per chip: a rank's collectives never overlap, so their union is their sum.
    assert ((comm["ts"] + comm["dur"]).groupby(comm["rank"]).shift() <= comm["ts"]).sum() == \
        len(comm) - comm["rank"].nunique()
    assert (coll["exposed_ns"] + coll["overlapped_ns"]).sum() == comm["dur"].sum()
    assert (coll[["exposed_ns", "overlapped_ns"]] >= 0).all().all()
    # Two-batch overlap hides TP all-reduces under compute; the stall sweep measures the same.
    # (Across nodes the hierarchical all-reduce is mostly latency, which two micro-batches pay
    # twice: the runtime keeps those prefill steps whole, so only the intra-node TP run overlaps.)
    if store == "pipeline_slow":
        assert coll["overlapped_ns"].sum() > 0
    assert coll["overlapped_ns"].sum() == stalls["overlapped_comm_ns"].sum()


def test_combine_in_any_order_equals_whole(faulty: Path) -> None:
    ctx = build_context(open_store(faulty))
    partials = [COMM.chunk(t, ctx) for t in rank_partitions(ctx, list(COMM.columns))]
    whole = COMM.combine(partials, ctx)
    shuffled = partials[:]
    random.Random(1).shuffle(shuffled)
    for order in (shuffled, partials[::-1]):
        other = COMM.combine(order, ctx)
        for name in ("collectives", "stragglers", "links"):
            pd.testing.assert_frame_equal(getattr(whole, name), getattr(other, name))


def test_kineto_single_rank(kineto: Path) -> None:
    ctx = build_context(open_store(kineto))
    assert COMM.applies(ctx) is None
    comm = run_analyses(ctx, [COMM])["comm"]
    out = comm.to_json()
    assert out["stragglers"] == [] and out["links"] == []
    row = comm.collectives.set_index("kind").loc["all_reduce"]
    assert row["count"] == 15
    assert row["busbw"] == pytest.approx(row["algbw"])          # a 2-rank group: 2(n-1)/n = 1
    assert row["exposed_ns"] + row["overlapped_ns"] > 0


def test_json_contract(faulty: Path) -> None:
    out = _run(faulty)["comm"].to_json()
    assert set(out) == {"notes", "collectives", "stragglers", "links", "nics", "intra_node"}
    assert out["notes"] == []          # a Sohu run records every member and every size
    assert set(out["collectives"][0]) == {"kind", "group", "count", "bytes", "time_ns", "algbw", "busbw",
                                          "exposed_ns", "overlapped_ns", "wait_ns"}
    assert set(out["stragglers"][0]) == {"rank", "node", "chip", "delay_cost_ns", "late_count", "root_cost_ns", "cause",
                                         "peer_ratio", "peers"}
    assert set(out["links"][0]) == {"src_node", "dst_node", "bytes", "time_ns", "bandwidth",
                                    "expected_bandwidth", "slow"}
    assert isinstance(out["links"][0]["slow"], bool) and isinstance(out["stragglers"][0]["rank"], int)
    assert set(out["nics"][0]) == {"node", "tx_bytes", "tx_ns", "wait_ns", "rx_bytes", "rx_ns", "rate",
                                   "expected_rate", "ratio", "slow"}
    assert [n["node"] for n in out["nics"] if n["slow"]] == [2]            # the injected slow NIC
    assert isinstance(out["nics"][0]["slow"], bool) and isinstance(out["nics"][0]["tx_bytes"], int)


@pytest.mark.parametrize("overlapping", [False, True])
def test_rank_union_and_hidden_match_a_timeline(tmp_path: Path, overlapping: bool) -> None:
    """Per (kind, group) communication time and the part under compute, against unit-step
    timelines: collectives one after another (the sequential path) or overlapping (the merge path)."""
    rng = np.random.default_rng(7 + overlapping)
    n = 300
    comp_ts = np.sort(rng.integers(0, 5000, n))
    comp_dur = rng.integers(0, 40, n)
    gaps = rng.integers(0 if overlapping else 1, 30, n)
    comm_dur = rng.integers(1, 60, n)
    comm_ts = 60 + np.cumsum(gaps + comm_dur) - comm_dur - (rng.integers(0, 50, n) if overlapping else 0)
    kinds = rng.choice(["all_reduce", "all_gather"], n)
    table = pa.table({
        "ts": np.r_[comp_ts, comm_ts], "dur": np.r_[comp_dur, comm_dur], "node": np.zeros(2 * n, np.int32),
        "chip": np.zeros(2 * n, np.int32), "rank": np.zeros(2 * n, np.int32), "track": ["matrix"] * (2 * n),
        "name": ["k"] * (2 * n), "op": ["gemm"] * n + kinds.tolist(),
        "category": ["compute"] * n + ["communication"] * n})
    with StoreWriter(tmp_path / "s") as w:
        w.write_events(table)
        w.write_manifest({"source": {"format": "kineto"}})
    ctx = build_context(open_store(tmp_path / "s"))
    events = ctx.store.read("events", columns=list(COMM.columns))
    per_key, _, _ = COMM.chunk(events, ctx)
    size = int(max(comp_ts.max() + 50, comm_ts.max() + 70))
    compute = timeline(comp_ts, comp_ts + comp_dur, size) > 0
    for kind in ("all_reduce", "all_gather"):
        sel = kinds == kind
        busy = timeline(comm_ts[sel], comm_ts[sel] + comm_dur[sel], size) > 0
        row = per_key.set_index("kind").loc[kind]
        assert row["union_ns"] == busy.sum() and row["overlapped_ns"] == (busy & compute).sum()
