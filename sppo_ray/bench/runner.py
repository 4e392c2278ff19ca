"""`sppo-ray bench`: each stage against its bare engine, measured in the same run on the same inputs.

Every figure that matters is a ratio (these machines are noisy; absolute times mean little). Results are printed
and written as JSON to the output directory, one file per benchmark.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sppo_ray.config import load_config
from sppo_ray.runtime import set_role_log_dir

__all__ = ["run_benchmarks"]


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals, in nested dicts too (for the printed line; the JSON keeps full precision)."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def run_benchmarks(what: str, config_path: str, overrides: list[str], out: Path, *, tiny: bool = False,
                   sizes: list[int] | None = None, rounds: int = 1, pairs: int = 3,
                   generation_only: bool = False) -> dict:
    from sppo_ray.orchestration.preflight import plan_run
    from sppo_ray.orchestration.session import init_ray

    if what == "scale":  # tiny random models always (the orchestration's cost, not a model's), at its settings
        from sppo_ray.bench.scale import SCALE_OVERRIDES
        from sppo_ray.orchestration.rehearse import tiny_models

        scaled = load_config(config_path, [*SCALE_OVERRIDES, *overrides])
        policy, _ = tiny_models(scaled, out / "tiny_models")
        small = ["training.global_batch_size=8", "training.micro_batch_size=2"] if tiny else []  # 40 prompts
        overrides = [*SCALE_OVERRIDES, *small, f"models.policy={policy}", *overrides]
    elif tiny:  # the benchmarks' machinery at the smallest sizes, on tiny random models of the config's architectures
        from sppo_ray.orchestration.rehearse import tiny_models

        policy, judge = tiny_models(load_config(config_path, overrides), out / "tiny_models")
        overrides = ["generation.max_new_tokens=16", "generation.k=2", f"models.policy={policy}",
                     *([f"models.judge={judge}"] if judge else []), *overrides]
    config = load_config(config_path, overrides)
    set_role_log_dir(str((out / "logs").resolve()))  # the roles' output, as in a run
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
        from sppo_ray.bench.generation import bench_generation

        gen = bench_generation(config, plan, n_prompts, repeats)
        table = gen.pop("generated_table")
        if what in ("generation", "all"):
            keep("generation", gen)
        if what in ("judging", "all"):
            from sppo_ray.bench.judging import bench_judging

            keep("judging", bench_judging(config, plan, table, repeats))
    if what in ("weight-sync", "all"):
        from sppo_ray.bench.weight_sync import bench_weight_sync

        keep("weight_sync", bench_weight_sync(config, plan))
    if what in ("training", "all"):
        from sppo_ray.bench.training import bench_training

        keep("training", bench_training(config, plan, out, tiny=tiny))
    if what == "memory" or (what == "all" and not tiny):  # a 1.1 B model: the integration tests cover it in CI
        from sppo_ray.bench.memory import bench_memory

        keep("memory", bench_memory(config, plan, out))
    if what == "scale" and generation_only:  # the pairs alone, on fresh generators: minutes, not tens of them
        from sppo_ray.bench.scale import generation_pairs, pairs_table

        result = generation_pairs(config, plan, out, sizes or ([40] if tiny else [1000]), pairs,
                                  keep=lambda partial: keep("scale_generation", partial))
        keep("scale_generation", result)
        print(pairs_table(result), flush=True)
    elif what == "scale":
        from sppo_ray.bench.scale import bench_scale, scale_table

        result = bench_scale(config, plan, out, sizes or ([40, 80] if tiny else [1000, 2000, 5000]),
                             keep=lambda partial: keep("scale", partial), rounds=rounds, pairs=pairs,
                             **({"paper_shape": (200, 45)} if tiny else {}))
        keep("scale", result)
        print(scale_table(result), flush=True)
    if what in ("round", "all"):
        from sppo_ray.bench.round import bench_round

        keep("round", bench_round(config, plan, out, n_prompts=8 if tiny else config.data.prompts_per_iteration))
    return results
