"""Per-step training metrics while a fit runs, from rank 0 through ``ray.util.metrics`` (Ray's metrics agent on the
worker's node exports them to Prometheus, as the driver's in ``orchestration/metrics.py``). The driver's own
training gauges are per round; these move with every optimiser step. All carry the run's ``run`` tag."""

from __future__ import annotations

from typing import Any

__all__ = ["StepGauges"]


class StepGauges:
    def __init__(self, run_name: str) -> None:
        from ray.util.metrics import Gauge

        tags = ("run",)
        self.tags = {"run": run_name}
        self.step = Gauge("sppo_train_step", "optimiser steps done in the current fit", tag_keys=tags)
        self.total = Gauge("sppo_train_steps_total", "optimiser steps of the current fit", tag_keys=tags)
        self.loss = Gauge("sppo_train_step_loss", "loss of the last optimiser step (rank 0's rows)", tag_keys=tags)
        self.tokens_per_s = Gauge("sppo_train_tokens_per_s", "training tokens per second over all ranks, last step",
                                  tag_keys=tags)

    def started(self, done: int, total: int) -> None:
        self.step.set(done, tags=self.tags)
        self.total.set(total, tags=self.tags)

    def stepped(self, metrics: dict[str, Any]) -> None:
        self.step.set(metrics["step"], tags=self.tags)
        self.loss.set(metrics["loss"], tags=self.tags)
        self.tokens_per_s.set(metrics["tokens_per_s"], tags=self.tags)
