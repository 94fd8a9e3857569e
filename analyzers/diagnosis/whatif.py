"""What-if: a change written as a SPEC, turned into the replay's inputs, and its prediction.

A SPEC changes durations; several joined by ``+`` make one scenario::

    rank=5:compute=0.77          scale rank 5's compute ops (their memory-stall part too) by 0.77
    rank=5:memory=0.5            ... its DMA copies
    op=gemm,phase=decode:roof    those ops at their roofline roof
    op=attention:scale=0.8       those ops 0.8x as long
    link=node2:bandwidth=3       node 2's NIC 3x as fast (transfers it bottlenecks speed up)
    hw:hbm_bandwidth=2           every op re-timed from its roofline terms with 2x the bandwidth
    hw:peak_flops=2              ... with 2x the FLOP/s
    comm=free                    transfers cost nothing (waits still happen)

Every change is a per-segment change of time (``delta``) or a per-member factor on transfers
(``tscale``) for :func:`~sohuprof.analyzers.diagnosis.replay.replay`; the hardware ones re-time
each op in the rank's pass (they are not linear in a segment's totals), the others are built from
the graph's segment composition in combine.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.diagnosis.graph import KINDS, Graph
from sohuprof.errors import SohuprofError

__all__ = ["SpecError", "Change", "Scenario", "WHATIF", "WhatIfResult", "parse_scenario", "check_scenario", "scenario_inputs",
           "hw_scenarios", "node_rates", "predict", "requested", "run_tokens", "step_times"]

_KIND = {k: i for i, k in enumerate(KINDS)}
_HW = {"hbm_bandwidth", "peak_flops"}


class SpecError(SohuprofError):
    """A what-if SPEC that cannot be read, or names what the store does not have."""


@dataclass(frozen=True)
class Change:
    """One change: what it selects and what it does."""

    target: str                  # rank, op, link, hw, comm
    rank: int | None = None
    node: int | None = None
    op: str | None = None
    phase: str | None = None
    what: str = ""               # compute, memory, roof, scale, bandwidth, hbm_bandwidth, peak_flops, free
    factor: float = 1.0


@dataclass(frozen=True)
class Scenario:
    """A named set of changes replayed together."""

    spec: str
    changes: tuple[Change, ...] = field(default_factory=tuple)

    @property
    def hw(self) -> tuple[float, float] | None:
        """(peak factor, HBM factor) when the scenario re-times ops from the hardware, else None."""
        peak = math.prod(c.factor for c in self.changes if c.target == "hw" and c.what == "peak_flops")
        hbm = math.prod(c.factor for c in self.changes if c.target == "hw" and c.what == "hbm_bandwidth")
        return (peak, hbm) if any(c.target == "hw" for c in self.changes) else None


_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def _factor(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"what-if {spec!r}: {text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0) or value > 1e6:
        raise SpecError(f"what-if {spec!r}: the factor must be a number > 0 (at most 1e6), got {text}")
    return value


def _change(spec: str) -> Change:
    """One ``+``-free part of a SPEC."""
    s = spec.strip()
    if s == "comm=free":
        return Change("comm", what="free", factor=0.0)
    m = re.fullmatch(r"rank=(\d+):(compute|memory)=(\S+)", s)
    if m:
        return Change("rank", rank=int(m.group(1)), what=m.group(2), factor=_factor(m.group(3), spec))
    m = re.fullmatch(r"op=([A-Za-z0-9_.-]+)(?:,phase=([A-Za-z]+))?:(roof|scale=(\S+))", s)
    if m:
        if m.group(3) == "roof":
            return Change("op", op=m.group(1), phase=m.group(2), what="roof")
        return Change("op", op=m.group(1), phase=m.group(2), what="scale", factor=_factor(m.group(4), spec))
    m = re.fullmatch(r"link=node(\d+):bandwidth=(\S+)", s)
    if m:
        return Change("link", node=int(m.group(1)), what="bandwidth", factor=_factor(m.group(2), spec))
    m = re.fullmatch(r"hw:([a-z_]+)=(\S+)", s)
    if m:
        if m.group(1) not in _HW:
            raise SpecError(f"what-if {spec!r}: unknown hardware figure {m.group(1)!r}; choose "
                            f"{' or '.join(sorted(_HW))}")
        return Change("hw", what=m.group(1), factor=_factor(m.group(2), spec))
    raise SpecError(f"what-if {spec!r} is not a SPEC; write one of rank=5:compute=0.77, "
                    "op=gemm,phase=decode:roof, op=attention:scale=0.8, link=node2:bandwidth=3, "
                    "hw:hbm_bandwidth=2, hw:peak_flops=2, comm=free (join several with '+')")


def parse_scenario(spec: str) -> Scenario:
    """A SPEC (changes joined by ``+``) as a :class:`Scenario`.

    Raises
    ------
    SpecError
        A part is not a SPEC or a factor is not a positive number.
    """
    if not spec or not spec.strip():
        raise SpecError("an empty what-if SPEC; write one such as rank=5:compute=0.77")
    return Scenario(spec.strip(), tuple(_change(p) for p in spec.split("+")))


def check_scenario(sc: Scenario, ctx: AnalysisContext) -> None:
    """Refuse a scenario naming a rank, node or op the store does not have, or needing columns
    (FLOP and byte counts, a hardware spec) it lacks.

    Raises
    ------
    SpecError
    """
    ranks = set(ctx.ranks["rank"].tolist())
    nodes = set(ctx.ranks["node"].tolist())
    for c in sc.changes:   # a handful of changes
        if c.rank is not None and c.rank not in ranks:
            raise SpecError(f"what-if {sc.spec!r}: rank {c.rank} is not in the store (ranks "
                            f"{min(ranks, default=0)}..{max(ranks, default=-1)})")
        if c.node is not None and c.node not in nodes:
            raise SpecError(f"what-if {sc.spec!r}: node {c.node} is not in the store (nodes "
                            f"{', '.join(map(str, sorted(nodes)))})")
        if (c.target == "hw" or c.what == "roof") and ctx.hardware is None:
            raise SpecError(f"what-if {sc.spec!r} needs the hardware's roofs and the ops' FLOP and byte "
                            "counts, which this store does not have (a Sohu run's store has them)")


def hw_scenarios(scenarios: list[Scenario]) -> tuple:
    """The chunk-time part of the scenarios: ``("hw", peak, hbm)`` for each that re-times ops."""
    return tuple(("hw", *sc.hw) for sc in scenarios if sc.hw is not None)


def node_rates(ctx: AnalysisContext) -> dict[int, float]:
    """Each node's measured NIC rate (bytes/s while sending) from the NIC port counters, or the
    same nominal rate for every node when the store has none."""
    try:
        from sohuprof.analyzers.reports.comm import nic_table
    except ImportError:       # pragma: no cover - comm always has it once the counters exist
        nic_table = None
    nodes = sorted(set(ctx.ranks["node"].tolist()))
    table = nic_table(ctx) if nic_table is not None else pd.DataFrame()
    if len(table):
        rates = dict(zip(table["node"].astype(int).tolist(), table["rate"].astype(float).tolist()))
        typical = float(np.median(list(rates.values())))
        return {n: rates.get(n, typical) for n in nodes}
    return {n: 1.0 for n in nodes}


def scenario_inputs(g: Graph, scenarios: list[Scenario], ctx: AnalysisContext,
                    node_of_rank: dict[int, int], *, baseline: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``delta`` [A + R, S] and ``tscale`` [I, S] for the replay (the baseline first, column 0;
    without ``baseline``, only the scenarios' columns, from 0: a caller holding the baseline's
    replay already)."""
    A, R = g.anchors, len(g.ranks)
    first = 1 if baseline else 0
    S = len(scenarios) + first
    delta = np.zeros((A + R, S))
    tscale = np.ones((len(g.inst_key), S))
    seg_rank = np.r_[g.rank_of, np.arange(R)]
    is_coll = g.inst_key >= 0                      # per instance: collectives (barriers are below 0)
    hw_col = 0
    inst_nodes = latency = None
    for s, sc in enumerate(scenarios, start=first):     # a loop over scenarios and their changes
        if sc.hw is not None:
            delta[:, s] += g.deltas[hw_col]
            hw_col += 1
        for c in sc.changes:
            if c.target == "rank":
                pos = np.searchsorted(g.ranks, c.rank)
                mine = seg_rank == pos
                parts = [_KIND["compute"], _KIND["memory_stall"]] if c.what == "compute" else [_KIND["memory"]]
                delta[mine, s] += (c.factor - 1) * g.kinds[mine][:, parts].sum(axis=1)
            elif c.target == "op":
                names = [(o, p) for o, p in g.op_keys]
                hit = np.array([o == c.op and (c.phase is None or p == c.phase) for o, p in names] + [False])
                rows = hit[g.op_key] if len(g.op_key) else np.zeros(0, bool)
                if c.what == "roof":
                    roof = g.op_roof[rows]
                    change = np.where(np.isnan(roof), 0.0, roof - g.op_time[rows])
                else:
                    change = (c.factor - 1) * g.op_time[rows]
                delta[:, s] += np.bincount(g.op_seg[rows], weights=change, minlength=A + R)
            elif c.target == "comm":
                tscale[is_coll, s] = 0.0
            elif c.target == "link":
                if inst_nodes is None:
                    inst_nodes = _instance_nodes(g, node_of_rank)
                rates = node_rates(ctx)
                new = dict(rates)
                new[c.node] = rates.get(c.node, 1.0) * c.factor
                lo_old, lo_new, spans = _bottleneck(inst_nodes, rates, new)
                f = np.where(spans, lo_old / lo_new, 1.0)
                if latency is None:
                    latency = _transfer_latency(g, ctx)
                # Bandwidth scales the bytes' part of a transfer, not its per-hop latency.
                time, lat = latency
                with np.errstate(divide="ignore", invalid="ignore"):
                    f = np.where(time > 0, (lat + (time - lat) * f) / time, f)
                tscale[:, s] *= np.where(is_coll, f, 1.0)
    return delta, tscale


def _transfer_latency(g: Graph, ctx: AnalysisContext) -> tuple[np.ndarray, np.ndarray]:
    """Per instance: its transfer time (release to the last member's leave) and the alpha-beta
    latency part of it for a transfer across nodes (``comm``'s model of what nccl would pick)."""
    from sohuprof.analyzers.reports.comm import transfer_latency

    I = len(g.inst_key)
    time = np.zeros(I)
    if g.anchors:
        rec = np.full(I, np.iinfo(np.int64).min)
        np.maximum.at(rec, g.inst, g.release)
        np.maximum.at(time, g.inst, (g.leave - rec[g.inst]).astype(float))
    lat = np.zeros(I)
    if ctx.hardware is not None and ctx.has_collectives:
        inst = ctx.instances
        ids = inst["coll_id"].to_numpy(np.int64)
        pos = np.clip(np.searchsorted(ids, g.inst_key), 0, max(len(ids) - 1, 0))
        found = (g.inst_key >= 0) & (ids[pos] == g.inst_key) if len(ids) else np.zeros(I, bool)
        spanning = inst["n_nodes"].to_numpy() > 1
        per = np.where(spanning, transfer_latency(inst, ctx.hardware), 0.0)
        lat = np.where(found, per[pos] if len(ids) else 0.0, 0.0)
    return time, np.clip(lat, 0, time)


def _instance_nodes(g: Graph, node_of_rank: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(instance, node) pairs of every instance's members (unique)."""
    node = np.array([node_of_rank.get(int(r), 0) for r in g.ranks.tolist()], dtype=np.int64)[g.rank_of]  # per rank
    pairs = np.unique(np.c_[g.inst, node], axis=0) if g.anchors else np.zeros((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]


def _bottleneck(inst_nodes: tuple[np.ndarray, np.ndarray], old: dict[int, float],
                new: dict[int, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per instance: the slowest NIC among its members' nodes, before and after, and whether it
    spans nodes (only those cross a NIC)."""
    inst, node = inst_nodes
    n_inst = int(inst.max()) + 1 if len(inst) else 0
    keys = sorted(old)
    o = np.array([old[k] for k in keys])[np.searchsorted(keys, node)]
    w = np.array([new[k] for k in keys])[np.searchsorted(keys, node)]
    lo_old = np.full(n_inst, np.inf)
    lo_new = np.full(n_inst, np.inf)
    np.minimum.at(lo_old, inst, o)
    np.minimum.at(lo_new, inst, w)
    spans = np.bincount(inst, minlength=n_inst) > 1
    return lo_old, lo_new, spans


def requested(ctx: AnalysisContext) -> list[Scenario]:
    """The scenarios the user asked for (``ctx.options["what_if"]``: SPEC strings), parsed once."""
    out = ctx.memo.get("what_if")
    if out is None:
        out = ctx.memo["what_if"] = [parse_scenario(s) for s in ctx.options.get("what_if") or ()]
    return out


@dataclass(frozen=True)
class WhatIfResult:
    """Measured and predicted wall time, tokens/s and step times of each scenario."""

    wall_ns: int
    scenarios: pd.DataFrame          # spec, wall_ns, saving_ns, saving_pct, speedup, tokens_per_s
    steps: pd.DataFrame              # spec, step, measured_ns, predicted_ns
    tokens: int

    def to_json(self) -> dict:
        from sohuprof.analyzers.reports.comm import records

        rows = records(self.scenarios, ["spec", "wall_ns", "saving_ns", "saving_pct", "speedup", "tokens_per_s"])
        by_spec = {s: g for s, g in self.steps.groupby("spec", sort=False)} if len(self.steps) else {}
        for row in rows:   # one per scenario
            g = by_spec.get(row["spec"])
            row["steps"] = records(g, ["step", "measured_ns", "predicted_ns"]) if g is not None else []
        measured = self.tokens / (self.wall_ns / 1e9) if self.wall_ns and self.tokens else None
        return {"measured": {"wall_ns": self.wall_ns, "tokens_per_s": measured}, "scenarios": rows}


def run_tokens(ctx: AnalysisContext) -> int:
    """Tokens the run served (prompt + output, from requests.parquet; 0 if it has none)."""
    req = ctx.requests
    total = 0
    for c in ("prompt_tokens", "output_tokens"):
        if c in req.columns:
            total += int(pd.to_numeric(req[c], errors="coerce").fillna(0).sum())
    return total


def predict(g: Graph, scenarios: list[Scenario], ctx: AnalysisContext) -> tuple[np.ndarray, Any]:
    """Replay ``scenarios`` (after the baseline); returns ([S] wall ns of each) and the replay."""
    from sohuprof.analyzers.diagnosis.replay import replay

    for sc in scenarios:
        check_scenario(sc, ctx)
    nodes = dict(zip(ctx.ranks["rank"].astype(int).tolist(), ctx.ranks["node"].astype(int).tolist()))
    delta, tscale = scenario_inputs(g, scenarios, ctx, nodes)
    rep = replay(g, delta, tscale)
    return rep.wall_end - ctx.wall_start, rep


def step_times(g: Graph, rep: Any, column: int) -> pd.DataFrame:
    """Per step: the mean over replicas of the time from its barrier's release to the next's."""
    bar = np.flatnonzero(g.is_barrier)
    if not len(bar):
        return pd.DataFrame({"step": [], "measured_ns": [], "predicted_ns": []})
    inst = np.unique(g.inst[bar])
    key = g.inst_key[inst]
    step = (-1 - key) // (1 << 20)
    replica = (-1 - key) % (1 << 20)
    frame = pd.DataFrame({"step": step, "replica": replica, "measured": rep.release[inst, 0],
                          "predicted": rep.release[inst, column]}).sort_values(["replica", "step"])
    nxt = frame.groupby("replica")[["measured", "predicted"]].shift(-1)
    # The last step ends with the run (its replica's last end is not kept apart: the run's).
    nxt = nxt.fillna({"measured": float(rep.wall_end[0]), "predicted": float(rep.wall_end[column])})
    frame["measured_ns"] = nxt["measured"] - frame["measured"]
    frame["predicted_ns"] = nxt["predicted"] - frame["predicted"]
    out = frame.dropna().groupby("step", as_index=False)[["measured_ns", "predicted_ns"]].mean()
    out[["measured_ns", "predicted_ns"]] = out[["measured_ns", "predicted_ns"]].round().astype("int64")
    return out


class _WhatIf:
    name = "whatif"
    columns = ("rank", "ts", "dur", "category", "op", "phase", "step", "coll_id", "stall_mem_ns", "flops",
               "hbm_bytes", "track", "layer")

    def applies(self, ctx: AnalysisContext) -> str | None:
        if not ctx.options.get("what_if"):
            return "no what-if was asked for (give SPECs: `sohuprof whatif STORE rank=5:compute=0.77`)"
        from sohuprof.analyzers.diagnosis.critical_path import whole_job

        reason = whole_job(ctx)
        if reason is not None:
            return reason
        for sc in requested(ctx):
            check_scenario(sc, ctx)
        return None

    def chunk(self, events, ctx: AnalysisContext):
        from sohuprof.analyzers.diagnosis.critical_path import diagnosis_chunk
        from sohuprof.analyzers.partition import as_partition

        return diagnosis_chunk(as_partition(events), ctx)

    def combine(self, partials: list, ctx: AnalysisContext) -> WhatIfResult:
        from sohuprof.analyzers.diagnosis.graph import graph_of

        g = graph_of(partials, ctx)
        scenarios = requested(ctx)
        walls, rep = predict(g, scenarios, ctx)
        measured = int(ctx.wall_ns)
        tokens = run_tokens(ctx)
        rows, steps = [], []
        for s, sc in enumerate(scenarios, start=1):   # one per scenario
            wall = float(walls[s])
            rows.append({"spec": sc.spec, "wall_ns": int(round(wall)), "saving_ns": int(round(measured - wall)),
                         "saving_pct": 100.0 * (measured - wall) / measured if measured else 0.0,
                         "speedup": measured / wall if wall > 0 else None,
                         "tokens_per_s": tokens / (wall / 1e9) if tokens and wall > 0 else None})
            st = step_times(g, rep, s)
            steps.append(st.assign(spec=sc.spec))
        table = pd.DataFrame(rows, columns=["spec", "wall_ns", "saving_ns", "saving_pct", "speedup", "tokens_per_s"])
        return WhatIfResult(measured, table, pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(), tokens)


WHATIF = _WhatIf()
