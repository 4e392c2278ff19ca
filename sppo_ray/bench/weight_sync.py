"""Weight-sync benchmark: seconds to put a policy into every generator in place vs a plain memory copy."""

from __future__ import annotations

import time
from typing import Any

import ray

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.config import RunConfig

__all__ = ["bench_weight_sync"]


def bench_weight_sync(config: RunConfig, plan) -> dict[str, Any]:
    from sppo_ray.generation.stage import build_generator_actors, push_weights
    from sppo_ray.generation.weights import policy_weights
    from sppo_ray.orchestration.session import object_store_weights

    actors = build_generator_actors(str(plan.policy_path), config.generation, config.resources)
    pid_before = ray.get(actors[0].ready.remote())["pid"]
    weights = object_store_weights(plan.policy_path, 1)
    state = ray.get(weights.state_dict_ref)
    started = time.perf_counter()
    copied = {k: v.clone() for k, v in state.items()}
    copy_s = time.perf_counter() - started
    nbytes = sum(v.numel() * v.element_size() for v in copied.values())
    started = time.perf_counter()
    push_weights(actors, weights)
    sync_s = time.perf_counter() - started
    started = time.perf_counter()
    push_weights(actors, policy_weights(plan.policy_path, 2))  # what a run does: generators read the directory
    dir_s = time.perf_counter() - started
    pid_after = ray.get(actors[0].ready.remote())["pid"]
    shutdown_pool(actors)
    return {"weight_bytes": nbytes, "sync_seconds": sync_s, "directory_sync_seconds": dir_s,
            "memory_copy_seconds": copy_s, "ratio_sync_over_copy": sync_s / copy_s,
            "ratio_directory_sync_over_copy": dir_s / copy_s, "engine_restarted": pid_before != pid_after}
