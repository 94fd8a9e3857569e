"""The roofline (Williams et al. 2009): how far each op class sits below its roof, and collectives
against their link roof.

Compute events (``category == "compute"``) are grouped by op class and phase (with the analysis
option ``by="name"``, ``analyze --by name``: by op class, op name and phase; the rows then carry a
``name`` and sum, per op class, to the op-class rows). For a group,
``intensity = flops / hbm_bytes``, attained FLOP/s and B/s are its totals over its time, and its
roof is ``min(peak, hbm_bandwidth x intensity)``; ``peak`` is the dense matrix peak for the
model's dtype, or the vector units' FLOP/s for events on the ``vector`` track (a group mixing
both is roofed by their FLOP-weighted harmonic mean). ``bound`` is ``compute`` at or past the
ridge, else ``memory``; ``efficiency = attained / roof``. Each event's time at the roof is
``max(flops / peak, hbm_bytes / hbm_bandwidth)``; ``headroom_ns`` sums ``dur`` minus that time
over the group's events (never negative: an event of a few nanoseconds can round under its roof),
i.e. what reaching the roof would save. Attained rates count the work of events with a measurable
duration only: an event that rounds to 0 ns (a sub-nanosecond top-k) has no rate to speak of,
and adding its FLOPs over no time would put the group above its roof.

Collectives are roofed by their links (peak, no efficiency): ring kinds move ``busbw`` bytes
(nccl-tests) over the slowest link (the chip's NIC share if the group spans nodes, else its
intra-node links), all-to-all sends ``S/n`` per peer over both, send/recv ``S`` over one link.
``link_bandwidth`` is the resulting busbw roof, ``efficiency = busbw / link_bandwidth``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sohuprof import kernels
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.reports.comm import busbw_factor, kind_is, records, selected_instances
from sohuprof.analyzers.partition import Partition, as_partition
from sohuprof.hardware import HardwareSpec

__all__ = ["GROUPINGS", "ROOFLINE", "SAMPLE_SIZE", "group_keys", "RooflineResult", "model_peak"]

#: Events kept for the scatter plot, stratified by op class.
SAMPLE_SIZE = 20_000
_OP_COLS = ["op", "phase", "count", "time_ns", "flops", "hbm_bytes", "intensity", "attained_flops",
            "attained_bandwidth", "roof_flops", "bound", "efficiency", "headroom_ns"]
_COLL_COLS = ["op", "count", "time_ns", "bytes", "algbw", "busbw", "link_bandwidth", "efficiency", "headroom_ns"]
_SUMS = ["count", "time_ns", "flops", "hbm_bytes", "vector_count", "vector_flops", "headroom_ns", "sampleable",
         "timed_flops", "timed_bytes"]
_SAMPLE_COLS = ["op", "name", "phase", "rank", "layer", "ts", "dur", "intensity", "attained_flops",
                "attained_bandwidth", "key"]


#: Values of the ``by`` option: the group keys of the ``ops`` rows.
GROUPINGS: dict[str, tuple[str, ...]] = {"op": ("op", "phase"), "name": ("op", "name", "phase")}


def group_keys(ctx: AnalysisContext) -> tuple[str, ...]:
    """The ``ops`` rows' keys for ``ctx.options["by"]`` (default ``"op"``).

    Raises
    ------
    ValueError
        ``by`` is not one of :data:`GROUPINGS`.
    """
    by = ctx.options.get("by") or "op"
    if by not in GROUPINGS:
        raise ValueError(f"'by' must be one of {', '.join(map(repr, GROUPINGS))}; got {by!r}")
    return GROUPINGS[by]


def model_peak(ctx: AnalysisContext) -> float:
    """Dense matrix FLOP/s for the store's model dtype (the fp8 peak, an upper bound, if unnamed)."""
    hw = ctx.hardware
    if hw is None:
        raise ValueError("'ctx.hardware' is None: the roofline needs a hardware spec")
    dtype = (ctx.store.manifest.get("model") or {}).get("dtype")
    return hw.peak_flops(dtype) if dtype else max(hw.peak_flops_fp8, hw.peak_flops_bf16)


@dataclass(frozen=True)
class RooflineResult:
    """Per (op, phase) roofline rows (per (op, name, phase) where ``by == "name"``), collectives
    against their link roof, and an event sample.

    ``sample`` (at most :data:`SAMPLE_SIZE` events, the same whatever the partitioning) feeds the
    scatter plot and is not part of the JSON.
    """

    peak_flops: float
    hbm_bandwidth: float
    ops: pd.DataFrame
    collectives: pd.DataFrame
    sample: pd.DataFrame
    by: str = "op"

    @property
    def ridge(self) -> float:
        """Intensity (FLOP/byte) where the memory roof meets the matrix peak."""
        return self.peak_flops / self.hbm_bandwidth

    def to_json(self) -> dict:
        return {"hardware": {"peak_flops": self.peak_flops, "hbm_bandwidth": self.hbm_bandwidth,
                             "ridge": self.ridge},
                "ops": records(self.ops, _op_columns(self.by)), "collectives": records(self.collectives, _COLL_COLS)}


def _hash(rank: np.ndarray | int, ts: np.ndarray, dur: np.ndarray) -> np.ndarray:
    """A deterministic 64-bit mix of each event's rank (a scalar: every row's), start and
    duration: the sample's selection key. Their odd-multiplied sum, then one xor-shift-multiply
    round, so the top bits, which the sample's thresholds read, depend on every bit of every
    column (one compiled pass, ``kernels.sample_hash``)."""
    per_row = isinstance(rank, np.ndarray)
    out = np.empty(len(ts), np.uint64)
    kernels.sample_hash(np.ascontiguousarray(rank, np.int64) if per_row else np.zeros(0, np.int64),
                        0 if per_row else int(rank), np.ascontiguousarray(ts, np.int64),
                        np.ascontiguousarray(dur, np.int64), out)
    return out


def _quota(counts: np.ndarray, budget: int) -> int:
    """Largest per-stratum cap ``q`` with ``sum(min(counts, q)) <= budget`` (water filling)."""
    if counts.sum() <= budget:
        return int(counts.max(initial=0))
    c = np.sort(counts)
    below = np.concatenate([[0], np.cumsum(c)[:-1]])        # sum of the strata smaller than c[j]
    cap = (budget - below) // (len(c) - np.arange(len(c)))   # equal cap for c[j:] given c[:j] whole
    j = int(np.flatnonzero(cap <= c)[0])
    return int(cap[j])


def _smallest(order_keys: tuple[np.ndarray, ...], stratum: np.ndarray, q: int) -> np.ndarray:
    """Positions of the ``q`` first rows of each stratum in ``lexsort(order_keys)`` order (the last
    key, the sample hash, is the primary one)."""
    order = _stratum_order(order_keys, stratum)
    sc = stratum[order]
    first = np.flatnonzero(np.r_[True, sc[1:] != sc[:-1]]) if len(sc) else np.zeros(0, np.int64)
    within = np.arange(len(sc)) - np.repeat(first, np.diff(np.r_[first, len(sc)]))
    return order[within < q]


def _stratum_order(order_keys: tuple[np.ndarray, ...], stratum: np.ndarray) -> np.ndarray:
    """``lexsort((*order_keys, stratum))``, as one sort of a 64-bit ``(stratum, hash)`` word when
    the strata fit a few bits and no two words tie (hashes almost never do); else the lexsort."""
    stratum = np.asarray(stratum, dtype=np.int64)
    top = int(stratum.max(initial=0))
    width = max(top.bit_length(), 1)
    if len(stratum) and stratum.min() >= 0 and width <= 16:
        shift = np.uint64(width)
        word = (stratum.astype(np.uint64) << np.uint64(64 - width)) | (order_keys[-1].astype(np.uint64) >> shift)
        order = np.argsort(word)
        ranked = word[order]
        if not (ranked[1:] == ranked[:-1]).any():
            return order
    return np.lexsort((*order_keys, stratum))


def _take(sample: pd.DataFrame, q: int) -> pd.DataFrame:
    """The ``q`` events with the smallest keys of each op class."""
    if not len(sample):
        return sample
    code, _ = pd.factorize(sample["op"], sort=True)
    pick = _smallest((sample["ts"].to_numpy(), sample["rank"].to_numpy(), sample["key"].to_numpy()), code, q)
    return sample.iloc[pick].reset_index(drop=True)


def _candidates(key: np.ndarray, stratum: np.ndarray, counts: np.ndarray, q: int,
                eligible: np.ndarray | None = None) -> np.ndarray:
    """Rows (among ``eligible`` ones) that surely include each stratum's ``q`` smallest keys: those
    under a per-stratum key threshold set for ``q + 8 sqrt(q) + 64`` expected rows (keys are
    uniform hashes, so fewer than ``q`` is 8 standard deviations away), or the whole stratum
    where that leaves too few. ``counts`` are the eligible rows per stratum."""
    frac = np.minimum(1.0, (q + 8.0 * np.sqrt(q) + 64) / np.maximum(counts, 1))
    # Thresholds on the top 53 bits (exact in a float), compared with the whole 64-bit keys.
    limit = np.floor(frac * 2.0**53).astype(np.uint64) << np.uint64(11)
    limit[frac >= 1.0] = np.iinfo(np.uint64).max       # the whole stratum
    keep = key < limit[stratum]
    if eligible is not None:
        keep &= eligible
    short = np.bincount(stratum[keep], minlength=len(counts)) < np.minimum(counts, q)
    if short.any():
        keep |= short[stratum] if eligible is None else short[stratum] & eligible
    return np.flatnonzero(keep)


def _int_sums(column: pa.ChunkedArray) -> bool:
    """Can no sum of ``column``'s rows pass 2**63? Then it is summed in int64 (exact), else in
    float64 (rounding, knowingly: int64 sums would wrap silently)."""
    span = pc.min_max(column)
    return max(abs(span["min"].as_py() or 0), abs(span["max"].as_py() or 0)) * len(column) < 2**63


def _op_columns(by: str) -> list[str]:
    """The ``ops`` rows' JSON columns: the ``by="op"`` contract, plus ``name`` after ``op``."""
    return _OP_COLS if by == "op" else ["op", "name", *_OP_COLS[1:]]


def _rank_roofline(events: pa.Table | Partition, hw: HardwareSpec, peak: float,
                   keys: tuple[str, ...] = GROUPINGS["op"]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One partition's sums per ``keys`` (op, phase; or op, name, phase) and its share of the
    stratified sample (stratified by op class whatever the keys)."""
    part = as_partition(events)
    compute = part.equals("category", "compute")
    op, op_values = part.codes("op")
    phase, phase_values = part.codes("phase")
    vector = part.equals("track", "vector")
    dur = part.ints("dur")
    # Sums per (keys, vector track?, measurable duration?) of compute events, in one compiled
    # pass (kernels.roofline_sums) that also prices each event's headroom over its roof: FLOP
    # and byte totals in exact int64 (a group's FLOPs pass 2**53 on long runs, where float sums
    # would round) unless a sum could pass 2**63, every float summed in row order.
    rows = np.flatnonzero(compute)
    coded = [part.codes(k) for k in keys]
    codes = [c for c, _ in coded] + [np.zeros(len(dur), np.int64)] * (3 - len(keys))
    radix = [len(v) + 1 for _, v in coded] + [1] * (3 - len(keys))
    m = len(rows)
    key, first = np.empty(m, np.int64), np.empty(m, np.int64)
    count, dur_sum, f_int, b_int = (np.zeros(m, np.int64) for _ in range(4))
    f_float, b_float, head = np.zeros(m), np.zeros(m), np.zeros(m)
    groups = kernels.roofline_sums(rows, *codes, radix[1], radix[2], vector.view(np.uint8), dur,
                                   part.ints("flops"), part.ints("hbm_bytes"), peak, hw.vector_flops,
                                   hw.hbm_bandwidth, key, first, count, dur_sum, f_int, b_int, f_float, b_float, head)
    key = key[:groups]
    f_sum = (f_int if _int_sums(part.column("flops")) else f_float.astype(np.int64))[:groups]
    b_sum = (b_int if _int_sums(part.column("hbm_bytes")) else b_float.astype(np.int64))[:groups]
    n, vec, tim = count[:groups], (key >> 1) & 1, key & 1
    packed = key >> 2
    parts = [packed // (radix[1] * radix[2]), packed // radix[2] % radix[1], packed % radix[2]][:len(keys)]
    sums_frame = pd.DataFrame({**{k: np.array([*v, None], dtype=object)[c] for k, c, (_, v) in zip(keys, parts, coded)},
                               "count": n, "time_ns": dur_sum[:groups], "flops": f_sum,
                               "hbm_bytes": b_sum, "vector_count": n * vec, "vector_flops": f_sum * vec,
                               "headroom_ns": head[:groups], "sampleable": n * tim,
                               "timed_flops": f_sum * tim, "timed_bytes": b_sum * tim})
    names, phases = np.array(op_values + [None], dtype=object), np.array(phase_values + [None], dtype=object)
    # Sample candidates: compute events with a duration (a 0 ns event has no attained rate to
    # plot). Every partition's cap is at least the global one, so the global choice is among what
    # it keeps; hashes pick the candidates, a sort orders only those.
    # Keys are hashed over every row (contiguous passes beat gathering the eligible ones first);
    # the sums above already counted the eligible rows of each op.
    one_rank = part.single_rank
    ranks = part.ints("rank") if one_rank is None else one_rank
    sample_key = _hash(ranks, part.ts, dur)
    code_of = {v: i for i, v in enumerate(op_values)}
    per_op = np.bincount([code_of.get(v, len(op_values)) for v in sums_frame["op"]],   # a loop over groups
                         weights=sums_frame["sampleable"], minlength=len(op_values) + 1).astype(np.int64)
    cap = _quota(per_op[per_op > 0], SAMPLE_SIZE)
    cand = _candidates(sample_key, op, per_op, cap, eligible=compute & (dur > 0))
    ts = part.ts[cand]
    ties = (ts,) if one_rank is not None else (ts, ranks[cand])
    chosen = cand[_smallest((*ties, sample_key[cand]), op[cand], cap)]
    rank = np.full(len(chosen), one_rank, np.int64) if one_rank is not None else ranks[chosen]
    f, h, dd = part.ints("flops")[chosen].astype(float), part.ints("hbm_bytes")[chosen].astype(float), dur[chosen]
    with np.errstate(divide="ignore", invalid="ignore"):
        sample = pd.DataFrame({"op": names[op[chosen]], "name": _values_at(part, "name", chosen),
                               "phase": phases[phase[chosen]], "rank": rank,
                               "layer": part.ints("layer", -1)[chosen] if part.has("layer") else -1,
                               "ts": part.ts[chosen], "dur": dd, "intensity": f / h, "attained_flops": f / dd * 1e9,
                               "attained_bandwidth": h / dd * 1e9, "key": sample_key[chosen]})
    return sums_frame, sample


def _group_peak(g: pd.DataFrame, hw: HardwareSpec, peak: float) -> np.ndarray:
    """Each group's peak: the matrix or vector one, or their FLOP- (else count-) weighted harmonic mean."""
    n, nv = g["count"].to_numpy(float), g["vector_count"].to_numpy(float)
    f, fv = g["flops"].to_numpy(float), g["vector_flops"].to_numpy(float)
    w, wv = np.where(f > 0, f, n), np.where(f > 0, fv, nv)
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = w / ((w - wv) / peak + wv / hw.vector_flops)
    return np.select([nv == 0, nv == n], [peak, hw.vector_flops], default=mixed)


def _exact_sums(sums: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Per ``keys``, the partials' sums: integer columns as Python ints, so totals past 2**63
    (a long run's FLOPs) neither round nor wrap."""
    exact = sums.astype({c: object for c in _SUMS if pd.api.types.is_integer_dtype(sums[c])})
    return exact.groupby(list(keys), dropna=False, as_index=False, sort=True)[_SUMS].sum()


def _int_or_float(column: pd.Series) -> pd.Series:
    """An exact integer column as int64 where every value fits (the usual case), else float64:
    never a silent wrap past 2**63."""
    values = [int(round(v)) for v in column]   # a loop over (op, phase) groups
    if all(-(2**63) <= v < 2**63 for v in values):
        return pd.Series(values, index=column.index, dtype="int64")
    return column.astype("float64")


def _finish_ops(sums: pd.DataFrame, hw: HardwareSpec, model_peak_flops: float,
                keys: tuple[str, ...] = GROUPINGS["op"]) -> pd.DataFrame:
    g = _exact_sums(sums, keys)
    totals = {c: _int_or_float(g[c]) for c in ("count", "time_ns", "flops", "hbm_bytes", "headroom_ns")}
    g = g.astype({c: "float64" for c in _SUMS})
    peak = _group_peak(g, hw, model_peak_flops)
    with np.errstate(divide="ignore", invalid="ignore"):
        intensity = np.where(g["hbm_bytes"] > 0, g["flops"] / g["hbm_bytes"], np.where(g["flops"] > 0, np.inf, 0.0))
        t = g["time_ns"].to_numpy(float)
        attained = np.where(t > 0, g["timed_flops"] / t * 1e9, 0.0)
        bandwidth = np.where(t > 0, g["timed_bytes"] / t * 1e9, 0.0)
    out = pd.DataFrame({**{k: g[k] for k in keys}, "count": totals["count"],
                        "time_ns": totals["time_ns"], "flops": totals["flops"],
                        "hbm_bytes": totals["hbm_bytes"], "intensity": intensity,
                        "attained_flops": attained, "attained_bandwidth": bandwidth,
                        "roof_flops": np.minimum(peak, hw.hbm_bandwidth * intensity),
                        "bound": np.where(intensity >= peak / hw.hbm_bandwidth, "compute", "memory"),
                        "efficiency": np.maximum(attained / peak, bandwidth / hw.hbm_bandwidth),
                        "headroom_ns": totals["headroom_ns"], "peak_flops": peak})
    return out.sort_values(["headroom_ns", *keys], ascending=[False, *[True] * len(keys)],
                           na_position="last").reset_index(drop=True)


def _collective_roofs(inst: pd.DataFrame, hw: HardwareSpec) -> pd.DataFrame:
    """Collectives per kind (from the instance table) against the peak bandwidth of the links they cross."""
    if not len(inst):
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in _COLL_COLS}).astype({"op": object})
    n, s, kind = inst["n"].to_numpy(float), inst["size"].to_numpy(float), inst["kind"]
    spans = inst["n_nodes"].to_numpy() > 1
    local = inst["local_max"].to_numpy(float) - 1                 # peers on the busiest node
    remote = n - inst["node_min"].to_numpy(float)                 # peers off the emptiest node
    intra = hw.intra_node_bandwidth * np.clip(np.minimum(hw.intra_node_links, local), 1, None)
    nic = hw.inter_node_bandwidth
    bus = s * busbw_factor(kind, n)
    ring_bw = np.where(spans, nic, intra)
    a2a = np.maximum(s * local / n / intra, np.where(spans, s * remote / n / nic, 0.0))
    p2p = s / np.where(spans, nic, hw.intra_node_bandwidth)
    roof = np.select([kind_is(kind, "all_to_all"), kind_is(kind, "send_recv", "send", "recv")], [a2a, p2p],
                     default=bus / ring_bw) * 1e9
    t = inst["time"].to_numpy(float)
    per = pd.DataFrame({"op": kind.array, "count": 1, "time_ns": t, "bytes": s, "bus": bus, "roof": roof,
                        "headroom_ns": np.clip(t - roof, 0, None)})
    g = (per.groupby("op", as_index=False, sort=True, observed=True)
         [["count", "time_ns", "bytes", "bus", "roof", "headroom_ns"]].sum())
    g["op"] = g["op"].astype(object)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = pd.DataFrame({"op": g["op"], "count": g["count"].astype("int64"),
                            "time_ns": g["time_ns"].round().astype("int64"), "bytes": g["bytes"].round().astype("int64"),
                            "algbw": g["bytes"] / g["time_ns"] * 1e9, "busbw": g["bus"] / g["time_ns"] * 1e9,
                            "link_bandwidth": g["bus"] / g["roof"] * 1e9, "efficiency": g["roof"] / g["time_ns"],
                            "headroom_ns": g["headroom_ns"].round().astype("int64")})
    return out.sort_values(["headroom_ns", "op"], ascending=[False, True]).reset_index(drop=True)


def _values_at(part: Partition, column: str, rows: np.ndarray) -> np.ndarray:
    """A dictionary column's strings at ``rows`` only (the sample's few), or None where absent."""
    if not part.has(column):
        return np.full(len(rows), None, dtype=object)
    codes, values = part.codes(column)
    table = np.array(list(values) + [None], dtype=object)
    picked = codes[rows]
    return table[np.where(picked >= 0, picked, len(values))]


class _Roofline:
    """The ``roofline`` report (see the module docstring)."""

    name = "roofline"
    columns = ("rank", "ts", "dur", "track", "op", "category", "phase", "flops", "hbm_bytes", "name", "layer")

    def columns_for(self, ctx: AnalysisContext) -> tuple[str, ...]:
        """The event columns: ``name`` too where the rows are per op name."""
        return tuple(dict.fromkeys([*self.columns, *group_keys(ctx)]))

    def applies(self, ctx: AnalysisContext) -> str | None:
        if ctx.hardware is None:
            if ctx.source in ("kineto", "chrome"):
                return "the trace has no FLOP or byte counts (PyTorch profiler records none by default)"
            return "the store has no hardware spec to draw roofs from"
        return None

    def prepare(self, ctx: AnalysisContext) -> None:
        """Build the collective instance table (shared, cached on ``ctx``) beside the chunks."""
        _ = ctx.instances

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Sums per (op, phase) of one rank's compute events, and its sample candidates."""
        hw = ctx.hardware
        if hw is None:
            raise ValueError("'ctx.hardware' is None: check ROOFLINE.applies(ctx) first")
        keys = group_keys(ctx)
        if not events.num_rows:
            return pd.DataFrame(columns=[*keys, *_SUMS]), pd.DataFrame(columns=_SAMPLE_COLS)
        return _rank_roofline(events, hw, model_peak(ctx), keys)

    def combine(self, partials: list[tuple[pd.DataFrame, pd.DataFrame]], ctx: AnalysisContext) -> RooflineResult:
        """The roofline over every partial (any order or grouping gives the same result)."""
        hw = ctx.hardware
        if hw is None:
            raise ValueError("'ctx.hardware' is None: check ROOFLINE.applies(ctx) first")
        keys = group_keys(ctx)
        sums = [p[0] for p in partials if len(p[0])]
        frame = (pd.concat(sums, ignore_index=True) if sums
                 else pd.DataFrame({c: pd.Series(dtype=float) for c in _SUMS}).assign(**dict.fromkeys(keys)))
        samples = [p[1] for p in partials if len(p[1])]
        cap = _quota(frame.groupby("op", dropna=False)["sampleable"].sum().to_numpy(), SAMPLE_SIZE)
        sample = _take(pd.concat(samples, ignore_index=True), cap) if samples \
            else pd.DataFrame(columns=_SAMPLE_COLS)
        peak = float(model_peak(ctx))
        return RooflineResult(peak_flops=peak, hbm_bandwidth=float(hw.hbm_bandwidth),
                              ops=_finish_ops(frame, hw, peak, keys), collectives=_collective_roofs(selected_instances(ctx), hw),
                              sample=sample.drop(columns="key"), by=ctx.options.get("by") or "op")


ROOFLINE = _Roofline()
