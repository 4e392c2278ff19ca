"""`sppo-ray bench`: each stage against its bare engine, measured in the same run on the same inputs.

Every figure that matters is a ratio (these machines are noisy; absolute times mean little). Results are printed
and written as JSON to the output directory, one file per benchmark.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import ray

from sppo_ray.config import RunConfig, load_config
from sppo_ray.contracts import PolicyWeights

__all__ = ["BareVLLM", "run_benchmarks"]


class BareVLLM:
    """A plain vLLM engine in a Ray actor, driven with one `LLM.chat` call: the generation baseline."""

    def __init__(self, model_path: str, cfg) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        from vllm import LLM

        from sppo_ray.generation.actor import _engine_dtype

        self.llm = LLM(model=model_path, dtype=_engine_dtype(cfg.dtype), enforce_eager=True, seed=cfg.seed,
                       max_model_len=cfg.max_model_len or cfg.max_prompt_tokens + cfg.max_new_tokens)
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


def _generation(config: RunConfig, plan, n_prompts: int) -> dict[str, Any]:
    from sppo_ray.generation.stage import build_generator_actors, run_generation_stage

    prompts = plan.rounds[0][:n_prompts]
    out: dict[str, Any] = {"prompts": len(prompts), "k": config.generation.k,
                           "max_new_tokens": config.generation.max_new_tokens}
    bare = ray.remote(BareVLLM).options(num_cpus=config.resources.generator_cpus).remote(
        str(plan.policy_path), config.generation)
    convs = [list(p.messages) for p in prompts]
    ray.get(bare.run.remote(convs[:2]))  # warm-up
    b = ray.get(bare.run.remote(convs))
    ray.get(bare.shutdown.remote())
    ray.kill(bare)
    out["bare_tokens_per_s"] = b["tokens"] / b["seconds"]
    for n in (1, 2):
        res = config.resources.model_copy(update={"generators": n})
        actors = build_generator_actors(str(plan.policy_path), config.generation, res)
        run_generation_stage(prompts[:2], actors, PolicyWeights(0), 99, config.generation)  # warm-up
        r = run_generation_stage(prompts, actors, PolicyWeights(0), 0, config.generation)
        out[f"pipeline_{n}_generators_tokens_per_s"] = r.generated_tokens / r.seconds
        if n == 1:
            out["generated_table"] = r.table
        for a in actors:
            ray.get(a.shutdown.remote())
            ray.kill(a)
    out["pipeline_tokens_per_s"] = out["pipeline_1_generators_tokens_per_s"]
    out["ratio_pipeline_over_bare"] = out["pipeline_tokens_per_s"] / out["bare_tokens_per_s"]
    out["ratio_2_over_1_generators"] = out["pipeline_2_generators_tokens_per_s"] / out["pipeline_tokens_per_s"]
    return out


def _judging(config: RunConfig, plan, generated) -> dict[str, Any]:
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
    stage = run_judging_stage(generated, actors, config.judge)
    bare_s = ray.get(actors[0].time_pair_logits.remote(prompts, first, second, config.judge.batch_size))
    one_s = ray.get(actors[0].time_pair_logits.remote(prompts, first, second, 1))
    for a in actors:
        ray.kill(a)
    n = len(prompts)
    return {"pairs": n, "judge": config.judge.kind, "batch_size": config.judge.batch_size,
            "stage_pairs_per_s": n / stage.seconds, "bare_batched_pairs_per_s": n / bare_s,
            "batch1_pairs_per_s": n / one_s,
            "ratio_stage_over_bare": (n / stage.seconds) / (n / bare_s),
            "ratio_stage_over_batch1": (n / stage.seconds) / (n / one_s)}


def _weight_sync(config: RunConfig, plan) -> dict[str, Any]:

    from sppo_ray.generation.stage import build_generator_actors, push_weights
    from sppo_ray.orchestration.session import load_weights

    actors = build_generator_actors(str(plan.policy_path), config.generation, config.resources)
    pid_before = ray.get(actors[0].ready.remote())["pid"]
    weights = load_weights(plan.policy_path, 1)
    state = ray.get(weights.state_dict_ref)
    started = time.perf_counter()
    copied = {k: v.clone() for k, v in state.items()}
    copy_s = time.perf_counter() - started
    nbytes = sum(v.numel() * v.element_size() for v in copied.values())
    started = time.perf_counter()
    push_weights(actors, weights)
    sync_s = time.perf_counter() - started
    pid_after = ray.get(actors[0].ready.remote())["pid"]
    for a in actors:
        ray.get(a.shutdown.remote())
        ray.kill(a)
    return {"weight_bytes": nbytes, "sync_seconds": sync_s, "memory_copy_seconds": copy_s,
            "ratio_sync_over_copy": sync_s / copy_s, "engine_restarted": pid_before != pid_after}


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
    n_prompts = 4 if tiny else 16
    if what in ("generation", "judging", "all"):
        gen = _generation(config, plan, n_prompts)
        table = gen.pop("generated_table")
        if what in ("generation", "all"):
            results["generation"] = gen
        if what in ("judging", "all"):
            results["judging"] = _judging(config, plan, table)
    if what in ("weight-sync", "all"):
        results["weight_sync"] = _weight_sync(config, plan)
    if what in ("training", "all"):
        from sppo_ray.training.bench import bench_training

        results["training"] = bench_training(config, plan, out, tiny=tiny)
    if what in ("round", "all"):
        from sppo_ray.bench_round import bench_round

        results["round"] = bench_round(config, plan, out, n_prompts=8 if tiny else config.data.prompts_per_iteration)
    for name, r in results.items():
        r["machine"] = {"cpus": os.cpu_count()}
        (out / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
        print(f"bench {name}: " + json.dumps(_rounded(r)))
    return results
