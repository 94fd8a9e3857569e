"""What the idle, launches, queue and memory_bw tests share: the real traces collected once,
hand-built stores, and slow references written the way HTA writes them (pandas joins, shifts,
sorts and cumsums, one stream at a time), to compare the vectorized reports with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sohuprof.collectors import collect
from sohuprof.store import StoreWriter

ROOT = Path(__file__).resolve().parents[2]
A100 = ROOT / "tests" / "data" / "kineto" / "nccl_data.json.gz"
SHARED = ROOT.parent / "shared" / "traces" / "kineto-more"
#: The shared real traces with device kernels, and those without.
GPU_TRACES = ["v100-ddp-rank1of2", "mi300-resnet-actckpt-rank0of8", "vllm-decode-fullgraph", "mtia-single-rank",
              "sampled-2rank-of128"]
CPU_TRACES = ["cpu-only-rank34", "own-cpu-gloo-ddp-2rank"]
DEVICE = ("compute", "communication", "memory")

_COLLECTED: dict[str, Path] = {}


def collected(name: str, factory) -> Path:
    """The store of trace ``name`` (``a100`` or a folder of the shared traces), collected once a session."""
    if name not in _COLLECTED:
        out = factory.mktemp(name.replace("-", "_")) / "store"
        collect(A100 if name == "a100" else SHARED / name, out, show_progress=False)
        _COLLECTED[name] = out
    return _COLLECTED[name]


def write_store(path: Path, ev: pd.DataFrame, source: str = "kineto") -> Path:
    """A store of hand-built events (columns ``rank, ts, dur, category``, optionally ``name``,
    ``stream``, ``correlation``, ``hbm_bytes``); the rest filled in."""
    n = len(ev)
    ev = ev.reset_index(drop=True)
    rank = ev["rank"].astype("int32") if "rank" in ev else pd.Series(np.zeros(n, np.int32))
    table = {"ts": pa.array(ev["ts"].astype("int64")), "dur": pa.array(ev["dur"].astype("int64")),
             "node": pa.array(np.zeros(n, np.int32)), "chip": pa.array(rank), "rank": pa.array(rank),
             "track": pa.array(["stream" if c != "host" else "thread 1" for c in ev["category"]]),
             "name": pa.array(ev["name"] if "name" in ev else ["k"] * n), "op": pa.array(["other"] * n),
             "category": pa.array(ev["category"].astype(str))}
    for col in ("stream", "correlation", "hbm_bytes"):
        if col in ev:
            vals = ev[col]
            table[col] = pa.array([None if pd.isna(v) else int(v) for v in vals], pa.int64())
    with StoreWriter(path) as w:
        w.write_events(pa.table(table))
        w.write_manifest({"source": {"format": source}})
    return path


def rebased(ev: pd.DataFrame) -> pd.DataFrame:
    """``ev`` with times from its first event: the references' joins make floats of them (NaN for
    no match), exact only well below 2**53 ns."""
    return ev.assign(ts=ev["ts"] - ev["ts"].min())


def device_frame(ev: pd.DataFrame) -> pd.DataFrame:
    """Device events on a stream, with ``end``."""
    d = ev[ev["category"].astype(str).isin(DEVICE) & ev["stream"].notna()].copy()
    d["end"] = d["ts"] + d["dur"]
    return d


def _runtime_of(ev: pd.DataFrame) -> pd.DataFrame:
    host = ev[(ev["category"].astype(str) == "host") & ev["correlation"].notna()]
    if "name" not in host:
        host = host.assign(name="launch")
    return host[["rank", "correlation", "ts", "dur", "name"]].drop_duplicates(["rank", "correlation"], keep="last")


def hta_idle(ev: pd.DataFrame, delay: int = 30_000) -> pd.DataFrame:
    """HTA's ``_analyze_idle_time_for_stream``, as written (gap from the previous kernel's end),
    on every rank and stream: one row per (rank, stream, idle_category) with sum and count."""
    ev = rebased(ev)
    d = device_frame(ev).merge(_runtime_of(ev).rename(columns={"ts": "ts_runtime", "dur": "dur_rt", "name": "rt"}),
                               on=["rank", "correlation"], how="left")
    out = []
    for (rank, stream), s in d.groupby(["rank", "stream"]):
        s = s.sort_values("ts", kind="stable").copy()
        s["prev_end_ts"] = s["end"].shift(1)
        s["idle_interval"] = s["ts"] - s["prev_end_ts"]
        s["idle_category"] = "other"
        host = s["ts_runtime"] > s["prev_end_ts"]
        s.loc[host, "idle_category"] = "host_wait"
        s.loc[~host & (s["idle_interval"] < delay), "idle_category"] = "kernel_wait"
        g = s.groupby("idle_category")["idle_interval"]
        stats = pd.DataFrame({"sum": g.sum(), "count": g.count(), "max": g.max()}).reset_index()
        stats["rank"], stats["stream"] = rank, stream
        out.append(stats[stats["count"] > 0])
    return pd.concat(out, ignore_index=True)


def hta_launches(ev: pd.DataFrame) -> pd.DataFrame:
    """HTA's ``cuda_kernel_launch_stats`` core, as written: device events inner-joined to CPU
    events by correlation; ``cpu_duration``, ``gpu_duration``, ``launch_delay`` (clipped)."""
    ev = rebased(ev)
    d = device_frame(ev)
    j = pd.merge(_runtime_of(ev), d[["rank", "correlation", "ts", "dur"]], on=["rank", "correlation"], how="inner")
    j["launch_delay"] = (j["ts_y"] - j["ts_x"] - j["dur_x"]).clip(lower=0)
    return j.rename(columns={"dur_x": "cpu_duration", "dur_y": "gpu_duration"})


def hta_queue(ev: pd.DataFrame) -> pd.DataFrame:
    """HTA's ``_get_queue_length_time_series_for_rank``: +1 per runtime call (on its kernel's
    stream), -1 per kernel start, cumsum per stream after a sort by ts (+1 first at ties);
    times from the first event."""
    ev = rebased(ev)
    d = device_frame(ev)
    j = pd.merge(_runtime_of(ev), d[["rank", "correlation", "stream"]], on=["rank", "correlation"])
    plus = j[["rank", "stream", "ts"]].assign(queue=1)
    minus = d[d.set_index(["rank", "correlation"]).index.isin(j.set_index(["rank", "correlation"]).index)]
    minus = minus[["rank", "stream", "ts"]].assign(queue=-1)
    m = pd.concat([plus, minus]).sort_values(["rank", "stream", "ts", "queue"], ascending=[True, True, True, False],
                                             kind="stable")
    m["queue_length"] = m.groupby(["rank", "stream"])["queue"].cumsum()
    return m.reset_index(drop=True)


def hta_memory_series(ts: np.ndarray, dur: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """HTA's ``_get_memory_bw_time_series_for_rank`` for one direction: +bw at start, -bw at end,
    cumsum after a sort by ts (ends first at ties)."""
    bw = nbytes / dur
    frame = pd.DataFrame({"ts": np.r_[ts, ts + dur], "bw": np.r_[bw, -bw]})
    return frame.sort_values(["ts", "bw"], kind="stable")["bw"].cumsum().to_numpy()
