"""The roofline per op name (``by="name"``): rows that add up to the op-class rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from sohuprof.analyzers.analysis import ReportError
from sohuprof.analyzers.report import run_reports
from sohuprof.store import open_store

STORE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict]:
    store = open_store(STORE)
    by_op = run_reports(store, ["roofline"]).to_json()["roofline"]
    by_name = run_reports(store, ["roofline"], by="name").to_json()["roofline"]
    return by_op, by_name


def test_default_keeps_the_contract(both: tuple[dict, dict]) -> None:
    by_op, by_name = both
    assert "name" not in by_op["ops"][0]
    assert list(by_name["ops"][0])[:3] == ["op", "name", "phase"]
    assert by_name["collectives"] == by_op["collectives"]


def test_names_sum_to_op_classes(both: tuple[dict, dict]) -> None:
    by_op, by_name = both
    ops, names = pd.DataFrame(by_op["ops"]), pd.DataFrame(by_name["ops"])
    cols = ["count", "time_ns", "flops", "hbm_bytes"]
    want = ops.groupby("op")[cols].sum().sort_index()
    got = names.groupby("op")[cols].sum().sort_index()
    pd.testing.assert_frame_equal(got, want)
    per_phase = names.groupby(["op", "phase"])[cols].sum().sort_index()
    pd.testing.assert_frame_equal(per_phase, ops.groupby(["op", "phase"])[cols].sum().sort_index())
    # Headroom is a sum of per-event floats: equal up to the rounding of their order.
    assert names.groupby("op")["headroom_ns"].sum().sort_index().to_numpy() == pytest.approx(
        ops.groupby("op")["headroom_ns"].sum().sort_index().to_numpy(), abs=len(names))


def test_no_row_above_its_roof(both: tuple[dict, dict]) -> None:
    names = pd.DataFrame(both[1]["ops"])
    assert (names["attained_flops"] <= names["roof_flops"] * (1 + 1e-9)).all()
    assert {"qkv_proj", "o_proj", "expert_gate_up", "expert_down"} <= set(names["name"])
    assert names["headroom_ns"].is_monotonic_decreasing


def test_unknown_grouping_is_refused() -> None:
    with pytest.raises(ReportError, match="'by' must be one of 'op', 'name'"):
        run_reports(open_store(STORE), ["roofline"], by="layer")
