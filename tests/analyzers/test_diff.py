"""The diff of two stores (analyzers/diff.py): hand-built profiles whose answer is worked out by
hand, a store against itself, an injected straggler, and two real profiler traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sohuprof.analyzers.diff import Profile, diff_profiles, diff_stores, normalise_names, short_name
from sohuprof.cli import cli
from sohuprof.collectors import collect
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "sample_traces" / "mixtral-2node" / "store"
KINETO = ROOT / "tests" / "data" / "kineto"
SHARED = ROOT.parent / "shared" / "traces" / "kineto-more"


def _profile(names: list[tuple], busy: list[tuple] = (), *, ranks: tuple[int, ...] = (0,), wall: int = 100,
             label: str = "x") -> Profile:
    return Profile(label=label, source="kineto", wall_ns=wall, ranks=ranks,
                   names=pd.DataFrame(names, columns=["rank", "name", "category", "count", "time_ns", "wait_ns"]),
                   busy=pd.DataFrame(list(busy), columns=["rank", "category", "time_ns"]))


def _events(store: Path) -> pd.DataFrame:
    return pd.read_parquet(store / "events", columns=["rank", "name", "category", "dur"])


def _sums(events: pd.DataFrame, keys: list[str]) -> pd.Series:
    return events.groupby(keys, observed=True)["dur"].sum()


# --- by hand ---------------------------------------------------------------------------------

def test_hand_built_statuses_and_deltas() -> None:
    a = _profile([(0, "gemm", "compute", 2, 100, 0), (0, "old", "compute", 1, 10, 0),
                  (0, "same", "memory", 3, 30, 0), (0, "ar", "communication", 1, 50, 5)],
                 [(0, "compute", 110)])
    b = _profile([(0, "gemm", "compute", 2, 160, 0), (0, "new", "compute", 4, 40, 0),
                  (0, "same", "memory", 3, 30, 0), (0, "ar", "communication", 1, 120, 80)],
                 [(0, "compute", 200)], wall=150)
    out = diff_profiles(a, b)
    names = out.names.set_index("name")
    assert names.loc["gemm", ["delta_ns", "delta_pct", "status"]].tolist() == [60, 60.0, "changed"]
    assert names.loc["old", "status"] == "removed" and names.loc["new", "status"] == "added"
    assert names.loc["same", "status"] == "same" and names.loc["same", "delta_ns"] == 0
    assert np.isnan(names.loc["new", "delta_pct"])           # no time in A: no percentage
    # ar grew by 70 ns, 75 of it waiting for a peer: its own time shrank by 5, so it ranks below
    # gemm (+60 own), new (+40) and old (-10), above nothing that did not change.
    assert out.top["name"].tolist() == ["gemm", "new", "old", "ar"]
    assert names.loc["ar", "wait_delta_ns"] == 75
    data = out.to_json()
    assert [r["name"] for r in data["added"]] == ["new"] and data["added"][0]["count"] == 4
    assert [r["name"] for r in data["removed"]] == ["old"] and data["removed"][0]["time_ns"] == 10
    assert data["wall_delta_ns"] == 50 and data["wall_delta_pct"] == 50.0
    assert data["ranks"] == [{"rank": 0, "category": "compute", "time_a_ns": 110, "time_b_ns": 200, "delta_ns": 90,
                              "delta_pct": 81.82}]
    assert data["notes"] == []
    # The names' deltas add up to the difference of the totals.
    assert out.names["delta_ns"].sum() == (160 + 40 + 30 + 120) - (100 + 10 + 30 + 50)


def test_rank_sets_that_differ_are_noted_and_only_shared_ranks_compared() -> None:
    a = _profile([(0, "k", "compute", 1, 10, 0)], [(0, "compute", 10)])
    b = _profile([(0, "k", "compute", 1, 12, 0), (1, "k", "compute", 1, 1000, 0)],
                 [(0, "compute", 12), (1, "compute", 1000)], ranks=(0, 1))
    out = diff_profiles(a, b)
    assert len(out.notes) == 1 and "rank 1 only in B" in out.notes[0]
    assert out.names["delta_ns"].tolist() == [2]             # rank 1 is left out, not counted as new
    rows = out.to_json()["ranks"]
    assert rows[1] == {"rank": 1, "category": "compute", "time_a_ns": None, "time_b_ns": 1000, "delta_ns": None,
                       "delta_pct": None}
    # No rank shared: the whole of each is compared, and top has no rank.
    c = _profile([(5, "k", "compute", 1, 30, 0)], [(5, "compute", 30)], ranks=(5,))
    whole = diff_profiles(a, c)
    assert "no rank is shared" in whole.notes[0]
    assert whole.names["delta_ns"].tolist() == [20] and whole.to_json()["top"][0]["rank"] is None


def test_match_names_short() -> None:
    assert short_name("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >"
                      "(int, at::native::FillFunctor<float>)") == "at::native::vectorized_elementwise_kernel"
    assert short_name("ProfilerStep#551") == "ProfilerStep#"
    assert short_name("Memcpy HtoD (Pageable -> Device)") == "Memcpy HtoD (Pageable -> Device)"   # kept, as HTA does
    assert short_name("gemm_fp8") == "gemm_fp8"
    a = _profile([(0, "ProfilerStep#1", "host", 1, 10, 0)])
    b = _profile([(0, "ProfilerStep#9", "host", 1, 12, 0)])
    assert diff_profiles(a, b).names["status"].tolist() == ["added", "removed"]
    short = diff_profiles(a, b, match_names="short")
    assert short.names["name"].tolist() == ["ProfilerStep#"] and short.names["delta_ns"].tolist() == [2]
    with pytest.raises(ValueError, match="'match_names'"):
        normalise_names(pd.Series(["x"]), "fuzzy")
    with pytest.raises(ValueError, match="'top'"):
        diff_profiles(a, b, top=0)


# --- real stores ---------------------------------------------------------------------------

def test_a_store_against_itself_changes_nothing() -> None:
    store = open_store(STORE)
    out = diff_stores(store, store)
    data = out.to_json()
    assert data["wall_delta_ns"] == 0 and data["notes"] == [] and data["ranks_compared"] == 8
    assert data["top"] == [] and data["added"] == [] and data["removed"] == []
    assert {r["status"] for r in data["names"]} == {"same"}
    for table in ("names", "ranks", "breakdown", "collectives"):
        assert data[table] and all(r["delta_ns"] == 0 for r in data[table]), table
    assert {r["report"] for r in data["breakdown"]} == {"stalls"}
    assert all(r["count_delta"] == 0 and r["bytes_delta"] == 0 for r in data["collectives"])
    # The per-name counts and times are the store's own.
    events = _events(STORE)
    sums = _sums(events, ["name"])
    assert {r["name"]: r["time_a_ns"] for r in data["names"]} == {k: int(v) for k, v in sums.items()}
    assert sum(r["count_a"] for r in data["names"]) == len(events)


@pytest.fixture(scope="module")
def straggler_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small emulated Llama-3-8B TP=2 runs, the second with rank 1 computing 1.5x as long."""
    root = tmp_path_factory.mktemp("straggler")
    stores = []
    for name, inject in (("clean", ()), ("slow", ("--inject", "straggler:rank=1,slowdown=1.5"))):
        result = CliRunner().invoke(cli, ["-q", "emulate", "--model", "llama3-8b", "--nodes", "1", "--chips-per-node",
                                          "2", "--tp", "2", "--requests", "4", "--prompt-len", "128", "--output-len",
                                          "8", *inject, "-o", str(root / name)])
        assert result.exit_code == 0, result.output
        collect(root / name, root / f"{name}.store")
        stores.append(root / f"{name}.store")
    return stores[0], stores[1]


def test_straggler_top_change_is_its_compute(straggler_runs: tuple[Path, Path]) -> None:
    clean, slow = straggler_runs
    out = diff_stores(open_store(clean), open_store(slow))
    data = out.to_json()
    first = data["top"][0]
    assert first["rank"] == 1 and first["category"] == "compute" and first["status"] == "changed"
    ev_a, ev_b = _events(clean), _events(slow)
    sums_a, sums_b = _sums(ev_a, ["rank", "name"]), _sums(ev_b, ["rank", "name"])
    assert first["delta_ns"] == sums_b[(1, first["name"])] - sums_a[(1, first["name"])]
    assert first["delta_pct"] == pytest.approx(50, abs=0.5)
    # Every rank-1 compute op is 1.5x; rank 0's collectives grew by waiting, not by their own time.
    for row in data["top"]:
        if row["rank"] == 1 and row["category"] == "compute" and row["time_a_ns"] > 1000:
            assert row["delta_pct"] == pytest.approx(50, abs=1), row
    wait = [r for r in data["top"] if r["rank"] == 0 and r["category"] == "communication"]
    assert wait and all(abs(r["delta_ns"] - r["wait_delta_ns"]) < 0.05 * abs(r["delta_ns"]) for r in wait)
    # Rank 1's compute busy time grew by about the slowdown; the stalls say rank 0 waited for it.
    ranks = {(r["rank"], r["category"]): r for r in data["ranks"]}
    assert ranks[(1, "compute")]["delta_pct"] == pytest.approx(50, abs=1)
    parts = {(r["rank"], r["part"]): r for r in data["breakdown"]}
    assert parts[(0, "sync_wait")]["delta_ns"] > 0.8 * ranks[(1, "compute")]["delta_ns"]
    assert data["wall_delta_ns"] == data["wall_b_ns"] - data["wall_a_ns"] > 0
    assert data["added"] == [] and data["removed"] == []
    assert all(r["count_delta"] == 0 for r in data["collectives"])
    # The per-name deltas are the two runs' own per-name sums.
    names = {r["name"]: r["delta_ns"] for r in data["names"]}
    expected = _sums(ev_b, ["name"]).sub(_sums(ev_a, ["name"]), fill_value=0)
    assert names == {k: int(v) for k, v in expected.items()}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
def test_two_profiler_traces(tmp_path: Path) -> None:
    collect(KINETO, tmp_path / "a")
    collect(SHARED / "sampled-2rank-of128", tmp_path / "b")
    out = diff_stores(open_store(tmp_path / "a"), open_store(tmp_path / "b"))
    data = out.to_json()
    assert [(r["source"], r["ranks"], r["breakdown"]) for r in data["runs"]] == [("kineto", 1, "temporal"),
                                                                                ("kineto", 2, "temporal")]
    assert data["ranks_compared"] == 1
    assert len(data["notes"]) == 1 and "rank 1 only in B" in data["notes"][0]
    assert data["added"] and data["removed"]                   # different models: different kernels
    assert {r["report"] for r in data["breakdown"]} == {"temporal"}
    rank1 = [r for r in data["ranks"] if r["rank"] == 1]
    assert rank1 and all(r["time_a_ns"] is None and r["time_b_ns"] > 0 for r in rank1)
    # Rank 0 against rank 0: the per-name deltas are the two stores' own per-name sums.
    ev_a, ev_b = _events(tmp_path / "a"), _events(tmp_path / "b")
    expected = _sums(ev_b[ev_b["rank"] == 0], ["name", "category"]).sub(_sums(ev_a, ["name", "category"]),
                                                                      fill_value=0)
    got = {(r["name"], r["category"]): r["delta_ns"] for r in data["names"]}
    assert got == {k: int(v) for k, v in expected.items()}
    kinds = {r["kind"]: r for r in data["collectives"]}
    assert kinds["all_reduce"]["count_a"] > 0 and kinds["all_reduce"]["count_b"] == 0
    assert len(data["top"]) == 20 and all(r["rank"] == 0 for r in data["top"])
