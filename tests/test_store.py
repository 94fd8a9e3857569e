"""Trace store: round trip, atomic writes, partition layout, version checks, damage found at open."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sohuprof.check import check_store
from sohuprof.errors import OutputError, StoreError
from sohuprof.schema import ALL_TABLES, COLLECTIVES, EVENTS, STORE_FORMAT, STORE_VERSION
from sohuprof.store import StoreWriter, open_store

NAMES = ["matmul_qkv", "attention", "all_reduce"]


def make_events(node: int, rank: int, n: int, *, seed: int = 0, t0: int = 0) -> pa.Table:
    """``n`` events of one rank, in ts order, with a few nulls and repeated names."""
    rng = np.random.default_rng(seed + 1000 * rank)
    ts = t0 + np.cumsum(rng.integers(1, 5_000, n))
    return pa.table({
        "ts": ts, "dur": rng.integers(1, 10_000, n),
        "node": np.full(n, node, np.int32), "chip": np.full(n, rank % 4, np.int32),
        "rank": np.full(n, rank, np.int32),
        "track": ["matrix" if i % 3 else "collective" for i in range(n)],
        "name": [NAMES[i % 3] for i in range(n)],
        "op": [("gemm", "attention", "all_reduce")[i % 3] for i in range(n)],
        "category": [("compute", "compute", "communication")[i % 3] for i in range(n)],
        "step": pa.array([i // 10 if i % 7 else None for i in range(n)], pa.int64()),
        "flops": rng.integers(0, 10**12, n),
    })


def canonical(table: pa.Table) -> pd.DataFrame:
    """Rows in one order with plain (not dictionary) strings, for comparisons."""
    df = table.to_pandas()
    for col in df.columns:
        if isinstance(df[col].dtype, pd.CategoricalDtype):
            df[col] = df[col].astype(object)
    return df.sort_values(["rank", "ts", "dur"], kind="stable").reset_index(drop=True)


@pytest.fixture
def events() -> list[pa.Table]:
    # Two nodes, two ranks each, each rank in two batches.
    return [make_events(rank // 2, rank, 700, seed=half, t0=half * 10**9)
            for rank in range(4) for half in range(2)]


def write_store(path: Path, batches: list[pa.Table], **kwargs) -> None:
    with StoreWriter(path, **kwargs) as writer:
        for batch in batches:
            writer.write_events(batch)
        writer.write_table(COLLECTIVES, pa.table({
            "coll_id": [1, 1], "kind": ["all_reduce"] * 2, "group": [0, 0], "rank": [0, 1],
            "node": [0, 0], "arrive": [10, 12], "start": [12, 12], "end": [20, 20],
            "bytes": [1024, 1024]}))
        writer.write_manifest({"source": {"format": "test"}, "ranks": [0, 1, 2, 3]})


def test_round_trip(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events, row_group_rows=500)
    store = open_store(tmp_path / "store")
    assert store.manifest["format"] == STORE_FORMAT
    assert store.manifest["version"] == STORE_VERSION
    assert store.manifest["source"] == {"format": "test"}
    assert store.manifest["tables"]["events"] == 8 * 700
    assert store.nodes == [0, 1] and store.ranks == [0, 1, 2, 3]

    back = store.read("events")
    assert back.schema.equals(EVENTS.schema)
    expected = canonical(EVENTS.conform(pa.concat_tables(events).unify_dictionaries()))
    pd.testing.assert_frame_equal(canonical(back), expected)

    assert store.read("collectives").column("coll_id").to_pylist() == [1, 1]
    for spec in ALL_TABLES:  # every table exists, empty ones with their schema
        assert store.read(spec.name).schema.equals(spec.schema)
    assert store.read("requests").num_rows == 0


def test_layout_is_hive_partitioned_sorted_and_dictionary_encoded(tmp_path: Path,
                                                                  events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events, row_group_rows=500)
    files = sorted((tmp_path / "store" / "events").rglob("*.parquet"))
    assert {f.parent.name for f in files} == {"node=0", "node=1"}
    for f in files:
        meta = pq.ParquetFile(f).metadata
        assert all(meta.row_group(i).num_rows <= 500 for i in range(meta.num_row_groups))
        assert meta.row_group(0).column(0).compression == "ZSTD"
        table = pq.read_table(f)
        assert "node" not in table.column_names  # it lives in the directory name
        assert pa.types.is_dictionary(table.schema.field("name").type)
        keys = table.select(["rank", "ts"]).to_pandas()
        assert keys.equals(keys.sort_values(["rank", "ts"], kind="stable"))


def test_pandas_reads_events(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events)
    df = pd.read_parquet(tmp_path / "store" / "events")
    assert len(df) == 8 * 700
    assert sorted(df["node"].astype(int).unique()) == [0, 1]
    assert df.groupby(df["node"].astype(int))["rank"].unique().map(sorted).to_dict() == {0: [0, 1], 1: [2, 3]}


def test_small_batches_fill_whole_row_groups(tmp_path: Path) -> None:
    one_rank = make_events(0, 0, 350)
    write_store(tmp_path / "store", [one_rank.slice(i, 35) for i in range(0, 350, 35)],
                row_group_rows=100)
    (f,) = (tmp_path / "store" / "events").rglob("*.parquet")
    meta = pq.ParquetFile(f).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 100, 50]


def test_out_of_order_batches_start_new_sorted_parts(tmp_path: Path) -> None:
    late, early = make_events(0, 1, 300), make_events(0, 0, 300)
    write_store(tmp_path / "store", [late, early], row_group_rows=100)
    files = sorted((tmp_path / "store" / "events" / "node=0").glob("part-*.parquet"))
    assert len(files) == 2
    for f in files:
        keys = pq.read_table(f, columns=["rank", "ts"]).to_pandas()
        assert keys.equals(keys.sort_values(["rank", "ts"], kind="stable"))
    assert open_store(tmp_path / "store").read("events").num_rows == 600


def test_filters_and_columns(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events)
    store = open_store(tmp_path / "store")
    dnf = store.read("events", columns=["ts", "rank", "node"], filters=[("node", "=", 1), ("ts", "<", 10**6)])
    assert dnf.column_names == ["ts", "rank", "node"]
    assert set(dnf.column("node").to_pylist()) == {1}
    assert pc.max(dnf.column("ts")).as_py() < 10**6
    expr = store.read("events", filters=(pc.field("rank") == 2) & (pc.field("ts") < 10**6))
    assert expr.num_rows == dnf.filter(pc.equal(dnf.column("rank"), 2)).num_rows
    assert sum(b.num_rows for b in store.scan(filters=[("rank", "=", 3)], batch_size=100)) == 1400
    with pytest.raises(ValueError, match="'table' must be one of"):
        store.read("kernels")


def test_exception_inside_writer_leaves_nothing(tmp_path: Path, events: list[pa.Table]) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(tmp_path / "store") as writer:
            writer.write_events(events[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_target_refused_without_force(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events[:1])
    with pytest.raises(OutputError, match="already exists; pass --force"):
        StoreWriter(tmp_path / "store").__enter__()
    write_store(tmp_path / "store", events[:2], force=True)
    assert open_store(tmp_path / "store").read("events").num_rows == 1400
    assert [p.name for p in tmp_path.iterdir()] == ["store"]  # no temp or old copies left


def test_failed_force_keeps_old_store(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events[:1])
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "store", force=True) as writer:
            writer.write_events(events[1])
            raise RuntimeError("crash")
    assert open_store(tmp_path / "store").read("events").num_rows == 700
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_unwritable_parent(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OutputError, match="cannot create .* not a directory"):
        with StoreWriter(tmp_path / "file" / "store"):
            pass


def test_open_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"not a sohuprof trace store \(no manifest.json\); "
                                         r"create one with `sohuprof collect`"):
        open_store(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="no manifest.json"):
        open_store(tmp_path / "plain")
    write_store(tmp_path / "store", [])
    manifest = tmp_path / "store" / "manifest.json"
    doc = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**doc, "version": STORE_VERSION + 1}))
    with pytest.raises(StoreError, match=f"version {STORE_VERSION + 1}.*upgrade sohuprof"):
        open_store(tmp_path / "store")
    manifest.write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(StoreError, match="format 'something-else'"):
        open_store(tmp_path / "store")


def test_empty_store(tmp_path: Path) -> None:
    write_store(tmp_path / "store", [])
    store = open_store(tmp_path / "store")
    events = store.read("events")
    assert events.num_rows == 0 and events.schema.equals(EVENTS.schema)
    assert store.nodes == []


def test_manifest_rank_index_matches_the_events(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events, row_group_rows=256)
    store = open_store(tmp_path / "store")
    got = pd.DataFrame(store.manifest["rank_index"])
    whole = pa.concat_tables(events).to_pandas()
    whole["end"] = whole["ts"] + whole["dur"]
    want = whole.groupby("rank").agg(node=("node", "first"), chip=("chip", "first"), events=("ts", "size"),
                                     start_ns=("ts", "min"), end_ns=("end", "max")).reset_index()
    pd.testing.assert_frame_equal(got[want.columns.tolist()], want, check_dtype=False)


# -- damaged stores: what open refuses, cheaply, and what check finds -----------------------------


def _drop_record(store: Path, key: str = "files") -> None:
    """Forget the manifest's ``key`` (as a store written before it existed), so the checks
    after it are what must catch a change."""
    manifest = json.loads((store / "manifest.json").read_text())
    manifest.pop(key, None)
    (store / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_records_size_and_crc32_of_every_file(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events)
    files = open_store(tmp_path / "store").manifest["files"]
    on_disk = sorted(str(p.relative_to(tmp_path / "store")) for p in (tmp_path / "store").rglob("*.parquet"))
    assert sorted(files) == on_disk
    for rel, entry in files.items():
        data = (tmp_path / "store" / rel).read_bytes()
        assert entry["bytes"] == len(data) and entry["crc32"] == zlib.crc32(data)
        footer = int.from_bytes(data[-8:-4], "little") + 8
        assert entry["footer_bytes"] == footer and entry["footer_crc32"] == zlib.crc32(data[-footer:])


@pytest.mark.parametrize("path, value, field", [
    (("tables", "events"), "many", "tables.events"),
    (("ranks",), None, "ranks"),
    (("rank_index", 0, "rank"), -1, "rank_index[0].rank"),
    (("source",), "kineto", "source"),
    (("files", "counters.parquet", "crc32"), 2**40, "files['counters.parquet'].crc32"),
    (("hardware",), {"hbm_bandwidth": "fast"}, "hardware.hbm_bandwidth"),
])
def test_open_names_a_manifest_field_of_the_wrong_type(tmp_path: Path, events: list[pa.Table], path: tuple,
                                                       value: object, field: str) -> None:
    write_store(tmp_path / "store", events)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (tmp_path / "store" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=rf"'manifest.json' field '{re.escape(field)}' is invalid: .*"
                                         r"re-run `sohuprof collect` to rebuild the store"):
        open_store(tmp_path / "store")


def test_open_refuses_truncated_junk_missing_and_foreign_files(tmp_path: Path, events: list[pa.Table]) -> None:
    store = tmp_path / "store"
    write_store(store, events)
    part = store / "events" / "node=1" / "part-0.parquet"
    size = part.stat().st_size
    with open(part, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(StoreError, match=rf"'events/node=1/part-0.parquet' has {size - 100:,} bytes where "
                                         rf"{size:,} were written \(truncated or replaced\); re-run"):
        open_store(store)
    _drop_record(store)   # with no record of sizes, the footer check finds it
    with pytest.raises(StoreError, match="'events/node=1/part-0.parquet' is not readable Parquet"):
        open_store(store)
    part.unlink()
    (store / "events" / "node=0" / "notes.txt").write_text("hello")
    with pytest.raises(StoreError, match=r"'events/node=0/notes.txt' is not part of a trace store"):
        open_store(store)
    (store / "events" / "node=0" / "notes.txt").unlink()
    (store / "events" / "node=0" / ".DS_Store").write_text("skipped by pyarrow, as by us")
    _drop_record(store, "tables")
    assert open_store(store).read("events").num_rows == 4 * 700
    pd.DataFrame({"ts": ["a", "b"]}).to_parquet(store / "counters.parquet")
    with pytest.raises(StoreError, match="'counters.parquet' has column 'ts' of type (large_)?string, expected int64"):
        open_store(store)
    (store / "counters.parquet").unlink()
    with pytest.raises(StoreError, match="'counters.parquet' is missing; re-run `sohuprof collect`"):
        open_store(store)


@pytest.mark.parametrize("column, value, message", [
    ("dur", -5, "negative duration in column 'dur' .*row group 0"),
    ("ts", 2**63 - 1, "in column 'ts', beyond the"),
    ("dur", None, "null values in column 'dur', which may not be null"),
])
def test_open_checks_row_group_statistics(tmp_path: Path, column: str, value: object, message: str) -> None:
    store = tmp_path / "store"
    write_store(store, [make_events(0, 0, 50)])
    part = store / "events" / "node=0" / "part-0.parquet"
    table = pq.read_table(part)
    values = table.column(column).to_pylist()
    values[7] = value
    table = table.set_column(table.schema.get_field_index(column), pa.field(column, pa.int64()),
                             pa.array(values, pa.int64()))
    pq.write_table(table, part)
    _drop_record(store)
    with pytest.raises(StoreError, match=message):
        open_store(store)
    report = check_store(store)
    assert [f.file for f in report.findings] == ["events/node=0/part-0.parquet"]


def test_open_checks_row_counts(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    manifest["tables"]["collectives"] = 3
    (tmp_path / "store" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="'collectives.parquet' holds 2 rows where the manifest recorded 3"):
        open_store(tmp_path / "store")


def test_check_store_on_sound_and_damaged_stores(tmp_path: Path, events: list[pa.Table]) -> None:
    store = tmp_path / "store"
    write_store(store, events, row_group_rows=500)
    report = check_store(store)
    assert report.ok and report.checksums and report.files == 6
    assert report.rows["events"] == 8 * 700 and report.rows["collectives"] == 2
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["rank_index"][2]["end_ns"] += 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    (finding,) = check_store(store).findings
    assert finding.file == "manifest.json"
    assert re.search(r"rank_index disagrees with the events: rank 2 end_ns is [\d,]+ in the events", finding.problem)
    manifest["rank_index"][2]["end_ns"] -= 1
    (store / "manifest.json").write_text(json.dumps(manifest))
    part = store / "events" / "node=0" / "part-0.parquet"
    raw = bytearray(part.read_bytes())
    raw[len(raw) // 2] ^= 0xFF   # one flipped bit pattern in the middle of the pages
    part.write_bytes(raw)
    (finding,) = check_store(store).findings
    assert finding.file == "events/node=0/part-0.parquet" and finding.problem.startswith("fails its checksum")
    assert finding.message(store).endswith("re-run `sohuprof collect` to rebuild the store")


def test_check_store_without_recorded_checksums(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events)
    _drop_record(tmp_path / "store")
    report = check_store(tmp_path / "store")
    assert report.ok and not report.checksums


def test_read_refuses_unknown_columns(tmp_path: Path, events: list[pa.Table]) -> None:
    write_store(tmp_path / "store", events)
    with pytest.raises(ValueError, match=r"'columns' must be columns of table 'events'; got \['nope'\]"):
        open_store(tmp_path / "store").read("events", columns=["ts", "nope"])
