"""Host events (``node<N>/host.jsonl``): request lifecycles and scheduler steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from emu_support import SMALL_RUN, RawRun, make_config, read_run, run_in_memory

from sohuprof.emulator import emulate

BUDGET = dict(model="llama3-8b", nodes=1, chips_per_node=8, tp=4, requests=10, prompt_len=200, output_len=6,
              max_batch_tokens=256, rate=2000.0, seed=3)


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory: pytest.TempPathFactory) -> RawRun:
    path = tmp_path_factory.mktemp("host") / "run"
    emulate(make_config(**BUDGET), path, show_progress=False)
    return read_run(path)


@pytest.fixture(params=["small", "budget"])
def run(request, small_run: RawRun, budget_run: RawRun) -> RawRun:
    return small_run if request.param == "small" else budget_run


def _requests(run: RawRun) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for node, events in run.host.items():
        for ev in events:
            if ev["type"] != "step":
                assert ev["type"] in ("arrival", "first_token", "finish")
                assert ev["type"] not in out.setdefault(ev["request"], {}), "duplicate event"
                out[ev["request"]][ev["type"]] = dict(ev, node=node)
    return out


def test_every_request_arrives_gets_a_first_token_and_finishes_in_order(run: RawRun) -> None:
    w = run.meta["workload"]
    reqs = _requests(run)
    assert sorted(reqs) == list(range(w["requests"]))
    for i, evs in reqs.items():
        assert set(evs) == {"arrival", "first_token", "finish"}, i
        assert len({e["node"] for e in evs.values()}) == 1          # one host, one clock
        assert evs["arrival"]["ts"] <= evs["first_token"]["ts"] <= evs["finish"]["ts"]
        assert evs["arrival"]["prompt_tokens"] == w["prompt_len"]
        assert evs["finish"]["output_tokens"] == w["output_len"]
        assert len({e["replica"] for e in evs.values()}) == 1


def test_requests_are_spread_round_robin_over_replicas(run: RawRun) -> None:
    dp = run.meta["parallel"]["dp"]
    reqs = _requests(run)
    assert all(evs["arrival"]["replica"] == i % dp for i, evs in reqs.items())


def test_steps_respect_the_token_budget_and_account_for_every_token(run: RawRun) -> None:
    w = run.meta["workload"]
    steps = [ev for evs in run.host.values() for ev in evs if ev["type"] == "step"]
    assert steps
    for ev in steps:
        tokens = ev["prefill_tokens"] + ev["decode_tokens"]
        assert tokens <= w["max_batch_tokens"]
        assert ev["ts"] <= ev["end"]
        assert ev["phase"] == ("mixed" if ev["prefill_tokens"] and ev["decode_tokens"] else
                               "prefill" if ev["prefill_tokens"] else "decode")
    # The first output token comes out of the prefill step; the others from one decode each.
    assert sum(ev["prefill_tokens"] for ev in steps) == w["requests"] * w["prompt_len"]
    assert sum(ev["decode_tokens"] for ev in steps) == w["requests"] * (w["output_len"] - 1)
    assert len({(ev["step"], ev["replica"]) for ev in steps}) == len(steps)


def test_budget_binds(budget_run: RawRun) -> None:
    steps = [ev for evs in budget_run.host.values() for ev in evs if ev["type"] == "step"]
    assert max(ev["prefill_tokens"] + ev["decode_tokens"] for ev in steps) == BUDGET["max_batch_tokens"]
    assert any(ev["phase"] == "mixed" for ev in steps)


def test_host_files_are_sorted_by_time(run: RawRun) -> None:
    for events in run.host.values():
        ts = [ev["ts"] for ev in events]
        assert ts == sorted(ts)


def test_a_request_finishes_no_earlier_than_its_steps_allow(budget_run: RawRun) -> None:
    """First token after at least ceil(prompt / budget) steps; finish after output_len - 1 more."""
    reqs = _requests(budget_run)
    steps = sorted((ev for evs in budget_run.host.values() for ev in evs if ev["type"] == "step"),
                   key=lambda e: (e["replica"], e["ts"]))
    for evs in reqs.values():
        rep = evs["arrival"]["replica"]
        mine = [s for s in steps if s["replica"] == rep]
        to_first = [s for s in mine if evs["arrival"]["ts"] <= s["ts"] and s["end"] <= evs["first_token"]["ts"]]
        assert len(to_first) >= -(-BUDGET["prompt_len"] // BUDGET["max_batch_tokens"])
        to_finish = [s for s in mine if evs["first_token"]["ts"] < s["end"] <= evs["finish"]["ts"]]
        assert len(to_finish) >= BUDGET["output_len"] - 1


def test_poisson_arrivals_at_the_requested_rate() -> None:
    cfg = make_config(model="llama3-8b", nodes=1, chips_per_node=4, tp=4, requests=400, prompt_len=16,
                      output_len=2, rate=500.0, seed=11)
    mem = run_in_memory(cfg)
    arrival = mem.em.request_table()["arrival"]
    gaps = np.diff(np.concatenate([[0.0], arrival])) / 1e9
    assert (gaps >= 0).all()
    # Exponential gaps, mean 1/rate = 2 ms: the sample mean of 400 is within 4 standard errors.
    assert abs(gaps.mean() - 1 / 500) < 4 * (1 / 500) / np.sqrt(400)
    # ... with the exponential's coefficient of variation of 1.
    assert 0.8 < gaps.std() / gaps.mean() < 1.2
    req = mem.em.request_table()
    assert (req["first_token"] >= req["arrival"]).all()


def test_small_run_dir_has_host_events_per_node(small_run: RawRun, small_run_dir: Path) -> None:
    assert sorted(small_run.host) == list(range(SMALL_RUN["nodes"]))
    assert all((small_run_dir / f"node{n}/host.jsonl").is_file() for n in small_run.host)


def test_request_events_are_written_in_lifecycle_order(tmp_path: Path) -> None:
    path = tmp_path / "run"
    emulate(make_config(model="llama3-8b", nodes=1, chips_per_node=4, tp=4, requests=2, prompt_len=16,
                        output_len=1), path, show_progress=False)
    events = read_run(path).host[0]
    rank = {"arrival": 0, "first_token": 1, "finish": 2}
    for req in (0, 1):
        kinds = [rank[ev["type"]] for ev in events if ev.get("request") == req]
        assert kinds == [0, 1, 2], kinds
