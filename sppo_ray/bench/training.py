"""Training benchmark: steps through Ray Train vs the same DeepSpeed steps in plain torch.distributed processes.

Both sides run the same model, rows, DeepSpeed config and step code (``worker.py``); the bare side shards rows
the way Ray Data's equal split does and starts its processes with ``torch.multiprocessing``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

__all__ = ["bare_fit", "bench_training"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bare_worker(rank: int, world: int, port: int, model_path: str, rows_raw: list, t: dict, out: str,
                 second_reference: bool, save_dir: str | None) -> None:
    """One rank of a plain DeepSpeed fit (no Ray). ``second_reference``: reference log-probs from a second model,
    recomputed every micro-batch (as uclaml/SPPO's TRL trainer does) instead of one pass with the starting weights."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sppo_ray.training.batching import sequence_logps
    from sppo_ray.training.worker import (_collate, _micro_batches, _reference_logps, _rows_from,
                                          cpu_collectives_through_torch, deepspeed_config, optimizer_step)

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": "0"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad = tokenizer.pad_token_id or 0
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True)
    rows = _rows_from(rows_raw[rank::world][: len(rows_raw) // world], tokenizer)
    batches = _micro_batches(rows, t["micro_batch_size"])
    acc = t["global_batch_size"] // (t["micro_batch_size"] * world)
    if second_reference:
        ref_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True).eval()
        ref = torch.zeros(len(rows), 2)
    opt_cls = torch.optim.RMSprop if t["optimizer"] == "rmsprop" else torch.optim.AdamW
    optimizer = opt_cls(model.parameters(), lr=t["lr"])
    cpu_collectives_through_torch()  # as the Ray Train workers do
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(t, world))
    if not second_reference:
        ref, _ = _reference_logps(engine, rows, batches, t, pad)
    steps = []
    for s in range(len(batches) // acc):
        started = time.perf_counter()
        step_batches = batches[s * acc : (s + 1) * acc]
        if second_reference:
            with torch.no_grad():
                for idx in step_batches:
                    logps = sequence_logps(ref_model, _collate(rows, idx, t, pad))
                    ref[idx, 0], ref[idx, 1] = logps[: len(idx)], logps[len(idx) :]
        tokens, _, _ = optimizer_step(engine, rows, step_batches, t, pad, ref)
        seconds = time.perf_counter() - started
        steps.append({"tokens_per_s": tokens * world / seconds, "step_seconds": seconds})
    if save_dir and rank == 0:
        engine.module.save_pretrained(save_dir, safe_serialization=True)
        tokenizer.save_pretrained(save_dir)
    if rank == 0:
        Path(out).write_text(json.dumps(steps))
    dist.destroy_process_group()


def bare_fit(train_file: Path, model_path: str, t: dict[str, Any], world: int, out: Path, *,
             second_reference: bool = False, save_dir: Path | None = None) -> list[dict[str, Any]]:
    """A DeepSpeed fit in ``world`` plain processes (spawned here); returns rank 0's per-step figures."""
    import torch.multiprocessing as mp

    steps_file = out / "bare_steps.json"
    rows_raw = pq.read_table(train_file).to_pylist()
    mp.start_processes(_bare_worker, args=(world, _free_port(), model_path, rows_raw, t, str(steps_file),
                                           second_reference, str(save_dir) if save_dir else None),
                       nprocs=world, start_method="spawn")
    return json.loads(steps_file.read_text())


def _steady(steps: list[dict[str, Any]]) -> float:
    """Mean tokens/s over steps after the first (the first pays one-time allocation costs)."""
    tail = steps[1:] or steps
    return sum(s["tokens_per_s"] for s in tail) / len(tail)


def bench_training(config, plan, out: Path, *, tiny: bool) -> dict[str, Any]:
    from sppo_ray.training.trainer import run_training

    train_file = _bench_dataset(config, plan, out, rows=8 if tiny else 24)
    t = config.training.model_copy(update={"epochs": 1, "checkpoint_every": 0})
    started = time.perf_counter()
    result = run_training(str(train_file), str(plan.policy_path), out / "bench_model", t, config.resources,
                          storage_path=str((out / "ray_train").resolve()), name=f"bench-{int(time.time())}")
    ray_fit_s = time.perf_counter() - started
    world = config.resources.train_workers
    started = time.perf_counter()
    bare_steps = bare_fit(train_file, str(plan.policy_path), t.model_dump(mode="json"), world, out)
    bare_fit_s = time.perf_counter() - started
    ray_tps, bare_tps = _steady(result.metrics), _steady(bare_steps)
    return {"rows": pq.read_metadata(train_file).num_rows, "workers": world, "steps": len(result.metrics),
            "ray_train_tokens_per_s": ray_tps, "bare_deepspeed_tokens_per_s": bare_tps,
            "ratio_ray_train_over_bare": ray_tps / bare_tps,
            "ray_train_fit_seconds": ray_fit_s, "ray_train_phases": result.phases,
            "bare_fit_seconds_incl_process_start": bare_fit_s}


def _bench_dataset(config, plan, out: Path, rows: int) -> Path:
    """A training set from the shipped prompts with fixed short answers (no generation needed)."""
    import pyarrow as pa

    data = []
    for n, p in enumerate(plan.rounds[0][:rows] if len(plan.rounds[0]) >= rows else plan.prompt_set.prompts[:rows]):
        user = list(p.messages)
        data.append({"prompt": user[-1]["content"],
                     "chosen": user + [{"role": "assistant", "content": f"A short helpful answer number {n}."}],
                     "rejected": user + [{"role": "assistant", "content": "I do not know, sorry about that."}],
                     "chosen_probs": 0.7, "chosen_probs_win": 0.65, "chosen_probs_lose": 0.35})
    path = out / "bench_train.parquet"
    pq.write_table(pa.Table.from_pylist(data), path)
    return path
