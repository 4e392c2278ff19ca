"""One typed, validated config tree for a whole SPPO run.

A YAML file becomes a frozen :class:`RunConfig` at start-up; each role receives only its own part
(``cfg.generation`` goes to the generators, ``cfg.judge`` to the judges, ...). Unknown keys, wrong types and
impossible values fail here, before any actor starts, with a message that names the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ConfigError",
    "DataConfig",
    "GenerationConfig",
    "JudgeConfig",
    "ModelsConfig",
    "ResourcesConfig",
    "RunConfig",
    "TrackingConfig",
    "TrainingConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
]

EMBEDDED_POLICY = "embedded:smollm2-135m-instruct"
EMBEDDED_PROMPTS = "embedded:default"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ModelsConfig(_Section):
    # Policy π_0: "embedded:smollm2-135m-instruct", a local HF directory, or a hub id (downloaded only if reachable).
    policy: str = EMBEDDED_POLICY
    # Judge model for kind "llm" or "pairrm" (ignored by kinds "length" and "verifier"): same forms as policy.
    judge: str = EMBEDDED_POLICY
    # Allow custom modelling code from the hub; off unless the user asks.
    trust_remote_code: bool = False


class DataConfig(_Section):
    # "embedded:default" (the shipped prompts), "embedded:verifiable" (prompts with IFEval-style instructions), a
    # JSONL/Parquet file, or a local HF `datasets` directory.
    prompts: str = EMBEDDED_PROMPTS
    # Prompts used per round; each round takes a fresh disjoint split (the paper uses one split per round).
    prompts_per_iteration: int = Field(64, ge=1)
    # Prompts held out from every training split, for evaluation (drawn from rows marked split: eval, if any).
    eval_prompts: int = Field(32, ge=0)
    # Seed of the shuffle that assigns prompts to splits.
    split_seed: int = 0


class GenerationConfig(_Section):
    # Samples per prompt (the paper uses 5).
    k: int = Field(5, ge=2)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(2048, ge=1)
    # Prompts longer than this (in chat-templated tokens) are truncated from the left or skipped.
    max_prompt_tokens: int = Field(512, ge=8)
    overlong_prompts: Literal["truncate", "skip"] = "truncate"
    # Run seed; per-sample seeds derive from (seed, iteration, prompt id, sample index).
    seed: int = 0
    # vLLM engine dtype; "auto" is float32 on CPU (vLLM's CPU bf16 path garbles SmolLM2) and bfloat16 on GPU.
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = "auto"
    max_model_len: int | None = Field(None, ge=16)
    # vLLM CPU KV cache per engine, GiB (vLLM's kv_cache_memory_bytes; fractions allowed: `sppo-ray rehearse` runs 16
    # tiny engines on one machine with 1/16 GiB each); ignored on GPU.
    kv_cache_gib: float = Field(1.0, gt=0)
    # Fraction of its GPU's memory a vLLM engine takes (weights + KV cache), checked free when it starts. None: 0.85
    # with GPUs of its own; in the colocated layout the engine's share, resources.generator_gpus, so that an engine
    # Ray restarts while the judge and the train worker hold their shares can start again.
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    # Run vLLM without CUDA graphs. None: eager on CPU (required there), CUDA graphs on GPUs (faster decoding).
    enforce_eager: bool | None = None
    # vLLM sleep level of a generator while others use its GPU (colocated layout on GPUs): 2 discards the weights
    # (the next broadcast brings new ones anyway), 1 keeps them in host memory (one copy per engine, ~116 GB a node
    # for 8 engines of a 7B model). No-op on CPU.
    sleep_level: Literal[1, 2] = 2
    # How π_{t+1} reaches the generators: "direct" from the train workers through vLLM's weight-transfer API at the
    # end of the fit (CUDA IPC from the train worker on the same GPU in the colocated layout, NCCL from rank 0 in
    # the disaggregated one), "files" from the exported directory; "auto": direct when both train and generate on
    # GPUs. The export is written first either way (resume, users) and is the fallback if the transfer fails.
    weight_sync: Literal["auto", "direct", "files"] = "auto"
    # Prompts handed to one generator actor per call (at most; a round's prompts are split so that every generator
    # gets at least two calls). A generator runs two calls at once in one engine, so calls can be small.
    batch_size: int = Field(16, ge=1)
    # The stage writes its rows in chunks of this many prompts as they finish (RUN_DIR/round_t/chunks_generate/),
    # so a driver killed mid-stage resumes with the prompts no chunk holds; 0 keeps none for resuming (the rows
    # still go to chunks of 1,000: responses.parquet is assembled from them). Removed once it is recorded.
    chunk_prompts: int = Field(1000, ge=0)

    # What a generated row depends on (with the prompt, the round and the policy): chunks written under other values
    # of these are not reused.
    SAMPLING_FIELDS: ClassVar[tuple[str, ...]] = ("k", "temperature", "top_p", "max_new_tokens", "max_prompt_tokens",
                                                   "overlong_prompts", "seed", "dtype", "max_model_len",
                                                   "enforce_eager")

    @model_validator(mode="after")
    def _model_len_fits(self) -> "GenerationConfig":
        if self.max_model_len is not None and self.max_model_len < self.max_prompt_tokens + self.max_new_tokens:
            raise ValueError(
                f"max_model_len ({self.max_model_len}) must be >= max_prompt_tokens + max_new_tokens "
                f"({self.max_prompt_tokens} + {self.max_new_tokens})"
            )
        return self


class JudgeConfig(_Section):
    # "pairrm": llm-blender's PairRM; "llm": a causal LM asked which of two responses is better;
    # "length": a scripted judge that prefers shorter (or longer) responses, for checking that the loop learns;
    # "verifier": IFEval's instruction checkers on prompts that carry instructions (e.g. data.prompts:
    # embedded:verifiable); a response scores the fraction of its prompt's instructions it follows.
    kind: Literal["pairrm", "llm", "length", "verifier"] = "llm"
    # "debiased": P[i,j] = (σ(l_ij) + σ(-l_ji))/2, a true pairwise table; "reference": uclaml/SPPO's rank-score table.
    table: Literal["debiased", "reference"] = "debiased"
    # "pair": keep the winner and loser of each prompt (the paper). ("all", which paired the best response with each
    # of the others, was removed: it counted the best response K − 1 times and trained ties as preferences.)
    selection: Literal["pair"] = "pair"
    # Pairs per forward pass, at most; batches are also cut at max_batch_tokens.
    batch_size: int = Field(32, ge=1)
    # Padded tokens per forward pass (pairs x the batch's longest pair): bounds a batch's memory whatever the
    # lengths, so the longest batch cannot run out of GPU memory. A batch that still does is split and retried.
    max_batch_tokens: int = Field(16384, ge=64)
    # PairRM truncation (the published model: source 1224, candidate 412 tokens).
    max_source_tokens: int = Field(1224, ge=8)
    max_candidate_tokens: int = Field(412, ge=8)
    # For kind "length": which length wins (logit = difference in characters / 10).
    prefer: Literal["shorter", "longer"] = "shorter"
    dtype: Literal["float32", "bfloat16"] = "float32"
    # For kind "verifier": P(i ≻ j) = σ((s_i − s_j)/tau). 0.25 keeps one instruction's difference a clear but
    # unsaturated preference (Δs = 1/3: 0.79, 1/2: 0.88, 1: 0.98), in the range PairRM gives clear pairs.
    tau: float = Field(0.25, gt=0.0)
    # For kind "verifier": IFEval's "strict" check, or "loose" (also passes if the answer does once its first or
    # last line or its asterisks are dropped), which credits a small model's "Sure! Here is..." opening line.
    verifier_mode: Literal["strict", "loose"] = "loose"
    # The stage writes its judged rows in chunks of this many prompts as they finish (RUN_DIR/round_t/chunks_judge/),
    # so a driver killed mid-stage resumes with the prompts no chunk holds; 0 writes none. Removed once the round's
    # tables.parquet is recorded.
    chunk_prompts: int = Field(1000, ge=0)

    # What a judged row depends on (with the generated rows and the judge model): chunks written under other values
    # of these are not reused. (Batch sizes only cut the work differently.)
    TABLE_FIELDS: ClassVar[tuple[str, ...]] = ("kind", "table", "selection", "max_source_tokens",
                                                "max_candidate_tokens", "prefer", "dtype", "tau", "verifier_mode")

    @model_validator(mode="after")
    def _verifier_table(self) -> "JudgeConfig":
        if self.kind == "verifier" and self.table != "debiased":
            raise ValueError("judge.kind verifier needs judge.table: debiased (its table is σ((s_i − s_j)/tau); "
                             "the reference table would double the logits)")
        return self


class TrainingConfig(_Section):
    # Seed of the per-epoch reshuffle of each worker's rows (the same order after a resume).
    seed: int = 0
    loss: Literal["sppo", "sppo_single", "dpo", "ipo"] = "sppo"
    # η = 1/beta in the SPPO target; the paper and reference code use beta = 0.001.
    beta: float = Field(0.001, gt=0.0)
    lr: float = Field(5e-7, gt=0.0)
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    schedule: Literal["linear", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(1, ge=1)
    # Rows per optimiser step across all workers = micro_batch_size x workers x gradient accumulation.
    global_batch_size: int = Field(64, ge=1)
    micro_batch_size: int = Field(1, ge=1)
    zero_stage: Literal[0, 1, 2, 3] = 3
    offload: bool = False
    precision: Literal["bf16", "fp32"] = "bf16"
    max_length: int = Field(1024, ge=16)
    max_prompt_length: int = Field(512, ge=8)
    grad_clip: float = Field(1.0, gt=0.0)
    # Recompute activations in the backward pass (non-reentrant torch checkpointing): activation memory of one
    # layer instead of all of them, for ~30% more compute. On in the paper configs (7-8B, 1024 tokens).
    gradient_checkpointing: bool = False
    # Attention kernel of the trained model: "sdpa" (torch's, everywhere), "eager", or "flash_attention_2" (needs
    # the flash-attn package on the training nodes; a clear error otherwise).
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    # π_{t+1} is exported in the training precision as safetensors shards of at most this many GB (10^9 bytes),
    # with an index file: the layout transformers and vLLM expect of any HF checkpoint.
    export_max_shard_gb: float = Field(5.0, gt=0.0)
    # Save a DeepSpeed checkpoint through ray.train.report every N optimiser steps (0: only at the end), so a killed
    # worker resumes from it instead of restarting the round.
    checkpoint_every: int = Field(0, ge=0)
    # Worker-group restarts Ray Train may do within one round.
    max_failures: int = Field(1, ge=0)

    @model_validator(mode="after")
    def _lengths(self) -> "TrainingConfig":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})")
        return self


class ResourcesConfig(_Section):
    generators: int = Field(1, ge=1)
    judges: int = Field(1, ge=1)
    train_workers: int = Field(2, ge=1)
    generator_cpus: float = Field(1, gt=0)
    generator_gpus: float = Field(0, ge=0)
    # vLLM tensor parallel size per generator (GPU clusters).
    tensor_parallel: int = Field(1, ge=1)
    judge_cpus: float = Field(1, gt=0)
    judge_gpus: float = Field(0, ge=0)
    train_cpus_per_worker: float = Field(1, gt=0)
    train_use_gpu: bool = False
    # "colocated": one Ray placement-group bundle per GPU (or per CPU slot), each holding a generator, a judge
    # replica and (beside the group, on the rest of the same GPU) a train worker; every stage uses every GPU and the
    # idle roles sleep (see orchestration/colocation.py). "disaggregated": each role holds its own devices for the
    # whole run. Default: colocated when training uses GPUs, else disaggregated.
    layout: Literal["colocated", "disaggregated"] | None = None
    # Per-GPU memory (GiB) of the cluster's GPUs, for the plan that `sppo-ray run` checks before starting actors.
    gpu_memory_gib: float = Field(80.0, gt=0)
    # Torch threads of each vLLM engine (CPU) and each judge. 0: a judge uses every core of its node; on a one-node
    # cluster the generators share the node's cores, on larger clusters each uses generator_cpus. Roles
    # time-share the cores on a small machine, so the active stage should use them all although each role
    # reserves only its own CPUs. (Ray would otherwise run each actor with OMP_NUM_THREADS=1.)
    actor_threads: int = Field(0, ge=0)
    # The GPUs are logical only: the nodes declare GPUs (as Ray resources) that they do not have, so every role
    # reserves its GPU share from Ray exactly as on a GPU cluster (placement groups, bundles, CUDA_VISIBLE_DEVICES)
    # but computes on CPU: training over gloo, π_{t+1} loaded from the export. `sppo-ray rehearse` sets it on CPU
    # nodes; a real GPU cluster never needs it.
    logical_gpus: bool = False
    # Logical CPUs for a local Ray started by the driver (0: max(cores, what the roles reserve)); roles time-share
    # the cores on a small machine because only one stage is busy at a time.
    local_num_cpus: int = Field(0, ge=0)
    # Seconds a stage waits for a lost node's roles to come back (Ray restarts actors on a surviving or replacement
    # node; in the colocated layout the node's bundles are re-reserved when a node that holds them joins). Past it
    # the run stops with a message saying so, and `sppo-ray resume` continues it once the cluster has the node.
    node_wait_s: float = Field(900.0, gt=0)

    @property
    def placement(self) -> str:
        """The layout in effect ("colocated" or "disaggregated")."""
        return self.layout or ("colocated" if self.train_use_gpu else "disaggregated")

    @property
    def train_gpu_share(self) -> float:
        """GPU fraction of each train worker: a whole GPU, or in the colocated layout what the bundle leaves."""
        if not self.train_use_gpu:
            return 0.0
        return 1.0 - self.generator_gpus - self.judge_gpus if self.placement == "colocated" else 1.0

    @model_validator(mode="after")
    def _colocation_fits(self) -> "ResourcesConfig":
        if self.placement != "colocated":
            return self
        n = self.train_workers
        if self.tensor_parallel != 1:
            raise ValueError("resources.tensor_parallel must be 1 in the colocated layout (one engine per GPU "
                             "bundle); use layout: disaggregated for tensor-parallel engines")
        if self.generators != n or self.judges > n:
            raise ValueError(f"resources: the colocated layout puts one generator and at most one judge on each of "
                             f"the {n} bundles (train_workers), so generators must be {n} and judges at most {n} "
                             f"(got generators={self.generators}, judges={self.judges})")
        gpus = (self.generator_gpus > 0, self.judge_gpus > 0, self.train_use_gpu)
        if any(gpus) and not all(gpus):
            raise ValueError("resources: in the colocated layout generator_gpus, judge_gpus and train_use_gpu are all "
                             "set (a GPU per bundle shared by the roles) or all off (CPU bundles)")
        share = self.generator_gpus + self.judge_gpus
        if self.train_use_gpu and not 0.5 < share < 1:
            # Ray places a fractional request on the GPU it fits most tightly: two bundles of <= 0.5 would share a
            # GPU and leave another empty; above 0.5 each bundle gets a GPU of its own, and each train worker then
            # fits only the gap beside one bundle.
            raise ValueError(f"resources: generator_gpus + judge_gpus ({share:g}) must be above 0.5 (one bundle per "
                             "GPU) and below 1 (the rest is the train worker's) in the colocated layout, "
                             "e.g. 0.5 + 0.1")
        return self


class TrackingConfig(_Section):
    # Where training steps, round summaries, evaluation and the report's plots are also logged: "none",
    # "tensorboard" (event files), "mlflow" (a tracking server or a local file store) or "wandb".
    kind: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"
    # TensorBoard log dir, MLflow tracking URI or W&B directory; empty: RUN_DIR/tracking (MLflow: a file store
    # under it).
    uri: str = ""
    # MLflow experiment / W&B project; empty: the run's name.
    project: str = ""
    # W&B: "offline" writes files only (`wandb sync` uploads them later); "online" needs WANDB_API_KEY.
    wandb_mode: Literal["offline", "online"] = "offline"


class RunConfig(_Section):
    # Run name, shown in summaries and metrics.
    name: str = "sppo"
    # Run directory: resolved config, each stage's output per round, and the manifest.
    run_dir: str = "runs/sppo"
    # SPPO rounds (the paper uses 3).
    iterations: int = Field(3, ge=1)
    # Evaluate π_0..π_T on held-out prompts at the end of the run.
    eval_at_end: bool = True
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    generation: GenerationConfig = GenerationConfig()
    judge: JudgeConfig = JudgeConfig()
    training: TrainingConfig = TrainingConfig()
    resources: ResourcesConfig = ResourcesConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def weight_transfer(self) -> str | None:
        """vLLM weight-transfer backend that carries π_{t+1} from the train workers to the generators ("ipc" when
        colocated, "nccl" otherwise; see training/weight_transfer.py), or None: from the exported files."""
        r, mode = self.resources, self.generation.weight_sync
        if mode == "files" or r.logical_gpus or not (r.train_use_gpu and r.generator_gpus > 0):
            return None
        return "ipc" if r.placement == "colocated" else "nccl"

    @property
    def engine_memory_utilization(self) -> float:
        """vLLM's gpu_memory_utilization for each engine: the configured value, or by default its GPU share in the
        colocated layout (0.85 of a GPU of its own)."""
        g, r = self.generation, self.resources
        if g.gpu_memory_utilization is not None:
            return g.gpu_memory_utilization
        return r.generator_gpus if r.placement == "colocated" and r.generator_gpus else 0.85

    @model_validator(mode="after")
    def _engine_fits_its_share(self) -> "RunConfig":
        g, r = self.generation, self.resources
        if r.placement == "colocated" and r.generator_gpus and (g.gpu_memory_utilization or 0) > r.generator_gpus:
            raise ValueError(f"generation.gpu_memory_utilization ({g.gpu_memory_utilization}) exceeds the engine's "
                             f"share of its GPU, resources.generator_gpus ({r.generator_gpus}), in the colocated layout: "
                             "the judge and the train worker use the rest; leave it unset (it follows the share)")
        return self

    @model_validator(mode="after")
    def _direct_needs_gpus(self) -> "RunConfig":
        r = self.resources
        on_gpus = r.train_use_gpu and r.generator_gpus > 0 and not r.logical_gpus
        if self.generation.weight_sync == "direct" and not on_gpus:
            raise ValueError("generation.weight_sync: direct needs GPU training (resources.train_use_gpu) and GPU "
                             "generators (resources.generator_gpus > 0) on real GPUs (resources.logical_gpus off); "
                             "use files on CPU")
        return self

    @model_validator(mode="after")
    def _prompts_fit_training(self) -> "RunConfig":
        g, t = self.generation, self.training
        if g.max_prompt_tokens > t.max_prompt_length:
            # training would cut such prompts from the left, dropping the chat template's start
            raise ValueError(f"generation.max_prompt_tokens ({g.max_prompt_tokens}) must be <= "
                             f"training.max_prompt_length ({t.max_prompt_length}): training would cut the prompts the "
                             "generators answered from the left, chat template's start included")
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> "RunConfig":
        per_step = self.training.micro_batch_size * self.resources.train_workers
        if self.training.global_batch_size % per_step:
            raise ValueError(
                f"training.global_batch_size ({self.training.global_batch_size}) must be a multiple of "
                f"training.micro_batch_size x resources.train_workers ({per_step})"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a plain dict into a :class:`RunConfig`.

    Raises:
        ConfigError: naming every offending key and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: the top level must be a mapping, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a config dict, returning a copy."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"invalid override {item!r}: expected KEY=VALUE, e.g. training.beta=0.001")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"invalid override {item!r}: {p} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(value)
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file, apply overrides, and validate.

    Raises:
        ConfigError: unreadable file, bad YAML, or invalid values (naming the key).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    return parse_config(apply_overrides(data, overrides or []))
