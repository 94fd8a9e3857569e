"""Serving: throughput, time to first token, time per output token, latency percentiles and MFU.

From ``requests.parquet`` (one row per served request, on the store's aligned clock):

- ``ttft = first_token - arrival``; ``tpot = (finish - first_token) / (output_tokens - 1)`` for
  requests with more than one output token; ``e2e = finish - arrival``; requests that never
  produced a token (or never finished) are left out of the percentiles that need those times.
- ``duration_s`` runs from the first arrival to the last finish; ``tokens_per_s`` counts input
  and output tokens over it, ``output_tokens_per_s`` the output tokens alone (what serving
  benchmarks quote as throughput).
- ``mfu``: the FLOPs the chips did (the sum of every event's ``flops``, as the trace records them:
  the model's matrix and vector work, attention included) over ``peak x chips x duration``,
  with ``peak`` the dense matrix peak for the model's dtype and ``chips`` the ranks in the trace.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sohuprof.analyzers.analysis import AnalysisContext
from sohuprof.analyzers.partition import Partition
from sohuprof.analyzers.reports.roofline import model_peak

__all__ = ["PERCENTILES", "SERVING", "ServingResult", "throughput_series"]

#: Percentiles reported for each latency, as JSON keys ``p50``, ``p90``, ``p99``.
PERCENTILES = (50, 90, 99)


def _percentiles(values_ns: np.ndarray) -> dict[str, float | None]:
    """``{"p50": ms, ...}`` (linear interpolation, as numpy and pandas); None without values."""
    if not len(values_ns):
        return {f"p{p}": None for p in PERCENTILES}
    q = np.percentile(values_ns.astype(float) / 1e6, PERCENTILES)
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, q)}


@dataclass(frozen=True)
class ServingResult:
    """Throughput and latency of the served requests.

    ``latencies`` holds every request's ``ttft_ms``, ``tpot_ms`` and ``e2e_ms`` (NaN where a
    request has none) for plots; it is not part of the JSON.
    """

    requests: int
    input_tokens: int
    output_tokens: int
    duration_s: float
    tokens_per_s: float
    output_tokens_per_s: float
    ttft_ms: dict[str, float | None]
    tpot_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    mfu: float | None
    latencies: pd.DataFrame

    def to_json(self) -> dict:
        return {"requests": self.requests, "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "duration_s": self.duration_s, "tokens_per_s": self.tokens_per_s,
                "output_tokens_per_s": self.output_tokens_per_s, "ttft_ms": dict(self.ttft_ms),
                "tpot_ms": dict(self.tpot_ms), "e2e_ms": dict(self.e2e_ms), "mfu": self.mfu}


def serving_metrics(requests: pd.DataFrame, flops: float, peak_flops: float | None, chips: int) -> ServingResult:
    """The serving report of a requests table (see the module docstring).

    Parameters
    ----------
    requests : pandas.DataFrame
        ``requests.parquet`` rows; not modified.
    flops : float
        The work the ``chips`` did over the run.
    peak_flops : float or None
        One chip's dense peak; None gives no MFU.
    chips : int
        Chips that did the work.

    Returns
    -------
    ServingResult
    """
    arrival = requests["arrival"].to_numpy(np.float64)
    first = requests["first_token"].to_numpy(np.float64, na_value=np.nan)
    finish = requests["finish"].to_numpy(np.float64, na_value=np.nan)
    out_tok = requests["output_tokens"].to_numpy(np.int64)
    ttft = first - arrival
    e2e = finish - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(out_tok > 1, (finish - first) / (out_tok - 1), np.nan)
    duration_ns = float(np.nanmax(finish) - arrival.min()) if len(arrival) and np.isfinite(finish).any() else 0.0
    duration_s = duration_ns / 1e9
    input_tokens = int(requests["prompt_tokens"].sum())
    output_tokens = int(out_tok.sum())
    tokens_per_s = (input_tokens + output_tokens) / duration_s if duration_s > 0 else 0.0
    mfu = (flops / (peak_flops * chips * duration_s) if peak_flops and chips and duration_s > 0 else None)
    lat = pd.DataFrame({"request_id": requests["request_id"].to_numpy(), "ttft_ms": ttft / 1e6,
                        "tpot_ms": tpot / 1e6, "e2e_ms": e2e / 1e6})
    return ServingResult(requests=len(requests), input_tokens=input_tokens, output_tokens=output_tokens,
                         duration_s=duration_s, tokens_per_s=float(tokens_per_s),
                         output_tokens_per_s=float(output_tokens / duration_s) if duration_s > 0 else 0.0,
                         ttft_ms=_percentiles(ttft[np.isfinite(ttft)]), tpot_ms=_percentiles(tpot[np.isfinite(tpot)]),
                         e2e_ms=_percentiles(e2e[np.isfinite(e2e)]), mfu=None if mfu is None else float(mfu),
                         latencies=lat)


class _Serving:
    """The ``serving`` report; ``chunk`` only sums a rank's FLOPs, the rest is the requests table."""

    name = "serving"
    columns = ("rank", "flops")

    def applies(self, ctx: AnalysisContext) -> str | None:
        return None if len(ctx.requests) else "the trace has no served requests; `serving` needs a Sohu run"

    def chunk(self, events: pa.Table | Partition, ctx: AnalysisContext) -> int:
        """The FLOPs of one rank's events (nulls count as none; an exact integer sum)."""
        total = pc.sum(events.column("flops")).as_py() if events.num_rows else None
        return int(total or 0)

    def combine(self, partials: list[int], ctx: AnalysisContext) -> ServingResult:
        """Serving metrics from the requests table and the summed FLOPs."""
        peak = model_peak(ctx) if ctx.hardware is not None else None
        return serving_metrics(ctx.requests, float(sum(partials)), peak, len(ctx.ranks))


SERVING = _Serving()


def throughput_series(requests: pd.DataFrame, start: int, end: int, bins: int = 120) -> pd.DataFrame:
    """Output tokens per second over time, each request's tokens spread over its decode.

    A request's first token counts at ``first_token``; the others evenly between ``first_token``
    and ``finish``. Returns ``t_ns`` (bin start), ``tokens_per_s`` and ``in_flight`` (requests
    arrived and not finished at the bin's middle).
    """
    edges = np.linspace(start, max(end, start + 1), bins + 1)
    width_s = np.diff(edges) / 1e9
    tokens = np.zeros(bins)
    done = requests.dropna(subset=["first_token", "finish"]) if len(requests) else requests
    if len(done):
        first = done["first_token"].to_numpy(float)
        finish = done["finish"].to_numpy(float)
        out = done["output_tokens"].to_numpy(float)
        tokens += np.histogram(first, bins=edges, weights=np.minimum(out, 1))[0]
        rate = np.where(finish > first, np.maximum(out - 1, 0) / np.maximum(finish - first, 1), 0)
        # Tokens in a bin = the request's decode rate x its overlap with the bin (bins x requests).
        lo = np.clip(edges[:-1, None], first[None, :], finish[None, :])
        hi = np.clip(edges[1:, None], first[None, :], finish[None, :])
        tokens += ((hi - lo) * rate[None, :]).sum(axis=1)
    mid = (edges[:-1] + edges[1:]) / 2
    arrival = requests["arrival"].to_numpy(float) if len(requests) else np.zeros(0)
    finish_all = requests["finish"].to_numpy(float, na_value=np.inf) if len(requests) else np.zeros(0)
    in_flight = ((arrival[None, :] <= mid[:, None]) & (finish_all[None, :] > mid[:, None])).sum(axis=1)
    return pd.DataFrame({"t_ns": edges[:-1], "tokens_per_s": tokens / width_s, "in_flight": in_flight})
