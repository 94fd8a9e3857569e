"""The local engine: rank partitions, the context from the manifest's rank index, and results
that do not depend on how the events are split into files or partitions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from sohuprof.analyzers.engine import build_context, rank_partitions, read_rank, run_analyses
from sohuprof.analyzers.report import REPORTS, load_analysis
from sohuprof.store import MANIFEST_NAME, StoreWriter, open_store

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"
COLUMNS = ["rank", "ts", "dur", "category", "op"]


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("ts", "ascending"), ("dur", "descending")])


def test_streamed_partitions_are_whole_ranks_equal_to_filtered_reads() -> None:
    ctx = build_context(open_store(SAMPLE))
    parts = list(rank_partitions(ctx, COLUMNS))
    ranks = [int(p.column("rank")[0].as_py()) for p in parts]
    assert sorted(ranks) == ctx.ranks["rank"].tolist()          # each rank once
    by_rank = dict(zip(ranks, parts))
    for rank, node in zip(ctx.ranks["rank"], ctx.ranks["node"]):
        want = read_rank(ctx, COLUMNS, int(rank), int(node))
        assert by_rank[rank].select(COLUMNS).equals(want.select(COLUMNS))


def test_context_from_rank_index_equals_a_scan(tmp_path: Path) -> None:
    shutil.copytree(SAMPLE, tmp_path / "store")
    manifest = json.loads((tmp_path / "store" / MANIFEST_NAME).read_text())
    del manifest["rank_index"]                        # a store written before the index existed
    (tmp_path / "store" / MANIFEST_NAME).write_text(json.dumps(manifest))
    indexed, scanned = build_context(open_store(SAMPLE)), build_context(open_store(tmp_path / "store"))
    assert (indexed.wall_start, indexed.wall_end) == (scanned.wall_start, scanned.wall_end)
    assert indexed.ranks.astype("int64").equals(scanned.ranks.astype("int64"))


def test_results_do_not_depend_on_files_per_node(tmp_path: Path) -> None:
    """Rewrite the sample with each node's ranks in reverse order: the writer starts a new file
    whenever rows go backwards, so ranks are no longer contiguous in one stream and the engine
    must fall back to per-rank reads; every report must come out the same."""
    store = open_store(SAMPLE)
    with StoreWriter(tmp_path / "store", row_group_rows=4096) as w:
        for rank in sorted(store.ranks, reverse=True):
            w.write_events(store.read("events", filters=[("rank", "=", rank)]))
        for name in ("collectives", "counters", "requests", "quarantine"):
            w.write_table(name, store.read(name))
        w.write_manifest({k: v for k, v in store.manifest.items()
                          if k not in ("format", "version", "tables", "nodes", "rank_index")})
    split = open_store(tmp_path / "store")
    assert len(split.dataset().files) > len(split.nodes)
    names = ["summary", "roofline", "stalls", "comm", "serving"]
    analyses = [load_analysis(REPORTS[n]) for n in names]
    a = run_analyses(build_context(store), analyses)
    b = run_analyses(build_context(split), analyses)
    for n in names:
        assert json.dumps(a[n].to_json(), sort_keys=True) == json.dumps(b[n].to_json(), sort_keys=True), n
    parts = list(rank_partitions(build_context(split), COLUMNS))
    assert len(parts) == len(split.ranks)
    assert sum(p.num_rows for p in parts) == split.manifest["tables"]["events"]


@pytest.mark.parametrize("workers", [1, 3])
def test_worker_count_does_not_change_results(workers: int) -> None:
    ctx = build_context(open_store(SAMPLE))
    analyses = [load_analysis(REPORTS[n]) for n in ("stalls", "comm", "roofline")]
    base = {k: v.to_json() for k, v in run_analyses(ctx, analyses, workers=2).items()}
    other = {k: v.to_json() for k, v in run_analyses(build_context(open_store(SAMPLE)), analyses, workers=workers).items()}
    assert json.dumps(base, sort_keys=True) == json.dumps(other, sort_keys=True)
