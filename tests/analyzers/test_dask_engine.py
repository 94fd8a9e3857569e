"""The Dask engine on a real LocalCluster gives exactly the local engine's results."""

from __future__ import annotations

from pathlib import Path

import pytest

from sohuprof.analyzers.report import run_reports
from sohuprof.store import open_store

pytest.importorskip("dask.distributed")

SAMPLE = Path(__file__).resolve().parents[2] / "sample_traces" / "mixtral-2node" / "store"


def test_dask_matches_local() -> None:
    store = open_store(SAMPLE)
    names = ["summary", "stalls"]
    local = run_reports(store, names).to_json()
    dask = run_reports(store, names, engine="dask").to_json()
    assert dask == local


def test_unreachable_scheduler_is_one_clear_error() -> None:
    from sohuprof.errors import SohuprofError

    with pytest.raises(SohuprofError, match="cannot reach the Dask scheduler"):
        run_reports(open_store(SAMPLE), ["summary"], engine="dask", scheduler="tcp://127.0.0.1:9")
