"""The parallel plan: which rank holds which shard, and the communicator groups between them.

Ranks are laid out stage-major: ``rank = stage * (dp * tp) + replica * tp + tp_index``, and
``rank = node * chips_per_node + chip``. TP groups are the ``tp`` consecutive ranks of one replica
in one stage; EP groups are ``ep`` consecutive ranks of one stage (spanning ``ep / tp`` replicas);
PP groups are the sender/receiver pairs across each stage boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sohuprof.emulator.config import EmulatorConfig

__all__ = ["GroupSet", "ParallelPlan", "split_layers"]


def split_layers(layers: int, pp: int) -> np.ndarray:
    """First layer of each of ``pp`` pipeline stages, then ``layers``: ``[pp + 1]`` int64.

    Layers are split as evenly as possible, earlier stages taking the remainder. Needs no
    plan, so the run estimate can use it before any per-rank array exists.
    """
    base, extra = divmod(layers, pp)
    counts = np.full(pp, base, dtype=np.int64) + (np.arange(pp) < extra)
    return np.concatenate([[0], np.cumsum(counts)])


@dataclass(frozen=True)
class GroupSet:
    """Equal-sized communicator groups of one kind: ``members[g]`` lists group ``g``'s ranks.

    ``ids`` are the global group ids written into raw records and ``run.json``.
    """

    kind: str
    ids: np.ndarray       # [G] int64
    members: np.ndarray   # [G, size] int64

    @property
    def size(self) -> int:
        return int(self.members.shape[1])


@dataclass(frozen=True)
class ParallelPlan:
    """Rank layout and groups for one :class:`EmulatorConfig`."""

    world: int
    chips_per_node: int
    tp: int
    ep: int
    pp: int
    dp: int
    stage: np.ndarray      # [R] pipeline stage of each rank
    replica: np.ndarray    # [R] data-parallel replica of each rank
    node: np.ndarray       # [R]
    chip: np.ndarray       # [R]
    stage_layers: np.ndarray  # [pp + 1] first layer of each stage, then the layer count
    tp_groups: GroupSet | None
    ep_groups: GroupSet | None
    pp_groups: tuple[GroupSet, ...]  # one set per stage boundary

    @classmethod
    def build(cls, cfg: EmulatorConfig) -> ParallelPlan:
        world, tp, pp, dp, ep = cfg.world, cfg.tp, cfg.pp, cfg.dp, cfg.ep
        ranks = np.arange(world, dtype=np.int64)
        per_stage = dp * tp
        stage = ranks // per_stage
        replica = (ranks % per_stage) // tp
        next_id = 0

        def groups(kind: str, members: np.ndarray) -> GroupSet:
            nonlocal next_id
            ids = np.arange(next_id, next_id + len(members), dtype=np.int64)
            next_id += len(members)
            return GroupSet(kind, ids, members)

        tp_groups = groups("tp", ranks.reshape(-1, tp)) if tp > 1 else None
        ep_groups = groups("ep", ranks.reshape(-1, ep)) if ep > 1 else None
        pp_groups = tuple(
            groups("pp", np.stack([ranks[stage == s], ranks[stage == s + 1]], axis=1))
            for s in range(pp - 1)
        )
        stage_layers = split_layers(cfg.model.layers, pp)
        return cls(world=world, chips_per_node=cfg.chips_per_node, tp=tp, ep=ep, pp=pp, dp=dp,
                   stage=stage, replica=replica, node=ranks // cfg.chips_per_node,
                   chip=ranks % cfg.chips_per_node, stage_layers=stage_layers,
                   tp_groups=tp_groups, ep_groups=ep_groups, pp_groups=pp_groups)

    def all_groups(self) -> list[GroupSet]:
        sets = [g for g in (self.tp_groups, self.ep_groups) if g is not None]
        return sets + list(self.pp_groups)

    def stage_of_layer(self, layer: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.stage_layers, layer, side="right") - 1

    def replica_ranks(self, replica: int) -> np.ndarray:
        return np.flatnonzero(self.replica == replica)

    def coupled_replicas(self) -> np.ndarray:
        """[dp] id of the set of replicas that must step together (EP groups spanning replicas)."""
        span = max(self.ep // self.tp, 1)
        return np.arange(self.dp) // span

    def to_dict(self) -> dict:
        return {
            "world": self.world, "tp": self.tp, "ep": self.ep, "pp": self.pp, "dp": self.dp,
            "chips_per_node": self.chips_per_node,
            "stage_layers": self.stage_layers.tolist(),
            "layout": "rank = stage * dp * tp + replica * tp + tp_index = node * chips_per_node + chip",
        }

    def groups_table(self) -> list[dict]:
        """One entry per group, for run.json: id, kind, member ranks."""
        out = []
        for gs in self.all_groups():
            for gid, members in zip(gs.ids.tolist(), gs.members.tolist()):
                out.append({"id": gid, "kind": gs.kind, "ranks": members})
        return out
