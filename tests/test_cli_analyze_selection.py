"""``analyze --ranks/--start-ms/--end-ms`` (what every report computes on), ``--top/--sort``
(how its tables are cut and ordered) and ``--by`` (the roofline's rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from sohuprof.analyzers.render import reading_tables
from sohuprof.analyzers.render.order import order_table, table_sort
from sohuprof.cli import cli

STORE = str(Path(__file__).resolve().parents[1] / "sample_traces" / "mixtral-2node" / "store")


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["analyze", STORE, *args])
    return result.exit_code, result.stdout, result.stderr


def _json(*args: str) -> dict:
    code, out, err = _run(*args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_ranks_select_the_stalls() -> None:
    d = _json("--report", "summary,stalls", "--ranks", "5")
    assert [r["rank"] for r in d["stalls"]["ranks"]] == [5]
    assert d["summary"]["ranks"] == 1
    whole = _json("--report", "stalls")
    assert d["stalls"]["ranks"][0] == next(r for r in whole["stalls"]["ranks"] if r["rank"] == 5)


def test_window_gives_a_smaller_wall() -> None:
    whole = _json("--report", "summary,stalls")["summary"]
    part = _json("--report", "summary,stalls", "--start-ms", "20", "--end-ms", "45")
    assert 0 < part["summary"]["wall_ns"] < whole["wall_ns"]
    assert part["summary"]["wall_ns"] <= 25_000_000 + 2_000_000     # events starting in 25 ms, the last running on
    assert part["summary"]["events"] < whole["events"]
    for r in part["stalls"]["ranks"]:   # the split still sums to the (smaller) wall
        parts = r["compute_ns"] + r["memory_stall_ns"] + r["sync_wait_ns"] + r["comm_transfer_ns"] + r["idle_ns"]
        assert parts == r["wall_ns"] == part["summary"]["wall_ns"]


def test_top_and_sort() -> None:
    code, out, err = _run("--report", "comm", "--top", "3", "--sort", "delay_cost_ms")
    assert code == 0, err
    block = out.split("comm · stragglers")[1].split("more rows")[0]
    header = next(line for line in block.splitlines() if "delay_cost" in line)
    at = [c.strip() for c in header.split("┃")].index(next(c.strip() for c in header.split("┃") if "delay_cost" in c))
    rows = [line for line in block.splitlines() if line.startswith("│")]
    assert len(rows) == 3
    delays = [float(line.split("│")[at].replace(",", "")) for line in rows]
    stragglers = _json("--report", "comm")["comm"]["stragglers"]
    assert delays == sorted(delays, reverse=True)
    assert delays[0] == pytest.approx(max(s["delay_cost_ns"] for s in stragglers) / 1e6, rel=1e-2)   # as shown


def test_cut_tables_keep_their_worst_rows() -> None:
    stalls = _json("--report", "stalls")["stalls"]
    (_, df, caption), = reading_tables("stalls", stalls, max_rows=2)
    lost = pd.DataFrame(stalls["ranks"]).eval("wall_ns - compute_ns")
    assert caption and list(df["rank"]) == [stalls["ranks"][i]["rank"] for i in lost.nlargest(2).index]
    comm = _json("--report", "comm")["comm"]
    cut = dict((t, d) for t, d, _ in reading_tables("comm", comm, max_rows=1))
    assert cut["comm · stragglers"]["root_cost_ns"].iloc[0] == max(s["root_cost_ns"] for s in comm["stragglers"])
    with table_sort("rank"):   # --sort overrides the table's ranking, and orders uncut tables too
        (_, whole, _), = reading_tables("stalls", stalls, max_rows=None)
    assert list(whole["rank"]) == sorted(whole["rank"], reverse=True)
    frame = pd.DataFrame({"a": [1, 3, None, 3], "b": list("wxyz")})
    assert list(order_table("t", frame, cut=False, sort="a")["b"]) == ["x", "z", "w", "y"]
    assert list(order_table("t", frame, cut=True)["b"]) == list("wxyz")   # no ranking known: as given


def test_by_name() -> None:
    ops = _json("--report", "roofline", "--by", "name")["roofline"]["ops"]
    assert {"qkv_proj", "o_proj", "expert_gate_up"} <= {r["name"] for r in ops}
    assert "name" not in _json("--report", "roofline")["roofline"]["ops"][0]


@pytest.mark.parametrize(("args", "says"), [
    (["--ranks", "0,x"], "must be ranks and ranges like 0,3,8-15"),
    (["--ranks", "3-1"], "empty or negative"),
    (["--ranks", "99"], "ranks 99 are not in the store, which has ranks 0-7"),
    (["--report", "stalls", "--sort", "bogus"], "'--sort' column 'bogus' is in none of the tables"),
    (["--start-ms", "2000"], "holds no events"),
    (["--start-ms", "30", "--end-ms", "20"], "must be greater than --start-ms"),
    (["--by", "layer"], "Invalid value for '--by'"),
])
def test_bad_selection_is_one_line(args: list[str], says: str) -> None:
    code, out, err = _run(*args)
    assert code != 0
    assert says in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("Error")]) == 1


def test_collectives_follow_the_selection() -> None:
    whole = _json("--report", "comm,roofline")
    part = _json("--report", "comm,roofline", "--ranks", "5", "--start-ms", "20", "--end-ms", "45")
    assert [s["rank"] for s in part["comm"]["stragglers"]] == [5]
    count = {r["kind"]: 0 for r in whole["comm"]["collectives"]}
    for r in part["comm"]["collectives"]:
        count[r["kind"]] += r["count"]
    assert 0 < sum(count.values()) < sum(r["count"] for r in whole["comm"]["collectives"])
    assert sum(r["count"] for r in part["roofline"]["collectives"]) == sum(count.values())


def test_a_rank_selection_leaves_out_what_needs_every_rank(tmp_path: Path) -> None:
    """--ranks: the diagnosis (built on every rank's waits) says why it does not run, the per-rank
    reports do, and the HTML page renders links that reach unselected nodes."""
    data = _json("--ranks", "0-3")
    assert not {"findings", "critical_path"} & set(data) and {"stalls", "comm"} <= set(data)
    code, _, err = _run("--ranks", "0-3", "--report", "critical_path")
    assert code == 1 and "without --ranks" in err and len(err.strip().splitlines()) == 1
    code, _, err = _run("--ranks", "0-3", "--format", "html", "-o", str(tmp_path / "r.html"))
    assert code == 0, err
    windowed = _json("--end-ms", "50")
    assert "critical_path" in windowed and windowed["critical_path"]["path_ns"] <= 50_000_000 + 1_000_000
