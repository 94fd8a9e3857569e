"""Ranks, hosts and clocks of a profiled job: where each file's rank ran, and every host's clock
put on the first host's.

- **Rank**: ``distributedInfo.rank``. Files that do not say take, in file-name order, the ranks
  after the highest one the others declare (from 0 when none does), with one warning naming
  them.
- **Host**: ``--hosts`` (``collect --hosts 0-7=hostA,8-15=hostB``) first, else the trace's
  top-level ``host_name``, else the file name ``tensorboard_trace_handler`` writes
  (``HOST_PID.<time>.pt.trace.json[.gz]``); the ranks none of these name share one unnamed
  host (one node, one clock).
  Node ``N`` is the ``N``-th distinct host in file-name order (the first file's host is node 0).
- **Clocks**: Kineto times are each host's wall clock (``baseTimeNanoseconds``), which NTP keeps
  only to within milliseconds. As the Sohu collector does (:mod:`sohuprof.collectors.alignment`),
  the members of a collective leave it together, so the ends of the NCCL kernels of one matched
  instance (every member present) on two hosts are one instant: a least-squares offset and drift
  per host pair puts every node on node 0's clock. Causality (no member leaves before the last
  arrives) is checked afterwards and recorded. One host, or hosts no complete collective links,
  keep their own clocks (the manifest says which).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sohuprof.collectors.alignment import causality_violations, fit_clocks
from sohuprof.collectors.kineto.checks import MAX_ID
from sohuprof.collectors.kineto.events import _RankTrace
from sohuprof.errors import TraceFormatError

log = logging.getLogger("sohuprof.collectors.kineto")

#: NCCL kernels of one collective end within microseconds of each other on their GPUs, not to
#: the cycle as a Sohu chip's collective engine does: drift is fitted over 10 s of them or more.
KERNEL_END_MIN_SPAN_NS = 1e10

#: ``tensorboard_trace_handler``'s file name: worker name (``HOST_PID`` by default), time.
_HANDLER_NAME = re.compile(r"^(?P<host>.+)_(?P<pid>\d+)\.\d+\.pt\.trace\.json(\.gz)?$")


def parse_hosts(spec: str | None) -> dict[int, str]:
    """``"0-7=hostA,8-15=hostB,16=hostC"`` as ``{rank: host}``.

    Raises
    ------
    TraceFormatError
        A piece is not ``RANKS=HOST``.
    """
    out: dict[int, str] = {}
    for piece in (spec or "").split(","):   # a few pieces
        piece = piece.strip()
        if not piece:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?=(\S+)", piece)
        if m is None or (m[2] is not None and int(m[2]) < int(m[1])):
            raise TraceFormatError(f"--hosts: cannot read {piece!r}: give RANKS=HOST pieces joined by commas, "
                                   f"e.g. 0-7=hostA,8-15=hostB")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi - lo >= 1 << 20:
            raise TraceFormatError(f"--hosts: the range {lo}-{hi} is larger than any job")
        out.update(dict.fromkeys(range(lo, hi + 1), m[3]))
    return out


def host_of(part: _RankTrace, hosts: dict[int, str]) -> tuple[str | None, str]:
    """The host ``part`` ran on and what said so (``--hosts``, ``host_name``, ``file name``)."""
    if part.rank in hosts:
        return hosts[part.rank], "--hosts"
    if part.info.get("host"):
        return str(part.info["host"]), "host_name"
    m = _HANDLER_NAME.match(Path(part.file).name)
    if m:
        return m["host"], "file name"
    return None, "unknown"


def assign_ranks(parts: list[_RankTrace]) -> list[_RankTrace]:
    """Give the files that name no rank theirs (see the module docstring), and refuse two files
    of one rank."""
    known = [p.rank for p in parts if p.rank >= 0]
    rankless = sorted((p for p in parts if p.rank < 0), key=lambda p: Path(p.file).name)
    seen: dict[int, _RankTrace] = {}
    for p in parts:
        if p.rank >= 0 and p.rank in seen:
            raise TraceFormatError(f"'{Path(seen[p.rank].file).name}' and '{Path(p.file).name}' are both rank "
                                   f"{p.rank} (from distributedInfo); put one run per directory")
        seen[p.rank] = p
    if not rankless:
        return parts
    first = max(known) + 1 if known else 0
    if first + len(rankless) > MAX_ID:
        raise TraceFormatError(f"'{Path(rankless[0].file).name}' names no rank and the ranks after the highest "
                               f"declared one ({first - 1}) run past 2**31: give its distributedInfo a rank")
    if len(parts) > 1:
        log.warning("%d file(s) name no rank (no distributedInfo.rank): given ranks %d-%d in file-name order: %s",
                    len(rankless), first, first + len(rankless) - 1,
                    ", ".join(Path(p.file).name for p in rankless[:5]) + (" ..." if len(rankless) > 5 else ""))
    new = {id(p): i for i, p in enumerate(rankless, start=first)}
    return [with_place(p, new[id(p)], 0) if p.rank < 0 else p for p in parts]


def with_place(part: _RankTrace, rank: int, node: int, shift: tuple[float, float, int] | None = None) -> _RankTrace:
    """``part`` as rank ``rank`` on node ``node``, its times moved by ``shift`` (scale, offset,
    origin: ``aligned = t + round((scale - 1) * (t - origin) + offset)``, integer ns)."""
    def moved(t: pa.Array) -> np.ndarray:
        t = np.asarray(t, dtype=np.int64)
        if shift is None:
            return t
        scale, offset, origin = shift
        return t + np.rint((scale - 1.0) * (t - origin).astype(np.float64) + offset).astype(np.int64)

    def placed(table: pa.Table, times: tuple[str, ...]) -> pa.Table:
        if not table.num_rows:
            return table
        cols = {"rank": pa.array(np.full(table.num_rows, rank, np.int32))}
        if "node" in table.column_names:
            cols["node"] = pa.array(np.full(table.num_rows, node, np.int32))
        for name in times:
            if name in table.column_names:
                cols[name] = pa.array(moved(table.column(name).to_numpy()), pa.int64())
        for name, col in cols.items():   # the table's own fields: types, nullability, docs kept
            i = table.column_names.index(name)
            table = table.set_column(i, table.schema.field(i), col.cast(table.schema.field(i).type))
        return table

    info = dict(part.info, accounting=dict(part.info["accounting"], rank=rank), rank=rank)
    return dataclasses.replace(part, rank=rank, events=placed(part.events, ("ts",)),
                               collectives=placed(part.collectives, ("arrive", "end")),
                               counters=placed(part.counters, ("ts",)), info=info)


def node_of_hosts(parts: list[_RankTrace], hosts: dict[int, str]) -> tuple[list[int], list[dict[str, Any]]]:
    """Each part's node, and per node its host, where that came from and its ranks."""
    order: dict[str | None, int] = {}
    nodes, table = [], []
    for p in sorted(parts, key=lambda p: Path(p.file).name):   # a loop over files
        host, source = host_of(p, hosts)
        if host not in order:
            order[host] = len(order)
            table.append({"node": order[host], "host": host, "source": source, "ranks": []})
        table[order[host]]["ranks"].append(p.rank)
    for p in parts:
        nodes.append(order[host_of(p, hosts)[0]])
    for row in table:
        row["ranks"] = sorted(row["ranks"])
    return nodes, table


def fit_nodes(collectives: pa.Table, complete: np.ndarray, nodes: int) -> dict[str, Any] | None:
    """Fit every node's clock onto node 0's from the complete collectives' kernel ends
    (``collectives``: every rank's rows with ``node`` set, local times); None with one node."""
    if nodes < 2:
        return None
    cid = collectives.column("coll_id").to_numpy()
    use = np.isin(cid, complete)
    node = collectives.column("node").to_numpy()[use].astype(np.int64)
    end = collectives.column("end").to_numpy()[use]
    origin = int(end.min()) if end.size else 0
    # Ends relative to one origin: epoch ns as float64 would be quantised to 256 ns.
    clock = fit_clocks(nodes, cid[use], node, (end - origin).astype(np.float64), min_span_ns=KERNEL_END_MIN_SPAN_NS)
    out = clock.to_dict()
    out["origin_ns"] = origin
    out["_shifts"] = [(float(clock.scale[n]), float(clock.offset[n]), origin) if clock.method[n] == "collectives"
                      else None for n in range(nodes)]
    return out


def causality(collectives: pa.Table) -> dict[str, Any]:
    """Matched instances where a member left before the last member arrived, after alignment."""
    bad, worst = causality_violations(collectives.column("coll_id").to_numpy(),
                                      collectives.column("start").to_numpy(), collectives.column("end").to_numpy())
    return {"causality_violations": bad, "worst_violation_ns": worst}
