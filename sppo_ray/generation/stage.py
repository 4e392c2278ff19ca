"""The generation stage: a Ray Dataset of prompts streamed through the long-lived generator actors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

import pyarrow as pa
import pyarrow.compute as pc
import ray

from sppo_ray.actor_pool import NODE_WAIT_S, in_order, stream_through_actors
from sppo_ray.config import GenerationConfig, ResourcesConfig
from sppo_ray.contracts import PolicyWeights
from sppo_ray.data.prompts import Prompt
from sppo_ray.generation.actor import GeneratorActor
from sppo_ray.generation.weights import ShardSource, has_files
from sppo_ray.runtime import role_env

__all__ = [
    "GENERATION_SCHEMA",
    "GenerationResult",
    "build_generator_actors",
    "engine_threads",
    "generator_options",
    "push_weights",
    "run_generation_stage",
    "weights_args",
]

# Columns of responses.parquet (see contracts.GeneratedPrompt).
GENERATION_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("messages_json", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("responses", pa.list_(pa.string())),
        ("response_token_ids", pa.list_(pa.list_(pa.int32()))),
        ("num_tokens", pa.list_(pa.int32())),
        ("finish_reasons", pa.list_(pa.string())),
        ("policy_version", pa.int64()),
        ("truncated", pa.bool_()),
    ]
)


# Batches in flight per generator: the next batch is already in the engine while the current one finishes
# (see generation/engine_loop.py), so the engine's continuous batching spans Ray Data batches.
CALLS_PER_GENERATOR = 2


def engine_threads(res: ResourcesConfig) -> int:
    """Threads per vLLM engine on CPU: ``resources.actor_threads`` if set; on a one-node cluster the node's cores
    shared by the generators (only one stage is busy at a time, so an engine may use cores that the judges and train
    workers reserve); on a larger cluster the generator's CPU reservation."""
    if res.actor_threads:
        return res.actor_threads
    if len([n for n in ray.nodes() if n["Alive"]]) == 1:
        return max(1, len(os.sched_getaffinity(0)) // res.generators)
    return max(1, int(res.generator_cpus))


def generator_options(res: ResourcesConfig) -> dict[str, Any]:
    """Ray options of a vLLM engine's actor: its resources, vLLM's log level and, on CPU, its thread count.

    Ray sets OMP_NUM_THREADS to an actor's CPU reservation (usually 1), which would run the engine on one core. It
    is set for the whole process through the runtime env: every thread of a threaded actor must see the same count
    (vLLM's CPU attention checks it).
    """
    env = role_env()  # vLLM at WARNING unless --verbose; the run's log dir
    if not res.generator_gpus or res.logical_gpus:  # CPU engines (also on CPU nodes that declare GPUs)
        env["OMP_NUM_THREADS"] = str(engine_threads(res))
    return {"num_cpus": res.generator_cpus, "num_gpus": res.generator_gpus * res.tensor_parallel,
            "runtime_env": {"env_vars": env}}


def build_generator_actors(model_path: str, cfg: GenerationConfig, res: ResourcesConfig, placement: Any = None,
                           weight_transfer: str | None = None) -> list[Any]:
    """Start the generator pool and wait until every engine is up.

    ``placement`` (a :class:`~sppo_ray.orchestration.colocation.Colocation`) puts generator ``i`` into bundle ``i``
    and builds the engines to sleep while the other roles use their GPUs; ``weight_transfer`` ("ipc", "nccl")
    builds them to receive π_{t+1} from the train workers through vLLM's weight-transfer API. Actors restart if
    their process dies (``max_restarts``); a call in flight then fails and the stage retries it, first bringing the
    restarted engine (which holds π_0) to the expected policy version.
    """
    options = dict(**generator_options(res), max_restarts=3, max_task_retries=0, max_concurrency=CALLS_PER_GENERATOR)
    actors = [
        ray.remote(GeneratorActor).options(**options, **(placement.options(i) if placement else {}))
        .remote(model_path, cfg, res.tensor_parallel, placement is not None, weight_transfer, i)
        for i in range(res.generators)
    ]
    ray.get([a.ready.remote() for a in actors])
    return actors


def push_weights(generator_actors: list[Any], weights: PolicyWeights) -> list[float]:
    """Broadcast one policy version to every generator in place; returns each actor's reload seconds.

    A version given as a directory reaches each generator without passing through the caller: generators that see
    its files load them from disk, the others pull them one shard at a time from a ShardSource started for this
    broadcast on the caller's node (see generation/weights.py). A version given as a state dict ObjectRef travels
    through the object store (Ray copies it once per node). The engines never restart.
    """
    if weights.path is not None and weights.files and weights.shard_source is None:
        visible = ray.get([a.can_read.remote(weights.path, weights.files) for a in generator_actors])
        if not all(visible):
            if not has_files(weights.path, weights.files):
                raise FileNotFoundError(f"policy v{weights.version}: {weights.path} is readable neither by every "
                                        "generator nor on this node, so its shards cannot be served")
            source = _shard_source(weights.path)
            try:
                return _update(generator_actors, dataclasses.replace(weights, shard_source=source))
            finally:
                ray.kill(source)
    return _update(generator_actors, weights)


def _update(generator_actors: list[Any], w: PolicyWeights) -> list[float]:
    return ray.get([a.load_policy.remote(*weights_args(w)) for a in generator_actors])


def weights_args(w: PolicyWeights) -> tuple:
    """``GeneratorActor.load_policy`` arguments for a policy version."""
    return (w.version, w.state_dict_ref, w.path, w.files, w.shard_source)


def _shard_source(model_dir: str) -> Any:
    """A ShardSource on this process's node, which can read ``model_dir`` (it is where the export was collected)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(ShardSource).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
    ).remote(model_dir)


@dataclass
class GenerationResult:
    # One GeneratedPrompt row per prompt generated now, in prompt order (None when the caller kept none).
    table: pa.Table | None
    # Prompts skipped by the length policy or because they were empty: {prompt_id, reason}.
    rejects: list[dict[str, str]] = field(default_factory=list)
    # Of the rows generated now: those cut at max_new_tokens, and their tokens.
    truncated: int = 0
    seconds: float = 0.0
    generated_tokens: int = 0
    # Prompts in ``done`` (an interrupted execution's chunks) that were not generated again.
    reused: int = 0


def _batch_size(prompts: int, actors: int, configured: int) -> int:
    """Prompts per call: at most the configured size, and small enough that every actor gets two calls.

    Calls to one generator share its engine (their sequences batch together), so smaller calls cost nothing, and
    with fewer than two per actor the work would not spread evenly over the actors.
    """
    return max(1, min(configured, math.ceil(prompts / (actors * CALLS_PER_GENERATOR))))


def _prompt_blocks(prompts: list[Prompt], batch_size: int) -> "ray.data.Dataset":
    """The prompts as a Ray Dataset of Arrow blocks of one call each (a block is at most one task: one block of
    all would run the calls one after another), built a block at a time rather than from a Python dict per
    prompt."""
    schema = pa.schema([("prompt_id", pa.string()), ("messages_json", pa.string())])
    return ray.data.from_arrow([
        pa.table([pa.array([p.id for p in part], pa.string()),
                  pa.array([json.dumps(list(p.messages)) for p in part], pa.string())], schema=schema)
        for part in (prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size))
    ])


def run_generation_stage(
    prompts: list[Prompt],
    generator_actors: list[Any],
    weights: PolicyWeights,
    iteration: int,
    cfg: GenerationConfig,
    samples: int | None = None,
    done: Collection[str] = (),
    on_rows: Callable[[pa.Table], None] | None = None,
    wait_s: float = NODE_WAIT_S,
    keep: bool = True,
) -> GenerationResult:
    """Stream one round's prompts through the generators; every usable prompt yields exactly one row.

    ``samples`` overrides K (evaluation samples 1 or best-of-N); ``iteration`` enters every sample's seed.
    ``done`` names prompts an interrupted execution already generated (same round, same policy): they are not
    generated again. ``on_rows`` receives each block of new rows as it arrives (the driver writes them in chunks);
    with ``keep`` False the stage keeps none of them (``table`` is None). Every sample has its own seed, so the
    result is the same however the prompts were split. A batch whose generator died waits up to ``wait_s`` for it
    to come back (``resources.node_wait_s``).
    """
    started = time.perf_counter()
    done = set(done)
    todo = [p for p in prompts if p.id not in done]
    counts = {"tokens": 0, "truncated": 0}

    def arrived(rows: pa.Table) -> None:
        counts["tokens"] += pc.sum(pc.list_flatten(rows.column("num_tokens"))).as_py() or 0
        counts["truncated"] += pc.sum(rows.column("truncated").cast(pa.int64())).as_py() or 0
        if on_rows is not None:
            on_rows(rows)

    table, records = GENERATION_SCHEMA.empty_table(), []
    if todo:
        batch_size = _batch_size(len(todo), len(generator_actors), cfg.batch_size)
        table, records = stream_through_actors(
            _prompt_blocks(todo, batch_size),
            generator_actors,
            "generate",
            kwargs={"iteration": iteration, "expected_version": weights.version, "samples": samples},
            schema=GENERATION_SCHEMA,
            batch_size=batch_size,
            per_actor=CALLS_PER_GENERATOR,
            recover=("load_policy", weights_args(weights)),
            on_block=arrived,
            wait_s=wait_s,
            keep=keep,
        )
    rejects = [r for r in records if r["reason"] != "truncated"]
    return GenerationResult(in_order(table, "prompt_id", [p.id for p in todo]) if keep else None, rejects,
                            counts["truncated"], time.perf_counter() - started, counts["tokens"],
                            len(prompts) - len(todo))
