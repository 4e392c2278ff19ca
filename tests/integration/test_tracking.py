"""Training steps, round summaries and plots reach TensorBoard, MLflow and W&B files through their own clients."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sppo_ray.config import TrackingConfig
from sppo_ray.orchestration.tracking import build_tracker, round_metrics, tensorboard_scalars, train_step_metrics

pytestmark = pytest.mark.integration

STEPS = [{"step": 1, "epoch": 0, "loss": 0.5, "grad_norm": 1.5, "lr": 1e-6, "logratio_chosen": float("nan")},
         {"step": 2, "epoch": 0, "loss": 0.25, "grad_norm": 1.0, "lr": 1e-6, "logratio_chosen": 0.1}]
ROUND = {"round": 0, "win_rate_chosen": 0.7, "mean_response_tokens": 40.5, "probe": "Paris",
         "seconds": {"generate": 3.0, "round": 10.0}}


def _log_everything(kind: str, tmp_path: Path, png: Path):
    tracker = build_tracker(TrackingConfig(kind=kind), str(tmp_path / "run"), "unit-run")
    for m in STEPS:
        tracker.log_metrics(train_step_metrics(m), m["step"])
    tracker.log_metrics(round_metrics(ROUND), 0)
    tracker.log_image("report/loss", png)
    tracker.close()
    return tmp_path / "run" / "tracking"


@pytest.fixture
def png(tmp_path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([1, 2, 3])
    fig.savefig(tmp_path / "loss.png")
    plt.close(fig)
    return tmp_path / "loss.png"


def test_tensorboard_event_files_hold_the_metrics(tmp_path, png):
    scalars = tensorboard_scalars(_log_everything("tensorboard", tmp_path, png))
    assert scalars["train/loss"] == {1: 0.5, 2: 0.25}
    assert scalars["train/logratio_chosen"] == {2: pytest.approx(0.1)}  # NaN (no target) is not logged
    assert scalars["round/win_rate_chosen"] == {0: pytest.approx(0.7)}
    assert scalars["seconds/generate"] == {0: 3.0}
    assert "round/probe" not in scalars and scalars["report/loss"][0] > 100  # a PNG-encoded image


def test_mlflow_file_store_holds_the_metrics(tmp_path, png, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    where = _log_everything("mlflow", tmp_path, png)
    client = MlflowClient(tracking_uri=f"file:{where.resolve() / 'mlruns'}")
    run = client.search_runs([client.get_experiment_by_name("unit-run").experiment_id])[0]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train.loss")] == [(1, 0.5), (2, 0.25)]
    assert run.data.metrics["round.win_rate_chosen"] == pytest.approx(0.7)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "report")] == ["report/loss.png"]


def test_wandb_offline_run_holds_the_metrics(tmp_path, png, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    where = _log_everything("wandb", tmp_path, png)
    runs = list(where.rglob("offline-run-*"))
    assert len(runs) == 1
    keys = (b"train/loss", b"train_step", b"round/win_rate_chosen", b"round_step", b"seconds/generate",
            b"report/loss")
    deadline = time.monotonic() + 60  # W&B's service process may still be writing the run file after finish()
    while True:
        records = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
        if all(k in records for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in records
    assert list(runs[0].rglob("media/images/report/loss_*.png"))
