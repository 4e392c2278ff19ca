"""Driver side of the policy update: one Ray Train ``TorchTrainer`` fit per round."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs
import ray

from sppo_ray.config import ResourcesConfig, TrainingConfig
from sppo_ray.runtime import role_env
from sppo_ray.training.batching import training_columns
from sppo_ray.training.live import STEPS_FILE, read_steps
from sppo_ray.training.worker import export_is_finished, train_loop_per_worker

__all__ = ["TrainResult", "load_fit_modules", "run_training"]


@dataclass
class TrainResult:
    # HF directory of π_{t+1} (safetensors, config, tokenizer, chat template).
    model_dir: Path
    # Per-step metrics from rank 0: loss, log-ratios and targets, grad norm, lr, tokens/s.
    metrics: list[dict[str, Any]]
    seconds: float
    # Where the seconds went: rank 0's phases (load_model, load_data, reference_pass, deepspeed_init, steps,
    # export), "fit" (all of Ray Train's fit) and "collect" (the exported directory copied into place).
    phases: dict[str, float]


# Up to this size of train.parquet the driver reads the training set itself and hands it to Ray Data as one Arrow
# block: on a small machine Ray Data's read tasks cost seconds of worker start-up for a file that pyarrow reads in
# milliseconds. The driver holds what it reads (the columns training uses: at the paper's shape a quarter of the
# file's bytes), so the bound keeps that small; a larger file (the paper's round: ~340 MB) is read by Ray Data's
# tasks, not the driver (on a cluster, from the run directory's shared storage).
DRIVER_READ_BYTES = 64 * 2**20


def _training_dataset(train_parquet: str) -> "ray.data.Dataset":
    """The round's training set as a Ray Dataset (Ray Train shards it across the workers), its used columns only."""
    import pyarrow.parquet as pq

    fs, path = pafs.FileSystem.from_uri(train_parquet) if "://" in train_parquet else (pafs.LocalFileSystem(), train_parquet)
    columns = training_columns(pq.read_schema(path, filesystem=fs).names)
    if fs.get_file_info(path).size <= DRIVER_READ_BYTES:
        return ray.data.from_arrow(pq.read_table(path, columns=columns, filesystem=fs))
    return ray.data.read_parquet(train_parquet, columns=columns)


def _fit_key(train_parquet: str, model_path: str, cfg: TrainingConfig, workers: int = 1) -> str:
    """What the fit is of: the training set's bytes, the start model, the training settings and the worker count
    (DeepSpeed's checkpoints are per rank). A fit directory or an export under another key belongs to other inputs
    (the round was redone) and is not resumed or reused."""
    fs, path = pafs.FileSystem.from_uri(train_parquet) if "://" in train_parquet else (pafs.LocalFileSystem(), train_parquet)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while block := stream.read(16 * 2**20):
            h.update(block)
    h.update(json.dumps({"model": str(model_path), "training": cfg.model_dump(mode="json"), "workers": workers},
                        sort_keys=True).encode())
    return h.hexdigest()


def _fit_dir(storage_path: str, name: str, key: str) -> Path:
    """The fit's directory under Ray Train's storage (local or a shared mount every node sees), emptied when an
    earlier fit of other inputs left it; it holds Ray Train's state and ``export/``."""
    fit_dir = Path(storage_path) / name
    key_file = fit_dir / "fit_key"
    if fit_dir.exists() and (not key_file.is_file() or key_file.read_text().strip() != key):
        shutil.rmtree(fit_dir)
    fit_dir.mkdir(parents=True, exist_ok=True)
    key_file.write_text(key)
    return fit_dir


def load_fit_modules() -> None:
    """Import what the driver's side of a fit loads (Ray Train's trainer, Arrow's dataset reader for the training
    set). The session does it while its actors start: the first round then pays neither the seconds nor the ~8 MB
    of the driver's RSS (measured on Ray 2.60), and a broken Ray Train install is reported before generation."""
    import pyarrow.dataset  # noqa: F401
    import ray.train.torch  # noqa: F401


def run_training(
    train_parquet: str,
    model_path: str,
    out_dir: Path,
    cfg: TrainingConfig,
    res: ResourcesConfig,
    storage_path: str,
    name: str,
    worker_env: dict[str, str] | None = None,
    send_to: tuple[list[Any], int, str, int] | None = None,
    run_name: str | None = None,
    on_steps: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fit π_t -> π_{t+1} on one round's training set and copy the exported model to ``out_dir``.

    Workers use gloo on CPU and NCCL on GPU; the Parquet is read as a Ray Dataset and sharded across workers.
    A worker that dies mid-fit makes Ray Train restart the group from the last DeepSpeed checkpoint
    (``cfg.checkpoint_every``), up to ``cfg.max_failures`` times. ``worker_env`` is set in every worker's
    environment before training starts (e.g. NCCL or DeepSpeed variables). ``send_to`` = (generator actors,
    version, backend, tensor parallel size): after the export, the workers also hand the weights to those
    generators through vLLM's weight-transfer API ("ipc" or "nccl"; GPU only; see training/weight_transfer.py).
    Whether it worked shows in the generators' version (``Session.broadcast`` checks it). With ``run_name`` rank 0
    sets per-step gauges tagged with it (training/live.py) for the Ray dashboard and Grafana; ``on_steps`` is called
    from a thread with rank 0's last step (``{"step", "total", "loss"}``) whenever it moves.

    Workers get a whole GPU each, or in the colocated layout the share of it that the generator and judge bundle
    leaves (``resources.train_gpu_share``): one worker fits per GPU, so they land one per GPU.

    The fit is finished once rank 0 has written ``storage_path/name/export``: a worker lost after that (in the
    weight transfer, say) never makes the round train again, whether Ray Train restarts the group (its workers
    find the export and return) or gives up (the export is used all the same); a driver that comes back after a
    crash finds the export and skips the fit.
    """
    started = time.perf_counter()
    key = _fit_key(train_parquet, model_path, cfg, res.train_workers)
    export = _fit_dir(storage_path, name, key) / "export"
    tmp = out_dir.with_name(out_dir.name + ".partial")
    # a driver that crashed while collecting an export finds it on its way to out_dir (the key travels with it)
    for collected in (out_dir, tmp):
        if not export_is_finished(export, key) and export_is_finished(collected, key):
            shutil.rmtree(export, ignore_errors=True)
            shutil.move(collected, export)
    if export_is_finished(export, key):
        print(f"training: {name} was exported by an earlier execution; using its export", flush=True)
    else:
        (export.parent / STEPS_FILE).unlink(missing_ok=True)  # an earlier attempt's steps are not this one's
        with _watching_steps(export.parent, on_steps):
            _fit(train_parquet, model_path, cfg, res, storage_path, name, worker_env, send_to, str(export), key,
                 run_name)
    fit_seconds = time.perf_counter() - started
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.move(export, tmp)  # a rename on the same disk, not a copy of the weights
    metrics_file = tmp / "train_metrics.jsonl"
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    shutil.rmtree(Path(storage_path) / name, ignore_errors=True)  # the fit's own state is no longer needed
    phases = json.loads((out_dir / "train_phases.json").read_text())
    seconds = time.perf_counter() - started
    return TrainResult(out_dir, metrics, seconds, {**phases, "fit": fit_seconds, "collect": seconds - fit_seconds})


@contextmanager
def _watching_steps(fit_dir: Path, on_steps: Callable[[dict[str, Any]], None] | None, every_s: float = 1.0):
    """Polls rank 0's steps file while the fit runs and hands each new step to ``on_steps``."""
    if on_steps is None:
        yield
        return
    stop, seen = threading.Event(), [None]

    def report() -> bool:
        now = read_steps(fit_dir)
        if now is None or now == seen[0]:
            return True
        seen[0] = now
        try:
            on_steps(now)
            return True
        except Exception as err:  # noqa: BLE001 - progress must never stop a fit
            print(f"training: progress stopped ({type(err).__name__}: {err})", flush=True)
            return False

    def watch() -> None:
        while not stop.wait(every_s) and report():
            pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        report()  # the final step, should the fit end between two polls


@contextmanager
def _own_sigint_handler():
    """The driver's Ctrl-C handler back once the fit is over.

    ``TorchTrainer.fit`` installs a SIGINT handler (a first Ctrl-C aborts the fit gracefully) and leaves it
    installed. Left there, it kept the fit's controller actor alive until the next fit, with its dataset actors
    (three processes using CPU beside the next round's engines), and it took a later Ctrl-C for itself: a press
    in the next round's generation logged "Gracefully aborting the training run" and the run went on (Ray's
    handler does nothing on a second press and calls ``sys.exit(0)`` on a third).
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread has signal handlers
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fit(train_parquet, model_path, cfg, res, storage_path, name, worker_env, send_to, export: str, key: str,
         run_name: str | None) -> None:
    """One Ray Train fit that leaves π_{t+1} in ``export``; an error after the export is reported, not raised."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "model_path": str(model_path),
            "training": cfg.model_dump(mode="json"),
            "cpus_per_worker": res.train_cpus_per_worker,
            "env": {**role_env(), **(worker_env or {})},  # with the run's log dir: each rank logs to its file
            "export_dir": export,
            "fit_key": key,
            "run_name": run_name,
            "send_to": send_to,
        },
        scaling_config=ScalingConfig(
            num_workers=res.train_workers,
            use_gpu=res.train_use_gpu,
            resources_per_worker={"CPU": res.train_cpus_per_worker,
                                  **({"GPU": res.train_gpu_share} if res.train_use_gpu else {})},
        ),
        # logical GPUs (CPU nodes that declare GPUs): the GPU share is reserved, the compute and collectives on CPU
        torch_config=TorchConfig(backend="nccl" if res.train_use_gpu and not res.logical_gpus else "gloo"),
        datasets={"train": _training_dataset(train_parquet)},
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        with _own_sigint_handler():
            trainer.fit()
    except Exception as err:  # noqa: BLE001 - Ray Train's TrainingFailedError, or any error from the group
        if not export_is_finished(export, key):
            raise RuntimeError(f"training failed: {err}") from err
        # a rank was lost after the export (the weight transfer): the round is trained; the driver sees which
        # generators did not get π_{t+1} and loads the export into them
        first = next((line for line in str(err).splitlines() if line.strip()), "")[:300]
        print(f"training: a worker failed after π_{{t+1}} was exported ({type(err).__name__}: {first}); using the "
              "export", flush=True)
