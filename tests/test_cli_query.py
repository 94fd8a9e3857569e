"""`sohuprof query`: SQL over the store's views, the README's examples, read-only, one-line errors, -o."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from sohuprof.cli import cli
from sohuprof.errors import QueryError
from sohuprof.query import VIEWS, run_query
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "sample_traces" / "mixtral-2node" / "store"
README = ROOT / "README.md"

BUSIEST = ("SELECT name, count(*) AS n, sum(dur) / 1e6 AS total_ms FROM events "
           "GROUP BY name ORDER BY total_ms DESC LIMIT 10")
WAITS = ("SELECT coll_id, kind, (start - arrive) / 1e6 AS wait_ms, (\"end\" - start) / 1e6 AS transfer_ms "
         "FROM collectives WHERE rank = 5 ORDER BY wait_ms DESC LIMIT 10")
LAYERS = ("SELECT layer, count(*) AS n, sum(dur) / 1e6 / count(DISTINCT rank) AS ms_per_rank FROM events "
          "WHERE layer IS NOT NULL GROUP BY layer ORDER BY layer")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _error(result) -> str:
    """The one line a failed command printed (and no traceback)."""
    assert result.exit_code != 0, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and result.stdout == "", result.output
    return lines[0]


def _query_json(sql: str, *extra: str) -> list[dict]:
    result = run("query", str(STORE), sql, "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- the README's three questions ----------------------------------------------------------------


def test_busiest_ops_match_a_pandas_groupby() -> None:
    events = open_store(STORE).read("events", columns=["name", "dur"]).to_pandas()
    want = events.groupby("name", observed=True)["dur"].agg(["count", "sum"]).sort_values("sum", ascending=False)
    rows = _query_json(BUSIEST)
    assert len(rows) == 10
    assert [r["name"] for r in rows] == list(want.index[:10])
    assert rows[0]["n"] == want["count"].iloc[0]
    assert rows[0]["total_ms"] == pytest.approx(want["sum"].iloc[0] / 1e6, rel=1e-12)
    assert [r["total_ms"] for r in rows] == sorted((r["total_ms"] for r in rows), reverse=True)


def test_integer_sums_come_back_as_int64_exactly() -> None:
    table = run_query(STORE, "SELECT sum(dur) AS total FROM events")
    assert table.schema.field("total").type == pa.int64()   # DuckDB's HUGEINT sum, narrowed
    assert table.column("total")[0].as_py() == open_store(STORE).read("events", columns=["dur"]).column("dur").to_numpy().sum()


def test_rank5_waits_are_non_negative_longest_first() -> None:
    rows = _query_json(WAITS)
    assert len(rows) == 10
    waits = [r["wait_ms"] for r in rows]
    assert all(w >= 0 for w in waits) and waits == sorted(waits, reverse=True)
    assert all(r["transfer_ms"] >= 0 for r in rows)
    # the same from pyarrow: every instance of rank 5, the largest wait first
    coll = open_store(STORE).read("collectives").to_pandas()
    mine = coll[coll["rank"] == 5]
    assert waits[0] == pytest.approx((mine["start"] - mine["arrive"]).max() / 1e6)


def test_time_per_layer_covers_every_layer() -> None:
    rows = _query_json(LAYERS)
    events = open_store(STORE).read("events", columns=["layer", "dur", "rank"]).to_pandas().dropna(subset=["layer"])
    assert [r["layer"] for r in rows] == sorted(events["layer"].unique().astype(int).tolist())
    assert sum(r["n"] for r in rows) == len(events)
    assert all(r["ms_per_rank"] > 0 for r in rows)


def _readme_commands() -> list[str]:
    """The `sohuprof query` command lines of the README's "Querying the store" section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Querying the store", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines()
            if line.startswith("sohuprof query sample_traces/")]


def test_readme_examples_run_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    commands = _readme_commands()
    assert len(commands) == 3, commands
    assert [shlex.split(c)[3] for c in commands] == [BUSIEST, WAITS, LAYERS]   # what the tests above check
    monkeypatch.chdir(ROOT)
    for command in commands:
        argv = shlex.split(command)
        result = run(*argv[1:])
        assert result.exit_code == 0, (command, result.output)
        assert "┃" in result.stdout and len(result.stdout.splitlines()) > 4, result.stdout


# -- the views ------------------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_every_view_exists_with_its_rows(view: str) -> None:
    store = open_store(STORE)
    rows = run_query(STORE, f"SELECT count(*) AS n FROM {view}").column("n")[0].as_py()
    want = len(store.manifest["ranks"]) if view == "ranks" else store.manifest["tables"][view]
    assert rows == want
    columns = run_query(STORE, f"DESCRIBE {view}").column("column_name").to_pylist()
    expected = ["rank", "node", "chip"] if view == "ranks" else store.read(view).schema.names
    assert columns == expected


def test_show_tables_lists_the_views_and_nothing_else() -> None:
    assert sorted(run_query(STORE, "SHOW TABLES").column("name").to_pylist()) == sorted(VIEWS)


def test_events_node_comes_from_the_partitions() -> None:
    got = run_query(STORE, "SELECT DISTINCT rank, node, chip FROM events ORDER BY rank").to_pylist()
    assert got == run_query(STORE, "SELECT * FROM ranks ORDER BY rank").to_pylist()
    assert {r["node"] for r in got} == {0, 1}


def test_query_from_a_file(tmp_path: Path) -> None:
    sql = tmp_path / "ranks.sql"
    sql.write_text("SELECT count(*) AS n\nFROM ranks\n")
    assert _query_json(f"@{sql}") == [{"n": 8}]


# -- formats and -o ------------------------------------------------------------------------------


def test_csv_and_table_formats() -> None:
    result = run("query", str(STORE), "SELECT rank, node, chip FROM ranks ORDER BY rank", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 8 and rows[5] == {"rank": "5", "node": "1", "chip": "1"}
    table = run("query", str(STORE), "SELECT * FROM events")
    assert table.exit_code == 0 and "more rows: use --format csv or json for all" in table.stdout


def test_table_is_exact_and_laid_out_as_analyze_lays_out() -> None:
    total = run_query(STORE, "SELECT sum(dur) AS t FROM events").column("t")[0].as_py()
    result = run("query", str(STORE), "SELECT sum(dur) AS total_ns, NULL::INTEGER AS nothing FROM events")
    assert result.exit_code == 0 and f"{total:,}" in result.stdout   # every digit, no unit scaling
    assert "1 row" in result.stdout and "None" not in result.stdout and "nan" not in result.stdout
    one = run("query", str(STORE), "SELECT * FROM events LIMIT 1")
    assert one.exit_code == 0 and "field" in one.stdout and "stall_mem_ns" in one.stdout   # one row: field / value


def test_output_file_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "ranks.csv"
    first = run("query", str(STORE), "SELECT * FROM ranks", "--format", "csv", "-o", str(out))
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and out.read_text().startswith("rank,node,chip\n")
    out.write_text("mine\n")
    line = _error(run("query", str(STORE), "SELECT * FROM ranks", "--format", "csv", "-o", str(out)))
    assert "--force" in line and out.read_text() == "mine\n"
    forced = run("query", str(STORE), "SELECT * FROM ranks", "--format", "json", "-o", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert len(json.loads(out.read_text())) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["ranks.csv"]   # no temporary file left


def test_output_inside_the_store_is_refused() -> None:
    line = _error(run("query", str(STORE), "SELECT 1", "-o", str(STORE / "q.json")))
    assert "inside the input" in line and not (STORE / "q.json").exists()


# -- errors: one line, non-zero, no traceback ----------------------------------------------------


@pytest.mark.parametrize("sql, words", [
    ("SELCT * FROM events", "Parser Error"),
    ("SELECT nosuch FROM events", "nosuch"),
    ("SELECT * FROM nosuch", "nosuch"),
])
def test_bad_sql_is_one_line(sql: str, words: str) -> None:
    line = _error(run("query", str(STORE), sql))
    assert words in line and "the views are events, collectives" in line and "DESCRIBE events" in line


@pytest.mark.parametrize("sql", [
    "COPY events TO 'out.parquet'",
    "COPY (SELECT * FROM events) TO 'out.parquet' (FORMAT parquet)",
    "ATTACH 'other.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE TABLE t AS SELECT 1",
    "SET threads = 1",
    "EXPORT DATABASE 'dump'",
])
def test_writing_statements_are_refused(sql: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = _error(run("query", str(STORE), sql))
    assert "refused" in line and "read-only" in line
    assert list(tmp_path.iterdir()) == []


def test_a_write_after_a_comment_is_refused_by_name() -> None:
    with pytest.raises(QueryError, match=r"^COPY statements are refused"):
        run_query(STORE, "-- keep a copy\nCOPY events TO 'out.parquet'")


def test_several_statements_and_empty_query_are_refused() -> None:
    assert "2 statements" in _error(run("query", str(STORE), "SELECT 1; COPY events TO 'x.parquet'"))
    assert "empty" in _error(run("query", str(STORE), "  "))


def test_missing_query_file_and_bad_store(tmp_path: Path) -> None:
    assert "cannot read the query file" in _error(run("query", str(STORE), f"@{tmp_path / 'none.sql'}"))
    assert "not a sohuprof trace store" in _error(run("query", str(tmp_path), "SELECT 1"))


def test_run_query_raises_query_error() -> None:
    with pytest.raises(QueryError, match=r"^Parser Error: .*the views are"):
        run_query(STORE, "SELCT 1")


# -- other stores --------------------------------------------------------------------------------


def test_store_without_events_has_empty_views(tmp_path: Path) -> None:
    from sohuprof.schema import EVENTS
    from sohuprof.store import StoreWriter

    with StoreWriter(tmp_path / "store") as writer:
        writer.write_manifest({"source": {"format": "test"}})
    assert run_query(tmp_path / "store", "SELECT count(*) AS n FROM events").to_pylist() == [{"n": 0}]
    columns = run_query(tmp_path / "store", "DESCRIBE events").column("column_name").to_pylist()
    assert columns == EVENTS.schema.names
    assert run_query(tmp_path / "store", "SELECT * FROM ranks").num_rows == 0


def test_kineto_store_has_its_optional_columns(tmp_path: Path) -> None:
    result = run("collect", str(ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"), "-o", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    rows = run_query(tmp_path / "store", "SELECT cat, count(*) AS n, count(stream) AS on_streams FROM events "
                                         "GROUP BY cat ORDER BY n DESC").to_pylist()
    events = open_store(tmp_path / "store").read("events", columns=["cat", "stream"]).to_pandas()
    assert sum(r["n"] for r in rows) == len(events) and {r["cat"] for r in rows} == set(events["cat"].dropna())
    assert sum(r["on_streams"] for r in rows) == events["stream"].notna().sum()
    # a Sohu store has neither column in its files: the views still have them, as nulls
    assert run_query(STORE, "SELECT count(cat) AS c, count(stream) AS s FROM events").to_pylist() == [{"c": 0, "s": 0}]


def test_explain_analyze_cannot_smuggle_a_write(tmp_path: Path) -> None:
    """EXPLAIN ANALYZE runs what it explains: a COPY inside it is refused like a bare one."""
    target = tmp_path / "x.csv"
    assert "COPY statements are refused" in _error(run("query", str(STORE), f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{target}'"))
    assert not target.exists()
    assert run("query", str(STORE), "EXPLAIN ANALYZE SELECT count(*) FROM events", "--format", "csv").exit_code == 0


def test_repeated_column_names_keep_every_column() -> None:
    for fmt in ("table", "csv", "json"):
        result = run("query", str(STORE), "SELECT 1 AS x, 2 AS x", "--format", fmt)
        assert result.exit_code == 0 and "x_2" in result.stdout, (fmt, result.output)
    assert json.loads(run("query", str(STORE), "SELECT 1 AS x, 2 AS x", "--format", "json").stdout) == [{"x": 1, "x_2": 2}]


def test_an_output_ending_in_a_slash_is_a_directory(tmp_path: Path) -> None:
    assert "ends in '/'" in _error(run("query", str(STORE), "SELECT 1", "-o", f"{tmp_path / 'new'}/"))
    assert not (tmp_path / "new").exists()
