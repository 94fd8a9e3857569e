"""Findings: what is wrong, ranked by what fixing it would buy.

Each candidate is a change the what-if engine can replay (a straggler brought to its peers'
speed, a slow NIC to its peers' rate, ops at their roof, free communication, no host gaps), so
its ``saving_ns`` is the replayed wall time's drop, not a sum of local times. All candidates are
replayed together, one scenario column each, in a single replay of the graph.

Candidates are admitted only above noise: a straggler computes at least :data:`STRAGGLER_RATIO`
x its peers' median (the emulator's per-op jitter moves a rank's totals by well under 1 %; a
test holds fault-free runs below it), a slow NIC sends below ``SLOW_RATIO`` x its peers, and every
finding saves at least :data:`MIN_SAVING_PCT` % of the wall.

A rank's speed against its peers is the median over its ops (by name and phase) of its time in
the op over the peers' median: a slow chip is slow in every op, while a rank that got more MoE
tokens is slow only in its expert matmuls (load imbalance, not a straggler). Peers are the ranks
of the same pipeline stage (they run the same program).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.diagnosis.critical_path import baseline, critical_path, diagnosis_chunk, whole_job
from sohuprof.analyzers.diagnosis.graph import GRAPH_COLUMNS, Graph
from sohuprof.analyzers.diagnosis.replay import ReplayError, replay
from sohuprof.analyzers.diagnosis.root_causes import root_causes_of
from sohuprof.analyzers.diagnosis.whatif import Change, Scenario, scenario_inputs
from sohuprof.analyzers.partition import Partition, as_partition

__all__ = ["FINDINGS", "Findings", "STRAGGLER_RATIO", "MIN_SAVING_PCT", "rank_speed", "roles"]

#: A rank is a straggler candidate at this many times its peers' median time per op class.
STRAGGLER_RATIO = 1.05
#: A finding must save at least this share of the wall (percent).
MIN_SAVING_PCT = 1.0
_COLUMNS = ["kind", "title", "saving_ns", "saving_pct", "ranks", "nodes", "ops", "evidence", "next"]


@dataclass(frozen=True)
class Findings:
    """The ranked findings (one row each, ``evidence`` a dict)."""

    table: pd.DataFrame
    wall_ns: int
    notes: tuple = ()

    def to_json(self) -> dict[str, Any]:
        rows = []
        for row in self.table[_COLUMNS].to_dict(orient="records"):   # one per finding
            rows.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()})
        return {"wall_ns": self.wall_ns, "findings": rows, "notes": list(self.notes)}


def roles(ctx: AnalysisContext, ranks: np.ndarray) -> np.ndarray:
    """Each rank's role (ranks of one role run the same program): its pipeline stage on a Sohu
    run, else one role for all."""
    return manifest_roles(ctx.store.manifest, ranks)


def manifest_roles(manifest: dict[str, Any], ranks: np.ndarray) -> np.ndarray:
    """:func:`roles` from a store's manifest alone (what the dashboard holds without a context)."""
    plan = manifest.get("parallel") or {}
    tp, dp = plan.get("tp"), plan.get("dp")
    sohu = (manifest.get("source") or {}).get("format") == "sohu-raw-trace"
    if sohu and isinstance(tp, int) and isinstance(dp, int) and tp > 0 and dp > 0:
        return np.asarray(ranks, np.int64) // (tp * dp)
    return np.zeros(len(ranks), np.int64)


def rank_speed(g: Graph, role: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per rank: its time over its peers' median, the median over op classes that make at least
    1 % of its compute (see the module docstring); its compute time; its peers' count."""
    R = len(g.ranks)
    if g.name_keys:
        compute = np.array([c == 0 for _, _, c in g.name_keys] + [False])[:g.name_dur.shape[1]]
        T = np.where(compute[None, :], g.name_dur, 0.0)
    else:
        compute_keys = np.array([op not in (None, "host", "memcpy") for op, _ in g.op_keys] + [False])
        T = np.where(compute_keys[:g.key_dur.shape[1]][None, :], g.key_dur, 0.0)
    ratio = np.ones(R)
    peers = np.zeros(R, np.int64)
    for r in np.unique(role):          # a loop over pipeline stages
        mine = np.flatnonzero(role == r)
        peers[mine] = len(mine) - 1
        if len(mine) < 2:
            continue
        med = _median_of_others(T[mine])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = T[mine] / med
        big = (T[mine] >= 0.01 * T[mine].sum(axis=1, keepdims=True)) & (med > 0)
        rel = np.where(big, rel, np.nan)
        ok = big.any(axis=1)
        ratio[mine[ok]] = np.nanmedian(rel[ok], axis=1)
    return ratio, T.sum(axis=1), peers


def _median_of_others(values: np.ndarray) -> np.ndarray:
    """[n, K]: for each row, the column-wise median of the other rows (a slow rank does not pull
    its own reference up: with two peers the median of all would sit halfway)."""
    n = len(values)
    order = np.argsort(values, axis=0, kind="stable")
    ranked = np.take_along_axis(values, order, axis=0)
    where = np.empty_like(order)
    np.put_along_axis(where, order, np.arange(n)[:, None].repeat(values.shape[1], axis=1), axis=0)
    lo, hi = (n - 2) // 2, (n - 1) // 2          # the middle of the n - 1 others
    pick = lambda j: np.take_along_axis(ranked, j + (j >= where), axis=0)   # noqa: E731 - skip self
    j_lo, j_hi = np.full_like(where, lo), np.full_like(where, hi)
    return (pick(j_lo) + pick(j_hi)) / 2


def _fmt_ms(ns: float) -> str:
    return f"{ns / 1e6:,.1f} ms" if ns >= 1e5 else f"{ns / 1e3:,.0f} us"


def _candidates(g: Graph, ctx: AnalysisContext, cp: Any) -> list[dict]:
    """Every finding worth replaying, with the scenario that prices it."""
    out: list[dict] = []
    ranks = g.ranks
    info = ctx.ranks.set_index("rank")
    role = roles(ctx, ranks)
    ratio, compute, peers = rank_speed(g, role)
    for pos in np.flatnonzero(ratio >= STRAGGLER_RATIO):    # a few slow ranks
        r = int(ranks[pos])
        node, chip = (int(info.at[r, "node"]), int(info.at[r, "chip"])) if r in info.index else (-1, -1)
        out.append({"kind": "straggler", "ranks": [r], "nodes": [node], "ops": [],
                    "scenario": Scenario(f"rank={r}:compute={1 / ratio[pos]:.4f}",
                                         (Change("rank", rank=r, what="compute", factor=float(1 / ratio[pos])),)),
                    "evidence": {"compute_ratio": round(float(ratio[pos]), 3), "peers": int(peers[pos]),
                                 "role": int(role[pos]), "chip": chip},
                    "next": f"sohuprof dashboard {ctx.store.origin}  (Stalls page, rank {r})"})
    # Slow NICs: the port counters against the other nodes'.
    try:
        from sohuprof.analyzers.reports.comm import nic_table
        nics = nic_table(ctx)
    except ImportError:   # pragma: no cover
        nics = pd.DataFrame()
    if len(nics) and "slow" in nics.columns:
        typical = float(np.median(nics["rate"])) if len(nics) else 1.0
        for row in nics[nics["slow"]].itertuples():     # a few nodes
            k = int(row.node)
            factor = max(typical / max(float(row.rate), 1.0), 1.0)
            out.append({"kind": "slow_link", "ranks": [], "nodes": [k], "ops": [],
                        "scenario": Scenario(f"link=node{k}:bandwidth={factor:.3f}",
                                             (Change("link", node=k, what="bandwidth", factor=factor),)),
                        "evidence": {"rate": float(row.rate), "peers_rate": typical,
                                     "ratio": float(row.ratio), "expected_rate": getattr(row, "expected_rate", None)},
                        "next": f"sohuprof analyze {ctx.store.origin} --report comm"})
    # Communication on the wall: what free transfers would buy.
    out.append({"kind": "exposed_comm", "ranks": [], "nodes": [], "ops": [],
                "scenario": Scenario("comm=free", (Change("comm", what="free", factor=0.0),)),
                "evidence": {"transfer_on_path_ns": int(cp.by_kind.set_index("kind").at["transfer", "time_ns"])},
                "next": f"sohuprof analyze {ctx.store.origin} --report comm,critical_path"})
    # Ops below their roof: the op classes with the most time above their roof on the path.
    if ctx.hardware is not None and len(g.op_roof):
        # Rows without a roof add an exact 0.0 (the same sums as leaving them out, no compress).
        excess = g.op_time - g.op_roof
        excess_by_key = np.bincount(g.op_key, weights=np.where(np.isnan(g.op_roof), 0.0, excess),
                                    minlength=len(g.op_keys))
        best = np.argsort(-excess_by_key)[:3]
        for key, excess in zip(best.tolist(), excess_by_key[best].tolist()):     # three op classes
            op, phase = g.op_keys[int(key)]
            if op in (None, "host") or excess <= 0:
                continue
            spec = f"op={op}" + (f",phase={phase}" if phase else "") + ":roof"
            out.append({"kind": "memory_bound", "ranks": [], "nodes": [], "ops": [f"{op}/{phase}" if phase else op],
                        "scenario": Scenario(spec, (Change("op", op=op, phase=phase, what="roof"),)),
                        "evidence": {"above_roof_ns": int(excess)},
                        "next": f"sohuprof analyze {ctx.store.origin} --report roofline"})
    # A pipeline's stages idle (its bubbles: filling, draining, waiting for a slower stage): what
    # balanced stages kept busy would buy at most (the wall falls to the mean stage's work; with
    # stages already even, to the busiest rank's).
    plan = ctx.store.manifest.get("parallel") or {}
    if isinstance(plan.get("pp"), int) and plan["pp"] > 1:
        R = len(g.ranks)
        seg_rank = np.r_[g.rank_of, np.arange(R)]
        busy = np.bincount(seg_rank, weights=g.kinds[:, :4].sum(axis=1), minlength=R)
        busy += np.bincount(g.rank_of, weights=np.clip(g.leave - g.release, 0, None), minlength=R)
        stage_busy = np.zeros(int(role.max()) + 1 if R else 0)
        np.maximum.at(stage_busy, role, busy)
        # Only the stages whose ranks are analysed (a --ranks selection may leave some out).
        stage_busy = stage_busy[np.unique(role)] if R else stage_busy
        bound = float(stage_busy.mean()) if R else 0.0
        out.append({"kind": "pipeline_bubble", "ranks": [], "nodes": [], "ops": [], "scenario": None,
                    "bound_saving_ns": max(float(ctx.wall_ns) - bound, 0.0),
                    "evidence": {"pp": int(plan["pp"]), "busiest_rank_busy_ns": int(busy.max()) if R else 0,
                                 "stage_busy_ns": [int(b) for b in stage_busy],
                                 "mean_busy_share": round(float(busy.mean()) / max(ctx.wall_ns, 1), 3)},
                    "next": f"sohuprof analyze {ctx.store.origin} --report stalls,critical_path"})
    # Host work on the path: what opens every step, and CPU time with no device work under it.
    host_path = float(cp.by_kind.set_index("kind").at["host", "time_ns"])
    device = bool(g.kinds[:, :3].sum() > 0)
    if g.is_barrier.any() or (host_path > 0 and device):
        out.append({"kind": "host_overhead", "ranks": [], "nodes": [], "ops": ["host"],
                    "scenario": Scenario("host=free", (Change("host", what="free", factor=0.0),)),
                    "evidence": {"steps": int(len(np.unique(g.inst[g.is_barrier]))), "host_on_path_ns": int(host_path)},
                    "next": f"sohuprof analyze {ctx.store.origin} --report critical_path"})
    # Gaps on the path that no op fills (launch and dependency latency, waiting for input).
    idle_path = float(cp.by_kind.set_index("kind").at["idle", "time_ns"])
    out.append({"kind": "idle", "ranks": [], "nodes": [], "ops": [], "scenario": None,
                "bound_saving_ns": idle_path, "evidence": {"idle_on_path_ns": int(idle_path)},
                "next": f"sohuprof analyze {ctx.store.origin} --report critical_path,stalls"})
    out += _imbalance(g, ctx, role, ratio)
    return out


def _imbalance(g: Graph, ctx: AnalysisContext, role: np.ndarray, ratio: np.ndarray) -> list[dict]:
    """Load imbalance: an op class whose time differs between the ranks of one stage though the
    ranks themselves run at their peers' speed (MoE experts receiving unequal tokens, replicas with
    unequal batches). Priced by replaying every rank's time in that class at its stage's mean."""
    R = len(g.ranks)
    if not len(g.op_seg) or R < 2:
        return []
    T = g.key_dur
    out = []
    for r in np.unique(role):                       # a loop over stages
        mine = np.flatnonzero((role == r) & (ratio < STRAGGLER_RATIO))
        if len(mine) < 2:
            continue
        mean = T[mine].mean(axis=0)
        spread = np.where(mean > 0, T[mine].max(axis=0) / np.maximum(mean, 1e-9), 1.0)
        for k in np.flatnonzero((spread >= 1.10) & (mean >= 0.02 * T[mine].sum(axis=1).mean())):   # a few classes
            op, phase = g.op_keys[int(k)]
            if op in (None, "host"):
                continue
            factor = np.ones(R)
            factor[mine] = np.where(T[mine, k] > 0, mean[k] / np.maximum(T[mine, k], 1e-9), 1.0)
            out.append({"kind": "load_imbalance", "ranks": g.ranks[mine[np.argsort(-T[mine, k])[:3]]].tolist(),
                        "nodes": [], "ops": [f"{op}/{phase}" if phase else op], "scenario": None,
                        "row_factor": (int(k), factor),
                        "evidence": {"max_over_mean": round(float(spread[k]), 3), "stage": int(r),
                                     "ranks_in_stage": int(len(mine))},
                        "next": f"sohuprof analyze {ctx.store.origin} --report roofline,stalls"})
    return out


def _title(c: dict, saving_ns: float, pct: float, wall: float, wait_saved: float, ctx: AnalysisContext) -> str:
    ev = c["evidence"]
    if c["kind"] == "straggler":
        r = c["ranks"][0]
        peers = ev["peers"]
        where = f"node {c['nodes'][0]}, chip {ev['chip']}"
        return (f"rank {r} ({where}) computes {ev['compute_ratio']:.2f}x slower than its {peers} peers; "
                f"the waiting it causes, directly and through others, sums to {_fmt_ms(wait_saved)} over the "
                f"ranks; fixing it saves ~{pct:.1f} % of the wall")
    if c["kind"] == "slow_link":
        k = c["nodes"][0]
        return (f"node {k}'s NIC sends at {ev['ratio']:.2f}x its peers' rate ({ev['rate'] / 1e9:,.1f} vs "
                f"{ev['peers_rate'] / 1e9:,.1f} GB/s); bringing it to theirs saves ~{pct:.1f} %")
    if c["kind"] == "exposed_comm":
        return (f"communication not hidden under compute sets {100 * ev['transfer_on_path_ns'] / wall:.0f} % of the "
                f"critical path; hiding it all would save ~{pct:.1f} %")
    if c["kind"] == "memory_bound":
        return f"{c['ops'][0]} runs below its roof; at the roof the run would be ~{pct:.1f} % shorter"
    if c["kind"] == "pipeline_bubble":
        sb = ev["stage_busy_ns"]
        spread = (f"a stage {_fmt_ms(min(sb))} to {_fmt_ms(max(sb))}: bubbles and an uneven split" if len(sb) > 1
                  else "bubbles: filling and draining")
        return (f"the {ev['pp']} pipeline stages are busy {100 * ev['mean_busy_share']:.0f} % of the wall on "
                f"average ({spread}); balanced stages kept busy would save up to ~{pct:.0f} %")
    if c["kind"] == "idle":
        return (f"the critical path is idle {100 * ev['idle_on_path_ns'] / wall:.0f} % of the wall (gaps no op "
                f"fills: launch or dependency latency, waiting for input); closing them would save up to ~{pct:.0f} %")
    if c["kind"] == "load_imbalance":
        return (f"{c['ops'][0]} takes up to {ev['max_over_mean']:.2f}x the mean time on the {ev['ranks_in_stage']} "
                f"ranks of stage {ev['stage']} (most on rank {c['ranks'][0]}); balancing it saves ~{pct:.1f} %")
    if c["kind"] == "host_overhead":
        if ev["steps"]:
            return (f"host scheduling work opens each of {ev['steps']} replica steps; without it the run saves "
                    f"~{pct:.1f} %")
        return (f"kernels start only when the CPU launches them: the device waits {_fmt_ms(ev['host_on_path_ns'])} "
                f"of the critical path for launches (launch-bound); launching ahead (CUDA graphs, fewer and larger "
                f"kernels) would save ~{pct:.1f} %")
    return f"{c['kind']}: saves ~{pct:.1f} %"


def findings(g: Graph, ctx: AnalysisContext) -> Findings:
    """Rank the candidates by their replayed saving (see the module docstring)."""
    wall = float(ctx.wall_ns)
    _, base = baseline_of(g, ctx)
    cp = critical_path(g, base, ctx)
    cands = _candidates(g, ctx, cp)
    if not cands or wall <= 0:
        return Findings(pd.DataFrame(columns=_COLUMNS), int(wall))
    nodes = dict(zip(ctx.ranks["rank"].astype(int).tolist(), ctx.ranks["node"].astype(int).tolist()))
    scenarios = [c["scenario"] or Scenario("none") for c in cands]
    # The scenarios' columns only: the baseline's replay is ``base`` (column 0 below).
    delta, tscale = scenario_inputs(g, scenarios, ctx, nodes, baseline=False)
    for s, (sc, c) in enumerate(zip(scenarios, cands)):      # what scenario_inputs leaves to us
        if any(ch.target == "host" for ch in sc.changes):
            tscale[g.inst_key < 0, s] = 0.0
            delta[:, s] -= g.kinds[:, 3]
        if "row_factor" in c:
            k, factor = c["row_factor"]
            rows = g.op_key == k
            seg_rank = np.r_[g.rank_of, np.arange(len(g.ranks))]
            f = factor[seg_rank[g.op_seg[rows]]]
            delta[:, s] += np.bincount(g.op_seg[rows], weights=(f - 1) * g.op_time[rows], minlength=len(delta))
            c["scenario"] = None
            c["replayed"] = True
    rep = replay(g, delta, tscale, links=False)
    walls = np.r_[base.wall_end, rep.wall_end] - ctx.wall_start
    waits = np.r_[base.sync_wait(g), rep.sync_wait(g)]
    rc = root_causes_of(g, base, ctx)
    root = dict(zip(rc.by_rank["rank"].astype(int).tolist(), rc.by_rank["root_cost_ns"].astype(float).tolist()))
    rows = []
    for s, c in enumerate(cands, start=1):           # one per candidate
        replayed = c["scenario"] is not None or c.get("replayed", False)
        saving = float(walls[0] - walls[s]) if replayed else c["bound_saving_ns"]
        pct = 100.0 * saving / wall
        if pct < MIN_SAVING_PCT:
            continue
        wait_saved = float(waits[0] - waits[s])
        evidence = dict(c["evidence"], what_if=c["scenario"].spec if c["scenario"] else None,
                        wait_saved_ns=int(round(wait_saved)) if c["scenario"] else None)
        if c["kind"] == "straggler":
            evidence["root_cost_ns"] = int(round(root.get(c["ranks"][0], 0.0)))
            wait_saved = evidence["root_cost_ns"]
        if c["kind"] == "slow_link":
            link = rc.causes[(rc.causes["kind"] == "link") & (rc.causes["node"] == c["nodes"][0])]
            evidence["root_cost_ns"] = int(link["cost_ns"].sum())
        if c["kind"] == "pipeline_bubble":
            evidence["structural_wait_ns"] = rc.structural["pipeline_bubble"]
        rows.append({"kind": c["kind"], "title": _title(c, saving, pct, wall, wait_saved, ctx),
                     "saving_ns": int(round(saving)), "saving_pct": round(pct, 2), "ranks": c["ranks"],
                     "nodes": c["nodes"], "ops": c["ops"], "evidence": evidence, "next": c["next"]})
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table = table.sort_values("saving_ns", ascending=False, kind="stable").reset_index(drop=True)
    notes = list(cp.notes)
    if ctx.hardware is None:
        notes.append("no roofline findings: the trace has no hardware roofs and no FLOP or byte counts")
    if not g.kinds[:, :3].sum() > 0:
        notes.append("the trace has only CPU work: the device findings (stragglers, links, roofline, launch "
                     "overhead) do not apply")
    return Findings(table, int(wall), tuple(notes))


def baseline_of(g: Graph, ctx: AnalysisContext):
    """The graph's unchanged replay (shared with the other reports through the context)."""
    rep = ctx.memo.get(("baseline", id(g)))
    if rep is None:
        rep = ctx.memo[("baseline", id(g))] = replay(g)
    return g, rep


class _Findings:
    name = "findings"
    columns = GRAPH_COLUMNS

    def applies(self, ctx: AnalysisContext) -> str | None:
        return whole_job(ctx)

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext):
        return diagnosis_chunk(as_partition(events), ctx)

    def combine(self, partials: list, ctx: AnalysisContext) -> Findings:
        try:
            g, _ = baseline(partials, ctx)
        except ReplayError as exc:      # the other reports still stand: say why this one is empty
            return Findings(pd.DataFrame(columns=_COLUMNS), int(ctx.wall_ns), (f"no findings: {exc}",))
        return findings(g, ctx)


FINDINGS = _Findings()

