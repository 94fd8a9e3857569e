"""A real CPU-only PyTorch 2.13 trace of a tiny transformer (tests/data/kineto-tiny): what runs
on it, what says it does not apply, and the memory and annotation reports' numbers."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from sohuprof.analyzers.report import REPORTS, load_analysis, run_reports
from sohuprof.collectors import collect
from sohuprof.store import open_store

DATA = Path(__file__).resolve().parents[1] / "data" / "kineto-tiny"


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("tiny") / "store"
    collect(DATA, store)
    return run_reports(open_store(store))


def _raw() -> dict:
    return json.loads(gzip.decompress(next(DATA.glob("*.pt.trace.json.gz")).read_bytes()))


def test_cpu_only_trace_runs_the_cpu_side_and_says_why_not_the_rest(reports) -> None:
    data = reports.to_json()
    assert {"summary", "stalls", "annotations", "memory", "critical_path"} <= set(data)
    for name in ("temporal", "kernels", "idle", "launches", "queue", "memory_bw", "sequences"):
        reason = load_analysis(REPORTS[name]).applies(reports.ctx)
        assert reason and "CPU" in reason, (name, reason)


def test_memory_peak_matches_the_raw_events(reports) -> None:
    events = [e for e in _raw()["traceEvents"] if e.get("name") == "[memory]"]
    allocated = [e["args"]["Total Allocated"] for e in events]
    row = reports.to_json()["memory"]["ranks"][0]
    assert row["kind"] == "cpu_memory" and row["samples"] == len(events)
    assert row["peak_allocated_bytes"] == max(allocated)
    assert row["allocations"] == sum(e["args"]["Bytes"] > 0 for e in events)


def test_record_function_ranges_are_annotations(reports) -> None:
    raw = [e for e in _raw()["traceEvents"] if e.get("cat") == "user_annotation" and e.get("ph") == "X"]
    rows = {r["name"]: r for r in reports.to_json()["annotations"]["names"]}
    for name in ("forward", "backward", "optimizer"):
        mine = [e for e in raw if e["name"] == name]
        assert rows[name]["cpu_count"] == len(mine)
        assert rows[name]["cpu_ns"] == pytest.approx(sum(e["dur"] for e in mine) * 1e3, abs=len(mine))


def test_the_host_is_read_from_the_trace(reports) -> None:
    hosts = reports.ctx.store.manifest["clock_alignment"]["hosts"]
    assert [(h["host"], h["ranks"]) for h in hosts] == [(_raw()["host_name"], [0])]
