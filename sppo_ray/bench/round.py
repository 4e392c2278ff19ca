"""Round benchmark: one SPPO round through our pipeline vs a sequential, reference-style round on the same prompts.

Pipeline: the driver's own ``run_round`` with the session's long-lived actors (their start-up is paid once per
job and reported apart). Reference-style, the shape of uclaml/SPPO's shell loop, each phase a fresh program:

- generate: start a vLLM engine, one pass over all prompts per sample index (its own seed), stop the engine;
- judge: load the judge, score every ordered pair one at a time (batch size 1), rank-score table;
- train: plain DeepSpeed processes that keep a second, frozen reference model and recompute the reference
  log-probs every micro-batch, then save the model to disk (the next round's engine would load it from there).

Both rounds use the same config (K, lengths, judge, DeepSpeed settings, workers) and the same prompts.
"""

from __future__ import annotations

import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.config import RunConfig
from sppo_ray.data.prompts import Prompt

__all__ = ["bench_round", "pipeline_round"]


def pipeline_round(config: RunConfig, plan, prompts: list[Prompt], run_dir: Path,
                   watch: Callable[[Any], AbstractContextManager] | None = None, rounds: int = 1,
                   on_round_start: Callable[[int], None] | None = None, metrics=None,
                   after: Callable[[Any], None] | None = None):
    """Round 0 (and the next ``rounds`` - 1 on the same prompts) on fresh long-lived actors into a fresh
    ``run_dir``: (its RunDir, the actors' start-up seconds). ``watch(session)`` wraps round 0 itself, not the
    start-up; ``on_round_start(t)`` is called before each round; ``metrics``: the driver's RunMetrics (told each
    stage as it starts), a fresh one by default; ``after(session)`` runs once the rounds are done, on their
    session."""
    from sppo_ray.orchestration.driver import run_round
    from sppo_ray.orchestration.metrics import RunMetrics
    from sppo_ray.orchestration.rundir import RunDir
    from sppo_ray.orchestration.session import Session

    shutil.rmtree(run_dir, ignore_errors=True)
    rd = RunDir(str(run_dir))
    rd.write_config(config.to_dict())
    started = time.perf_counter()
    session = Session.start(config, plan.policy_path, plan.judge_path)
    startup = time.perf_counter() - started
    try:
        metrics = metrics or RunMetrics(f"{config.name}-bench")
        for t in range(rounds):
            with watch(session) if watch and t == 0 else nullcontext():
                if on_round_start is not None:
                    on_round_start(t)
                run_round(t, prompts, session, rd, config, metrics)
        if after is not None:
            after(session)
    finally:
        session.shutdown()
    return rd, startup


def _pipeline_round(config: RunConfig, plan, prompts: list[Prompt], run_dir: Path) -> dict[str, Any]:
    rd, startup = pipeline_round(config, plan, prompts, run_dir)
    summary = rd.manifest()["rounds"]["0"]
    return {"actor_startup_seconds": startup, "round_seconds": summary["seconds"]["round"],
            "phases": summary["seconds"], "train_rows": summary["train_rows"]}


def _reference_generate(config: RunConfig, plan, prompts: list[Prompt]) -> list[dict[str, Any]]:
    from sppo_ray.bench.engines import BareVLLM
    from sppo_ray.generation.stage import generator_options

    engine = ray.remote(BareVLLM).options(**generator_options(config.resources)).remote(
        str(plan.policy_path), config.generation)
    try:
        return ray.get(engine.sample_passes.remote([(p.id, list(p.messages)) for p in prompts]))
    finally:
        shutdown_pool([engine])


def _reference_judge(config: RunConfig, plan, rows: list[dict[str, Any]], train_file: Path) -> int:
    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.judging.scoring import judge_rows
    from sppo_ray.judging.stage import JUDGED_SCHEMA, RemoteJudge, build_judge_actors, build_training_table

    judge_actor = build_judge_actors(str(plan.judge_path) if plan.judge_path else None, config.judge,
                                     config.resources)[0]
    try:
        judged = judge_rows(rows, RemoteJudge(judge_actor, batch_size=1), "reference", "pair")
    finally:
        shutdown_pool([judge_actor])
    table = build_training_table(pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA),
                                 pa.Table.from_pylist(judged, schema=JUDGED_SCHEMA))
    pq.write_table(table, train_file)
    return table.num_rows


def _reference_round(config: RunConfig, plan, prompts: list[Prompt], work: Path) -> dict[str, Any]:
    from sppo_ray.bench.training import bare_fit

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    phases: dict[str, float] = {}
    started = time.perf_counter()
    rows = _reference_generate(config, plan, prompts)
    phases["generate"] = time.perf_counter() - started
    started = time.perf_counter()
    train_rows = _reference_judge(config, plan, rows, work / "train.parquet")
    phases["judge"] = time.perf_counter() - started
    started = time.perf_counter()
    bare_fit(work / "train.parquet", str(plan.policy_path), config.training.model_dump(mode="json"),
             config.resources.train_workers, work, second_reference=True, save_dir=work / "model")
    phases["train"] = time.perf_counter() - started
    return {"round_seconds": sum(phases.values()), "phases": phases, "train_rows": train_rows}


def bench_round(config: RunConfig, plan, out: Path, n_prompts: int) -> dict[str, Any]:
    """Time both rounds on the first ``n_prompts`` prompts of round 0; the figure is reference / pipeline."""
    prompts = plan.rounds[0][:n_prompts]
    pipeline = _pipeline_round(config, plan, prompts, out / "round_pipeline")
    reference = _reference_round(config, plan, prompts, out / "round_reference")
    rounds = config.iterations
    amortised = pipeline["round_seconds"] + pipeline["actor_startup_seconds"] / rounds
    return {
        "prompts": len(prompts), "k": config.generation.k, "max_new_tokens": config.generation.max_new_tokens,
        "judge": config.judge.kind, "pipeline": pipeline, "reference": reference,
        "ratio_reference_over_pipeline": reference["round_seconds"] / pipeline["round_seconds"],
        # the pipeline's actors start once per job: their start-up shared over the job's rounds
        "ratio_reference_over_pipeline_with_startup": reference["round_seconds"] / amortised,
        "startup_shared_over_rounds": rounds,
    }
