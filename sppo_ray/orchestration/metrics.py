"""Ray dashboard metrics (``ray.util.metrics``): exported by every node's metrics agent to Prometheus.

Names start with ``sppo_`` (Ray prefixes them with ``ray_`` on the endpoint). All carry a ``run`` tag.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunMetrics"]

_STAGES = ("generate", "judge", "dataset", "train", "broadcast", "evaluate")


class RunMetrics:
    def __init__(self, run_name: str) -> None:
        from ray.util.metrics import Counter, Gauge

        tags = ("run",)
        self.tags = {"run": run_name}
        self.round = Gauge("sppo_round", "current SPPO round", tag_keys=tags)
        self.stage_gauge = Gauge("sppo_stage", "current stage index (generate=0 ... evaluate=5)", tag_keys=tags)
        self.prompts = Counter("sppo_prompts_generated", "prompts sampled K times", tag_keys=tags)
        self.tokens_per_s = Gauge("sppo_generated_tokens_per_s", "generation throughput of the last round",
                                  tag_keys=tags)
        self.pairs = Counter("sppo_pairs_judged", "ordered response pairs judged", tag_keys=tags)
        self.judge_latency = Gauge("sppo_judge_seconds_per_pair", "judge time per ordered pair", tag_keys=tags)
        self.loss = Gauge("sppo_train_loss", "last training loss of the round", tag_keys=tags)
        self.step_time = Gauge("sppo_train_step_seconds", "mean optimiser step time", tag_keys=tags)
        self.weight_sync = Gauge("sppo_weight_sync_seconds", "broadcast of new weights to the generators",
                                 tag_keys=tags)
        self.win_chosen = Gauge("sppo_win_rate_chosen", "mean win rate of the last round's chosen responses",
                                tag_keys=tags)
        self.win_rejected = Gauge("sppo_win_rate_rejected", "mean win rate of the last round's rejected responses",
                                  tag_keys=tags)
        staged = ("run", "stage")  # live during a stage (generate, judge): its done/total and ETA
        self.stage_done = Gauge("sppo_stage_done", "items of the current stage done (prompts)", tag_keys=staged)
        self.stage_total = Gauge("sppo_stage_total", "items of the current stage in all", tag_keys=staged)
        self.stage_rate = Gauge("sppo_stage_items_per_s", "items of the current stage per second", tag_keys=staged)
        self.stage_eta = Gauge("sppo_stage_eta_seconds", "seconds the current stage still needs", tag_keys=staged)
        for g in (self.round, self.stage_gauge):
            g.set(0, tags=self.tags)

    def progress(self, p: dict[str, Any]) -> None:
        """A progress snapshot of a counted stage (``orchestration.progress.Progress``)."""
        if p.get("total") is None:
            return
        tags = {**self.tags, "stage": p["stage"]}
        self.stage_done.set(p["done"], tags=tags)
        self.stage_total.set(p["total"], tags=tags)
        if p.get("rate"):
            self.stage_rate.set(p["rate"], tags=tags)
        self.stage_eta.set(0.0 if p.get("finished") else (p.get("eta_s") or 0.0), tags=tags)

    def stage(self, round_: int, stage: str) -> None:
        self.round.set(round_, tags=self.tags)
        self.stage_gauge.set(_STAGES.index(stage), tags=self.tags)

    def round_done(self, s: dict[str, Any]) -> None:
        if s["generated_prompts"]:
            self.prompts.inc(s["generated_prompts"], tags=self.tags)
        if s["seconds"].get("generate"):
            self.tokens_per_s.set(s["generated_tokens"] / s["seconds"]["generate"], tags=self.tags)
        if s["pairs_judged"]:
            self.pairs.inc(s["pairs_judged"], tags=self.tags)
            self.judge_latency.set(s["seconds"].get("judge", 0.0) / s["pairs_judged"], tags=self.tags)
        if s["loss_last"] is not None:
            self.loss.set(s["loss_last"], tags=self.tags)
        if s["step_seconds"] is not None:
            self.step_time.set(s["step_seconds"], tags=self.tags)
        self.weight_sync.set(s["seconds"].get("broadcast", 0.0), tags=self.tags)
        self.win_chosen.set(s["win_rate_chosen"], tags=self.tags)
        self.win_rejected.set(s["win_rate_rejected"], tags=self.tags)
