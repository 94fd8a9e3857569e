"""The ``sequences`` report: against a slow, obviously correct window count, by hand, chunked in
any grouping, on every shared trace, and through the CLI."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from sohuprof.analyzers.engine import build_context, run_analyses
from sohuprof.analyzers.reports.sequences import (SEQUENCES, frequent_sequences, parse_lengths, sequences_chunk,
                                                  sequences_combine)
from sohuprof.cli import cli
from sohuprof.collectors import collect
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "sample_traces" / "mixtral-2node" / "store"
KINETO = ROOT / "tests" / "data" / "kineto"
SHARED = ROOT.parent / "shared" / "traces" / "kineto-more"
SHARED_TRACES = ["v100-ddp-rank1of2", "mi300-resnet-actckpt-rank0of8", "vllm-decode-fullgraph", "mtia-single-rank",
                 "sampled-2rank-of128", "cpu-only-rank34", "own-cpu-gloo-ddp-2rank"]
ALL = 10**9


def reference(ev: pd.DataFrame, lengths: tuple[int, ...]) -> dict[tuple, tuple[int, int, int, set]]:
    """(track, kernels) -> (count, total span, kernel time, ranks), one window at a time."""
    out: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, set()])
    device = ev[ev["category"] != "host"]
    for (rank, track), g in device.groupby(["rank", "track"]):
        g = g.sort_values("ts", kind="stable")
        names, ts, end, dur = g["name"].tolist(), g["ts"].tolist(), (g["ts"] + g["dur"]).tolist(), g["dur"].tolist()
        for k in lengths:
            for i in range(len(names) - k + 1):
                row = out[(track, " -> ".join(names[i:i + k]))]
                row[0] += 1
                row[1] += max(end[i:i + k]) - ts[i]
                row[2] += sum(dur[i:i + k])
                row[3].add(rank)
    return {k: (v[0], v[1], v[2], v[3]) for k, v in out.items()}


def as_dict(result) -> dict[tuple, tuple[int, int, int, int]]:
    return {(r["track"], r["kernels"]): (r["count"], r["total_ns"], r["kernel_ns"], r["ranks"])
            for r in result.to_json()["top"]}


def random_events(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "rank": rng.integers(0, 3, n), "ts": rng.integers(0, 10_000, n), "dur": rng.integers(0, 300, n),
        "name": rng.choice(["gemm", "attn", "norm", "nccl", "memcpy"], n, p=[0.4, 0.2, 0.2, 0.1, 0.1]),
        "track": rng.choice(["stream 7", "stream 13"], n),
        "category": rng.choice(["compute", "communication", "memory", "host"], n)})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lengths", [(2,), (3, 4, 5), (2, 8)])
def test_matches_the_window_by_window_count(seed: int, lengths: tuple[int, ...]) -> None:
    ev = random_events(seed)
    want = reference(ev, lengths)
    got = as_dict(frequent_sequences(ev, lengths=lengths, top=ALL))
    assert got == {k: (c, t, d, len(r)) for k, (c, t, d, r) in want.items()}


def test_by_hand() -> None:
    # a b c a b c on one stream, then A A A A on another; host work between is not a kernel.
    ev = pd.DataFrame({"rank": 0, "ts": [0, 10, 20, 30, 40, 50, 5, 0, 10, 20, 30],
                       "dur": [5, 5, 5, 5, 5, 5, 1, 8, 8, 8, 8],
                       "name": ["a", "b", "c", "a", "b", "c", "cudaLaunchKernel", "A", "A", "A", "A"],
                       "track": ["stream 7"] * 6 + ["thread 1"] + ["stream 9"] * 4,
                       "category": ["compute"] * 6 + ["host"] + ["memory"] * 4})
    got = frequent_sequences(ev, lengths=3).to_json()
    assert got["min_length"] == got["max_length"] == 3
    rows = {(r["track"], r["kernels"]): r for r in got["top"]}
    assert set(rows) == {("stream 7", "a -> b -> c"), ("stream 7", "b -> c -> a"), ("stream 7", "c -> a -> b"),
                         ("stream 9", "A -> A -> A")}
    abc = rows[("stream 7", "a -> b -> c")]
    assert (abc["count"], abc["total_ns"], abc["mean_ns"], abc["kernel_ns"]) == (2, 50, 25, 30)
    aaa = rows[("stream 9", "A -> A -> A")]                 # overlapping windows: A A A A holds two
    assert (aaa["count"], aaa["total_ns"], aaa["kernel_ns"]) == (2, 28 + 28, 48)
    # By count, ties to the longer time: the two 2-count sequences of stream 7 first by span.
    assert got["top"][0]["count"] == 2 and [r["count"] for r in got["top"]] == [2, 2, 1, 1]
    assert got["by_time"][0]["kernels"] == "A -> A -> A"
    # Windows never cross streams: 6 - 2 + 4 - 2 windows in all.
    assert sum(r["count"] for r in got["top"]) == 6


def test_counts_add_up_and_lengths_rank_longer_first_on_ties() -> None:
    ev = random_events(7, 1000)
    out = frequent_sequences(ev, lengths=(2, 3), top=ALL).top
    device = ev[ev["category"] != "host"]
    sizes = device.groupby(["rank", "track"]).size()
    for k in (2, 3):
        assert out.loc[out["length"] == k, "count"].sum() == (sizes - k + 1).clip(lower=0).sum()
    # A loop of 4 kernels run 10 times: w x y z 10 times, w x y and x y z 10, w x, x y, y z 10;
    # at equal counts the longer sequence comes first.
    loop = pd.DataFrame({"ts": np.arange(40) * 10, "dur": 5, "name": list("wxyz") * 10, "track": "stream 7",
                         "category": "compute"})
    top = frequent_sequences(loop, lengths=(2, 3, 4), top=7).top
    assert top["count"].tolist() == [10] * 6 + [9] and top["length"].tolist()[:6] == [4, 3, 3, 2, 2, 2]
    assert top["kernels"].iloc[0] == "w -> x -> y -> z"


def test_chunks_combine_in_any_order_and_grouping() -> None:
    import pyarrow as pa

    ev = random_events(3, 900)
    whole = frequent_sequences(ev, top=ALL)
    table = pa.Table.from_pandas(ev, preserve_index=False)
    parts = [sequences_chunk(table.filter(pa.array(ev["rank"].to_numpy() == r)), r) for r in (0, 1, 2)]
    for order in ([2, 0, 1], [1, 2, 0]):
        again = sequences_combine([parts[i] for i in order], top=ALL)
        assert as_dict(again) == as_dict(whole)
    # A rank's events cut at a stream boundary and chunked apart count the same as whole.
    r0 = ev[ev["rank"] == 0]
    split = [sequences_chunk(pa.Table.from_pandas(r0[r0["track"] == t], preserve_index=False), 0)
             for t in ("stream 7", "stream 13")]
    assert as_dict(sequences_combine(split, top=ALL)) == as_dict(frequent_sequences(r0, top=ALL))


def test_empty_and_single_event() -> None:
    one = pd.DataFrame({"ts": [0], "dur": [5], "name": ["a"], "track": ["stream 7"], "category": ["compute"]})
    for ev in (one, one.iloc[:0], one.assign(category="host")):
        got = frequent_sequences(ev).to_json()
        assert got["top"] == [] and got["by_time"] == [] and got["per_rank"] == []


def test_parse_lengths() -> None:
    assert parse_lengths(None) == (3, 4, 5)
    assert parse_lengths("2-4") == (2, 3, 4) and parse_lengths("8,2") == (2, 8) and parse_lengths(5) == (5,)
    for bad in ("1-3", "9", "x", [], [2.5]):
        with pytest.raises(ValueError, match="'sequence_lengths'"):
            parse_lengths(bad)


# --- stores --------------------------------------------------------------------------------

def test_sohu_run_gets_op_sequences_per_engine() -> None:
    ctx = build_context(open_store(STORE), options={"sequence_lengths": "3", "top": 10})
    assert SEQUENCES.applies(ctx) is None
    data = run_analyses(ctx, [SEQUENCES])["sequences"].to_json()
    assert data["min_length"] == data["max_length"] == 3 and len(data["top"]) == 10
    assert all(r["ranks"] == 8 for r in data["top"][:5])        # every rank runs the same layers
    everything = run_analyses(build_context(open_store(STORE), options={"sequence_lengths": "3", "top": ALL}),
                              [SEQUENCES])["sequences"].top
    matrix = everything.loc[everything["track"] == "matrix", "kernels"].tolist()
    assert "qkv_proj -> attention -> o_proj" in matrix
    assert not (everything["track"] == "host").any()
    events = pd.read_parquet(STORE / "events", columns=["rank", "track", "category"])
    device = events[events["category"] != "host"].groupby(["rank", "track"], observed=True).size()
    assert everything["count"].sum() == (device - 2).clip(lower=0).sum()


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
@pytest.mark.parametrize("name", SHARED_TRACES)
def test_every_shared_trace_has_a_result_or_a_reason(tmp_path: Path, name: str) -> None:
    collect(SHARED / name, tmp_path / "store")
    ctx = build_context(open_store(tmp_path / "store"))
    reason = SEQUENCES.applies(ctx)
    events = pd.read_parquet(tmp_path / "store" / "events", columns=["category"])
    if (events["category"] != "host").any():
        assert reason is None
        data = run_analyses(ctx, [SEQUENCES])["sequences"].to_json()
        assert data["top"] and data["by_time"] and data["per_rank"]
        assert all(r["count"] >= 1 and r["total_ns"] >= 0 and r["kernel_ns"] >= 0 for r in data["top"])
        assert all(r["length"] in (3, 4, 5) and len(r["kernels"].split(" -> ")) >= r["length"] for r in data["top"])
    else:
        assert reason and "CPU events only" in reason


def test_cli_table_and_json() -> None:
    result = CliRunner().invoke(cli, ["analyze", str(KINETO), "--report", "sequences", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["sequences"]
    assert data["min_length"] == 3 and data["max_length"] == 5 and len(data["top"]) == 20
    assert data["top"][0]["track"].startswith("stream ") and data["top"][0]["ranks"] == 1
    counts = [r["count"] for r in data["top"]]
    assert counts == sorted(counts, reverse=True)
    times = [r["total_ns"] for r in data["by_time"]]
    assert times == sorted(times, reverse=True)
    result = CliRunner().invoke(cli, ["analyze", str(STORE), "--report", "sequences"])
    assert result.exit_code == 0, result.output
    assert "sequences · top" in result.stdout and "sequences · per_rank" in result.stdout


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces is not beside the project")
def test_cli_cpu_only_trace_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(cli, ["analyze", str(SHARED / "cpu-only-rank34"), "--report", "sequences"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "report 'sequences' does not apply" in result.stderr and "CPU events only" in result.stderr
