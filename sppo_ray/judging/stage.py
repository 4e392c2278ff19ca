"""The judging stage: generated rows streamed through the long-lived judge actors, then the SPPO training set."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import ray

from sppo_ray.actor_pool import NODE_WAIT_S, in_order, stream_through_actors
from sppo_ray.arrow_lists import append_item, pick
from sppo_ray.config import JudgeConfig, ResourcesConfig
from sppo_ray.judging.actor import JudgeActor
from sppo_ray.row_files import ParquetRows, TableRows
from sppo_ray.runtime import role_env

__all__ = [
    "JUDGED_SCHEMA",
    "TRAINING_SCHEMA",
    "JudgingResult",
    "RemoteJudge",
    "ReplicatedJudge",
    "build_judge_actors",
    "build_training_table",
    "prompts_per_call",
    "run_judging_stage",
]

# Columns of tables.parquet (see contracts.JudgedPrompt).
JUDGED_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("logits", pa.list_(pa.float64())),
        ("table", pa.list_(pa.float64())),
        ("win_rates", pa.list_(pa.float64())),
        ("scores", pa.list_(pa.float64())),
        ("k", pa.int64()),
        ("judge", pa.string()),
        ("table_mode", pa.string()),
        ("policy_version", pa.int64()),
        ("kept", pa.list_(pa.int64())),
        ("skipped_reason", pa.string()),
    ]
)


# Batches in flight per judge replica: one in its forward, the next being tokenised.
CALLS_PER_JUDGE = 2
# At most this many prompts per judge call, unless the smallest call (4 batches of pairs) holds more. Each call is
# a Ray Data task, with its own scheduling and 0.1-0.3 MB of transient driver memory: at 20,000 prompts, smallest
# calls (6 prompts at K = 5) were 3,334 tasks, whose overhead was most of the stage's time (BENCHMARKS.md "Scale").
CALL_PROMPTS = 64
# Calls per replica's call slot that a stage aims for, so that the work still spreads evenly over the replicas.
CALLS_PER_SLOT = 4


def prompts_per_call(prompts: int, judges: int, batch_prompts: int) -> int:
    """Prompts per judge call: a multiple of ``batch_prompts`` (the smallest call), enough calls to keep every
    replica's slots fed (``CALLS_PER_SLOT`` each), and no more than ``CALL_PROMPTS`` unless the smallest call is."""
    wanted = math.ceil(prompts / max(1, judges * CALLS_PER_JUDGE * CALLS_PER_SLOT))
    return max(1, min(wanted, CALL_PROMPTS) // batch_prompts) * batch_prompts


def build_judge_actors(model_path: str | None, cfg: JudgeConfig, res: ResourcesConfig,
                       placement: Any = None) -> list[Any]:
    """One judge replica per actor (``resources.judges``, each with ``judge_gpus``), started and ready.

    Each takes two calls at once: the next batch is tokenised while the current one runs its forward (the judges
    let one forward run at a time). ``placement`` (a :class:`~sppo_ray.orchestration.colocation.Colocation`) puts
    replica ``i`` into bundle ``i``.
    """
    options = dict(num_cpus=res.judge_cpus, num_gpus=res.judge_gpus, max_restarts=3, max_task_retries=0,
                   max_concurrency=CALLS_PER_JUDGE, runtime_env={"env_vars": role_env()})
    # Ray narrows CUDA_VISIBLE_DEVICES to an actor's own GPUs, but leaves it alone for an actor without any: a
    # judge_gpus 0 judge on a GPU node would see every GPU and take cuda:0 from the role that reserved it.
    # Logical GPUs (CPU nodes that declare them): the share is reserved, the judge computes on CPU.
    device = "cuda" if res.judge_gpus > 0 and not res.logical_gpus else "cpu"
    actors = [ray.remote(JudgeActor).options(**options, **(placement.options(i) if placement else {}))
              .remote(model_path, cfg, res.actor_threads, device, i) for i in range(res.judges)]
    ray.get([a.ready.remote() for a in actors])
    return actors


class RemoteJudge:
    """A judge actor seen as a :class:`~sppo_ray.judging.judges.PairJudge`, so the pure ``judge_rows`` can call it.

    ``batch_size`` overrides the actor's pairs per forward pass (1: one pair per call, the reference's way).
    """

    def __init__(self, judge_actor: Any, batch_size: int | None = None) -> None:
        self.actor, self.batch_size, self.name = judge_actor, batch_size, "remote"

    def pair_logits(self, prompts, first, second, max_rows: int | None = None, instructions=None) -> np.ndarray:
        ref = self.actor.pair_logits.remote(list(prompts), list(first), list(second), max_rows or self.batch_size,
                                            None if instructions is None else list(instructions))
        return np.asarray(ray.get(ref))


class ReplicatedJudge:
    """Every judge actor seen as one :class:`~sppo_ray.judging.judges.PairJudge`: a call's pairs are cut into one
    contiguous slice per replica, scored at once, and put back in order (the evaluation's judge)."""

    def __init__(self, judge_actors: list[Any]) -> None:
        self.actors, self.name = list(judge_actors), "replicated"

    def pair_logits(self, prompts, first, second, max_rows: int | None = None, instructions=None) -> np.ndarray:
        n = len(prompts)
        if n == 0:
            return np.zeros(0)
        size = -(-n // len(self.actors))
        refs = [a.pair_logits.remote(list(prompts[i:i + size]), list(first[i:i + size]), list(second[i:i + size]),
                                     max_rows, None if instructions is None else list(instructions[i:i + size]))
                for a, i in zip(self.actors, range(0, n, size))]
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in ray.get(refs)])


@dataclass
class JudgingResult:
    # JudgedPrompt rows, in the order of the generated prompts.
    table: pa.Table
    # Ordered pairs judged.
    pairs: int
    # Wall seconds of the stage.
    seconds: float
    # Seconds inside the actors' judge_batch calls, summed; two calls overlap per actor, so this can exceed
    # seconds x judges.
    judge_seconds: float
    # Rows taken from ``finished`` (an interrupted execution's chunks) rather than judged now.
    reused: int = 0


def run_judging_stage(generated: pa.Table | TableRows | ParquetRows, judge_actors: list[Any], cfg: JudgeConfig,
                      instructions: dict[str, str] | None = None,
                      on_rows: Callable[[pa.Table], None] | None = None,
                      finished: pa.Table | None = None, wait_s: float = NODE_WAIT_S) -> JudgingResult:
    """Judge every generated row; the smallest call holds 4 × pairs per batch / (K(K−1)) prompts (at least 1), a
    large stage's calls several of those (:func:`prompts_per_call`).

    ``generated`` may be a file's rows (:class:`~sppo_ray.row_files.ParquetRows`): they are read a call at a time
    into the object store, and the caller never holds them. ``instructions`` maps a prompt id to its instructions
    as JSON; they travel with the rows to the judges (the verifier judge checks responses against them).
    ``on_rows`` receives each block of judged rows as it arrives. ``finished`` holds rows an interrupted execution
    already judged (the same generated rows, the same judge): their prompts are not judged again. A batch whose
    judge died waits up to ``wait_s`` for it to come back.
    """
    started = time.perf_counter()
    source = TableRows(generated) if isinstance(generated, pa.Table) else generated
    order = source.column("prompt_id").to_pylist()
    done = set(finished.column("prompt_id").to_pylist()) if finished is not None else set()
    todo = len(order) - len(done.intersection(order))
    tables, records = [finished] if finished is not None else [], []
    if todo:
        k = len(next(source.slices(1, ["responses"])).column("responses")[0].as_py())
        batch_prompts = max(1, cfg.batch_size * 4 // (k * (k - 1)))
        # one block per call: a single block would be one task, judged by one replica with the others idle
        per_call = prompts_per_call(todo, len(judge_actors), batch_prompts)
        blocks = [ray.put(b) for part in source.slices(per_call, _JUDGED_INPUT)
                  if (b := _judge_input(part, done, instructions)).num_rows]
        table, records = stream_through_actors(
            ray.data.from_arrow_refs(blocks), judge_actors, "judge_batch", kwargs={}, schema=JUDGED_SCHEMA,
            batch_size=per_call, per_actor=CALLS_PER_JUDGE, on_block=on_rows, wait_s=wait_s,
        )
        del blocks
        tables.append(table)
    table = in_order(pa.concat_tables(tables) if tables else JUDGED_SCHEMA.empty_table(), "prompt_id", order)
    reused_pairs = 0 if finished is None else sum(n * (n - 1) for n in finished.column("k").to_pylist())
    return JudgingResult(
        table,
        sum(r["pairs"] for r in records) + reused_pairs,
        time.perf_counter() - started,
        sum(r["seconds"] for r in records),
        len(done),
    )


# What a judge call needs of the generated rows.
_JUDGED_INPUT = ["prompt_id", "messages_json", "responses", "policy_version"]


def _judge_input(rows: pa.Table, done: set[str], instructions: dict[str, str] | None) -> pa.Table:
    """One call's rows: those not judged already, with their instructions when there are any."""
    if done:
        rows = rows.filter(pa.array([pid not in done for pid in rows.column("prompt_id").to_pylist()]))
    if instructions:
        rows = rows.append_column("instructions_json", pa.array(
            [instructions.get(pid, "") for pid in rows.column("prompt_id").to_pylist()], pa.string()))
    return rows


def build_training_table(generated: pa.Table, judged: pa.Table) -> pa.Table:
    """The SPPO training set: the reference implementation's columns plus ours.

    Reference columns (readable by uclaml/SPPO and TRL): ``prompt`` (the last user turn), ``chosen`` and
    ``rejected`` (full chats ending with the response), ``chosen_probs`` = P(y_w ≻ y_l), ``chosen_probs_win`` and
    ``chosen_probs_lose`` = win rates of y_w and y_l against π_t, one row per prompt. Prompts with no preference
    signal contribute no row.

    Built column by column (see sppo_ray/arrow_lists.py): the responses' text and token ids are picked as Arrow,
    so the driver never holds a round's K answers as Python objects; only the prompts' chats are parsed.
    """
    position = {pid: i for i, pid in enumerate(generated.column("prompt_id").to_pylist())}
    j_rows, g_rows, best, worst = [], [], [], []
    for j, (pid, kept) in enumerate(zip(judged.column("prompt_id").to_pylist(), judged.column("kept").to_pylist())):
        for loser in (kept or [])[1:]:  # (winner, loser), or nothing when the judge saw no preference
            j_rows.append(j)
            g_rows.append(position[pid])
            best.append(kept[0])
            worst.append(loser)
    j_rows, g_rows = np.asarray(j_rows, np.int64), np.asarray(g_rows, np.int64)
    best, worst = np.asarray(best, np.int64), np.asarray(worst, np.int64)
    k = judged.column("k").to_numpy()[j_rows] if len(j_rows) else np.zeros(0, np.int64)
    g = generated.select(["messages_json", "prompt_token_ids", "responses"]).take(pa.array(g_rows))
    jt = judged.take(pa.array(j_rows))
    chats = [json.loads(m) for m in g.column("messages_json").to_pylist()]
    messages = pa.array(chats, _MESSAGES)

    def answer(side: np.ndarray) -> pa.Array:
        text = pick(generated.column("responses"), g_rows, side).cast(pa.string())
        return pa.StructArray.from_arrays([text, pa.array(["assistant"] * len(text), pa.string())],
                                          names=["content", "role"])

    columns = {
        "prompt": pa.array([c[-1]["content"] for c in chats], pa.string()),
        "chosen": append_item(messages, answer(best)),
        "rejected": append_item(messages, answer(worst)),
        "chosen_probs": pick(judged.column("table"), j_rows, best * k + worst),
        "chosen_probs_win": pick(judged.column("win_rates"), j_rows, best),
        "chosen_probs_lose": pick(judged.column("win_rates"), j_rows, worst),
        "prompt_id": jt.column("prompt_id"),
        "messages_json": g.column("messages_json"),
        "prompt_token_ids": g.column("prompt_token_ids"),
        "chosen_token_ids": pick(generated.column("response_token_ids"), g_rows, best),
        "rejected_token_ids": pick(generated.column("response_token_ids"), g_rows, worst),
        "responses": g.column("responses"),
        "table": jt.column("table"),
        "scores": jt.column("scores"),
        "chosen_index": pa.array(best),
        "rejected_index": pa.array(worst),
        **{name: jt.column(name) for name in ("policy_version", "judge", "table_mode")},
    }
    return pa.table([columns[f.name].cast(f.type) for f in TRAINING_SCHEMA], schema=TRAINING_SCHEMA)


_MESSAGES = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
# Columns of train.parquet.
TRAINING_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("chosen", _MESSAGES),
        ("rejected", _MESSAGES),
        ("chosen_probs", pa.float64()),
        ("chosen_probs_win", pa.float64()),
        ("chosen_probs_lose", pa.float64()),
        ("prompt_id", pa.string()),
        ("messages_json", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("chosen_token_ids", pa.list_(pa.int32())),
        ("rejected_token_ids", pa.list_(pa.int32())),
        ("responses", pa.list_(pa.string())),
        ("table", pa.list_(pa.float64())),
        ("scores", pa.list_(pa.float64())),
        ("chosen_index", pa.int64()),
        ("rejected_index", pa.int64()),
        ("policy_version", pa.int64()),
        ("judge", pa.string()),
        ("table_mode", pa.string()),
    ]
)
