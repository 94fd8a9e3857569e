"""The Dask engine on real worker processes gives exactly the local engine's JSON.

One ``LocalCluster`` of two worker processes (one thread each) serves the module, so every
partial crosses a process boundary pickled, as on a real cluster; the stores are the sample and
an emulated 16-rank run (TP 4 x PP 2 x DP 2 over 4 nodes, a straggler and a slow link).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("dask.distributed")

from distributed import Client, LocalCluster

from sohuprof.analyzers.engine import Selection
from sohuprof.analyzers.render import render_json
from sohuprof.analyzers.report import run_reports
from sohuprof.collectors import collect
from sohuprof.emulator import EmulatorConfig, emulate, parse_fault
from sohuprof.errors import SohuprofError
from sohuprof.hardware import load_hardware
from sohuprof.models import load_model
from sohuprof.store import open_store

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_traces" / "mixtral-2node" / "store"
KINETO = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each: the module's scheduler address."""
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as local:
        with Client(local) as client:
            client.wait_for_workers(2, timeout=30)
        yield local.scheduler_address


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory) -> Path:
    """16 ranks on 4 nodes of 4 chips: TP 4, PP 2 (stage sends cross nodes), DP 2; rank 5
    throttled and node 2's NIC slow."""
    tmp = tmp_path_factory.mktemp("dask16")
    cfg = EmulatorConfig(model=load_model("llama3-8b"), hardware=load_hardware("sohu"), nodes=4, chips_per_node=4,
                         tp=4, pp=2, requests=8, prompt_len=256, output_len=8, seed=11,
                         faults=(parse_fault("straggler:rank=5,slowdown=1.3"),
                                 parse_fault("slow-link:node=2,factor=0.3")))
    emulate(cfg, tmp / "raw", show_progress=False)
    collect(tmp / "raw", tmp / "store", show_progress=False)
    return tmp / "store"


@pytest.fixture(scope="module")
def kineto(tmp_path_factory) -> Path:
    """HTA's multi-rank NCCL Kineto trace, collected (the PyTorch reports)."""
    out = tmp_path_factory.mktemp("dask-kineto") / "store"
    collect(KINETO, out, show_progress=False)
    return out


def _both(path: Path, scheduler: str, **kw) -> tuple[bytes, bytes]:
    """The default reports' JSON (what ``analyze --format json`` prints) from each engine."""
    store = open_store(path)
    local = render_json(run_reports(store, **kw))
    dask = render_json(run_reports(store, engine="dask", scheduler=scheduler, **kw))
    return local, dask


def test_sample_store_matches_local(cluster: str) -> None:
    local, dask = _both(SAMPLE, cluster)
    assert b'"findings"' in local and b'"critical_path"' in local     # the default reports ran
    assert dask == local


def test_sixteen_ranks_match_local(cluster: str, sixteen: Path) -> None:
    assert len(open_store(sixteen).ranks) == 16
    local, dask = _both(sixteen, cluster)
    assert dask == local


@pytest.mark.parametrize("kw", [{}, {"names": ["comm", "temporal", "kernels"], "hta_compatible": True}],
                         ids=["default", "hta"])
def test_kineto_matches_local(cluster: str, kineto: Path, kw: dict) -> None:
    local, dask = _both(kineto, cluster, **kw)
    assert dask == local


@pytest.mark.parametrize("kw", [
    {"selection": Selection(ranks=[1, 5, 6], start_ms=0.5, end_ms=4.0)},
    {"names": ["roofline", "whatif"], "what_if": ["rank=5:compute=0.77"], "by": "name"},
], ids=["selection", "whatif"])
def test_options_travel_to_workers(cluster: str, sixteen: Path, kw: dict) -> None:
    local, dask = _both(sixteen, cluster, **kw)
    assert dask == local


def test_engine_started_cluster_matches_local() -> None:
    """Without a scheduler the engine starts (and stops) its own LocalCluster of processes."""
    store = open_store(SAMPLE)
    names = ["summary", "stalls"]
    assert run_reports(store, names, engine="dask").to_json() == run_reports(store, names).to_json()


def test_worker_in_another_directory_reads_a_relative_store(tmp_path: Path) -> None:
    """A store named by a relative path is read by workers started elsewhere (as on a cluster
    with a shared file system): the engine ships its absolute path."""
    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      scheduler_kwargs={"dashboard": False}) as local:
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", local.scheduler_address,
                                   "--nthreads", "1", "--no-dashboard"], cwd=tmp_path,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(local) as client:
                client.wait_for_workers(1, timeout=30)
            store = open_store(os.path.relpath(SAMPLE))
            assert not store.path.is_absolute()
            names = ["summary"]
            dask = run_reports(store, names, engine="dask", scheduler=local.scheduler_address).to_json()
            assert dask == run_reports(store, names).to_json()
        finally:
            worker.terminate()
            worker.wait(timeout=30)


def test_unreachable_scheduler_is_one_clear_error() -> None:
    with pytest.raises(SohuprofError, match="cannot reach the Dask scheduler"):
        run_reports(open_store(SAMPLE), ["summary"], engine="dask", scheduler="tcp://127.0.0.1:9")
