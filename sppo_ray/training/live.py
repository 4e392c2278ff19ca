"""Where a fit stands while it runs, from rank 0 at every optimiser step: gauges through ``ray.util.metrics`` (Ray's
metrics agent on the worker's node exports them to Prometheus, like the driver's in ``orchestration/metrics.py``,
tagged with the run's ``run``), and a small ``steps.json`` in the fit's directory on the run's storage that the
driver polls for its progress line (step, steps in all, the last loss)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["STEPS_FILE", "StepReporter", "read_steps"]

STEPS_FILE = "steps.json"


class StepReporter:
    def __init__(self, fit_dir: str | Path, run_name: str | None) -> None:
        self.path = Path(fit_dir) / STEPS_FILE
        self.tags = {"run": run_name} if run_name else None
        if self.tags is not None:
            from ray.util.metrics import Gauge

            tags = ("run",)
            self.step = Gauge("sppo_train_step", "optimiser steps done in the current fit", tag_keys=tags)
            self.total = Gauge("sppo_train_steps_total", "optimiser steps of the current fit", tag_keys=tags)
            self.loss = Gauge("sppo_train_step_loss", "loss of the last optimiser step (rank 0's rows)",
                              tag_keys=tags)
            self.tokens_per_s = Gauge("sppo_train_tokens_per_s",
                                      "training tokens per second over all ranks, last step", tag_keys=tags)
        self.steps_total = 0

    def started(self, done: int, total: int) -> None:
        self.steps_total = total
        if self.tags is not None:
            self.step.set(done, tags=self.tags)
            self.total.set(total, tags=self.tags)

    def stepped(self, metrics: dict[str, Any]) -> None:
        if self.tags is not None:
            self.step.set(metrics["step"], tags=self.tags)
            self.loss.set(metrics["loss"], tags=self.tags)
            self.tokens_per_s.set(metrics["tokens_per_s"], tags=self.tags)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:  # progress only: a full disk must not stop the fit
            tmp.write_text(json.dumps({"step": metrics["step"], "total": self.steps_total, "loss": metrics["loss"]}))
            os.replace(tmp, self.path)
        except OSError:
            pass


def read_steps(fit_dir: str | Path) -> dict[str, Any] | None:
    """The last step rank 0 reported in ``fit_dir``, or None (none yet, or caught mid-write)."""
    try:
        return json.loads((Path(fit_dir) / STEPS_FILE).read_text())
    except (OSError, ValueError):
        return None
