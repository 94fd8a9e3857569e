"""A profiled job's ranks, hosts and clocks (collectors/kineto/clocks.py), on real traces."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sohuprof.collectors.kineto import collect_kineto, read_kineto
from sohuprof.collectors.kineto.clocks import parse_hosts
from sohuprof.errors import TraceFormatError

DATA = Path(__file__).resolve().parents[1] / "data" / "kineto-sampled"


def _docs() -> list[dict]:
    return [json.loads(gzip.decompress((DATA / f"sampled_rank-{r}.json.gz").read_bytes())) for r in (0, 1)]


def _job(tmp: Path, docs: list[dict], *, world: int | None = 2, hosts=("hostA", "hostB"),
         shift_ns: int = 0) -> Path:
    """Write the two ranks as one job: ``world`` ranks, each on its host, rank 1's clock
    reading ``shift_ns`` later than it did."""
    tmp.mkdir(parents=True, exist_ok=True)
    for rank, doc in enumerate(docs):
        doc = dict(doc)
        dist = dict(doc["distributedInfo"])
        if world is not None:
            dist["world_size"] = world
        doc["distributedInfo"] = dist
        if hosts:
            doc["host_name"] = hosts[rank]
        if rank == 1 and shift_ns:   # whole us: the traces' ts are integer us, kept exact
            doc["traceEvents"] = [dict(e, ts=e["ts"] + shift_ns // 1000) if "ts" in e else e
                                  for e in doc["traceEvents"]]
        (tmp / f"rank{rank}.json").write_text(json.dumps(doc))
    return tmp


def _rank_ts(trace, rank: int) -> np.ndarray:
    ev = trace.events.to_pandas()
    return ev.loc[ev["rank"] == rank, "ts"].to_numpy()


@pytest.mark.parametrize("shift_ns", [3_217_000, -48_000_000, 1_000])
def test_a_known_clock_offset_between_hosts_is_recovered_within_a_microsecond(tmp_path: Path, shift_ns: int) -> None:
    docs = _docs()
    plain = read_kineto(_job(tmp_path / "plain", docs))
    moved = read_kineto(_job(tmp_path / "moved", docs, shift_ns=shift_ns))
    nodes = moved.metadata["clock_alignment"]["nodes"]
    assert moved.metadata["clock_alignment"]["method"] == "collectives"
    assert [n["method"] for n in nodes] == ["reference", "collectives"]
    assert [h["host"] for h in moved.metadata["clock_alignment"]["hosts"]] == ["hostA", "hostB"]
    offset_plain = plain.metadata["clock_alignment"]["nodes"][1]["offset_ns"]
    assert abs((offset_plain - nodes[1]["offset_ns"]) - shift_ns) < 1_000
    # Every event of rank 1 lands where it did without the shift, to within 1 us.
    assert np.abs(_rank_ts(moved, 1) - _rank_ts(plain, 1)).max() < 1_000
    assert np.array_equal(_rank_ts(moved, 0), _rank_ts(plain, 0))    # node 0 is the reference
    ev = moved.events.to_pandas()
    assert sorted(ev.groupby("rank")["node"].first().tolist()) == [0, 1]
    # These two ranks' n-th SendRecv kernels are not one collective of a two-rank job, so some
    # "members" leave before the other arrives; the check counts them, whatever the shift.
    assert (moved.metadata["clock_alignment"]["causality_violations"]
            == plain.metadata["clock_alignment"]["causality_violations"])


def test_alignment_through_collect_matches_read(tmp_path: Path) -> None:
    path = _job(tmp_path / "in", _docs(), shift_ns=5_000_000)
    summary = collect_kineto(path, tmp_path / "store")
    stored = pd.read_parquet(tmp_path / "store" / "events")
    trace = read_kineto(path)
    assert summary["events"] == len(stored) == trace.events.num_rows
    for rank in (0, 1):
        assert np.array_equal(np.sort(stored.loc[stored["rank"] == rank, "ts"].to_numpy()),
                              np.sort(_rank_ts(trace, rank)))
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["clock_alignment"]["nodes"][1]["method"] == "collectives"


def test_a_partial_job_matches_no_collective_and_lists_the_missing_ranks(tmp_path: Path) -> None:
    trace = read_kineto(_job(tmp_path / "in", _docs(), world=None, hosts=()))   # world_size 128 as written
    meta = trace.metadata
    assert meta["missing_ranks"] == ["2-127"]
    assert meta["collectives"]["matched"] == 0 and meta["collectives"]["partial"] == meta["collectives"]["instances"]
    assert "2 of its 128 ranks" in meta["collectives"]["note"]
    coll = trace.collectives.to_pandas()
    assert (coll["start"] == coll["arrive"]).all()        # no member waits for an unknown one


def test_hosts_mapping_and_file_names(tmp_path: Path) -> None:
    assert parse_hosts("0-2=a,3=b") == {0: "a", 1: "a", 2: "a", 3: "b"}
    for bad in ("0-=a", "x=b", "3-1=c"):
        with pytest.raises(TraceFormatError, match="--hosts"):
            parse_hosts(bad)
    docs = _docs()
    (tmp_path / "in").mkdir()
    # tensorboard_trace_handler's names: HOST_PID.<time>.pt.trace.json
    for rank, doc in enumerate(docs):
        (tmp_path / "in" / f"node{rank}_4242.1700000000{rank}.pt.trace.json").write_text(json.dumps(doc))
    hosts = read_kineto(tmp_path / "in").metadata["clock_alignment"]["hosts"]
    assert [(h["host"], h["source"], h["ranks"]) for h in hosts] == [("node0", "file name", [0]),
                                                                     ("node1", "file name", [1])]
    one = read_kineto(tmp_path / "in", hosts="0-1=same").metadata["clock_alignment"]["hosts"]
    assert [(h["host"], h["source"]) for h in one] == [("same", "--hosts")]


def test_files_without_a_rank_take_the_ranks_after_the_declared_ones(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    docs = _docs()
    (tmp_path / "in").mkdir()
    for name, doc in (("b.json", docs[0]), ("a.json", docs[1])):
        doc = dict(doc)
        doc.pop("distributedInfo")
        (tmp_path / "in" / name).write_text(json.dumps(doc))
    declared = dict(docs[0], distributedInfo=dict(docs[0]["distributedInfo"], rank=5))
    (tmp_path / "in" / "c.json").write_text(json.dumps(declared))
    trace = read_kineto(tmp_path / "in")
    assert trace.metadata["source"]["files"] == {"5": "c.json", "6": "a.json", "7": "b.json"}
    assert "name no rank" in caplog.text and "a.json, b.json" in caplog.text


def _nccl(ts: float, pg: str, ranks: str, size: int) -> dict:
    return {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_f32_RING_LL", "pid": 0, "tid": 7,
            "ts": ts, "dur": 5.0, "args": {"device": 0, "stream": 7, "correlation": int(ts), "Collective name": "allreduce",
                                           "In msg nelems": 1024, "dtype": "Float", "Group size": size,
                                           "Process Group Name": pg, "Process Group Ranks": ranks}}


def test_sub_groups_that_share_a_name_are_told_apart_by_their_members(tmp_path: Path) -> None:
    """Process-group names are numbered per rank: ranks 0-1's group "1" and ranks 2-3's group "1"
    are different groups; each instance matches its own two members, the world group all four."""
    (tmp_path / "in").mkdir()
    for rank in range(4):
        tp = "[0, 1]" if rank < 2 else "[2, 3]"
        events = [_nccl(100.0 + 10 * i + rank, "1", tp, 2) for i in range(3)]
        events.append(_nccl(200.0 + rank, "0", "[0, 1, 2, 3]", 4))
        doc = {"schemaVersion": 1, "distributedInfo": {"rank": rank, "world_size": 4, "backend": "nccl"},
               "traceEvents": events}
        (tmp_path / "in" / f"rank{rank}.json").write_text(json.dumps(doc))
    trace = read_kineto(tmp_path / "in")
    coll = trace.collectives.to_pandas()
    members = coll.groupby("coll_id")["rank"].apply(lambda r: tuple(sorted(r)))
    assert sorted(members.value_counts().to_dict().items()) == [((0, 1), 3), ((0, 1, 2, 3), 1), ((2, 3), 3)]
    assert trace.metadata["collectives"]["partial"] == 0 and trace.metadata["missing_ranks"] == []
    assert coll.groupby("coll_id")["start"].nunique().eq(1).all()      # one shared last arrival each


def test_sends_and_recvs_match_their_pair_not_the_group(tmp_path: Path) -> None:
    """A four-stage pipeline: 0 -> 1, 1 -> 2, 2 -> 3 in one process group. Matched by the
    group's n-th kernel, rank 1's recv from 0 and its send to 2 would be one 4-way instance;
    by Src/Dst Rank each transfer is its own pair."""
    (tmp_path / "in").mkdir()
    for rank in range(4):
        events = []
        for step in range(2):
            for peer, (src, dst) in ((rank - 1, (rank - 1, rank)), (rank + 1, (rank, rank + 1))):
                if 0 <= peer < 4:
                    e = _nccl(100.0 * step + 10 * min(src, dst) + rank, "0", "[0, 1, 2, 3]", 4)
                    e["name"] = "ncclDevKernel_SendRecv"
                    # As PyTorch writes them: the peer only (Dst Rank on a send, Src Rank on a recv).
                    e["args"].update({"Collective name": "send", "Dst Rank": dst} if src == rank else
                                     {"Collective name": "recv", "Src Rank": src})
                    events.append(e)
        doc = {"schemaVersion": 1, "distributedInfo": {"rank": rank, "world_size": 4}, "traceEvents": events}
        (tmp_path / "in" / f"rank{rank}.json").write_text(json.dumps(doc))
    trace = read_kineto(tmp_path / "in")
    coll = trace.collectives.to_pandas()
    members = coll.groupby("coll_id")["rank"].apply(lambda r: tuple(sorted(r)))
    assert sorted(members.value_counts().to_dict().items()) == [((0, 1), 2), ((1, 2), 2), ((2, 3), 2)]
    assert trace.metadata["collectives"]["partial"] == 0


@settings(max_examples=25, deadline=None)
@given(hosts=st.lists(st.integers(0, 3), min_size=2, max_size=6),
       offsets_us=st.lists(st.integers(-5_000_000, 5_000_000), min_size=4, max_size=4),
       steps=st.integers(3, 12))
def test_random_jobs_get_every_host_clock_back(tmp_path_factory, hosts, offsets_us, steps) -> None:
    """Ranks on random hosts whose clocks are off by random whole microseconds; every all-reduce
    ends at one true instant on all ranks (arrivals jittered): the fit puts each node back on
    node 0's clock exactly, and nothing is lost."""
    tmp = tmp_path_factory.mktemp("job") / "in"
    tmp.mkdir()
    world = len(hosts)
    names = [f"host{h}" for h in hosts]
    rng = np.random.default_rng(len(hosts) * 1000 + steps)
    for rank in range(world):
        off = offsets_us[hosts[rank]] - offsets_us[hosts[0]]
        events = []
        for i in range(steps):
            end = 1_000_000.0 + 1e4 * i                   # true end, us
            dur = float(rng.integers(5, 50))
            events.append(_nccl(end - dur + off, "0", "[" + ", ".join(map(str, range(world))) + "]", world))
            events[-1]["dur"] = dur
        doc = {"schemaVersion": 1, "host_name": names[rank], "distributedInfo": {"rank": rank, "world_size": world},
               "traceEvents": events}
        (tmp / f"rank{rank}.json").write_text(json.dumps(doc))
    trace = read_kineto(tmp)
    ev = trace.events.to_pandas()
    ends = (ev["ts"] + ev["dur"]).to_numpy().reshape(world, steps)   # sorted by (rank, ts)
    assert np.abs(ends - ends[0]).max() < 1_000                       # every rank's ends agree again
    align = trace.metadata["clock_alignment"]
    assert len(align["hosts"]) == len(dict.fromkeys(names))
    if len(align["hosts"]) > 1:
        assert align["causality_violations"] == 0
    assert trace.metadata["counts"]["events"] == world * steps


def test_a_first_file_without_a_rank_on_another_host_places_collect_and_read_alike(tmp_path: Path) -> None:
    """The first file's host is node 0 even when that file names no rank, so what collect
    streams before it has read every file agrees with read_kineto's placement."""
    docs = _docs()
    (tmp_path / "in").mkdir()
    first = dict(docs[1], host_name="hostB")
    first.pop("distributedInfo")
    (tmp_path / "in" / "a.json").write_text(json.dumps(first))
    (tmp_path / "in" / "b.json").write_text(json.dumps(dict(docs[0], host_name="hostA")))
    trace = read_kineto(tmp_path / "in")
    collect_kineto(tmp_path / "in", tmp_path / "store")
    stored = pd.read_parquet(tmp_path / "store" / "events")
    for rank in (0, 1):
        mine = trace.events.to_pandas()
        mine = mine[mine["rank"] == rank]
        got = stored[stored["rank"] == rank]
        assert sorted(got["ts"]) == sorted(mine["ts"]) and set(got["node"].astype(int)) == set(mine["node"])
    assert [h["host"] for h in trace.metadata["clock_alignment"]["hosts"]] == ["hostB", "hostA"]


def test_ranks_past_the_id_range_are_refused_in_one_line(tmp_path: Path) -> None:
    docs = _docs()
    (tmp_path / "in").mkdir()
    top = dict(docs[0], distributedInfo=dict(docs[0]["distributedInfo"], rank=2**31 - 1))
    (tmp_path / "in" / "a.json").write_text(json.dumps(top))
    rankless = dict(docs[1])
    rankless.pop("distributedInfo")
    (tmp_path / "in" / "b.json").write_text(json.dumps(rankless))
    with pytest.raises(TraceFormatError, match="run past 2\\*\\*31") as info:
        read_kineto(tmp_path / "in")
    assert "\n" not in str(info.value)


def test_memory_of_two_devices_in_one_process_and_args_that_are_not_objects(tmp_path: Path) -> None:
    def mem(ts: float, dev: int, nbytes: int, total: int, addr: int) -> dict:
        return {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 1, "tid": 1, "ts": ts,
                "args": {"Device Type": 1, "Device Id": dev, "Addr": addr, "Bytes": nbytes,
                         "Total Allocated": total, "Total Reserved": 1 << 20}}
    events = [mem(1.0, 0, 100, 100, 1), mem(2.0, 0, 50, 150, 2), mem(3.0, 1, 400, 400, 3),
              {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 1, "tid": 1, "ts": 4.0, "args": [1]},
              {"ph": "X", "cat": "cpu_op", "name": "aten::empty", "pid": 1, "tid": 1, "ts": 0.5, "dur": 5.0}]
    (tmp_path / "t.json").write_text(json.dumps({"schemaVersion": 1, "traceEvents": events}))
    trace = read_kineto(tmp_path / "t.json")
    counters = trace.counters.to_pandas()
    assert set(counters["counter"].astype(str)) == {f"{k}.{s}" for k in ("memory", "memory.dev1")
                                                   for s in ("allocated", "reserved", "bytes", "addr")}
    assert trace.metadata["counts"]["memory_events"] == 3
    from sohuprof.analyzers.reports.memory import memory_timeline

    rows = memory_timeline(counters).ranks.set_index("kind")
    assert rows.loc["memory", "peak_allocated_bytes"] == 150 and rows.loc["memory.dev1", "peak_allocated_bytes"] == 400


def test_a_whole_sub_group_of_a_partial_job_keeps_its_waits(tmp_path: Path) -> None:
    """Ranks 0 and 1 of an 8-rank job with their two-rank group complete: the collector matches
    its instances and the analyzers judge them by the same sizes, so rank 1's late arrivals are
    its delay cost, while the world group's instances stay partial."""
    from sohuprof.analyzers.diagnosis.graph import incomplete_collectives
    from sohuprof.analyzers.report import run_reports
    from sohuprof.store import open_store

    (tmp_path / "in").mkdir()
    for rank in range(2):
        events = []
        for i in range(4):
            k = _nccl(1000.0 * i + 50.0 * rank, "1", "[0, 1]", 2)
            k["dur"] = 100.0 - 50.0 * rank             # both end at 1000 i + 100
            events.append(k)
        events.append(_nccl(9000.0 + rank, "0", "[0, 1, 2, 3, 4, 5, 6, 7]", 8))
        doc = {"schemaVersion": 1, "distributedInfo": {"rank": rank, "world_size": 8}, "traceEvents": events}
        (tmp_path / "in" / f"rank{rank}.json").write_text(json.dumps(doc))
    collect_kineto(tmp_path / "in", tmp_path / "store")
    store = open_store(tmp_path / "store")
    assert store.manifest["collectives"]["matched"] == 4 and store.manifest["collectives"]["partial"] == 1
    reports = run_reports(store, ["comm"])
    assert len(incomplete_collectives(reports.ctx)[0]) == 1
    stragglers = reports.to_json()["comm"]["stragglers"]
    assert stragglers[0]["rank"] == 1 and stragglers[0]["delay_cost_ns"] == 4 * 50_000
