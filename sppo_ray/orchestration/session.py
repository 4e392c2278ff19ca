"""The live actors of a run (generators, judges) and the policy version they hold.

This is the only place that holds Ray handles to more than one role.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from safetensors.torch import load_file

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.config import RunConfig
from sppo_ray.contracts import PolicyWeights
from sppo_ray.generation.stage import build_generator_actors, push_weights
from sppo_ray.judging.stage import build_judge_actors
from sppo_ray.orchestration.verbosity import configure_driver_output

__all__ = ["Session", "init_ray", "object_store_weights"]


def init_ray(config: RunConfig) -> bool:
    """Connect to the cluster of ``ray job submit`` (RAY_ADDRESS) or start a local Ray; True if it started one.

    On one machine the roles time-share the cores: only one stage is busy at a time, so Ray is given enough
    logical CPUs for every role's reservation (generators + judges + train workers) even on 2 cores.
    """
    configure_driver_output()
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return False
    r = config.resources
    need = r.generators * r.generator_cpus + r.judges * r.judge_cpus + r.train_workers * r.train_cpus_per_worker
    num_cpus = r.local_num_cpus or max(os.cpu_count() or 1, int(need + 1.999))
    ray.init(num_cpus=num_cpus, include_dashboard=True)
    return True


def object_store_weights(model_dir: Path, version: int) -> PolicyWeights:
    """A model directory's whole state dict as one Ray object owned by the caller.

    The caller holds the entire model while it puts it: benchmarks use this as the "before" of the driver-free
    broadcast (``generation.weights.policy_weights``), which the run itself uses.
    """
    state = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return PolicyWeights(version, ray.put(state))


@dataclass
class Session:
    generator_actors: list[Any]
    judge_actors: list[Any]
    base_policy: Path
    # Policy version every generator holds now (restarted actors are brought up to date by the stage itself).
    generator_version: int = 0
    weights: PolicyWeights = field(default_factory=lambda: PolicyWeights(0))
    startup_seconds: float = 0.0

    @classmethod
    def start(cls, config: RunConfig, policy_path: Path, judge_path: Path | None) -> "Session":
        started = time.perf_counter()
        generators = build_generator_actors(str(policy_path), config.generation, config.resources)
        judges = build_judge_actors(str(judge_path) if judge_path else None, config.judge, config.resources)
        weights = PolicyWeights(0, path=str(policy_path))
        return cls(generators, judges, policy_path, 0, weights, time.perf_counter() - started)

    def broadcast(self, weights: PolicyWeights) -> float:
        """Push a policy version to every generator in place; returns the wall seconds."""
        started = time.perf_counter()
        push_weights(self.generator_actors, weights)
        self.weights, self.generator_version = weights, weights.version
        return time.perf_counter() - started

    def probe(self, question: str, max_new_tokens: int = 32) -> str:
        """Greedy answer of the first generator, to see the broadcast weights in action."""
        return ray.get(self.generator_actors[0].greedy.remote([[{"role": "user", "content": question}]], max_new_tokens))[0]

    def shutdown(self) -> None:
        """Stop every engine explicitly, then release the actors."""
        shutdown_pool(self.generator_actors)
        shutdown_pool(self.judge_actors)
