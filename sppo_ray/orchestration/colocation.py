"""The colocated layout: one Ray placement group, one bundle per GPU (or per CPU slot), every role on every bundle.

Bundle ``i`` holds generator ``i`` (``resources.generator_gpus`` of its GPU) and judge replica ``i``
(``judge_gpus``); train worker ``i`` takes the rest of the same GPU. Ray Train schedules its workers in a placement
group of its own (its worker group cannot join ours), so the bundles reserve only the generator and judge shares:
each GPU then has exactly ``1 - generator_gpus - judge_gpus`` free, room for one train worker and no more, and Ray's
fractional-GPU accounting puts one worker on each GPU. Every stage uses every GPU; between stages the idle roles
release their memory (engines sleep, judges move to host; see :class:`Residency`).

On CPU the bundles hold CPUs only: the same placement group, actors and sleep/wake calls (recorded no-ops), so the
orchestration is tested without a GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from sppo_ray.config import ResourcesConfig

__all__ = ["Colocation", "Residency", "bundle_resources", "where_am_i"]

# Seconds to wait for the cluster to grant the bundles before failing with what was asked.
READY_TIMEOUT_S = 600.0


def bundle_resources(res: ResourcesConfig) -> dict[str, float]:
    """One bundle: the CPUs of a generator and a judge, and their GPU shares (none on CPU)."""
    bundle = {"CPU": float(res.generator_cpus + res.judge_cpus)}
    if res.generator_gpus + res.judge_gpus > 0:
        bundle["GPU"] = float(res.generator_gpus + res.judge_gpus)
    return bundle


@dataclass
class Colocation:
    placement_group: Any

    @classmethod
    def create(cls, res: ResourcesConfig, timeout_s: float = READY_TIMEOUT_S) -> "Colocation":
        """Reserve ``resources.train_workers`` bundles, packed onto as few nodes as they fit on.

        Raises:
            PlanError: the cluster did not grant the bundles within ``timeout_s``; names what was asked.
        """
        from ray.util.placement_group import placement_group, remove_placement_group

        from sppo_ray.planning import PlanError

        bundle = bundle_resources(res)
        pg = placement_group([dict(bundle) for _ in range(res.train_workers)], strategy="PACK")
        try:
            ray.get(pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(pg)
            raise PlanError(
                f"resources: the colocated layout asked for {res.train_workers} bundles of {bundle} and the cluster "
                f"did not grant them in {timeout_s:.0f} s (it has {ray.cluster_resources()}); lower "
                "resources.train_workers or the per-role CPUs, or add nodes") from None
        return cls(pg)

    def options(self, index: int) -> dict[str, Any]:
        """Ray options that put an actor into bundle ``index``."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.placement_group,
                                                                       placement_group_bundle_index=index)}

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.placement_group)


@dataclass
class Residency:
    """Which roles hold their GPU memory in each stage of a colocated round, and the transitions made so far.

    generate: engines awake, judges on host; judge: engines asleep, judges on their GPUs; train: both released
    (the train workers have the GPUs); broadcast: engines wake their weights (the KV cache waits for generation).
    """

    generators: list[Any]
    judges: list[Any]
    log: list[dict[str, Any]] = field(default_factory=list)

    def enter(self, stage: str) -> None:
        calls = {
            "generate": [(self.judges, "offload", ()), (self.generators, "wake_up", (None,))],
            "judge": [(self.generators, "sleep", ()), (self.judges, "onload", ())],
            "train": [(self.generators, "sleep", ()), (self.judges, "offload", ())],
            "broadcast": [(self.generators, "wake_up", (["weights"],))],
        }[stage]
        started = time.perf_counter()
        for actors, method, args in calls:  # releases first, so the next role finds the memory free
            ray.get([getattr(a, method).remote(*args) for a in actors])
        self.log.append({"stage": stage, "seconds": time.perf_counter() - started})


def where_am_i() -> dict[str, Any]:
    """Inside an actor: its node, placement group and bundle index. The bundle is read from the resource ids Ray
    assigned the worker (a bundle's resources are named ``CPU_group_<bundle>_<group id>``), a diagnostic through
    Ray's core worker; empty if that is unavailable."""
    ctx = ray.get_runtime_context()
    try:
        names = list(ray._private.worker.global_worker.core_worker.resource_ids())
    except Exception:  # noqa: BLE001 - only a report: leave the bundle unknown
        names = []
    bundles = sorted({int(parts[2]) for parts in (n.split("_") for n in names)
                      if len(parts) > 3 and parts[1] == "group" and parts[2].isdigit()})
    return {"node_id": ctx.get_node_id(), "placement_group_id": ctx.get_placement_group_id(), "bundles": bundles,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
