"""The colocated layout: one bundle per GPU (or per CPU slot), every role on every bundle.

Bundle ``i`` holds generator ``i`` (``resources.generator_gpus`` of its GPU) and judge replica ``i``
(``judge_gpus``); train worker ``i`` takes the rest of the same GPU. Ray Train schedules its workers in a placement
group of its own (its worker group cannot join ours), so the bundles reserve only the generator and judge shares:
each GPU then has exactly ``1 - generator_gpus - judge_gpus`` free, room for one train worker and no more, and Ray's
fractional-GPU accounting puts one worker on each GPU. Every stage uses every GPU; between stages the idle roles
release their memory (engines sleep, judges move to host; see :class:`Residency`).

GPU bundles are reserved as one ``STRICT_PACK`` placement group per node, with as many bundles as the node's GPUs
hold (``sppo_ray/placement.py``): Ray 2.60 never grants one PACK group of fractional-GPU bundles that does not fit
on a single node (16 bundles of 0.6 GPU over two 8-GPU nodes stay pending forever), while a group per node is
granted at once and puts bundle j of node k on GPU j of that node. The groups are asked for one after the other,
largest first, each once the one before is granted, so each lands on a node with room for all of it; they are not
pinned to a node id, so when a node is lost Ray re-reserves its group on a node that joins with room for it (a
replacement pod) and restarts the group's actors there. What the nodes cannot hold fails before anything is
reserved, naming each node's capacity.

On CPU the bundles hold CPUs only, in one PACK group: the same actors and sleep/wake calls (recorded no-ops), so
the orchestration is tested without a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from sppo_ray.actor_pool import NODE_WAIT_S, call_every
from sppo_ray.config import ResourcesConfig
from sppo_ray.placement import assign_bundles, bundle_shape, bundles_on_node

__all__ = ["Colocation", "Residency"]

# Seconds to wait for resources that the cluster has but others hold (a layout it cannot hold fails at once).
READY_TIMEOUT_S = 600.0

def _node_capacities(bundle: dict[str, float]) -> list[tuple[str, int]]:
    """(node id, bundles it holds) for every alive node, largest first (ties by node id, so runs agree)."""
    caps = [(n["NodeID"], bundles_on_node(bundle, n["Resources"])) for n in ray.nodes() if n["Alive"]]
    return sorted((c for c in caps if c[1] > 0), key=lambda c: (-c[1], c[0]))


@dataclass
class Colocation:
    # One placement group per node (GPU bundles) or a single one (CPU bundles).
    groups: list[Any]
    # Bundle i of the layout = (index into groups, bundle index inside that group).
    slots: list[tuple[int, int]]

    @classmethod
    def create(cls, res: ResourcesConfig, timeout_s: float = READY_TIMEOUT_S) -> "Colocation":
        """Reserve ``resources.train_workers`` bundles on as few nodes as they fit on.

        Raises:
            PlanError: the nodes cannot hold the bundles (at once), or the cluster did not grant them within
                ``timeout_s``; names what was asked and what each node holds.
        """
        from ray.util.placement_group import placement_group

        from sppo_ray.planning import PlanError

        bundle, n = bundle_shape(res), res.train_workers
        caps = _node_capacities(bundle)
        counts = assign_bundles(n, [c for _, c in caps])
        if counts is None:
            held = ", ".join(f"node {nid[:8]}: {c}" for nid, c in caps) or "none"
            raise PlanError(f"resources: the colocated layout needs {n} bundles of {bundle} (one per GPU: generator + "
                            f"judge replica + train worker) and the cluster's nodes hold {sum(c for _, c in caps)} "
                            f"({held}); lower resources.train_workers/generators/judges or the per-role CPUs, or add "
                            "nodes")
        shapes = [("STRICT_PACK", c) for c in counts if c] if "GPU" in bundle else [("PACK", n)]
        groups, deadline = [], time.monotonic() + timeout_s
        for strategy, count in shapes:  # one at a time: a group lands where the ones before left room for it
            groups.append(placement_group([dict(bundle)] * count, strategy=strategy))
            try:
                ray.get(groups[-1].ready(), timeout=max(1.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                cls(groups, []).remove()
                raise PlanError(
                    f"resources: the colocated layout asked for {n} bundles of {bundle} and the cluster did not grant "
                    f"them in {timeout_s:.0f} s: other work holds the resources (free now: "
                    f"{ray.available_resources()})") from None
        return cls(groups, [(g, j) for g, pg in enumerate(groups) for j in range(len(pg.bundle_specs))])

    def waiting(self) -> list[int]:
        """The bundles not reserved now (their node was lost and none with room for their group has joined)."""
        states = [ray.util.placement_group_table(pg)["state"] for pg in self.groups]
        return [i for i, (g, _) in enumerate(self.slots) if states[g] != "CREATED"]

    def options(self, index: int) -> dict[str, Any]:
        """Ray options that put an actor into bundle ``index``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group, bundle = self.slots[index]
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.groups[group],
                                                                       placement_group_bundle_index=bundle)}

    def table(self) -> list[dict[str, Any]]:
        """Every bundle of the layout in order: its index, placement group, resources and node."""
        tables = [ray.util.placement_group_table(pg) for pg in self.groups]
        return [{"index": i, "placement_group_id": tables[g]["placement_group_id"], "strategy": tables[g]["strategy"],
                 "bundle_in_group": j, "resources": tables[g]["bundles"][j],
                 "node_id": tables[g]["bundles_to_node_id"].get(j)} for i, (g, j) in enumerate(self.slots)]

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups:
            remove_placement_group(pg)


@dataclass
class Residency:
    """Which roles hold their GPU memory in each stage of a colocated round, and the transitions made so far.

    generate: engines awake, judges on host; judge: engines asleep, judges on their GPUs; train: both released
    (the train workers have the GPUs); broadcast: engines wake their weights (the KV cache waits for generation).
    """

    generators: list[Any]
    judges: list[Any]
    log: list[dict[str, Any]] = field(default_factory=list)
    # How long a call waits for an actor that Ray is restarting (a lost node's, see ``resources.node_wait_s``).
    wait_s: float = NODE_WAIT_S

    def enter(self, stage: str) -> None:
        calls = {
            "generate": [(self.judges, "offload", ()), (self.generators, "wake_up", (None,))],
            "judge": [(self.generators, "sleep", ()), (self.judges, "onload", ())],
            "train": [(self.generators, "sleep", ()), (self.judges, "offload", ())],
            "broadcast": [(self.generators, "wake_up", (["weights"],))],
        }[stage]
        started = time.perf_counter()
        for actors, method, args in calls:  # releases first, so the next role finds the memory free
            call_every(actors, method, args, wait_s=self.wait_s)
        self.log.append({"stage": stage, "seconds": time.perf_counter() - started})

