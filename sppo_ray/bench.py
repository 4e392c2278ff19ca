"""`sppo-ray bench`: each stage against its bare engine, measured in the same run on the same inputs.

Every figure that matters is a ratio (these machines are noisy; absolute times mean little). Results are printed
and written as JSON to the output directory, one file per benchmark.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import ray

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.config import RunConfig, load_config
from sppo_ray.contracts import PolicyWeights

__all__ = ["BareVLLM", "run_benchmarks"]


class BareVLLM:
    """A plain vLLM engine in a Ray actor, driven with one `LLM.chat` call: the generation baseline."""

    def __init__(self, model_path: str, cfg) -> None:
        from sppo_ray.generation.actor import build_engine

        self.llm = build_engine(model_path, cfg)  # the generators' engine settings (and Ray options, see callers)
        self.cfg = cfg

    def run(self, conversations: list[list[dict[str, str]]]) -> dict[str, float]:
        from vllm import SamplingParams

        c = self.cfg
        params = SamplingParams(n=c.k, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens,
                                seed=c.seed)
        started = time.perf_counter()
        outputs = self.llm.chat(conversations, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.token_ids) for out in outputs for o in out.outputs)
        return {"tokens": tokens, "seconds": seconds}

    def sample_passes(self, prompts: list[tuple[str, list[dict[str, str]]]]) -> list[dict[str, Any]]:
        """uclaml/SPPO's sampling: one pass over all prompts per sample index j, with seed j; GeneratedPrompt rows."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from sppo_ray.generation.actor import generated_row
        from sppo_ray.generation.sampling import fit_prompt

        c, tokenizer = self.cfg, self.llm.get_tokenizer()
        fitted = [(pid, messages, fit_prompt(tokenizer, messages, c.max_prompt_tokens, c.overlong_prompts))
                  for pid, messages in prompts]
        fitted = [f for f in fitted if f[2].token_ids is not None]
        requests = [TokensPrompt(prompt_token_ids=fit.token_ids) for _, _, fit in fitted]
        passes = [self.llm.generate(requests, SamplingParams(temperature=c.temperature, top_p=c.top_p,
                                                             max_tokens=c.max_new_tokens, seed=j), use_tqdm=False)
                  for j in range(c.k)]
        return [generated_row(pid, json.dumps(messages), fit, [p[n].outputs[0] for p in passes], 0)
                for n, (pid, messages, fit) in enumerate(fitted)]

    def shutdown(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()


def _generation(config: RunConfig, plan, n_prompts: int, repeats: int) -> dict[str, Any]:
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


def _judging(config: RunConfig, plan, generated, repeats: int) -> dict[str, Any]:
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


def _weight_sync(config: RunConfig, plan) -> dict[str, Any]:

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


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals, in nested dicts too (for the printed line; the JSON keeps full precision)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def run_benchmarks(what: str, config_path: str, overrides: list[str], out: Path, *, tiny: bool = False) -> dict:
    from sppo_ray.orchestration.preflight import plan_run
    from sppo_ray.orchestration.session import init_ray

    if tiny:
        overrides = ["generation.max_new_tokens=16", "generation.k=2", *overrides]
    config = load_config(config_path, overrides)
    plan = plan_run(config)
    init_ray(config)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}

    def keep(name: str, result: dict[str, Any]) -> None:
        """Write each benchmark's JSON as soon as it is measured: a later benchmark failing loses nothing."""
        results[name] = {**result, "machine": {"cpus": os.cpu_count()}}
        (out / f"{name}.json").write_text(json.dumps(results[name], indent=2) + "\n")
        print(f"bench {name}: " + json.dumps(_rounded(results[name])), flush=True)

    n_prompts, repeats = (4, 1) if tiny else (16, 3)
    if what in ("generation", "judging", "all"):
        gen = _generation(config, plan, n_prompts, repeats)
        table = gen.pop("generated_table")
        if what in ("generation", "all"):
            keep("generation", gen)
        if what in ("judging", "all"):
            keep("judging", _judging(config, plan, table, repeats))
    if what in ("weight-sync", "all"):
        keep("weight_sync", _weight_sync(config, plan))
    if what in ("training", "all"):
        from sppo_ray.training.bench import bench_training

        keep("training", bench_training(config, plan, out, tiny=tiny))
    if what in ("memory", "all"):
        from sppo_ray.bench_memory import bench_memory

        keep("memory", bench_memory(config, plan, out))
    if what in ("round", "all"):
        from sppo_ray.bench_round import bench_round

        keep("round", bench_round(config, plan, out, n_prompts=8 if tiny else config.data.prompts_per_iteration))
    return results
