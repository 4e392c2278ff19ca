"""Judging benchmark: pairs/s through the judging stage vs one batched call in the actor vs one pair per call."""

from __future__ import annotations

import json
import statistics
from typing import Any

import ray

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.config import RunConfig

__all__ = ["bench_judging"]


def bench_judging(config: RunConfig, plan, generated, repeats: int) -> dict[str, Any]:
    """Pairs/s of the stage vs one batched call in the actor vs one pair per call, interleaved like _generation."""
    from sppo_ray.judging.scoring import ordered_pairs, prompt_text
    from sppo_ray.judging.stage import build_judge_actors, run_judging_stage

    actors = build_judge_actors(str(plan.judge_path) if plan.judge_path else None, config.judge, config.resources)
    prompts, first, second = [], [], []
    for row in generated.to_pylist():
        text = prompt_text(json.loads(row["messages_json"]))
        for i, j in ordered_pairs(len(row["responses"])):
            prompts.append(text)
            first.append(row["responses"][i])
            second.append(row["responses"][j])
    n = len(prompts)
    stage, bare, one = [], [], []
    for _ in range(repeats):
        stage.append(n / run_judging_stage(generated, actors, config.judge).seconds)
        bare.append(n / ray.get(actors[0].time_pair_logits.remote(prompts, first, second, config.judge.batch_size)))
        one.append(n / ray.get(actors[0].time_pair_logits.remote(prompts, first, second, 1)))
    shutdown_pool(actors)
    median = statistics.median
    return {"pairs": n, "judge": config.judge.kind, "batch_size": config.judge.batch_size, "repeats": repeats,
            "stage_pairs_per_s": median(stage), "bare_batched_pairs_per_s": median(bare),
            "batch1_pairs_per_s": median(one), "runs_pairs_per_s": {"stage": stage, "bare_batched": bare, "batch1": one},
            "ratio_stage_over_bare": median(stage) / median(bare), "ratio_stage_over_batch1": median(stage) / median(one)}
