"""Damaged trace stores: open refuses them with one line naming the file, reads never end in an
Arrow error, ``check_store`` flags every byte changed, and the CLI never shows an internal error.

A fuzzer (hypothesis, fixed seed) damages a tiny emulated store made once per session: truncated,
zeroed and foreign Parquet files, junk in a partition, manifest fields of the wrong type, columns
dropped or retyped, nulls, int64 extremes. Every outcome must be the clean result or a
:class:`SohuprofError`; "rehashed" damage also updates the manifest's checksums (a tool that
rewrote a file and its record), so the checks beyond the checksums are what must catch it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sohuprof.analyzers.render import render_json
from sohuprof.analyzers.report import run_reports
from sohuprof.check import check_store
from sohuprof.cli import cli
from sohuprof.errors import SohuprofError, StoreError
from sohuprof.schema import ALL_TABLES, EVENTS
from sohuprof.store import MANIFEST_NAME, _footer_crc32, file_crc32, open_store

REPORTS = ["summary", "stalls"]
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="session")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny emulated 2-node run, collected once per session (read-only: cases copy it)."""
    from sohuprof.collectors import collect
    from sohuprof.emulator import EmulatorConfig, emulate
    from sohuprof.hardware import load_hardware
    from sohuprof.models import load_model

    where = tmp_path_factory.mktemp("damage")
    cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=2,
                         chips_per_node=2, tp=2, requests=2, prompt_len=64, output_len=4)
    emulate(cfg, where / "run", show_progress=False)
    collect(where / "run", where / "store", show_progress=False)
    return where / "store"


@pytest.fixture(scope="session")
def clean_result(clean_store: Path) -> bytes:
    return render_json(run_reports(open_store(clean_store), REPORTS))


def table_files(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*.parquet"))


def fresh_copy(clean: Path, tmp_path: Path) -> Path:
    """A private copy of the clean store for one case (hypothesis reuses ``tmp_path``)."""
    target = tmp_path / "case"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(clean, target)
    return target


def rehash(store: Path, rel: str) -> None:
    """Record ``rel``'s current size and checksums in the manifest, as its writer would have."""
    path = store / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    size, crc = file_crc32(store / rel)
    entry = {"bytes": size, "crc32": crc}
    footer = _footer_crc32(store / rel, size)
    if footer is not None:
        entry.update(footer_bytes=footer[0], footer_crc32=footer[1])
    manifest["files"][rel] = entry
    path.write_text(json.dumps(manifest))


def outcome(store: Path, clean_result: bytes) -> bool:
    """Open and analyze ``store``: the clean result, or a SohuprofError (returns whether it opened)."""
    try:
        got = render_json(run_reports(open_store(store), REPORTS))
    except SohuprofError:
        return False
    assert got == clean_result
    return True


def checked(store: Path) -> bool:
    """``check_store``'s verdict (True: sound); it may raise only a SohuprofError."""
    try:
        return check_store(store).ok
    except SohuprofError:
        return False


def rewrite(store: Path, rel: str, change: Callable[[pa.Table], pa.Table]) -> None:
    path = store / rel
    table = pq.read_table(path)
    pq.write_table(change(table), path)


# -- byte-level damage: check_store must flag every case, analyses see it as one clear error ----


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_fuzz_truncated_file(clean_store: Path, clean_result: bytes, tmp_path: Path, data: st.DataObject) -> None:
    store = fresh_copy(clean_store, tmp_path)
    rel = data.draw(st.sampled_from(table_files(store)))
    size = (store / rel).stat().st_size
    cut = data.draw(st.integers(0, size - 1))
    with open(store / rel, "r+b") as fh:
        fh.truncate(cut)
    assert not outcome(store, clean_result)
    assert not checked(store)


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_fuzz_zeroed_range(clean_store: Path, clean_result: bytes, tmp_path: Path, data: st.DataObject) -> None:
    store = fresh_copy(clean_store, tmp_path)
    rel = data.draw(st.sampled_from(table_files(store)))
    raw = bytearray((store / rel).read_bytes())
    start = data.draw(st.integers(0, len(raw) - 1))
    length = data.draw(st.integers(1, 256))
    before = bytes(raw)
    raw[start:start + length] = bytes(len(raw[start:start + length]))
    (store / rel).write_bytes(raw)
    if data.draw(st.booleans(), label="rehash"):
        rehash(store, rel)   # the checksums agree: page CRCs and decoding must catch it, or no harm
        outcome(store, clean_result)
        checked(store)
        return
    outcome(store, clean_result)
    assert checked(store) is (bytes(raw) == before)


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_fuzz_foreign_parquet(clean_store: Path, clean_result: bytes, tmp_path: Path, data: st.DataObject) -> None:
    store = fresh_copy(clean_store, tmp_path)
    rel = data.draw(st.sampled_from(table_files(store)))
    n = data.draw(st.integers(0, 50))
    names = data.draw(st.lists(st.sampled_from(["ts", "dur", "rank", "chip", "name", "coll_id", "x"]),
                               min_size=1, max_size=5, unique=True))
    kinds = st.sampled_from(["int64", "int32", "float64", "str"])
    frame = pd.DataFrame({c: _column(data.draw(kinds), n) for c in names})
    frame.to_parquet(store / rel)
    if data.draw(st.booleans(), label="rehash"):
        rehash(store, rel)
    assert not outcome(store, clean_result)
    assert not checked(store)


def _column(kind: str, n: int) -> Any:
    values = np.arange(n)
    return values.astype(str) if kind == "str" else values.astype(kind)


@settings(FUZZ, max_examples=25)
@given(name=st.text("abcxyz._-=0123456789", min_size=1, max_size=12), payload=st.binary(max_size=64),
       node=st.sampled_from(["node=0", "node=1"]))
def test_fuzz_junk_in_partition(clean_store: Path, clean_result: bytes, tmp_path: Path, name: str,
                                payload: bytes, node: str) -> None:
    store = fresh_copy(clean_store, tmp_path)
    target = store / "events" / node / name
    if target.exists() or name in (".", ".."):
        return
    target.write_bytes(payload)
    hidden = name.startswith((".", "_"))   # pyarrow's discovery skips these: harmless
    assert outcome(store, clean_result) is hidden
    assert checked(store) is hidden


# -- manifest fields of the wrong type ------------------------------------------------------------

#: Manifest fields the readers use, as (path, key) walks from the top.
FIELDS = [("format",), ("version",), ("source",), ("source", "format"), ("hardware",), ("model",),
          ("model", "dtype"), ("parallel",), ("ranks",), ("ranks", 0), ("nodes",), ("nodes", 0),
          ("tables",), ("tables", "events"), ("tables", "collectives"), ("rank_index",),
          ("rank_index", 0), ("rank_index", 0, "start_ns"), ("rank_index", 1, "events"), ("files",),
          ("hardware", "hbm_bandwidth"), ("hardware", "peak_flops_fp8")]
WRONG = st.sampled_from(["text", 1.5, None, True, [], {}, [1, "a"], 2**70, -3, {"a": 1}])


@settings(FUZZ, max_examples=60)
@given(where=st.sampled_from(FIELDS), value=WRONG)
def test_fuzz_manifest_field_type(clean_store: Path, clean_result: bytes, tmp_path: Path,
                                  where: tuple, value: Any) -> None:
    store = fresh_copy(clean_store, tmp_path)
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    node: Any = manifest
    for key in where[:-1]:
        node = node[key]
    if node[where[-1]] == value and type(node[where[-1]]) is type(value):
        return
    node[where[-1]] = value
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))
    outcome(store, clean_result)   # may open (a field some value of which is harmless), never crash
    checked(store)


# -- schema and value damage, with the checksums updated so only the other checks can catch it ---

RETYPE = [pa.int32(), pa.float64(), pa.string(), pa.dictionary(pa.int32(), pa.string())]


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_fuzz_column_dropped_or_retyped(clean_store: Path, clean_result: bytes, tmp_path: Path,
                                        data: st.DataObject) -> None:
    store = fresh_copy(clean_store, tmp_path)
    rel = data.draw(st.sampled_from(table_files(store)))
    column = data.draw(st.sampled_from(pq.read_schema(store / rel).names))
    to = data.draw(st.sampled_from([None, *RETYPE]), label="type")

    def change(table: pa.Table) -> pa.Table:
        at = table.schema.get_field_index(column)
        if to is None:
            return table.remove_column(at)
        values = table.column(column)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        plain = values.cast(pa.string()) if to == pa.string() or pa.types.is_dictionary(to) else values
        try:
            return table.set_column(at, pa.field(column, to), plain.cast(to))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return table.set_column(at, column, pa.array([None] * len(table), pa.null()))

    before = pq.read_schema(store / rel).field(column).type
    if to is not None and before.equals(to):
        return
    rewrite(store, rel, change)
    rehash(store, rel)
    assert not outcome(store, clean_result)
    assert not checked(store)


REQUIRED = {spec.path if spec.name != EVENTS.name else "events": [c.name for c in spec.columns if not c.nullable
                                                                   and c.name != "node"] for spec in ALL_TABLES}


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_fuzz_nulls_in_required_columns(clean_store: Path, clean_result: bytes, tmp_path: Path,
                                        data: st.DataObject) -> None:
    store = fresh_copy(clean_store, tmp_path)
    rel = data.draw(st.sampled_from([f for f in table_files(store) if pq.read_metadata(store / f).num_rows]))
    column = data.draw(st.sampled_from(REQUIRED["events" if rel.startswith("events/") else rel]))
    rows = pq.read_metadata(store / rel).num_rows
    holes = data.draw(st.lists(st.integers(0, rows - 1), min_size=1, max_size=5, unique=True))

    def change(table: pa.Table) -> pa.Table:
        mask = np.zeros(len(table), bool)
        mask[holes] = True
        values = table.column(column).combine_chunks()
        at = table.schema.get_field_index(column)
        return table.set_column(at, pa.field(column, values.type), pc.if_else(
            pa.array(mask), pa.scalar(None, values.type), values))

    rewrite(store, rel, change)
    rehash(store, rel)
    assert not outcome(store, clean_result)
    assert not checked(store)


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_fuzz_int64_extremes(clean_store: Path, clean_result: bytes, tmp_path: Path, data: st.DataObject) -> None:
    store = fresh_copy(clean_store, tmp_path)
    rel = data.draw(st.sampled_from([f for f in table_files(store) if f.startswith("events/")]))
    column = data.draw(st.sampled_from(["ts", "dur"]))
    extreme = data.draw(st.sampled_from([2**63 - 1, -2**63, 2**62, -2**62, 2**63 - 10**9] +
                                        ([-1, -10**9] if column == "dur" else [])))
    rows = pq.read_metadata(store / rel).num_rows
    at_row = data.draw(st.integers(0, rows - 1))

    def change(table: pa.Table) -> pa.Table:
        values = table.column(column).to_numpy().copy()
        values[at_row] = extreme
        at = table.schema.get_field_index(column)
        return table.set_column(at, table.schema.field(column), pa.array(values, pa.int64()))

    rewrite(store, rel, change)
    rehash(store, rel)
    assert not outcome(store, clean_result)
    assert not checked(store)


# -- the CLI: one line, never an internal error -----------------------------------------------


def _damage_truncate(store: Path) -> None:
    rel = "events/node=1/part-0.parquet"
    with open(store / rel, "r+b") as fh:
        fh.truncate((store / rel).stat().st_size // 2)


def _damage_zero(store: Path) -> None:
    rel = "events/node=0/part-0.parquet"
    meta = pq.read_metadata(store / rel)
    offset = meta.row_group(0).column(0).data_page_offset
    raw = bytearray((store / rel).read_bytes())
    raw[offset + 20:offset + 60] = bytes(40)
    (store / rel).write_bytes(raw)


def _damage_junk(store: Path) -> None:
    (store / "events" / "node=0" / "notes.txt").write_text("not parquet")


def _damage_manifest(store: Path) -> None:
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    manifest["tables"]["events"] = "many"
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))


DAMAGE = {"truncated": _damage_truncate, "zeroed": _damage_zero, "junk": _damage_junk,
          "manifest": _damage_manifest}


def _one_clear_line(result: Any) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "internal error" not in result.output and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["check", "analyze", "export"])
def test_cli_on_a_damaged_store_prints_one_line(clean_store: Path, tmp_path: Path, damage: str, command: str) -> None:
    store = fresh_copy(clean_store, tmp_path)
    DAMAGE[damage](store)
    args = {"check": ["check", str(store)], "analyze": ["analyze", str(store), "--report", "summary,stalls"],
            "export": ["export", "chrome", str(store), "-o", str(tmp_path / "t.json")]}[command]
    result = CliRunner().invoke(cli, args)
    line = _one_clear_line(result)
    if command == "check" or damage != "zeroed":   # a zeroed page is found at open only by check
        assert "re-run `sohuprof collect`" in line, line
    assert "manifest.json" in line if damage == "manifest" else "events/node=" in line, line
    assert not (tmp_path / "t.json").exists()


def test_cli_check_on_a_good_store(clean_store: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(clean_store)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"ok: {clean_store}: 6 files"), result.stdout
    assert "checksums, pages" in result.stdout


def test_cli_dashboard_refuses_a_damaged_store(clean_store: Path, tmp_path: Path) -> None:
    store = fresh_copy(clean_store, tmp_path)
    _damage_junk(store)
    result = CliRunner().invoke(cli, ["dashboard", str(store), "--port", "8979"])
    line = _one_clear_line(result)
    assert "events/node=0/notes.txt" in line and "re-run `sohuprof collect`" in line


def test_store_error_names_the_file_for_a_read_that_fails(clean_store: Path, tmp_path: Path) -> None:
    """A damaged page with a matching checksum record passes open; the read says which file."""
    store = fresh_copy(clean_store, tmp_path)
    _damage_zero(store)
    rehash(store, "events/node=0/part-0.parquet")
    opened = open_store(store)
    with pytest.raises(StoreError, match=r"'events/node=0/part-0.parquet' cannot be read .*re-run `sohuprof collect`"):
        opened.read("events")
    with pytest.raises(StoreError, match="events/node=0/part-0.parquet"):
        list(opened.stream_events(["ts", "rank"]))
    report = check_store(store)
    assert [f.file for f in report.findings] == ["events/node=0/part-0.parquet"]
    assert "does not decode" in report.findings[0].problem


def test_cli_dashboard_refuses_a_store_damaged_inside_a_page(clean_store: Path, tmp_path: Path) -> None:
    """Damage that passes open (checksums rehashed) is found by the page check before serving."""
    store = fresh_copy(clean_store, tmp_path)
    _damage_zero(store)
    rehash(store, "events/node=0/part-0.parquet")
    result = CliRunner().invoke(cli, ["dashboard", str(store), "--port", "8981"])
    line = _one_clear_line(result)
    assert "events/node=0/part-0.parquet" in line and "does not decode" in line


def test_analyze_refuses_events_out_of_rank_order(clean_store: Path, tmp_path: Path) -> None:
    """Rows not sorted by (rank, ts) pass the byte checks (rehashed), but would split ranks into
    partial ones with wrong numbers: analyze says so in one line."""
    store = fresh_copy(clean_store, tmp_path)
    rel = "events/node=0/part-0.parquet"
    table = pq.read_table(store / rel)
    first = int(np.searchsorted(table.column("rank").to_numpy(), table.column("rank")[0].as_py(), "right"))
    cut = first // 2   # inside the first rank's rows: that rank comes back after the others
    pq.write_table(pa.concat_tables([table.slice(cut), table.slice(0, cut)]), store / rel,
                   row_group_size=20_000, write_page_checksum=True)
    rehash(store, rel)
    result = CliRunner().invoke(cli, ["analyze", str(store), "--format", "json"])
    line = _one_clear_line(result)
    assert "not sorted by (rank, ts)" in line


def test_analyze_refuses_a_window_no_trace_has(clean_store: Path, tmp_path: Path) -> None:
    store = fresh_copy(clean_store, tmp_path)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["rank_index"][0]["start_ns"] = -(2**61)
    (store / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["analyze", str(store), "--format", "json"])
    assert "span" in _one_clear_line(result)
