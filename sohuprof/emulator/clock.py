"""Node clocks: each node's counters run with their own offset and drift, as real ones do."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NodeClocks", "MAX_CLOCK_SYNC"]

#: Clock-sync snapshots a run lists per node at most (every 100 ms would give a day-long run
#: 864k; a line fit needs far fewer).
MAX_CLOCK_SYNC = 4096

BOOT_NS = 1_000_000_000.0  # counters start well above zero, so a negative offset stays positive


@dataclass(frozen=True)
class NodeClocks:
    """``local_ns = true_ns * (1 + drift) + offset`` for every node.

    ``offset_ns`` is uniform in ``BOOT_NS ± skew``; ``drift`` (a rate error, dimensionless) is
    uniform in ``± skew / 25 s``, so a 50 µs skew drifts about 2 µs a second. ``skew_us = 0``
    gives every node the same perfect clock.
    """

    offset_ns: np.ndarray  # [nodes]
    drift: np.ndarray      # [nodes]

    @classmethod
    def random(cls, nodes: int, skew_us: float, rng: np.random.Generator) -> NodeClocks:
        skew_ns = skew_us * 1e3
        offset = BOOT_NS + rng.uniform(-skew_ns, skew_ns, nodes)
        drift = rng.uniform(-1.0, 1.0, nodes) * skew_ns / 25e9
        return cls(offset_ns=offset, drift=drift)

    def local_ns(self, true_ns: np.ndarray, node: np.ndarray) -> np.ndarray:
        return true_ns * (1.0 + self.drift[node]) + self.offset_ns[node]

    def cycles(self, true_ns: np.ndarray, node: np.ndarray, clock_hz: float) -> np.ndarray:
        """Local cycle-counter readings (uint64) of true times on the given nodes."""
        return np.rint(self.local_ns(true_ns, node) * (clock_hz / 1e9)).astype(np.uint64)

    def snapshots(self, true_ns: np.ndarray, rng: np.random.Generator, error_ns: float = 2000.0) -> list[dict]:
        """Clock-sync snapshots as a PTP-style daemon would log them: for each node and time, the
        cluster reference time (off by up to ``error_ns``) beside the node's local reading."""
        out = []
        for node in range(len(self.offset_ns)):
            ref = true_ns + rng.uniform(-error_ns, error_ns, len(true_ns))
            local = self.local_ns(true_ns, np.full(len(true_ns), node))
            out += [{"node": node, "reference_ns": int(r), "local_ns": int(l)} for r, l in zip(ref, local)]
        return out
