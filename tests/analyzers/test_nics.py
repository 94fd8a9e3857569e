"""The comm report's ``nics``: a slow NIC drawn at random is named from the port counters in every
plan where it carries traffic (where collective timing alone cannot tell which end is slow), and
nothing is named on a healthy run or where nothing crosses nodes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.reports.comm import COMM, SLOW_RATIO, nic_table
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate, parse_fault
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import StoreWriter, open_store

PLANS = {
    # TP inside each node, one pipeline stage a node: only stage s -> s + 1 sends cross, and the
    # last node only receives.
    "tp+pp": (lambda nodes: dict(model="llama3-8b", nodes=nodes, chips_per_node=2, tp=2, pp=nodes, requests=3,
                                 prompt_len=64, output_len=4), (2, 3, 4)),
    # Expert parallel over every chip: all-to-alls whose members all leave with the slowest NIC.
    "ep": (lambda nodes: dict(model="mixtral-8x7b", nodes=nodes, chips_per_node=2, tp=2, ep=2 * nodes, requests=4,
                              prompt_len=32, output_len=3), (2, 4)),
    # TP inside each node, data parallel across them: nothing crosses nodes.
    "tp+dp": (lambda nodes: dict(model="llama3-8b", nodes=nodes, chips_per_node=2, tp=2, requests=4, prompt_len=64,
                                 output_len=4), (2, 3, 4)),
}


@pytest.fixture(scope="module")
def seed() -> int:
    """The seed the module's faults are drawn from: fresh each session, printed, and named in every
    failure (set SOHUPROF_TEST_SEED to replay one)."""
    value = int(os.environ.get("SOHUPROF_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"test_nics: SOHUPROF_TEST_SEED={value}")
    return value


def _store(tmp: Path, name: str, faults: tuple[str, ...], seed: int, **kw) -> Path:
    spec = dict(kw)
    cfg = EmulatorConfig(model=load_model(spec.pop("model")), hardware=load_hardware("sohu"), seed=seed,
                         faults=tuple(parse_fault(f) for f in faults), **spec)
    emulate(cfg, tmp / f"{name}.run", show_progress=False)
    collect(tmp / f"{name}.run", tmp / f"{name}.store", show_progress=False)
    return tmp / f"{name}.store"


def _comm(store: Path):
    return run_analyses(build_context(open_store(store)), [COMM])["comm"]


@pytest.mark.parametrize("plan", list(PLANS))
def test_a_random_slow_nic_is_named_and_nothing_on_a_healthy_run(tmp_path: Path, plan: str, seed: int) -> None:
    rng = np.random.default_rng([seed, list(PLANS).index(plan)])
    shape, choices = PLANS[plan]
    nodes = int(rng.choice(choices))
    node, factor = int(rng.integers(nodes)), round(float(rng.uniform(0.15, 0.45)), 3)
    kw = shape(nodes)
    fault = f"slow-link:node={node},factor={factor}"
    what = f"{plan} over {nodes} nodes, {fault} (SOHUPROF_TEST_SEED={seed})"
    slow, healthy = _comm(_store(tmp_path, "slow", (fault,), seed, **kw)), _comm(_store(tmp_path, "ok", (), seed, **kw))
    if plan == "tp+dp":
        assert slow.nics.empty and healthy.nics.empty, what                   # no NIC traffic, no rows
        assert not slow.links["slow"].any(), what
        return
    nics = slow.nics
    assert nics["node"].tolist() == list(range(nodes)), what                  # every NIC carries traffic
    assert nics.loc[nics["slow"], "node"].tolist() == [node], (what, nics)
    ratio = nics.set_index("node")["ratio"]
    # Against the median of healthy peers the slow NIC's ratio is its factor (with two nodes, the
    # other is its only peer).
    assert ratio[node] == pytest.approx(factor, rel=1e-3), what
    assert (ratio.drop(node) > 1 / SLOW_RATIO * factor).all(), what
    assert healthy.nics["ratio"].to_numpy() == pytest.approx(1.0, rel=1e-3), what
    expected = nics["expected_rate"].iloc[0]
    assert nics.set_index("node")["rate"].drop(node).to_numpy() == pytest.approx(expected, rel=1e-3)
    # A link is slow exactly when one of its ends is the slow node.
    links = slow.links
    touches = (links["src_node"] == node) | (links["dst_node"] == node)
    assert len(links) and (links["slow"] == touches).all(), (what, links)
    assert not healthy.links["slow"].any(), what


def test_nics_in_the_json_and_nic_table(tmp_path: Path) -> None:
    store = _store(tmp_path, "pp", ("slow-link:node=1,factor=0.3",), 5, **PLANS["tp+pp"][0](2))
    ctx = build_context(open_store(store))
    out = run_analyses(ctx, [COMM])["comm"].to_json()
    assert [(n["node"], n["slow"]) for n in out["nics"]] == [(0, False), (1, True)]
    row = out["nics"][0]
    assert row["tx_bytes"] > 0 and row["rx_bytes"] == 0 and row["wait_ns"] > row["tx_ns"]   # waits on node 1
    assert out["nics"][1]["tx_bytes"] == 0 and out["nics"][1]["rx_bytes"] == row["tx_bytes"]
    assert isinstance(row["tx_bytes"], int) and isinstance(row["rate"], float)
    table = nic_table(ctx)
    want = pd.DataFrame(out["nics"])
    assert list(table.columns) == list(want.columns)
    for column in table.columns:       # pytest.approx takes flat sequences, not lists of dicts
        got, exp = table[column].tolist(), want[column].tolist()
        assert got == (exp if isinstance(exp[0], (bool, str)) or exp[0] is None else pytest.approx(exp)), column
    # Sums of the counters, and the rate over both directions.
    c = ctx.counters
    sent = c.loc[c["counter"] == "nic_tx_bytes", "value"].sum()
    assert table["tx_bytes"].sum() == sent == table["rx_bytes"].sum()
    assert table["rate"].iloc[1] == pytest.approx(table["rx_bytes"].iloc[1] / table["rx_ns"].iloc[1] * 1e9)


def _counter_store(tmp: Path, rows: list[tuple[int, int, str, float]], nodes: list[int]) -> Path:
    """A store with only counters (and one event per rank so it opens): ``(ts, rank, counter, value)``."""
    import pyarrow as pa

    path = tmp / "counters"
    with StoreWriter(path) as w:
        for rank, node in enumerate(nodes):
            w.write_events(pa.table({"ts": [0], "dur": [10], "node": pa.array([node], pa.int32()),
                                     "chip": pa.array([rank], pa.int32()), "rank": pa.array([rank], pa.int32()),
                                     "track": ["matrix"], "name": ["gemm"], "op": ["gemm"], "category": ["compute"]}))
        ts, rank, counter, value = zip(*rows) if rows else ((), (), (), ())
        w.write_table("counters", pa.table({"ts": pa.array(ts, pa.int64()), "rank": pa.array(rank, pa.int32()),
                                            "counter": pa.array(counter, pa.string()),
                                            "value": pa.array(value, pa.float64())}))
        w.write_manifest({"source": {"format": "sohu-raw-trace"},
                          "ranks": [{"rank": r, "node": n, "chip": r} for r, n in enumerate(nodes)]})
    return path


def test_nic_table_without_counters_or_spec(tmp_path: Path) -> None:
    empty = nic_table(build_context(open_store(_counter_store(tmp_path / "a", [(0, 0, "prefill_tokens", 5.0)],
                                                              [0]))))
    assert empty.empty and list(empty.columns) == ["node", "tx_bytes", "tx_ns", "wait_ns", "rx_bytes", "rx_ns",
                                                    "rate", "expected_rate", "ratio", "slow"]
    # Three nodes, no hardware spec: each compared with the median of the other two; only the
    # transmit counters (no rx_*) are enough.
    rows = [(5, r, "nic_tx_bytes", 1000.0) for r in range(3)] + [(5, 0, "nic_tx_ns", 10.0), (5, 1, "nic_tx_ns", 10.0),
                                                                  (5, 2, "nic_tx_ns", 40.0)]
    table = nic_table(build_context(open_store(_counter_store(tmp_path / "b", rows, [0, 1, 2]))))
    assert table["slow"].tolist() == [False, False, True]
    assert table["ratio"].tolist() == pytest.approx([1.6, 1.6, 0.25])
    assert table["expected_rate"].isna().all()
