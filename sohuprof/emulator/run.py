"""Run an emulation end to end and write its raw run directory."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

import sohuprof
from sohuprof.atomic import atomic_directory
from sohuprof.emulator.clock import MAX_CLOCK_SYNC
from sohuprof.emulator.config import EmulatorConfig
from sohuprof.emulator.runtime import NIC_COUNTERS, Emulation, NicCounters
from sohuprof.emulator.writer import RawTraceWriter
from sohuprof.progress import progress
from sohuprof.strace import FORMAT_NAME, FORMAT_VERSION, RECORD_DTYPE, Engine, chip_path, host_path

__all__ = ["RunSummary", "emulate", "RUN_FILE"]

RUN_FILE = "run.json"
#: Order of host events that share a timestamp (a step's NIC counters, read at its end, come
#: before the next step starting then).
_LIFECYCLE = {"arrival": 0, "first_token": 1, "finish": 2, "nic": 3, "step": 4}


@dataclass(frozen=True)
class RunSummary:
    """What an emulated run produced."""

    path: Path
    records: int
    steps: int
    ranks: int
    duration_ns: float
    input_tokens: int
    output_tokens: int
    preemptions: int = 0
    prefix_hit_rate: float = 0.0
    tokens_per_decode: float = 1.0
    kv_transfer_bytes: int = 0     # disaggregated serving: KV sent from prefill to decode replicas
    kv_transfer_ns: float = 0.0    # mean time a request's KV took to arrive (queueing on the NIC included)


    @property
    def tokens_per_s(self) -> float:
        """Served throughput counting input and output tokens."""
        return (self.input_tokens + self.output_tokens) / (self.duration_ns / 1e9)


def emulate(cfg: EmulatorConfig, out_dir: str | os.PathLike[str], *, force: bool = False,
            show_progress: bool | None = None) -> RunSummary:
    """Emulate ``cfg`` and write the raw run directory ``out_dir`` (atomically).

    Raises
    ------
    SpecError
        The configuration is inconsistent (the message says which setting and how to fix it).
    OutputError
        ``out_dir`` exists (without ``force``) or cannot be written.
    """
    em = Emulation(cfg)   # validates before anything touches the disk
    run_id = _run_id(em)
    with atomic_directory(out_dir, force=force, replaces=lambda p: (p / RUN_FILE).is_file()) as tmp:
        writer = RawTraceWriter(tmp, em.plan, cfg.chunk_records, run_id)
        host_events: list[dict] = []
        nic: list[tuple[int, NicCounters]] = []   # kept compact (arrays) until written
        steps = 0
        try:
            # Progress in tokens processed (every prompt token once, every output token but the
            # first, which prefill yields): it moves every step, where finished requests would
            # sit at 0 through a long generation.
            # (a decode step verifies 1 + spec_tokens tokens a sequence to emit tokens_per_decode)
            decode = (em.output_tokens - 1).sum() * (cfg.spec_tokens + 1) / cfg.tokens_per_decode
            total = int(em.prompt_tokens.sum() + decode)
            with progress("emulating", total, enabled=show_progress, unit="tokens") as advance:
                for trace, events in em.steps():
                    writer.add(trace)
                    host_events += events
                    if len(trace.nic):
                        nic.append((trace.step, trace.nic))
                    steps += 1
                    advance(sum(ev.get("prefill_tokens", 0) + ev.get("decode_tokens", 0)
                                for ev in events if ev["type"] == "step"))   # per replica
        except BaseException:
            writer.abort()
            raise
        writer.close()
        requests = em.request_table()
        duration = float(np.nanmax(requests["finish"]) - requests["arrival"].min())
        _write_host_events(tmp, em, host_events, requests, nic)
        served = _served(em)
        (tmp / RUN_FILE).write_bytes(orjson.dumps(_run_json(em, writer, steps, run_id, served),
                                                  option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                                                  | orjson.OPT_SERIALIZE_NUMPY))
    return RunSummary(path=Path(out_dir), records=int(writer.records.sum()), steps=steps, ranks=cfg.world,
                      duration_ns=duration, input_tokens=int(requests["prompt_tokens"].sum()),
                      output_tokens=int(requests["output_tokens"].sum()), preemptions=served["preemptions"],
                      prefix_hit_rate=served["prefix_hit_rate"], tokens_per_decode=served["tokens_per_decode"],
                      kv_transfer_bytes=served["kv_transfer_bytes"], kv_transfer_ns=served["kv_transfer_ns"])


def _served(em: Emulation) -> dict:
    """What the schedulers counted over the run: preemptions, prefix-cache hits (cached prompt
    tokens over the prompt tokens looked up at every admission, as vLLM's hit rate), and tokens
    a decode step emitted per sequence (1 without speculative decoding)."""
    sch = em.schedulers
    hit, query = sum(s.hit_tokens for s in sch), sum(s.query_tokens for s in sch)
    steps, emitted = sum(s.decode_steps for s in sch), sum(s.decode_emitted for s in sch)
    kv = _kv_transfers(em)
    wait = kv["end"] - em.request_table()["first_token"][kv["request"]] if len(kv["request"]) else np.zeros(0)
    return {"kv_transfer_bytes": int(kv["bytes"].sum()), "kv_transfer_ns": float(wait.mean()) if len(wait) else 0.0,"preemptions": int(sum(s.preemptions for s in sch)), "prefix_hit_tokens": int(hit),
            "prefix_query_tokens": int(query), "prefix_hit_rate": hit / query if query else 0.0,
            "decode_steps": int(steps), "tokens_per_decode": emitted / steps if steps else 1.0}


def _kv_transfers(em: Emulation) -> dict[str, np.ndarray]:
    """Every KV transfer of a disaggregated run as columns (request, src, dst, bytes, start, end)."""
    keys = ("request", "src", "dst", "bytes", "start", "end")
    if not em.kv_transfers:
        return {k: np.zeros(0) for k in keys}
    return {k: np.concatenate([t[k] for t in em.kv_transfers]) for k in keys}


def _write_host_events(root: Path, em: Emulation, steps: list[dict], requests: dict[str, np.ndarray],
                       nic: list[tuple[int, NicCounters]]) -> None:
    """``node<N>/host.jsonl``: scheduler steps, request lifecycle events and each chip's NIC port
    counters per step (on the chip's node), local-clock ns, by time."""
    per_node: dict[int, list[tuple[float, dict]]] = {n: [] for n in range(em.cfg.nodes)}
    nic_rows = _nic_rows(em, nic)

    def local(t: float, node: int) -> int:
        return int(round(float(em.clocks.local_ns(np.array([t]), np.array([node]))[0])))

    for ev in steps:
        node = em.replica_node(ev["replica"])
        ev = dict(ev, ts=local(ev["ts"], node), end=local(ev["end"], node))
        per_node[node].append((ev["ts"], ev))
    for i in range(len(requests["request"])):
        rep = int(requests["replica"][i])
        node = em.replica_node(rep)
        base = {"request": i, "replica": rep}
        # Disaggregated: arrival and first token on the prefill replica's host.
        pre = int(requests["prefill_replica"][i])
        pnode = em.replica_node(pre)
        pbase = dict(base, replica=pre) if pre != rep else base
        per_node[pnode].append((local(requests["arrival"][i], pnode), dict(
            pbase, type="arrival", prompt_tokens=int(requests["prompt_tokens"][i]))))
        if not np.isnan(requests["first_token"][i]):
            per_node[pnode].append((local(requests["first_token"][i], pnode), dict(pbase, type="first_token")))
        if not np.isnan(requests["finish"][i]):
            per_node[node].append((local(requests["finish"][i], node), dict(
                base, type="finish", output_tokens=int(requests["output_tokens"][i]))))
    kv = _kv_transfers(em)
    for q, src, dst, nbytes, start, end in zip(*(kv[k].tolist() for k in ("request", "src", "dst", "bytes", "start", "end"))):
        node = em.replica_node(int(src))   # one line per request that moved: a transfer, not an op
        per_node[node].append((local(start, node), {"type": "kv_transfer", "request": int(q), "replica": int(src),
                                                   "to_replica": int(dst), "bytes": int(round(nbytes)),
                                                   "end": local(end, node)}))
    for node, events in per_node.items():
        events += _nic_lines(nic_rows, node)
        events.sort(key=lambda e: (e[0], _LIFECYCLE.get(e[1]["type"], 3)))
        lines = [orjson.dumps(dict(ev, ts=ts) if "ts" not in ev else ev, option=orjson.OPT_SORT_KEYS) for ts, ev in events]
        path = root / host_path(node)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\n".join(lines) + (b"\n" if lines else b""))


def _nic_rows(em: Emulation, nic: list[tuple[int, NicCounters]]) -> dict[str, np.ndarray]:
    """Every step's NIC counters as columns: ``step, rank, node, ts`` (the node's local ns) and
    the counters."""
    if not nic:
        return {k: np.zeros(0, np.int64) for k in ("step", "rank", "node", "ts", *NIC_COUNTERS)}
    rank = np.concatenate([c.rank for _, c in nic])
    node = em.plan.node[rank]
    true_ns = np.concatenate([c.end_ns for _, c in nic])
    values = np.concatenate([c.values for _, c in nic], axis=1)
    return {"step": np.concatenate([np.full(len(c), s, np.int64) for s, c in nic]), "rank": rank, "node": node,
            "ts": np.rint(em.clocks.local_ns(true_ns, node)).astype(np.int64),
            **{name: values[i] for i, name in enumerate(NIC_COUNTERS)}}


def _nic_lines(rows: dict[str, np.ndarray], node: int) -> list[tuple[float, dict]]:
    """One node's ``nic`` host events, ``(ts, event)`` as the other host events (made one node at a
    time: a JSON line per chip and step is what the file holds)."""
    mine = rows["node"] == node
    keys = ("ts", "rank", "step", *NIC_COUNTERS)
    return [(line[0], {"type": "nic", **dict(zip(keys, line))})
            for line in zip(*(rows[k][mine].tolist() for k in keys))]


def _workload(cfg: EmulatorConfig) -> dict:
    return {"requests": cfg.requests, "rate": cfg.rate, "prompt_len": cfg.prompt_len,
            "output_len": cfg.output_len, "prompt_dist": cfg.prompt_dist.to_dict(),
            "output_dist": cfg.output_dist.to_dict(), "prefix_len": cfg.prefix_len,
            "spec_tokens": cfg.spec_tokens, "spec_accept": cfg.spec_accept,
            "kv_dtype": cfg.kv_dtype or cfg.dtype, "expert_skew": cfg.expert_skew,
            "prefill_replicas": cfg.prefill_replicas,
            "max_batch_tokens": cfg.max_batch_tokens,
            "max_seqs": cfg.max_seqs, "two_batch_overlap": cfg.two_batch_overlap,
            "seed": cfg.seed, "clock_skew_us": cfg.clock_skew_us,
            "faults": [f.spec() for f in cfg.faults]}


def _run_id(em: Emulation) -> bytes:
    """The run's 128-bit id: a hash of everything that determines its traces.

    Runs differ in their ids exactly when they differ in content (equal configs give
    byte-identical runs, so a file copied between two of them changes nothing), and a seeded run
    stays byte-for-byte reproducible, which a random id would break.
    """
    cfg = em.cfg
    spec = {"hardware": cfg.hardware.to_dict(), "model": dict(cfg.model.to_dict(), dtype=cfg.dtype),
            "parallel": em.plan.to_dict(), "workload": _workload(cfg), "chunk_records": cfg.chunk_records,
            "two_batch_min_tokens": cfg.two_batch_min_tokens, "format_version": FORMAT_VERSION}
    return hashlib.blake2b(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY),
                           digest_size=16, person=b"sohuprof-run").digest()


def _run_json(em: Emulation, writer: RawTraceWriter, steps: int, run_id: bytes, served: dict) -> dict:
    cfg, plan, hw = em.cfg, em.plan, em.cfg.hardware
    prog = em.program
    ops = {t.name: t for t in prog.templates}
    op_names = []
    for i, name in enumerate(em.names):
        if name == "host_step":
            op_names.append({"id": i, "name": name, "op": "host", "category": "host", "engine": "host"})
            continue
        t = ops.get(name) or next(t for t in prog.templates if t.peer_name == name)
        op = "recv" if t.peer_name == name else t.op
        op_names.append({"id": i, "name": name, "op": op, "category": t.category, "engine": Engine(t.engine).name.lower()})
    # A clock-sync daemon's readings every 100 ms of the run (at least 8, at most MAX_CLOCK_SYNC).
    last = max(float(np.nanmax(em.request_table()["finish"])), 1.0)
    span = np.linspace(0.0, last, min(max(8, int(last / 1e8) + 1), MAX_CLOCK_SYNC))
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "generator": f"sohuprof {sohuprof.__version__} emulate",
        "run_id": run_id.hex(),
        "hardware": hw.to_dict(),
        "model": dict(cfg.model.to_dict(), dtype=cfg.dtype),
        "parallel": plan.to_dict(),
        "workload": _workload(cfg),
        "record": {"size": RECORD_DTYPE.itemsize, "chunk_records": cfg.chunk_records,
                   "fields": [[name, RECORD_DTYPE[name].str] for name in RECORD_DTYPE.names or ()]},
        "engines": [e.name.lower() for e in Engine],
        "phases": ["prefill", "decode", "mixed"],
        "op_names": op_names,
        "groups": plan.groups_table(),
        "chips": [{"rank": r, "node": int(plan.node[r]), "chip": int(plan.chip[r]), "clock_hz": hw.clock_hz,
                   "file": chip_path(int(plan.node[r]), int(plan.chip[r])), "records": int(writer.records[r]),
                   "chunks": int(writer.chunks[r])} for r in range(plan.world)],
        "nodes": [{"node": n, "host_events": host_path(n)} for n in range(cfg.nodes)],
        "clock_sync": em.clocks.snapshots(span, np.random.default_rng(cfg.seed + 1)),
        "steps": steps,
        "served": served,
        # The emulator's true clock errors: for tests to check the collectors' alignment against.
        # Collectors must not read this.
        "truth": {"clock": [{"node": n, "offset_ns": float(em.clocks.offset_ns[n]), "drift": float(em.clocks.drift[n])}
                            for n in range(cfg.nodes)]},
    }
