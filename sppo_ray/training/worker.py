"""The Ray Train worker loop: DeepSpeed SPPO (or DPO/IPO) update of π_t into π_{t+1}.

Per worker: load π_t in the training precision (under ZeRO-3 straight into this rank's partition), wrap it in
DeepSpeed, compute reference log-probs with the *starting* weights in one no-grad pass of the engine's module on its
device (the reference policy of round t is π_t itself, so no second model is kept), then optimise.
DeepSpeed checkpoints go through ``ray.train.report`` so a restarted worker group resumes at the last saved step,
with the saved reference log-probs (the live weights have moved by then). Rank 0 exports π_{t+1} in the training
precision as sharded safetensors, straight into the fit's known export directory (renamed into place whole, with
the fit's key): from then on the fit is finished, whatever happens to a rank (see :func:`_restart_point`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sppo_ray.training.batching import PairBatch, collate_pairs, row_token_ids, sequence_logps
from sppo_ray.training.losses import LOSSES, sppo_targets

__all__ = ["FIT_KEY_FILE", "check_attn_implementation", "cpu_collectives_through_torch", "deepspeed_config",
           "disable_dropout", "epoch_batches", "export_is_finished", "match_reference", "memory_keys_named",
           "optimizer_step", "reference_batches", "train_loop_per_worker"]

_TAG = "sppo"  # not "latest": DeepSpeed writes a file of that name beside the tag directory
# In an export directory: the key of the fit (its training set, start model and settings) that wrote it.
FIT_KEY_FILE = "fit_key"


def export_is_finished(export_dir: str | Path, fit_key: str) -> bool:
    """Whether ``export_dir`` holds π_{t+1} exported by the fit ``fit_key`` (the directory appears whole, by rename,
    so a key file in it means every file is there)."""
    key = Path(export_dir) / FIT_KEY_FILE
    return key.is_file() and key.read_text().strip() == fit_key


def deepspeed_config(t: dict[str, Any], world_size: int) -> dict[str, Any]:
    """DeepSpeed config from the run config's training section (a dict, as it crosses into workers)."""
    accumulation = t["global_batch_size"] // (t["micro_batch_size"] * world_size)
    zero: dict[str, Any] = {"stage": t["zero_stage"]}
    if t["offload"] and t["zero_stage"] > 0:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if t["zero_stage"] == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": t["global_batch_size"],
        "train_micro_batch_size_per_gpu": t["micro_batch_size"],
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": t["grad_clip"],
        "zero_optimization": zero,
        "bf16": {"enabled": t["precision"] == "bf16"},
        # our optimiser is a plain torch one (RMSprop as in the paper); allow it beside ZeRO-Offload
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _schedule(t: dict[str, Any], total_steps: int):
    warmup = math.ceil(t["warmup_ratio"] * total_steps)  # a short fit still gets its warm-up step

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if t["schedule"] == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _load_rows(tokenizer: Any) -> list[dict[str, Any]]:
    import ray.train

    return _rows_from(ray.train.get_dataset_shard("train").iter_rows(), tokenizer)


def _rows_from(source, tokenizer: Any) -> list[dict[str, Any]]:
    """Training rows as token ids and the three probabilities the losses use."""
    rows = []
    for row in source:
        prompt, chosen, rejected = row_token_ids(_plain(row), tokenizer)
        rows.append(
            {
                # which training row this is, whatever worker or position it lands on: its token ids, which are all
                # its reference log-probs depend on (saved and matched by it; any training table has them)
                "key": hashlib.sha1(json.dumps([prompt, chosen, rejected]).encode()).hexdigest(),
                "ids": (prompt, chosen, rejected),
                "p_win": float(row["chosen_probs_win"]),
                "p_lose": float(row["chosen_probs_lose"]),
                "p_chosen": float(row["chosen_probs"]),
            }
        )
    return sorted(rows, key=lambda r: r["key"])  # the shard's order is not fixed (Ray Data hands blocks on arrival)


def _plain(value: Any) -> Any:
    """numpy arrays/scalars from Ray Data -> Python lists/values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _micro_batches(rows: list[dict[str, Any]], size: int) -> list[list[int]]:
    return [list(range(i, i + size)) for i in range(0, len(rows) - size + 1, size)]


def epoch_batches(n_rows: int, size: int, n_batches: int, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches (row indices) of one epoch: the rows reshuffled by (seed, epoch), cut into ``size``, the
    first ``n_batches`` kept (every rank runs the same number of steps). A function of its arguments only, so a
    resumed fit sees the same order."""
    import numpy as np

    order = np.random.default_rng([seed, epoch]).permutation(n_rows).tolist()
    return [order[i : i + size] for i in range(0, n_batches * size, size)]


def reference_batches(n_rows: int, size: int) -> list[list[int]]:
    """Every row once, in micro-batches (the last may be short): the reference pass covers the rows any epoch uses."""
    return [list(range(i, min(i + size, n_rows))) for i in range(0, n_rows, size)]


def match_reference(saved: list[dict[str, Any]], keys: list[str]) -> torch.Tensor:
    """This rank's reference log-probs [rows, 2] from every rank's saved {"keys", "ref"}, matched by row key (after a
    restart Ray Train may hand this rank other rows than before).

    Raises:
        RuntimeError: a row of this rank is in no saved file (names the first).
    """
    table = {k: row for part in saved for k, row in zip(part["keys"], part["ref"])}
    missing = [k for k in keys if k not in table]
    if missing:
        raise RuntimeError(f"resumed training: no saved reference log-probs for row {missing[0]} "
                           f"({len(missing)} of {len(keys)} rows); the checkpoint does not match this training set")
    return torch.stack([table[k] for k in keys])


def disable_dropout(hf_config: Any, model: torch.nn.Module | None = None) -> list[str]:
    """Dropout off for the reference pass and the steps (the reference implementation disables it): every float
    config field named *dropout* or *pdrop* set to 0 (before the model is built: attention kernels read them), and
    any ``nn.Dropout`` of ``model`` set to p = 0. Returns what was changed (non-zero fields and modules)."""
    changed = []
    for name, value in list(vars(hf_config).items()):
        if ("dropout" in name or name.endswith("pdrop")) and isinstance(value, float):
            if value:
                changed.append(name)
            setattr(hf_config, name, 0.0)
    for name, module in (model.named_modules() if model is not None else []):
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p = 0.0
            changed.append(name)
    return changed


def _collate(rows, idx, t, pad_id) -> PairBatch:
    return collate_pairs([rows[i]["ids"] for i in idx], t["max_length"], t["max_prompt_length"], pad_id)


def _reference_logps(engine, rows, batches, t, pad_id) -> tuple[torch.Tensor, dict[str, Any]]:
    """log π_t of every chosen and rejected response, and how they were computed.

    Runs before the first step on the DeepSpeed engine's module: on the training device, in the training precision,
    with ZeRO-3 gathering one layer at a time (on a GPU run a host-side fp32 pass would take days for a 7B model).
    """
    module = engine.module
    ref = torch.zeros(len(rows), 2)
    module.eval()
    with torch.no_grad():
        for idx in batches:
            logps = sequence_logps(module, _collate(rows, idx, t, pad_id)).float().cpu()
            ref[idx, 0], ref[idx, 1] = logps[: len(idx)], logps[len(idx) :]
    module.train()
    return ref, {**_param_info(module), "engine_device": str(engine.device), "rows": len(rows)}


def _param_info(module: torch.nn.Module) -> dict[str, Any]:
    """Where and how a module's weights live: device, dtype, and whether ZeRO-3 partitions them (``ds_id``)."""
    param = next(module.parameters())
    return {"device": str(param.device), "dtype": str(param.dtype).replace("torch.", ""),
            "zero_partitioned": hasattr(param, "ds_id"), "local_numel": sum(p.numel() for p in module.parameters())}


def _loss(t, logps, ref, rows, idx):
    b = len(idx)
    pc, pr = logps[:b], logps[b:]
    rc, rr = ref[idx, 0].to(logps.device), ref[idx, 1].to(logps.device)
    p = {k: torch.tensor([rows[i][k] for i in idx], device=logps.device) for k in ("p_win", "p_lose", "p_chosen")}
    if t["loss"] == "sppo":
        losses = LOSSES["sppo"](pc, pr, rc, rr, p["p_win"], p["p_lose"], t["beta"])
        targets = sppo_targets(p["p_win"], p["p_lose"], t["beta"])
    elif t["loss"] == "sppo_single":
        losses = LOSSES["sppo_single"](pc, pr, rc, rr, p["p_chosen"], t["beta"])
        target = (p["p_chosen"] - 0.5) / t["beta"]
        targets = (target, -target)
    else:
        losses = LOSSES[t["loss"]](pc, pr, rc, rr, t["beta"])
        targets = (torch.full_like(pc, float("nan")), torch.full_like(pc, float("nan")))
    stats = {
        "logratio_chosen": float((pc - rc).detach().mean()),
        "logratio_rejected": float((pr - rr).detach().mean()),
        "target_chosen": float(targets[0].mean()),
        "target_rejected": float(targets[1].mean()),
    }
    return losses.mean(), stats


def optimizer_step(engine, rows, micro_batches, t, pad_id, ref) -> tuple[int, list[float], list[dict[str, float]]]:
    """One optimiser step = forward/backward over its micro-batches (DeepSpeed steps at the accumulation boundary).

    Returns (tokens processed on this rank, per-micro-batch losses, per-micro-batch log-ratio stats).
    """
    tokens, losses, stats = 0, [], []
    for idx in micro_batches:
        batch = _collate(rows, idx, t, pad_id)
        loss, st = _loss(t, sequence_logps(engine, batch), ref, rows, idx)
        engine.backward(loss)
        engine.step()
        tokens += batch.num_tokens
        losses.append(float(loss.detach()))
        stats.append(st)
    return tokens, losses, stats


@contextmanager
def memory_keys_named(t: dict[str, Any]):
    """A GPU out of memory in the reference pass or a step becomes an error naming the two keys that set the train
    stage's memory, with this config's values (the paper configs run at the fastest setting the plan shows fitting)."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise RuntimeError(
            f"training ran out of GPU memory at training.micro_batch_size {t['micro_batch_size']} with "
            f"training.gradient_checkpointing {str(t['gradient_checkpointing']).lower()}: set "
            "training.gradient_checkpointing: true and/or a smaller training.micro_batch_size (`sppo-ray plan` "
            f"shows what fits); it said: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err


def _maybe_inject_failure(point: str, rank: int) -> None:
    """Test hook: SPPO_RAY_FAIL_AT_STEP=N kills rank 1 (SPPO_RAY_FAIL_RANK) before optimiser step N+1, =export
    right after the export, or a comma-separated list of such points; each once (the marker file records them)."""
    at = os.environ.get("SPPO_RAY_FAIL_AT_STEP")
    marker = os.environ.get("SPPO_RAY_FAIL_MARKER")
    if not (at and marker and rank == int(os.environ.get("SPPO_RAY_FAIL_RANK", "1")) and point in at.split(",")):
        return
    line = f"killed rank {rank} at {'step ' if point.isdigit() else ''}{point}"
    if line not in (Path(marker).read_text().splitlines() if os.path.exists(marker) else []):
        with open(marker, "a") as f:
            f.write(line + "\n")
        os._exit(1)


def _save_checkpoint(engine, ref, keys, step, rank, metrics, metrics_log) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=_TAG, client_state={"step": step, "metrics_log": metrics_log})
        torch.save({"keys": keys, "ref": ref}, os.path.join(tmp, f"ref_logps_rank{rank}.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restart_point(export_dir: str, fit_key: str) -> tuple[str | None, Any]:
    """Where a (re)started worker group stands: ("export", None) when this fit's π_{t+1} is already in the export
    directory (a rank died afterwards, e.g. in the weight transfer): the fit is finished and is never trained
    again; ("mid_fit", ckpt) for the last DeepSpeed checkpoint; (None, None) for a fresh fit.

    The export is looked up in its directory, not among Ray Train's checkpoints: a rank lost right after the export
    can stop Ray Train from ever registering a checkpoint reported there, and the round would be trained again."""
    import ray.train

    if export_is_finished(export_dir, fit_key):
        return "export", None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as d:
        return ("mid_fit", checkpoint) if (Path(d) / _TAG).is_dir() else (None, None)


def _resume(engine, keys, checkpoint) -> tuple[int, torch.Tensor | None, list]:
    """(step, saved reference log-probs of this rank's rows, metrics so far) from a mid-fit checkpoint, if any.
    Every rank's saved log-probs are read (Ray Train gathers their files into one directory) and matched by key."""
    if checkpoint is None:
        return 0, None, []
    with checkpoint.as_directory() as d:
        saved = [torch.load(f) for f in sorted(Path(d).glob("ref_logps_rank*.pt"))]
        _, client = engine.load_checkpoint(d, tag=_TAG)
        return int(client["step"]), match_reference(saved, keys), list(client.get("metrics_log", []))


def _export_check(engine, rows, batches, t, pad_id) -> dict[str, Any]:
    """This rank's first micro-batch and its response log-probs under the final weights.

    Every rank runs the forward (under ZeRO-3 it gathers parameters collectively); rank 0 writes the result beside
    the exported model, where a loaded copy of π_{t+1} must reproduce the log-probs (the export is the trained model).
    """
    batch = _collate(rows, batches[0], t, pad_id)
    engine.eval()
    with torch.no_grad():
        logps = sequence_logps(engine, batch).float().cpu().tolist()
    engine.train()
    return {"input_ids": batch.input_ids.tolist(), "attention_mask": batch.attention_mask.tolist(),
            "response_mask": batch.response_mask.tolist(), "logps": logps}


def _full_state_dict(engine, zero_stage: int, rank: int) -> dict[str, torch.Tensor] | None:
    """π_{t+1}'s weights in the training precision on rank 0's host, None on the other ranks.

    Under ZeRO-3 every rank must take part: DeepSpeed gathers one layer at a time onto rank 0 (its consolidated
    16-bit state dict). Below ZeRO-3 every rank holds the whole module, already in the training precision.
    """
    if zero_stage == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()} if rank == 0 else None


def _gather_ranks(rank: int, world: int, metrics_log: list[dict[str, Any]], start_step: int) -> list[dict[str, Any]]:
    """Every rank's place (node, Ray's GPU ids, CUDA device UUID, placement group) and the optimiser steps it ran
    in this attempt with its last local loss, gathered on every rank (a collective): what ``train_ranks.json``
    in the export records, and what `sppo-ray rehearse` checks."""
    import torch.distributed as dist

    from sppo_ray.runtime import where_am_i

    ran = [m for m in metrics_log if m["step"] > start_step]
    mine = {"rank": rank, **where_am_i(), "steps": len(ran), "last_loss": ran[-1]["loss"] if ran else None}
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine)
    return everyone


def _export(engine, tokenizer, t: dict[str, Any], rank: int, files: dict[str, str], timer, export_dir: str,
            fit_key: str) -> None:
    """Write π_{t+1} from rank 0 into ``export_dir`` as an HF directory: safetensors shards of at most
    ``export_max_shard_gb`` (with an index file when there are several), the tokenizer, the small JSON ``files``
    and the fit's key. It is written beside and renamed into place, so the directory is either absent or whole; the
    other ranks wait at a barrier until it is, so no rank goes on (to the weight transfer) before the fit is done."""
    import ray.train
    import torch.distributed as dist

    state = _full_state_dict(engine, t["zero_stage"], rank)
    if rank == 0:
        final = Path(export_dir)
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        engine.module.save_pretrained(tmp, state_dict=state, max_shard_size=int(t["export_max_shard_gb"] * 1e9))
        del state
        tokenizer.save_pretrained(tmp)
        for name, text in files.items():
            (tmp / name).write_text(text)
        timer.lap("export")
        (tmp / "train_phases.json").write_text(json.dumps({k: round(v, 3) for k, v in timer.seconds.items()}))
        (tmp / FIT_KEY_FILE).write_text(fit_key)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # one rename on the fit's storage: a reader sees no export or the whole of it
    dist.barrier()
    ray.train.report({"exported": int(rank == 0)})


class _PhaseTimer:
    """Wall seconds of the worker's phases (load, data, reference pass, DeepSpeed init, steps, export)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self._last = now


def check_attn_implementation(name: str) -> None:
    """Raise a clear error when ``training.attn_implementation`` names a kernel this node cannot run."""
    import importlib.util

    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "training.attn_implementation is flash_attention_2, but the flash-attn package is not installed on this "
            "training node (pip install flash-attn, CUDA only); use attn_implementation: sdpa"
        )


def _setup_model(config: dict[str, Any], ds_config: dict[str, Any]):
    """(tokenizer, model, keep-alive) with π_t loaded in the training precision.

    Under ZeRO-3 transformers builds the model inside ``deepspeed.zero.Init`` while an ``HfDeepSpeedConfig`` is
    alive (it is held by weak reference, hence returned): each rank materialises only its partition, never a full
    copy of the model on the host.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import HfDeepSpeedConfig

    t = config["training"]
    check_attn_implementation(t["attn_implementation"])
    keep_alive = None
    if t["zero_stage"] == 3:
        import deepspeed

        # the group Ray Train set up; DeepSpeed's config reads the world size from it
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
        keep_alive = HfDeepSpeedConfig(ds_config)
    tokenizer = AutoTokenizer.from_pretrained(config["model_path"])
    hf_config = AutoConfig.from_pretrained(config["model_path"])
    disable_dropout(hf_config)
    model = AutoModelForCausalLM.from_pretrained(
        config["model_path"], config=hf_config, dtype=torch.bfloat16 if t["precision"] == "bf16" else torch.float32,
        attn_implementation=t["attn_implementation"], use_safetensors=True,
    )
    disable_dropout(hf_config, model)
    if t["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation
    return tokenizer, model, keep_alive


def _setup_batches(rows, t: dict[str, Any], world: int) -> tuple[list[list[int]], int, int]:
    """(epoch 0's micro-batches, accumulation, steps per epoch); every rank runs the same number of steps
    (drop_last); each epoch reshuffles the rows (:func:`epoch_batches`)."""
    batches = _micro_batches(rows, t["micro_batch_size"])
    accumulation = t["global_batch_size"] // (t["micro_batch_size"] * world)
    steps_per_epoch = len(batches) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"training set shard of {len(rows)} rows is smaller than one optimiser step "
            f"(micro_batch_size {t['micro_batch_size']} x accumulation {accumulation}); "
            "use more prompts or a smaller training.global_batch_size"
        )
    n = steps_per_epoch * accumulation
    return epoch_batches(len(rows), t["micro_batch_size"], n, t["seed"], 0), accumulation, steps_per_epoch


def cpu_collectives_through_torch() -> None:
    """On CPU, DeepSpeed's first ``initialize`` in a process JIT-compiles its shared-memory allreduce
    (``deepspeed_shm_comm``, ~30 s of a C++ compiler on 2 cores, redone whenever the compile command differs from
    the cached build's: measured several times in one CI run). Marking it incompatible in DeepSpeed's op table
    makes DeepSpeed keep torch.distributed's gloo collectives, which serve the CPU path's small fits (no effect
    on GPUs, whose accelerator has no such op)."""
    import deepspeed.ops

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _setup_engine(model, t: dict[str, Any], ds_config: dict[str, Any], total_steps: int):
    import deepspeed

    opt_cls = torch.optim.RMSprop if t["optimizer"] == "rmsprop" else torch.optim.AdamW
    optimizer = opt_cls(model.parameters(), lr=t["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(t, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    return engine, scheduler


def _step_metrics(step, epoch, losses, stats, engine, scheduler, tokens, world, seconds) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": epoch,
        "loss": sum(losses) / len(losses),
        **{k: sum(x[k] for x in stats) / len(stats) for k in stats[0]},
        "grad_norm": float(engine.get_global_grad_norm() or 0.0),
        "lr": float(scheduler.get_last_lr()[0]),
        "tokens_per_s": tokens * world / seconds,
        "step_seconds": seconds,
    }


def _step_reporter(config: dict[str, Any], rank: int):
    """Rank 0's per-step report (the steps file the driver polls; gauges when the fit belongs to a named run)."""
    if rank != 0:
        return None
    from sppo_ray.training.live import StepReporter

    return StepReporter(Path(config["export_dir"]).parent, config.get("run_name"))


def train_loop_per_worker(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train entry point. ``config``: {"model_path", "training" (TrainingConfig as a dict), "cpus_per_worker",
    "env", "export_dir" and "fit_key" (where π_{t+1} goes, and the key that marks it this fit's), "run_name"
    (None, or the run whose per-step gauges rank 0 sets, see training/live.py), "send_to" (None,
    or [generator actors, version, backend, tensor parallel size]: whom to hand π_{t+1} to through vLLM's
    weight-transfer API after the export)}."""
    import ray.train

    t = config["training"]
    os.environ.update(config.get("env", {}))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    from sppo_ray.runtime import log_role_output

    log_role_output(f"train-{rank}")  # DeepSpeed's and Ray Train's output into the run's logs/
    point, resume_from = _restart_point(config["export_dir"], config["fit_key"])
    if point == "export":  # the fit's result is the export; the driver loads it into the generators
        if rank == 0:
            print("training: π_{t+1} was exported before the worker group restarted; the fit is finished", flush=True)
        return []
    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    cpu_collectives_through_torch()  # before anything of DeepSpeed's (ZeRO-3 loading starts its backend)
    timer = _PhaseTimer()
    ds_config = deepspeed_config(t, world)
    tokenizer, model, _keep_alive = _setup_model(config, ds_config)
    load_info = _param_info(model)  # before DeepSpeed: what from_pretrained materialised on this rank
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    timer.lap("load_model")
    rows = _load_rows(tokenizer)
    batches, accumulation, steps_per_epoch = _setup_batches(rows, t, world)
    total_steps = steps_per_epoch * t["epochs"]
    timer.lap("load_data")
    engine, scheduler = _setup_engine(model, t, ds_config, total_steps)
    timer.lap("deepspeed_init")
    # Reference log-probs with π_t's weights, before any step and before a checkpoint is loaded into the engine.
    with memory_keys_named(t):
        ref, ref_info = ((None, {}) if resume_from is not None else
                         _reference_logps(engine, rows, reference_batches(len(rows), t["micro_batch_size"]), t, pad_id))
    timer.lap("reference_pass")
    start_step, saved_ref, metrics_log = _resume(engine, [r["key"] for r in rows], resume_from)
    ref = saved_ref if saved_ref is not None else ref
    live = _step_reporter(config, rank)
    if live is not None:
        live.started(start_step, total_steps)
    for epoch in range(t["epochs"]):
        if epoch:
            batches = epoch_batches(len(rows), t["micro_batch_size"], len(batches), t["seed"], epoch)
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s + 1
            if step <= start_step:
                continue
            _maybe_inject_failure(str(step - 1), rank)
            started = time.perf_counter()
            with memory_keys_named(t):
                tokens, losses, stats = optimizer_step(engine, rows, batches[s * accumulation : (s + 1) * accumulation],
                                                       t, pad_id, ref)
            metrics = _step_metrics(step, epoch, losses, stats, engine, scheduler, tokens, world,
                                    time.perf_counter() - started)
            metrics_log.append(metrics)
            if live is not None:
                live.stepped(metrics)
            if t["checkpoint_every"] and step % t["checkpoint_every"] == 0 and step < total_steps:
                _save_checkpoint(engine, ref, [r["key"] for r in rows], step, rank, metrics, metrics_log)
            else:
                ray.train.report(metrics)
    timer.lap("steps")
    ranks = _gather_ranks(rank, world, metrics_log, start_step)
    check = _export_check(engine, rows, batches, t, pad_id)
    info = {"load": load_info, "reference_pass": ref_info, "precision": t["precision"], "zero_stage": t["zero_stage"],
            "gradient_checkpointing": t["gradient_checkpointing"], "attn_implementation": t["attn_implementation"]}
    _export(engine, tokenizer, t, rank, {"train_metrics.jsonl": "".join(json.dumps(m) + "\n" for m in metrics_log),
                                         "export_check.json": json.dumps(check), "train_info.json": json.dumps(info),
                                         "train_ranks.json": json.dumps(ranks)},
            timer, config["export_dir"], config["fit_key"])
    _maybe_inject_failure("export", rank)
    if config.get("send_to"):  # then π_{t+1} straight into the engines (GPU; every rank joins the gathers)
        from sppo_ray.training.weight_transfer import send_policy

        generators, version, backend, tp = config["send_to"]
        outcome = send_policy(engine.module, t["zero_stage"] == 3, generators, version, rank, backend, tp)
        if rank == 0:
            print(f"weight transfer ({backend}) of v{version}: {outcome}", flush=True)
    return metrics_log
