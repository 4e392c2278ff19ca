"""Everything that can fail because of what the user gave us, checked before any actor starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sppo_ray.config import RunConfig, load_config
from sppo_ray.data.prompts import Prompt, PromptLoadError, PromptSet, load_prompts, split_prompts
from sppo_ray.models import resolve_model

__all__ = ["Plan", "check_cluster_plan", "plan_run", "preflight"]


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


def check_cluster_plan(config: RunConfig, policy_path: Path) -> dict | None:
    """`sppo-ray plan`'s check against the connected Ray cluster's GPU nodes (GPU runs only; None on CPU).

    Runs after Ray is up and before any actor starts: the GPU nodes and their GPUs come from the cluster, the GPU
    memory from ``resources.gpu_memory_gib``. Host memory is not checked here (Ray's "memory" resource is what it
    lets tasks reserve, not the node's RAM); `sppo-ray plan --host-memory-gib` checks it.

    Raises:
        PlanError: the config does not fit; the message names each stage and resource that does not.
    """
    import ray

    from sppo_ray.planning import ClusterSpec, PlanError, architecture_of, make_plan

    r = config.resources
    if not (r.train_use_gpu or r.generator_gpus or r.judge_gpus):
        return None
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
    if not nodes:
        raise PlanError("resources: the config uses GPUs but the Ray cluster has no GPU node")
    per_node = int(max(n["Resources"]["GPU"] for n in nodes))
    cluster = ClusterSpec(len(nodes), per_node, r.gpu_memory_gib)
    plan = make_plan(config, architecture_of(str(policy_path)), cluster)
    gpus = int(sum(n["Resources"]["GPU"] for n in nodes))
    if r.placement == "colocated" and r.train_use_gpu and gpus > r.train_workers:
        # A GPU without a bundle has a whole GPU free: two train workers (each asking for the bundles' remainder)
        # could land on it, and the ones beside the bundles would be missing; one bundle per GPU rules that out.
        raise PlanError(f"resources: the colocated layout puts one bundle on every GPU, and this cluster has {gpus} "
                        f"GPUs for {r.train_workers} bundles; set resources.train_workers, generators and judges to "
                        f"{gpus} (training.global_batch_size a multiple of {gpus} x micro_batch_size), or run on "
                        f"{r.train_workers} GPUs")
    if not plan["fits"]:
        raise PlanError("the config does not fit this cluster (`sppo-ray plan` shows the whole plan):\n  "
                        + "\n  ".join(plan["problems"]))
    return plan
