"""Experiment tracking: training steps, round summaries, evaluation and the report's plots in TensorBoard, MLflow
or Weights & Biases, through each library's own logger.

The driver logs everything after the stage that produced it (the per-step training metrics come back with the
fit), so nothing runs inside the Ray Train workers and the same code serves all three. Steps: training metrics use
the optimiser step counted across rounds; round summaries and evaluation use the round number.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from sppo_ray.config import TrackingConfig

__all__ = ["Tracker", "build_tracker", "round_metrics", "tensorboard_scalars", "train_step_metrics"]


class Tracker(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_image(self, name: str, png: Path) -> None: ...

    def close(self) -> None: ...


class _NoTracker:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_image(self, name: str, png: Path) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Event files under ``logdir`` (tensorboardX's writer, the one Ray Tune's TensorBoard logger uses)."""

    def __init__(self, logdir: str) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_image(self, name: str, png: Path) -> None:
        import matplotlib.image

        self.writer.add_image(name, matplotlib.image.imread(str(png))[..., :3], dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowTracker:
    """One MLflow run (a tracking server, or a local file store ``file:RUN_DIR/tracking/mlruns``)."""

    def __init__(self, uri: str, experiment: str, run_name: str) -> None:
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        self.run = mlflow.start_run(run_name=run_name)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics({k.replace("/", "."): v for k, v in metrics.items()}, step=step)

    def log_image(self, name: str, png: Path) -> None:
        self.mlflow.log_artifact(str(png), artifact_path="report")

    def close(self) -> None:
        self.mlflow.end_run()


class WandbTracker:
    """One W&B run; ``offline`` (the default) writes under ``dir`` for a later ``wandb sync``."""

    def __init__(self, directory: str, project: str, run_name: str, mode: str) -> None:
        import wandb

        self.wandb = wandb
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, name=run_name, dir=directory, mode=mode)
        self.axes: set[str] = set()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # W&B's own step only grows, but round summaries (step = round) follow training steps (step = optimiser
        # step): each group of keys gets its own x-axis instead ("train/*" against "train_step", ...).
        by_group: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            by_group.setdefault(key.split("/", 1)[0], {})[key] = value
        for group, values in by_group.items():
            axis = f"{group}_step"
            if group not in self.axes:
                self.run.define_metric(axis)
                self.run.define_metric(f"{group}/*", step_metric=axis)
                self.axes.add(group)
            self.run.log({**values, axis: step})

    def log_image(self, name: str, png: Path) -> None:
        self.run.log({name: self.wandb.Image(str(png))})

    def close(self) -> None:
        self.run.finish()


def build_tracker(cfg: TrackingConfig, run_dir: str, run_name: str) -> Tracker:
    """The tracker ``cfg.kind`` names; its files go to ``cfg.uri`` or ``RUN_DIR/tracking``."""
    where = cfg.uri or str(Path(run_dir) / "tracking")
    if cfg.kind == "tensorboard":
        return TensorBoardTracker(where)
    if cfg.kind == "mlflow":
        if not cfg.uri:  # no server named: a file store beside the run, which MLflow 3 allows only when asked
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return MLflowTracker(cfg.uri or f"file:{Path(where).resolve() / 'mlruns'}", cfg.project or run_name, run_name)
    if cfg.kind == "wandb":
        return WandbTracker(where, cfg.project or run_name, run_name, cfg.wandb_mode)
    return _NoTracker()


def train_step_metrics(step: dict[str, Any]) -> dict[str, float]:
    """One optimiser step's metrics under ``train/`` (numbers only)."""
    return {f"train/{k}": float(v) for k, v in step.items()
            if k not in ("step", "epoch") and isinstance(v, (int, float)) and v == v}


def round_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A round summary's numbers under ``round/`` and its stage seconds under ``seconds/``."""
    out = {f"round/{k}": float(v) for k, v in summary.items()
           if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update({f"seconds/{k}": float(v) for k, v in summary.get("seconds", {}).items()})
    return out


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file under ``logdir`` (TFRecord framing, Event protos)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in sorted(logdir.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
                elif value.HasField("image"):
                    out.setdefault(value.tag, {})[event.step] = float(len(value.image.encoded_image_string))
    return out
