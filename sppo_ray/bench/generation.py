"""Generation benchmark: tokens/s through the generation stage vs a bare vLLM engine, and 2 vs 1 generators."""

from __future__ import annotations

import statistics
from typing import Any

import ray

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.bench.engines import BareVLLM
from sppo_ray.config import RunConfig
from sppo_ray.contracts import PolicyWeights

__all__ = ["bench_generation"]


def bench_generation(config: RunConfig, plan, n_prompts: int, repeats: int) -> dict[str, Any]:
    """Tokens/s of the stage vs a bare engine, runs interleaved (bare, stage, bare, ...) so drift hits both alike."""
    from sppo_ray.generation.stage import build_generator_actors, generator_options, run_generation_stage

    prompts = plan.rounds[0][:n_prompts]
    out: dict[str, Any] = {"prompts": len(prompts), "k": config.generation.k,
                           "max_new_tokens": config.generation.max_new_tokens, "repeats": repeats}
    bare = ray.remote(BareVLLM).options(**generator_options(config.resources)).remote(
        str(plan.policy_path), config.generation)
    actors = build_generator_actors(str(plan.policy_path), config.generation, config.resources)
    convs = [list(p.messages) for p in prompts]
    ray.get(bare.run.remote(convs[:2]))  # warm-up
    run_generation_stage(prompts[:2], actors, PolicyWeights(0), 99, config.generation)
    bare_tps, stage_tps = [], []
    for _ in range(repeats):
        b = ray.get(bare.run.remote(convs))
        bare_tps.append(b["tokens"] / b["seconds"])
        r = run_generation_stage(prompts, actors, PolicyWeights(0), 0, config.generation)
        stage_tps.append(r.generated_tokens / r.seconds)
    out["generated_table"] = r.table
    shutdown_pool([bare])
    shutdown_pool(actors)
    res = config.resources.model_copy(update={"generators": 2})
    actors = build_generator_actors(str(plan.policy_path), config.generation, res)
    run_generation_stage(prompts[:2], actors, PolicyWeights(0), 99, config.generation)
    two_tps = []
    for _ in range(repeats):
        r = run_generation_stage(prompts, actors, PolicyWeights(0), 0, config.generation)
        two_tps.append(r.generated_tokens / r.seconds)
    shutdown_pool(actors)
    median = statistics.median
    out.update({"bare_tokens_per_s": median(bare_tps), "pipeline_tokens_per_s": median(stage_tps),
                "pipeline_2_generators_tokens_per_s": median(two_tps),
                "runs_tokens_per_s": {"bare": bare_tps, "pipeline": stage_tps, "pipeline_2_generators": two_tps}})
    out["ratio_pipeline_over_bare"] = out["pipeline_tokens_per_s"] / out["bare_tokens_per_s"]
    out["ratio_2_over_1_generators"] = out["pipeline_2_generators_tokens_per_s"] / out["pipeline_tokens_per_s"]
    return out
