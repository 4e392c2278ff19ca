"""`sppo-ray run` / `resume`: SPPO rounds as recorded stages (generate -> judge -> dataset -> train -> broadcast).

Each stage writes its outputs to the run directory and is then recorded in the manifest; a resumed run loads
finished stages instead of repeating them, so it produces the same data as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from sppo_ray.config import RunConfig, apply_overrides, load_config, parse_config
from sppo_ray.data.prompts import Prompt
from sppo_ray.data.trl_format import TRL_SCHEMA, trl_preference_table
from sppo_ray.errors import RunFailedError, RunStateError, UserError
from sppo_ray.generation.stage import GENERATION_SCHEMA, run_generation_stage
from sppo_ray.judging.stage import JUDGED_SCHEMA, TRAINING_SCHEMA, build_training_table, run_judging_stage
from sppo_ray.orchestration import summary
from sppo_ray.orchestration.chunks import StageChunks
from sppo_ray.orchestration.local_cluster import record_local_cluster, stop_stale_local_cluster
from sppo_ray.orchestration.metrics import RunMetrics
from sppo_ray.orchestration.nodes import check_cuda
from sppo_ray.orchestration.preflight import Plan, check_cluster_plan, plan_run
from sppo_ray.orchestration.progress import Progress
from sppo_ray.orchestration.rundir import ROW_GROUP_ROWS, RunDir, changed_keys
from sppo_ray.generation.vllm_compat import check_vllm
from sppo_ray.generation.weights import policy_weights
from sppo_ray.orchestration.session import Session, init_ray
from sppo_ray.orchestration.tracking import Tracker, build_tracker, round_metrics, train_step_metrics
from sppo_ray.row_files import ParquetRows, aligned_slices
from sppo_ray.runtime import set_role_log_dir, trim_heap, verbose
from sppo_ray.training.trainer import run_training

__all__ = ["PROBE_QUESTION", "resume", "run", "run_round"]

_STAGES = ("generate", "judge", "dataset", "train")  # the recorded stages of a round, in order
# Prompts per slice of the dataset stage (one row group of train.parquet each), as many as a row group of
# responses.parquet: at the paper's round, ~5 MB of training rows at a time instead of the whole set (see
# BENCHMARKS.md "Scale").
DATASET_SLICE = ROW_GROUP_ROWS

PROBE_QUESTION = "What is the capital of France?"
# Scored by every generator after each broadcast (round summary "fingerprints"): the policy it holds, token by token.
FINGERPRINT_TEXT = "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level."


def run(config_path: str, overrides: list[str] | None = None, *, fresh: bool = False) -> Path:
    """Start a run from a config file. Refuses to overwrite an existing run unless ``fresh``."""
    config = load_config(config_path, overrides)
    plan = plan_run(config)  # models, prompts and splits fail here, before any actor starts
    rd = RunDir(config.run_dir)
    if rd.exists("manifest.json"):
        if not fresh:
            raise RunStateError(
                f"{config.run_dir} already holds a run: `sppo-ray resume {config.run_dir}` continues it, "
                "--fresh starts over"
            )
        rd.fs.delete_dir_contents(rd.root)
    return _execute(plan, rd)


def resume(run_dir: str, *, config_path: str | None = None, overrides: list[str] | None = None,
           allow_change: bool = False) -> Path:
    """Continue a run from its last finished stage; refuses a changed config unless ``allow_change``."""
    rd = RunDir(run_dir)
    if not rd.exists("config.yaml"):
        raise RunStateError(f"{run_dir} is not a run directory (no config.yaml)")
    saved = rd.read_config()
    config = load_config(config_path, overrides) if config_path else parse_config(apply_overrides(saved, overrides or []))
    changes = changed_keys(saved, config.to_dict())
    if changes and not allow_change:
        raise RunStateError("config differs from the run's; pass --allow-config-change to resume anyway:\n  "
                            + "\n  ".join(changes))
    return _execute(plan_run(config), rd)


def _execute(plan: Plan, rd: RunDir) -> Path:
    config = plan.config
    rd.local_path("")  # fails now, before any actor starts, if the run dir cannot hold model directories
    check_vllm(check_api=False)  # the generators check the API too; a wrong release fails here, not mid-round
    rd.write_config(config.to_dict())
    rd.write_bytes("rejects.jsonl", "".join(json.dumps({**r.__dict__}) + "\n" for r in plan.prompt_set.rejects).encode())
    stop_stale_local_cluster(rd)  # left running by a killed driver of this run; never another cluster
    set_role_log_dir(rd.local_path("logs"))  # each role's process writes its output there
    with _one_line_errors(rd, {}):  # an engine or judge that cannot start: one line, the traceback in the run
        started_local = init_ray(config)
        check_cluster_plan(config, plan.policy_path)  # GPU runs: what does not fit fails here, before any actor
        check_cuda(config)  # GPU runs: CUDA and its driver on every GPU node, before any role falls back to CPU
        session = Session.start(config, plan.policy_path, plan.judge_path)
    _write_placement(rd, session)  # where each role starts (again at the end: restarted actors may have moved)
    if started_local:  # after the actors start, so their node's agents are up and recorded too
        record_local_cluster(rd)
    metrics = RunMetrics(config.name)
    tracker = build_tracker(config.tracking, rd.local_path(""), config.name)
    progress, outcome = Progress(rd, on_update=metrics.progress), "failed"
    try:
        for t, prompts in enumerate(plan.rounds):
            run_round(t, prompts, session, rd, config, metrics, tracker, progress)
        if config.eval_at_end:
            from sppo_ray.orchestration.evaluate import evaluate_session

            progress.stage(len(plan.rounds), "evaluate")
            result = evaluate_session(session, rd, config, plan.held_out)
            tracker.log_metrics({f"eval/win_rate_vs_pi_0/{m}": w for m, w in
                                 zip(result["models"], result["win_rate_vs_first"])}, len(plan.rounds))
        print(summary.run_table(rd.manifest()), flush=True)
        if config.tracking.kind != "none":  # the report's plots go to the tracker too
            _track_report(rd, tracker)
        outcome = "finished"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except Exception as err:
        with _one_line_errors(rd, progress.state):
            raise err
    finally:
        set_role_log_dir(None)
        progress.close(outcome)
        tracker.close()
        _write_placement(rd, session)
        if (report := session.colocation_report()) is not None:  # where each role ran, its sleeps and wake-ups
            rd.write_bytes("colocation.json", (json.dumps(report, indent=1) + "\n").encode())
        session.shutdown()
    return Path(rd.root)


def _write_placement(rd: RunDir, session: Session) -> None:
    rd.write_bytes("placement.json", (json.dumps(session.placement_report(), indent=1) + "\n").encode())


def _track_report(rd: RunDir, tracker: Tracker) -> None:
    from sppo_ray.report import write_report

    report = write_report(Path(rd.local_path("")))
    for png in sorted(report.parent.glob("*.png")):
        tracker.log_image(f"report/{png.stem}", png)


def run_round(t: int, prompts: list[Prompt], session: Session, rd: RunDir, config: RunConfig,
              metrics: RunMetrics, tracker: Tracker | None = None, progress: Progress | None = None) -> None:
    """One SPPO round: π_t samples K responses, the judge fills K×K tables, DeepSpeed fits π_{t+1}, generators get it."""
    manifest = rd.manifest()
    if (finished := manifest["rounds"].get(str(t))) is not None:  # resumed past it: the next generation broadcasts
        print(summary.round_table(finished), flush=True)
        return
    done = {s: manifest["stages"].get(f"round_{t}/{s}") for s in _STAGES}
    skipped = {s: rec["seconds"] for s, rec in done.items() if rec}
    timer = _Timer(t, metrics, progress)
    with timer("generate"):
        generated = _generate(t, prompts, session, rd, config, progress)
    with timer("judge"):
        judged = _judge(t, prompts, generated, session, rd, config, progress)
    with timer("dataset"):
        _dataset(t, generated, judged, rd)
    data = summary.round_data(generated.column("num_tokens"), judged)
    del judged  # the round's largest objects in the driver: not held through the fit
    with timer("train"):
        model_dir, train_metrics = _train(t, rd, config, session, progress)
    with timer("broadcast"):
        session.broadcast(policy_weights(model_dir, t + 1), after_transfer="train" not in skipped
                          and config.weight_transfer is not None)
    probe = session.probe(PROBE_QUESTION)
    timer.finish(skipped)
    round_summary = summary.round_summary(t, data, rd, train_metrics, timer.seconds, probe)
    round_summary["fingerprints"] = session.fingerprints(FINGERPRINT_TEXT)
    rd.record_round(t, round_summary)
    metrics.round_done(round_summary)
    if tracker is not None:
        _track_round(t, rd, round_summary, train_metrics, tracker)
    print(summary.round_table(round_summary), flush=True)


def _track_round(t: int, rd: RunDir, round_summary: dict[str, Any], train_metrics: list[dict[str, Any]],
                 tracker: Tracker) -> None:
    """The round's optimiser steps (counted across rounds) and its summary (at step t)."""
    offset = sum(rd.done(u, "train")["steps"] for u in range(t))
    for m in train_metrics:
        tracker.log_metrics(train_step_metrics(m), offset + m["step"])
    tracker.log_metrics(round_metrics(round_summary), t)


def _generate(t: int, prompts: list[Prompt], session: Session, rd: RunDir, config: RunConfig,
              progress: Progress | None = None) -> ParquetRows:
    """The round's responses, written to responses.parquet as they arrive (in chunks, then assembled in prompt
    order): the driver never holds them."""
    rel = f"round_{t}/responses.parquet"
    if rd.done(t, "generate"):
        return ParquetRows(rd.path(rel), rd.fs)
    if session.generator_version != t:  # resumed: bring the generators to π_t first
        session.broadcast(policy_weights(rd.local_path(f"round_{t - 1}/model"), t), record=False)
    session.enter("generate")
    ids = hashlib.sha256("\n".join(p.id for p in prompts).encode()).hexdigest()
    inputs = {"prompt_ids": ids, "policy_version": session.weights.version}
    sampling = {f: getattr(config.generation, f) for f in config.generation.SAMPLING_FIELDS}
    chunks = StageChunks(rd, t, "generate", config.generation.chunk_prompts, {**inputs, "sampling": sampling},
                         GENERATION_SCHEMA, spool=True)
    done = chunks.done_ids(len(prompts))
    if progress is not None:
        progress.stage(t, "generate", total=len(prompts), already=len(done))
    result = run_generation_stage(prompts, session.generator_actors, session.weights, t, config.generation,
                                  done=done, on_rows=chunks.sink(progress), wait_s=config.resources.node_wait_s,
                                  keep=False)
    engines = session.release_generator_memory()
    if progress is not None:
        progress.add(len(result.rejects))  # handled too: skipped, so that the stage ends at total/total
    rejects = [{**r, "round": t, "stage": "generation"} for r in result.rejects]
    rd.write_bytes(f"round_{t}/rejects.jsonl", "".join(json.dumps(r) + "\n" for r in rejects).encode())
    digest, _ = chunks.assemble(rel, [p.id for p in prompts])
    counts = rd.read_parquet(rel, columns=["num_tokens", "truncated"])  # the reused chunks' rows too
    rd.record(t, "generate", outputs={rel: digest}, seconds=result.seconds, policy_version=session.weights.version,
              inputs=inputs, prompts=len(prompts), rejected=len(rejects),
              truncated=pc.sum(counts.column("truncated").cast(pa.int64())).as_py() or 0,
              generated_tokens=pc.sum(pc.list_flatten(counts.column("num_tokens"))).as_py() or 0,
              **({"from_chunks": result.reused} if result.reused else {}),
              engine_rss_mb={k: [round(e[f"rss_{k}"] / 2**20) for e in engines] for k in ("before", "after")})
    chunks.clear()
    return ParquetRows(rd.path(rel), rd.fs)


def _judge(t: int, prompts: list[Prompt], generated: ParquetRows, session: Session, rd: RunDir,
           config: RunConfig, progress: Progress | None = None) -> pa.Table:
    rel = f"round_{t}/tables.parquet"
    if rd.done(t, "judge"):
        return rd.read_parquet(rel)
    session.enter("judge")
    instructions = {p.id: p.instructions_json for p in prompts if p.instructions}  # for the verifier judge
    inputs = rd.done(t, "generate")["outputs"]
    judge = {"model": config.models.judge, **{f: getattr(config.judge, f) for f in config.judge.TABLE_FIELDS}}
    chunks = StageChunks(rd, t, "judge", config.judge.chunk_prompts, {**inputs, "judge": judge}, JUDGED_SCHEMA)
    finished = chunks.resume(generated.num_rows)
    if progress is not None:
        progress.stage(t, "judge", total=generated.num_rows, already=0 if finished is None else finished.num_rows)
    result = run_judging_stage(generated, session.judge_actors, config.judge, instructions,
                               on_rows=chunks.sink(progress), finished=finished,
                               wait_s=config.resources.node_wait_s)
    digest = rd.write_parquet(rel, result.table)
    rd.record(t, "judge", outputs={rel: digest}, seconds=result.seconds, pairs=result.pairs, inputs=inputs,
              judge_seconds=result.judge_seconds, **({"from_chunks": result.reused} if result.reused else {}))
    chunks.clear()
    return result.table


def _dataset(t: int, generated: ParquetRows, judged: pa.Table, rd: RunDir) -> None:
    rel = f"round_{t}/train.parquet"
    if rd.done(t, "dataset"):
        return
    started = time.perf_counter()
    trl_rel = f"round_{t}/train_trl.parquet"  # the same rows as TRL's DPOTrainer reads them
    # built and written DATASET_SLICE prompts at a time, the responses read as far as each slice needs: the driver
    # never holds the whole training set, nor the round's responses
    with rd.parquet_writer(rel, TRAINING_SCHEMA) as train, rd.parquet_writer(trl_rel, TRL_SCHEMA) as trl:
        slices = [judged.slice(start, DATASET_SLICE) for start in range(0, judged.num_rows, DATASET_SLICE)]
        for rows, judged_part in zip(aligned_slices(generated, slices, "prompt_id", DATASET_SLICE), slices):
            part = build_training_table(rows, judged_part)
            train.write(part)
            trl.write(trl_preference_table(part))
        if train.rows == 0:  # raised inside: neither file is committed
            raise RunStateError(f"round {t}: the judge found no preference in any prompt; nothing to train on")
    rd.record(t, "dataset", outputs={rel: train.digest, trl_rel: trl.digest}, seconds=time.perf_counter() - started,
              rows=train.rows, inputs={**rd.done(t, "generate")["outputs"], **rd.done(t, "judge")["outputs"]})


def _train(t: int, rd: RunDir, config: RunConfig, session: Session,
           progress: Progress | None = None) -> tuple[Path, list[dict[str, Any]]]:
    rel = f"round_{t}/model"
    start_model = session.base_policy if t == 0 else Path(rd.local_path(f"round_{t - 1}/model"))
    if not rd.done(t, "train"):
        session.enter("train")
        # π_{t+1} also straight from the train workers' GPUs into the engines, after the export
        send_to = (session.generator_actors, t + 1, config.weight_transfer, config.resources.tensor_parallel) \
            if config.weight_transfer else None
        result = run_training(rd.local_path(f"round_{t}/train.parquet"), str(start_model),
                              Path(rd.local_path(rel)), config.training, config.resources,
                              storage_path=rd.local_path("ray_train"), name=f"round_{t}", send_to=send_to,
                              run_name=config.name, on_steps=None if progress is None else
                              lambda p: progress.count(p["step"], p["total"], "steps", f"loss {p['loss']:.4g}"))
        rd.record(t, "train", outputs={rel: _dir_digest(result.model_dir)}, seconds=result.seconds,
                  steps=len(result.metrics), inputs={**rd.done(t, "dataset")["outputs"], "start_model": str(start_model)})
    metrics_file = Path(rd.local_path(rel)) / "train_metrics.jsonl"
    train_metrics = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    return Path(rd.local_path(rel)), train_metrics


@contextmanager
def _one_line_errors(rd: RunDir, where: dict[str, Any]) -> Iterator[None]:
    """An error from the block becomes :func:`_failed`'s one line, unless the user caused it or asked for
    ``--verbose``."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        if verbose():
            raise
        raise _failed(err, rd, where) from None


def _failed(err: Exception, rd: RunDir, where: dict[str, Any]) -> RunFailedError:
    """The one-line error of a failed stage; its whole traceback (with a role's remote one) goes to
    ``logs/driver-traceback.log`` beside the roles' own logs."""
    import traceback

    logs = Path(rd.local_path("logs"))
    logs.mkdir(parents=True, exist_ok=True)
    cause = _role_error(err)
    parts = traceback.format_exception(err)
    if cause is not err:  # the role's own error and its remote traceback, as Ray carried them
        parts += ["\nin the role:\n", getattr(err, "traceback_str", "") or "", *traceback.format_exception(cause)]
    (logs / "driver-traceback.log").write_text("".join(parts))
    name = type(cause).__name__
    text = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    if name == "UserCodeException":  # Ray Data's wrapper, carried without its cause: the task's error is in the text
        name, text = _task_error_line(str(err)) or (name, text)
    role = getattr(err, "function_name", None)  # e.g. GeneratorActor.generate
    stage = f"round {where['round']} {where['stage']}" if "stage" in where else "start-up"
    return RunFailedError(f"{stage} failed{f' in {role}' if role else ''}: {name}: {text[:300]}\n"
                          f"  traceback: {logs / 'driver-traceback.log'}; each role's output: {logs}/ "
                          "(--verbose prints it all here); `sppo-ray resume` continues from the last finished stage")


def _task_error_line(text: str) -> tuple[str, str] | None:
    """(class name, message) of the first error line of a remote traceback that is not one of Ray's wrappers."""
    import re

    for line in text.splitlines():
        found = re.match(r"^((?:[A-Za-z_]\w*\.)*)([A-Z]\w*): (\S.*)$", line.strip())
        if found and not found.group(1).startswith("ray."):
            return found.group(2), found.group(3)
    return None


def _role_error(err: BaseException) -> BaseException:
    """The error a role raised, out of Ray's RayTaskError (its ``cause``) and, for a Ray Data task, out of the
    UserCodeException raised from it where the chain survived."""
    cause = getattr(err, "cause", None)
    cause = cause if isinstance(cause, BaseException) else err
    if type(cause).__name__ == "UserCodeException" and cause.__cause__ is not None:
        return cause.__cause__
    return cause


def _dir_digest(path: Path, chunk: int = 16 * 2**20) -> str:
    """sha256 over the directory's safetensors files in name order, streamed (a 7B export is 15-30 GB)."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        with f.open("rb") as stream:
            while block := stream.read(chunk):
                h.update(block)
    return h.hexdigest()


def return_freed_memory() -> None:
    """Hand the heap a stage freed back to the OS (glibc's ``malloc_trim``). Ray's client threads free each task's
    buffers into glibc arenas that otherwise stay resident, so the driver's RSS would keep every stage's high-water
    mark on top of the next stage's (BENCHMARKS.md "Scale"). Elsewhere (macOS, musl) nothing is done there.
    Arrow's pool is asked first (the driver's is the system allocator, ``session.use_system_arrow_pool``; another
    pool, such as mimalloc in a process that did not switch, keeps the pages of the blocks a stage read)."""
    pa.default_memory_pool().release_unused()
    trim_heap()


class _Timer:
    """Names and times each phase of a round (seconds per phase, and the round's wall time)."""

    def __init__(self, t: int, metrics: RunMetrics, progress: Progress | None = None) -> None:
        self.t, self.metrics, self.progress, self.seconds = t, metrics, progress, {}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self.metrics.stage(self.t, phase)
        if self.progress is not None:
            self.progress.stage(self.t, phase)  # the streamed stages then give their counts
        began = time.perf_counter()
        yield
        self.seconds[phase] = time.perf_counter() - began
        return_freed_memory()
        if self.progress is not None:
            self.progress.end()

    def finish(self, skipped: dict[str, float]) -> None:
        """The round's wall time: its phases plus whatever ran between them (the orchestration overhead).

        ``skipped`` holds the recorded seconds of stages an earlier execution finished (a resumed run skips them):
        they count with the seconds they took then, not the instant it took to skip them.
        """
        self.seconds["round"] = time.perf_counter() - self.started
        for phase, seconds in skipped.items():
            self.seconds["round"] += seconds - self.seconds[phase]
            self.seconds[phase] = seconds
