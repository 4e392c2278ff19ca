"""Everything that can fail because of what the user gave us, checked before any actor starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sppo_ray.config import RunConfig, load_config
from sppo_ray.data.prompts import Prompt, PromptLoadError, PromptSet, load_prompts, split_prompts
from sppo_ray.models import resolve_model

__all__ = ["Plan", "plan_run", "preflight"]


@dataclass(frozen=True)
class Plan:
    """A validated run: config, local model directories, prompt splits and load-time rejects."""

    config: RunConfig
    policy_path: Path
    # None for the scripted length judge and the verifier, which need no model.
    judge_path: Path | None
    prompt_set: PromptSet
    rounds: list[list[Prompt]]
    held_out: list[Prompt]

    def describe(self) -> str:
        c = self.config
        lines = [
            f"config ok: {c.name}, {c.iterations} rounds, run_dir {c.run_dir}",
            f"  policy: {c.models.policy} -> {self.policy_path}",
            f"  judge:  {c.judge.kind}" + (f" {c.models.judge} -> {self.judge_path}" if self.judge_path else ""),
            f"  prompts: {len(self.prompt_set.prompts)} usable from {self.prompt_set.source}"
            f" ({len(self.prompt_set.rejects)} rejected); {c.data.prompts_per_iteration} per round,"
            f" {len(self.held_out)} held out",
            f"  generation: K={c.generation.k}, temperature {c.generation.temperature}, top_p {c.generation.top_p},"
            f" max_new_tokens {c.generation.max_new_tokens}",
            f"  training: {c.training.loss}, beta {c.training.beta}, lr {c.training.lr}, {c.training.optimizer},"
            f" ZeRO-{c.training.zero_stage}, {c.training.precision}, global batch {c.training.global_batch_size}",
            f"  resources: {c.resources.generators} generator(s), {c.resources.judges} judge(s),"
            f" {c.resources.train_workers} train worker(s)",
        ]
        return "\n".join(lines)


def plan_run(config: RunConfig, *, download: bool = True) -> Plan:
    """Resolve models and prompts for a validated config.

    Raises:
        ModelSourceError, PromptLoadError: naming the model path or prompt file and what is wrong (also: the
            verifier judge on prompts without instructions).
    """
    policy = resolve_model(config.models.policy, download=download)
    modelless = config.judge.kind in ("length", "verifier")
    judge = None if modelless else resolve_model(config.models.judge, download=download)
    prompt_set = load_prompts(config.data.prompts)
    _check_verifiable(config, prompt_set)
    rounds, held_out = split_prompts(
        prompt_set.prompts,
        per_iteration=config.data.prompts_per_iteration,
        iterations=config.iterations,
        eval_size=config.data.eval_prompts,
        seed=config.data.split_seed,
    )
    return Plan(config, policy, judge, prompt_set, rounds, held_out)


def _check_verifiable(config: RunConfig, prompt_set: PromptSet) -> None:
    """The verifier judge can only judge prompts that carry instructions: every one must."""
    if config.judge.kind != "verifier":
        return
    bare = [p.id for p in prompt_set.prompts if not p.instructions]
    if bare:
        raise PromptLoadError(
            f"judge.kind verifier needs instructions on every prompt; {len(bare)} of {len(prompt_set.prompts)} "
            f"prompts from {prompt_set.source!r} have none (first: {bare[0]}). Use data.prompts: embedded:verifiable "
            "or rows with an 'instructions' field"
        )


def preflight(config_path: str, overrides: list[str] | None = None) -> Plan:
    return plan_run(load_config(config_path, overrides))
