"""Clock alignment across nodes, from the collectives the nodes share.

Members of one collective leave it together, so the local clock readings of its end on two nodes
are the same instant. For every pair of nodes that share collectives, a least-squares line
``t_a = scale * t_b + offset`` over those instants gives one node's clock in the other's (offset
and drift); composing the lines along a breadth-first tree from the reference node puts every
node on the reference clock. Nodes no collective reaches fall back to the clock-sync snapshots
(a PTP-style daemon's readings, accurate to microseconds only). Afterwards causality is checked:
no member may leave a collective before its last member arrived.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ClockMap", "fit_clocks", "causality_violations"]

#: Collective end readings agree to a cycle, so a millisecond of spread already shows drift.
COLLECTIVE_MIN_SPAN_NS = 1e6
#: Clock-sync snapshots are off by microseconds: fit drift from them only over 10 s or more.
SNAPSHOT_MIN_SPAN_NS = 1e10


@dataclass(frozen=True)
class ClockMap:
    """Per node: ``aligned = scale * local + offset`` (ns), and how each line was found."""

    scale: np.ndarray    # [nodes]
    offset: np.ndarray   # [nodes]
    method: list[str]    # "reference", "collectives" or "clock_sync"
    residual_ns: np.ndarray  # RMS residual of the fit along the node's path
    instances: np.ndarray    # shared collective instances the node's line was fitted on
    reference: int = 0
    notes: list[str] = field(default_factory=list)

    def apply(self, local_ns: np.ndarray, node: np.ndarray | int) -> np.ndarray:
        return self.scale[node] * local_ns + self.offset[node]

    def to_dict(self) -> dict:
        return {"reference_node": self.reference,
                "nodes": [{"node": n, "method": self.method[n], "scale": float(self.scale[n]),
                           "offset_ns": float(self.offset[n]), "drift_ppm": float((self.scale[n] - 1) * 1e6),
                           "residual_ns": float(self.residual_ns[n]), "instances": int(self.instances[n])}
                          for n in range(len(self.scale))],
                "notes": self.notes}


def _line(x: np.ndarray, y: np.ndarray, min_span_ns: float) -> tuple[float, float, float]:
    """Least-squares ``y = a x + b`` (centered, so 1e12-ns readings keep their precision).

    Below ``min_span_ns`` of spread in ``x`` the readings' noise would swamp any drift, so only
    the offset is fitted."""
    xm, ym = x.mean(), y.mean()
    dx, dy = x - xm, y - ym
    spread = float((dx * dx).sum())
    a = float((dx * dy).sum() / spread) if len(x) > 2 and x.max() - x.min() > min_span_ns else 1.0
    b = float(ym - a * xm)
    resid = y - (a * x + b)
    return a, b, float(np.sqrt((resid * resid).mean()))


def fit_clocks(nodes: int, coll_id: np.ndarray, node: np.ndarray, end_local: np.ndarray,
               snapshots: list[dict] | None = None, reference: int = 0,
               min_span_ns: float = COLLECTIVE_MIN_SPAN_NS) -> ClockMap:
    """Fit every node's clock onto ``reference``'s.

    ``coll_id``, ``node``, ``end_local`` list collective records (one per member rank; the end in
    the member node's local ns). ``snapshots`` are run.json ``clock_sync`` entries
    (``node``, ``reference_ns``, ``local_ns``) used for nodes the collectives do not reach.
    """
    scale, offset = np.ones(nodes), np.zeros(nodes)
    method = ["unaligned"] * nodes
    residual, count = np.zeros(nodes), np.zeros(nodes, np.int64)
    notes: list[str] = []
    # One end reading per (instance, node); pair every node with the instance's lowest node.
    order = np.lexsort((node, coll_id))
    cid, nd, end = coll_id[order], node[order], end_local[order]
    first = np.ones(len(cid), bool)
    first[1:] = (cid[1:] != cid[:-1]) | (nd[1:] != nd[:-1])
    cid, nd, end = cid[first], nd[first], end[first]
    _, start_idx, inverse = np.unique(cid, return_index=True, return_inverse=True)
    anchor = start_idx[inverse]
    pair = nd != nd[anchor]
    a_node, b_node, a_end, b_end = nd[anchor][pair], nd[pair], end[anchor][pair], end[pair]
    edges: dict[tuple[int, int], tuple[float, float, float, int]] = {}
    if len(a_node):
        key = a_node.astype(np.int64) * nodes + b_node
        uniq, inv = np.unique(key, return_inverse=True)
        sort = np.argsort(inv, kind="stable")
        bounds = np.searchsorted(inv[sort], np.arange(len(uniq) + 1))
        for i, k in enumerate(uniq):          # one least-squares fit per node pair
            sel = sort[bounds[i]:bounds[i + 1]]
            a, b, r = _line(b_end[sel], a_end[sel], min_span_ns)   # a's clock from b's
            edges[(int(k // nodes), int(k % nodes))] = (a, b, r, len(sel))
    adjacency: dict[int, list[tuple[int, float, float, float, int]]] = {n: [] for n in range(nodes)}
    for (u, v), (a, b, r, c) in edges.items():
        adjacency[u].append((v, a, b, r, c))             # t_u = a t_v + b
        adjacency[v].append((u, 1 / a, -b / a, r, c))    # t_v = (t_u - b) / a
    method[reference] = "reference"
    queue = deque([reference])
    while queue:
        u = queue.popleft()
        for v, a, b, r, c in adjacency[u]:
            if method[v] != "unaligned":
                continue
            # t_ref = S_u t_u + O_u and t_u = a t_v + b
            scale[v], offset[v] = scale[u] * a, scale[u] * b + offset[u]
            residual[v] = np.hypot(residual[u], r)
            count[v] = c
            method[v] = "collectives"
            queue.append(v)
    missing = [n for n in range(nodes) if method[n] == "unaligned"]
    if missing and snapshots:
        snap_node = np.array([s["node"] for s in snapshots])
        ref = np.array([s["reference_ns"] for s in snapshots], dtype=float)
        loc = np.array([s["local_ns"] for s in snapshots], dtype=float)
        lines = {}
        for n in set(missing) | {reference}:
            sel = snap_node == n
            if sel.sum():
                lines[n] = _line(loc[sel], ref[sel], SNAPSHOT_MIN_SPAN_NS)
        if reference in lines:
            ra, rb, rr = lines[reference]
            for n in missing:
                if n in lines:
                    a, b, r = lines[n]
                    # t_ref_node = (t_cluster - rb) / ra, t_cluster = a t_n + b
                    scale[n], offset[n] = a / ra, (b - rb) / ra
                    residual[n] = np.hypot(r, rr)
                    method[n] = "clock_sync"
        notes.append(f"nodes {missing} share no collective with node {reference}'s group: aligned by "
                     "clock-sync snapshots (microsecond accuracy)")
    return ClockMap(scale=scale, offset=offset, method=method, residual_ns=residual, instances=count,
                    reference=reference, notes=notes)


def causality_violations(coll_id: np.ndarray, arrive: np.ndarray, end: np.ndarray,
                         tolerance_ns: float = 1.0) -> tuple[int, float]:
    """Collective instances where a member leaves before the last member arrived, and the worst
    such gap (ns), on aligned times."""
    if not len(coll_id):
        return 0, 0.0
    if (coll_id[1:] >= coll_id[:-1]).all():     # the collectives table's own order: no copies
        cid, arr, e = coll_id, arrive, end
    else:
        order = np.argsort(coll_id, kind="stable")
        cid, arr, e = coll_id[order], arrive[order], end[order]
    starts = np.flatnonzero(np.r_[True, cid[1:] != cid[:-1]])
    last = np.maximum.reduceat(arr, starts)
    first_end = np.minimum.reduceat(e, starts)
    gap = last - first_end
    bad = gap > tolerance_ns
    return int(bad.sum()), float(gap[bad].max()) if bad.any() else 0.0
