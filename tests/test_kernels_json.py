"""Whole runs on the numpy twins of the compiled kernels (tests/kernels_numpy.py) against the
compiled ones: every default report's JSON (and the kernel sequences'), byte for byte, on the
sample store and on emulated runs with a fault at a random rank; and a collect, table for table."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import kernels_numpy as twin
from sohuprof import kernels
from sohuprof.analyzers import render
from sohuprof.analyzers.report import run_reports
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate
from sohuprof.emulator.config import parse_fault
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

SAMPLE = Path(__file__).resolve().parents[1] / "sample_traces" / "mixtral-2node"


@pytest.fixture
def numpy_kernels(monkeypatch):
    """sohuprof.kernels with every kernel but the replay's swapped for its numpy twin."""
    def use() -> None:
        for name in twin.__all__:
            monkeypatch.setattr(kernels, name, getattr(twin, name))
    return use


def _json(store: Path) -> str:
    names = ["findings", "summary", "roofline", "stalls", "comm", "serving", "critical_path", "sequences"]
    return render.render_json(run_reports(open_store(store), names)).decode()


def _tables(store: Path) -> dict:
    out = {"events": ds.dataset(store / "events", partitioning="hive").to_table()}
    for name in ("collectives", "quarantine", "counters", "requests"):
        if (store / f"{name}.parquet").exists():
            out[name] = pq.read_table(store / f"{name}.parquet")
    return out


def _same_run(raw: Path, tmp_path: Path, numpy_kernels) -> None:
    collect(raw, tmp_path / "compiled", show_progress=False)
    compiled_tables, compiled_json = _tables(tmp_path / "compiled"), _json(tmp_path / "compiled")
    numpy_kernels()
    collect(raw, tmp_path / "numpy", show_progress=False)
    tables = _tables(tmp_path / "numpy")
    assert tables.keys() == compiled_tables.keys()
    for name, table in tables.items():
        assert table.equals(compiled_tables[name]), name
    assert _json(tmp_path / "numpy") == compiled_json.replace(str(tmp_path / "compiled"), str(tmp_path / "numpy"))


def test_the_sample_run_is_the_same_on_the_numpy_kernels(tmp_path, numpy_kernels):
    _same_run(SAMPLE / "raw", tmp_path, numpy_kernels)


@pytest.mark.parametrize("seed", [3, 11])
def test_a_faulty_emulated_run_is_the_same_on_the_numpy_kernels(tmp_path, numpy_kernels, seed):
    rng = random.Random(seed)
    model, ep = rng.choice([("llama3-8b", 1), ("mixtral-8x7b", 8)])
    faults = (parse_fault(f"straggler:rank={rng.randrange(16)},slowdown={rng.uniform(1.1, 1.5):.2f}"),
              parse_fault(f"slow-link:node={rng.randrange(2)},factor={rng.uniform(0.3, 0.8):.2f}"))
    cfg = EmulatorConfig(model=load_model(model), hardware=load_hardware("sohu"), nodes=2, requests=8, ep=ep,
                         seed=seed, faults=faults)
    emulate(cfg, tmp_path / "run", show_progress=False)
    _same_run(tmp_path / "run", tmp_path, numpy_kernels)
    assert json.loads(_json(tmp_path / "numpy"))["findings"]      # the diagnosis had something to say
