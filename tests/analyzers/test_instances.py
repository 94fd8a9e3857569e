"""The member index: each rank's collectives, whatever the table's order or batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sohuprof.analyzers.instances import MemberIndex
from sohuprof.store import open_store

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"


def _index(table: pa.Table, batch_rows: int) -> MemberIndex:
    return MemberIndex.from_batches(lambda columns: table.select(columns).to_batches(max_chunksize=batch_rows))


@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("batch_rows", [997, 1 << 20])
def test_member_index_matches_a_group_by(shuffled: bool, batch_rows: int) -> None:
    table = open_store(SAMPLE).read("collectives")
    if shuffled:
        table = table.take(np.random.default_rng(0).permutation(table.num_rows))
    index = _index(table, batch_rows)
    frame = table.to_pandas()
    frame["kind"] = frame["kind"].astype(str)
    assert index.rows == len(frame) and index.kinds == sorted(frame["kind"].unique())
    for rank, rows in frame.groupby("rank"):   # a reference: one rank at a time
        rows = rows.sort_values("coll_id", kind="stable")
        got = index.of_rank(int(rank))
        assert got["coll_id"].tolist() == rows["coll_id"].tolist()
        assert got["start"].tolist() == rows["start"].tolist()
        assert got["group"].tolist() == rows["group"].tolist()
        assert [index.kinds[k] for k in got["kind"]] == rows["kind"].tolist()
    assert len(index.of_rank(10_000)["coll_id"]) == 0
