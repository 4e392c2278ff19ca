"""How the colocated layout's bundles fit on a cluster's nodes: plain arithmetic, no Ray (see
orchestration/colocation.py for the placement groups built from it, and planning.py for the plan).

A bundle holds a generator and a judge replica of one GPU: ``{CPU: generator_cpus + judge_cpus, GPU:
generator_gpus + judge_gpus}``. Ray places a fractional GPU request inside one GPU, so a node of G GPUs holds at
most ``G * floor(1 / share)`` bundles of a share below 1 (one per GPU for the shares above 0.5 that the colocated
layout requires), and its CPUs bound the count too.
"""

from __future__ import annotations

import math

from sppo_ray.config import ResourcesConfig

__all__ = ["assign_bundles", "bundle_shape", "bundles_on_node"]


def bundle_shape(res: ResourcesConfig) -> dict[str, float]:
    """One bundle: the CPUs of a generator and a judge, and their GPU shares (none on CPU)."""
    bundle = {"CPU": float(res.generator_cpus + res.judge_cpus)}
    if res.generator_gpus + res.judge_gpus > 0:
        bundle["GPU"] = float(res.generator_gpus + res.judge_gpus)
    return bundle


def bundles_on_node(bundle: dict[str, float], node: dict[str, float]) -> int:
    """How many bundles of ``bundle``'s shape one node of total resources ``node`` holds."""
    counts = []
    for name, need in bundle.items():
        have = node.get(name, 0.0)
        if name == "GPU" and need < 1:
            counts.append(int(round(have)) * int(1 // need))  # a fraction never spans two GPUs
        else:
            counts.append(int(math.floor(have / need + 1e-9)))
    return min(counts) if counts else 0


def assign_bundles(n: int, capacities: list[int]) -> list[int] | None:
    """Bundles per node, filling the nodes in the order given until ``n`` are placed; None if they cannot hold
    ``n``. Callers order the nodes (largest first keeps the bundles on as few nodes as possible)."""
    counts = []
    for cap in capacities:
        take = min(cap, n - sum(counts))
        counts.append(take)
    return counts if sum(counts) == n else None
