"""`sppo-ray plan`: what a config needs on a given cluster, per stage, before any GPU-hour is spent (no Ray here).

For each stage (generate, judge, train, broadcast) the plan lists which GPUs each role uses and how many sit idle,
per-GPU memory (DeepSpeed's own estimator for the ZeRO model states, activations with and without gradient
checkpointing, vLLM weights + KV cache, PairRM), host-memory peaks, and a time estimate from FLOP counts at a
stated utilisation, beside the reference implementation's shape (uclaml/SPPO: every GPU per stage, a fresh vLLM
engine each round, PairRM at batch size 1, a second reference model in training). A config that cannot fit fails
with the stage and the resource named.

Model shapes come from the model's ``config.json`` when it is on this machine, otherwise from the shapes of the
paper's models shipped here (``ARCHITECTURES``); nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sppo_ray.config import RunConfig

__all__ = ["ARCHITECTURES", "Architecture", "ClusterSpec", "PlanError", "architecture_of", "colocated_for",
           "make_plan", "plan_table"]

GIB = 2**30


class PlanError(ValueError):
    """The config does not fit the cluster; the message names the stage and the resource."""


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer (or PairRM's encoder) that memory and FLOPs depend on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def layer_params(self) -> int:
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * self.kv_dim  # q, o; k, v
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden  # gated MLP, two norms

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + embeddings + self.hidden

    @property
    def largest_layer_params(self) -> int:
        """The largest single module's parameters (embedding or an MLP projection): what ZeRO-3 gathers at once."""
        return max(self.vocab * self.hidden, self.hidden * self.intermediate)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_dim * dtype_bytes


# Shapes of the paper's models (from their published config.json), so a plan needs no download.
ARCHITECTURES: dict[str, Architecture] = {
    "mistralai/Mistral-7B-Instruct-v0.2": Architecture(4096, 14336, 32, 32, 8, 32000),
    "meta-llama/Meta-Llama-3-8B-Instruct": Architecture(4096, 14336, 32, 32, 8, 128256),
}
# PairRM = DeBERTa-v3-large (0.435 B parameters, 24 layers of width 1024) plus its pairwise head.
PAIRRM_PARAMS = 435_000_000
PAIRRM_LAYERS, PAIRRM_HIDDEN, PAIRRM_HEADS = 24, 1024, 16
# DeBERTa-v2's disentangled attention keeps about four [pairs, heads, L, L] tensors live per layer: q·kᵀ, the
# gathered content-to-position and position-to-content terms and the softmax
# (transformers/models/deberta_v2/modeling_deberta_v2.py: attention_scores l.243, c2p_att l.317-324, p2c_att l.337,
# softmax l.259); at 65,536 tokens of 2,048-token pairs in bf16 that is ~16 GiB.
PAIRRM_LIVE_SCORES = 4
# DeepSpeed's ZeRO buffers beside the model states (deepspeed/runtime/zero/config.py defaults): up to
# stage3_max_live_parameters = 1e9 gathered 16-bit parameters (l.245), two reduce buckets of reduce_bucket_size =
# 5e8 16-bit gradients (l.113); ZeRO-1/2 instead one allgather bucket of 5e8 (l.132) and the two reduce buckets.
DS_LIVE_PARAMETERS, DS_REDUCE_BUCKET, DS_ALLGATHER_BUCKET = 1e9, 5e8, 5e8
# NCCL's communicator buffers per process group (its default NCCL_BUFFSIZE of 4 MiB per channel and peer, ~0.5-1 GiB
# on an 8-GPU node with the workspace), counted once per role that holds a group.
NCCL_GIB = 1.0
# What a sleeping vLLM engine keeps: only allocations under the "weights" and "kv_cache" tags are released
# (vllm/v1/worker/gpu_worker.py: weights l.589, KV cache l.885); the CUDA-graph pool captured at l.962 and the
# runtime buffers stay, ~1-3 GiB for a 7-8B model with CUDA graphs (0 with enforce_eager).
SLEEPING_ENGINE_GRAPHS_GIB = 2.0
# Micro-batches the plan tries when it reports the fastest training setting that fits.
MICRO_BATCHES = (1, 2, 4, 8)


def architecture_of(spec: str) -> Architecture:
    """The architecture of a model spec: a local directory's config.json, a known hub id, or the embedded model.

    Raises:
        PlanError: the model is neither here nor one of the known shapes.
    """
    if spec in ARCHITECTURES:
        return ARCHITECTURES[spec]
    path = Path(spec).expanduser()
    if spec.startswith("embedded:"):
        from sppo_ray.models import prepare_embedded

        path = prepare_embedded(spec.split(":", 1)[1], quiet=True)
    if not (path / "config.json").is_file():
        raise PlanError(f"models.policy {spec!r}: no config.json here and not a known shape "
                        f"({', '.join(ARCHITECTURES)}); give a local model directory")
    c = json.loads((path / "config.json").read_text())
    heads = c["num_attention_heads"]
    return Architecture(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], heads,
                        c.get("num_key_value_heads", heads), c["vocab_size"], bool(c.get("tie_word_embeddings")))


@dataclass(frozen=True)
class ClusterSpec:
    nodes: int
    gpus_per_node: int
    gpu_memory_gib: float
    host_memory_gib: float | None = None
    # bf16 dense peak of one GPU (A100 312, H100 SXM 989) and the fraction of it each kind of work reaches.
    gpu_tflops: float = 312.0
    train_utilization: float = 0.40
    generate_utilization: float = 0.15  # decoding is memory-bound: a small fraction of peak FLOPs
    judge_utilization: float = 0.30
    judge_batch1_utilization: float = 0.03  # one pair per forward leaves the GPU mostly idle
    # mean generated tokens per response (a config gives only the maximum)
    mean_response_tokens: int = 400

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class StagePlan:
    stage: str
    # role -> GPUs it uses in this stage
    busy: dict[str, int]
    idle_gpus: int
    seconds: float
    reference_seconds: float
    notes: list[str] = field(default_factory=list)


def _train_memory(cfg: RunConfig, arch: Architecture, cluster: ClusterSpec) -> dict[str, float]:
    """GiB per train GPU: DeepSpeed's ZeRO model-states estimate plus activations of one micro-batch."""
    t, r = cfg.training, cfg.resources
    workers_per_node = max(1, min(r.train_workers, cluster.gpus_per_node))
    nodes = math.ceil(r.train_workers / workers_per_node)
    states = model_states_bytes(t.zero_stage, t.offload, arch.params, arch.largest_layer_params, workers_per_node,
                                nodes)
    tokens = t.micro_batch_size * 2 * t.max_length  # chosen and rejected in one forward
    per_layer = 34 * tokens * arch.hidden  # bf16 activations of one layer (attention via sdpa, no score matrix)
    logits = tokens * arch.vocab * 4 * 2  # fp32 logits and their log-softmax
    full = arch.layers * per_layer + logits
    checkpointed = arch.layers * 2 * tokens * arch.hidden + per_layer + logits
    if t.zero_stage == 3:
        buffers = 2 * (DS_LIVE_PARAMETERS + 2 * DS_REDUCE_BUCKET)
    elif t.zero_stage in (1, 2):
        buffers = 2 * (DS_ALLGATHER_BUCKET + 2 * DS_REDUCE_BUCKET)
    else:
        buffers = 0.0
    return {"model_states": states / GIB, "buffers": buffers / GIB + NCCL_GIB,
            "activations": (checkpointed if t.gradient_checkpointing else full) / GIB,
            "activations_without_checkpointing": full / GIB, "activations_with_checkpointing": checkpointed / GIB,
            "activations_per_micro_batch_without_checkpointing": full / t.micro_batch_size / GIB}


def _quiet_deepspeed_import() -> None:
    """Without a GPU DeepSpeed warns at import that it fell back to the CPU accelerator; the plan needs none (its
    estimators are arithmetic), so name the CPU accelerator (DeepSpeed's own override) instead of that warning."""
    import torch

    if "deepspeed" not in sys.modules and not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def model_states_bytes(zero_stage: int, offload: bool, params: int, largest_layer: int, gpus_per_node: int,
                       nodes: int) -> float:
    """GPU bytes of weights, gradients and optimiser states per GPU, from DeepSpeed's own estimator functions."""
    _quiet_deepspeed_import()
    if zero_stage == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        _, gpu, _ = estimate_zero3_model_states_mem_needs(params, largest_layer, gpus_per_node, nodes,
                                                          cpu_offload=offload, cpu_offload_params=offload)
        return gpu
    if zero_stage in (1, 2):
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(params, gpus_per_node, nodes, cpu_offload=offload)
        return gpu
    return 20 * params  # no ZeRO: 16-bit weights and grads, fp32 master weights and two optimiser moments


def colocated_for(cfg: RunConfig, cluster: ClusterSpec) -> RunConfig:
    """A colocated GPU config grown to a larger cluster: one bundle (generator, judge replica, train worker) per
    GPU. A cluster with fewer GPUs than bundles is left for the plan to report."""
    r = cfg.resources
    if r.placement != "colocated" or not r.train_use_gpu or r.train_workers >= cluster.gpus:
        return cfg
    n = cluster.gpus
    data = cfg.to_dict()
    data["resources"].update(generators=n, judges=n, train_workers=n)
    step = cfg.training.micro_batch_size * n
    data["training"]["global_batch_size"] = max(step, round(cfg.training.global_batch_size / step) * step)
    return type(cfg).model_validate(data)


def make_plan(cfg: RunConfig, arch: Architecture, cluster: ClusterSpec) -> dict[str, Any]:
    """The plan as a dict (what ``--json`` writes); ``fits`` is False with ``problems`` naming stage and resource.

    A colocated GPU config is planned with one bundle per GPU of the cluster (``colocated_for``); ``bundles`` says
    how many, and ``resized`` whether the config must be changed to match.
    """
    given = cfg.resources.train_workers
    cfg = colocated_for(cfg, cluster)
    r, g, t = cfg.resources, cfg.generation, cfg.training
    n = cfg.data.prompts_per_iteration
    colocated = r.placement == "colocated"
    gen_gpus = r.generators * r.tensor_parallel * (1 if r.generator_gpus else 0)
    judge_gpus = r.judges if r.judge_gpus else 0
    train_gpus = r.train_workers if r.train_use_gpu else 0
    total = cluster.gpus
    problems: list[str] = []
    if colocated and train_gpus > total:
        problems.append(f"layout: the colocated layout puts one bundle on each of {train_gpus} GPUs but the cluster "
                        f"has {total}")
    if not colocated and gen_gpus + judge_gpus + train_gpus > total:
        problems.append(f"layout: the roles hold {gen_gpus + judge_gpus + train_gpus} GPUs "
                        f"({gen_gpus} generate, {judge_gpus} judge, {train_gpus} train) but the cluster has {total}")

    weight_gib = arch.params * 2 / GIB
    memory: dict[str, dict[str, float]] = {}
    train_mem = _train_memory(cfg, arch, cluster)
    memory["train"] = {**train_mem, "total": train_mem["model_states"] + train_mem["buffers"] + train_mem["activations"]}
    kv_tokens = g.max_prompt_tokens + g.max_new_tokens
    gen_weights = weight_gib / r.tensor_parallel
    kv_gib = cluster.gpu_memory_gib * cfg.engine_memory_utilization - gen_weights
    memory["generate"] = {"weights": gen_weights, "kv_cache": max(0.0, kv_gib),
                          "kv_sequences": max(0.0, kv_gib) * GIB / (arch.kv_bytes_per_token() / r.tensor_parallel
                                                                    * kv_tokens),
                          "total": cluster.gpu_memory_gib * cfg.engine_memory_utilization}
    judge_bytes = 2 if cfg.judge.dtype == "bfloat16" else 4
    judge_act = cfg.judge.max_batch_tokens * PAIRRM_HIDDEN * 34 * judge_bytes  # one layer live in inference
    pair_len = cfg.judge.max_source_tokens + 2 * cfg.judge.max_candidate_tokens  # the longest pair
    scores = PAIRRM_LIVE_SCORES * cfg.judge.max_batch_tokens * PAIRRM_HEADS * pair_len * judge_bytes
    memory["judge"] = {"weights": PAIRRM_PARAMS * judge_bytes / GIB, "activations": judge_act / GIB,
                       "attention_scores": scores / GIB,
                       "total": (PAIRRM_PARAMS * judge_bytes + judge_act + scores) / GIB}
    if colocated:
        memory["per_stage"] = _colocated_peaks(cfg, memory, weight_gib, arch.largest_layer_params * 2 / GIB)
        for stage, peak in memory["per_stage"].items():
            if peak > cluster.gpu_memory_gib:
                problems.append(f"{stage}: the roles on one GPU need {peak:.1f} GiB in this stage, the GPUs have "
                                f"{cluster.gpu_memory_gib:g} GiB")
    else:
        for role in ("train", "generate", "judge"):
            if memory[role]["total"] > cluster.gpu_memory_gib:
                problems.append(f"{role}: needs {memory[role]['total']:.1f} GiB per GPU, the GPUs have "
                                f"{cluster.gpu_memory_gib:g} GiB")
    if memory["generate"]["kv_sequences"] < 1:
        problems.append(f"generate: {gen_weights:.1f} GiB of weights leave no KV cache for one "
                        f"{kv_tokens}-token sequence in {cluster.gpu_memory_gib:g} GiB at gpu_memory_utilization "
                        f"{cfg.engine_memory_utilization}")

    host = {"driver": 2.0 + n * g.k * (g.max_new_tokens * 6 + 200) * 3 / GIB,
            "train_rank0_export": weight_gib if t.precision == "bf16" else weight_gib * 2,
            "generator_broadcast": min(t.export_max_shard_gb * 1e9 / GIB, weight_gib),
            "train_offload_per_node": (arch.params * 16 / GIB / max(1, r.train_workers)
                                       * min(r.train_workers, cluster.gpus_per_node)) if t.offload else 0.0,
            # vLLM sleep level 1 keeps each sleeping engine's weights in host memory
            "sleeping_engines_per_node": (gen_weights * min(r.generators, cluster.gpus_per_node)
                                          if colocated and g.sleep_level == 1 else 0.0)}
    if cluster.host_memory_gib is not None:
        node_peak = (host["driver"] + host["train_rank0_export"] + host["train_offload_per_node"]
                     + host["sleeping_engines_per_node"])
        if node_peak > cluster.host_memory_gib:
            problems.append(f"train: host memory of the node with train rank 0 and the driver peaks at "
                            f"{node_peak:.0f} GiB, nodes have {cluster.host_memory_gib:g} GiB")

    stages = _stages(cfg, arch, cluster, gen_gpus, judge_gpus, train_gpus)
    ours = sum(s.seconds for s in stages)
    ref = sum(s.reference_seconds for s in stages)
    return {
        "config": cfg.name, "layout": r.placement, "bundles": r.train_workers if colocated else None,
        "resized": colocated and r.train_workers != given, "model_parameters": arch.params,
        "cluster": asdict(cluster), "stages": [asdict(s) for s in stages], "memory_gib": memory,
        "host_memory_gib": host, "round_seconds": ours, "reference_round_seconds": ref,
        "speedup_vs_reference": ref / ours if ours else None,
        "busy_fraction": {s.stage: (total - s.idle_gpus) / total for s in stages},
        "fits": not problems, "problems": problems,
        "fastest_training": fastest_training(cfg, memory, cluster.gpu_memory_gib),
    }


# vLLM's packed weight transfer stages parameters in 1 GiB buffers (DEFAULT_PACKED_BUFFER_SIZE_BYTES).
TRANSFER_BUFFER_GIB = 1.0
# GPU memory a process keeps for its CUDA context while its role sleeps or is offloaded (GiB, measured figures for
# recent drivers are 0.3-0.6).
CUDA_CONTEXT_GIB = 0.5


def _colocated_peaks(cfg: RunConfig, memory: dict[str, dict[str, float]], weight_gib: float,
                     largest_layer_gib: float) -> dict[str, float]:
    """GiB on one GPU in each stage of the colocated layout: the active role's memory plus what the idle ones keep.

    generate: the engine's share (gpu_memory_utilization of the GPU; the judge is on host, no train worker);
    judge: the judge, the sleeping engine's context; train: ZeRO states and activations beside both idle contexts;
    broadcast (the CUDA IPC transfer at the end of the fit): the train states, the engine's woken weights, the
    gathered copy of the largest parameter and vLLM's 1 GiB packing buffer.
    """
    ctx = CUDA_CONTEXT_GIB
    asleep = ctx + (0.0 if cfg.generation.enforce_eager else SLEEPING_ENGINE_GRAPHS_GIB)  # what a sleeping engine keeps
    m = memory["train"]
    return {
        "generate": memory["generate"]["total"] + ctx,
        "judge": memory["judge"]["total"] + ctx + asleep,
        "train": m["model_states"] + m["buffers"] + m["activations"] + ctx + asleep,
        "broadcast": (m["model_states"] + m["buffers"] + weight_gib / cfg.resources.tensor_parallel
                      + largest_layer_gib + TRANSFER_BUFFER_GIB + ctx + asleep),
    }


def fastest_training(cfg: RunConfig, memory: dict[str, dict[str, float]], gpu_gib: float) -> dict[str, Any] | None:
    """The fastest training setting whose train stage fits one GPU (colocated: beside the sleeping engine and the
    CUDA contexts): no gradient checkpointing (~30% less compute) at the largest micro-batch of
    :data:`MICRO_BATCHES` that divides the global batch (fewer ZeRO-3 gathers per step). None if even micro-batch 1
    without checkpointing does not fit."""
    m, r, t = memory["train"], cfg.resources, cfg.training
    fixed = m["model_states"] + m["buffers"] + CUDA_CONTEXT_GIB
    if r.placement == "colocated":
        fixed += CUDA_CONTEXT_GIB + (0.0 if cfg.generation.enforce_eager else SLEEPING_ENGINE_GRAPHS_GIB)
    per = m["activations_per_micro_batch_without_checkpointing"]
    fits = [(mb, fixed + mb * per) for mb in MICRO_BATCHES
            if t.global_batch_size % (mb * r.train_workers) == 0 and fixed + mb * per <= gpu_gib]
    if not fits:
        return None
    mb, peak = fits[-1]
    return {"gradient_checkpointing": False, "micro_batch_size": mb, "train_peak_gib": peak}


def _stages(cfg: RunConfig, arch: Architecture, cluster: ClusterSpec, gen_gpus: int, judge_gpus: int,
            train_gpus: int) -> list[StagePlan]:
    g, t, total = cfg.generation, cfg.training, cluster.gpus
    n, k = cfg.data.prompts_per_iteration, g.k
    peak = cluster.gpu_tflops * 1e12
    resp = min(cluster.mean_response_tokens, g.max_new_tokens)
    gen_flops = 2 * arch.params * n * k * (resp + g.max_prompt_tokens / 2)
    pair_tokens = cfg.judge.max_source_tokens + 2 * cfg.judge.max_candidate_tokens
    judge_flops = 2 * PAIRRM_PARAMS * n * k * (k - 1) * min(pair_tokens, 2 * resp + 200)
    train_tokens = n * 2 * min(t.max_length, resp + 200) * t.epochs
    recompute = 4 / 3 if t.gradient_checkpointing else 1.0
    train_flops = 6 * arch.params * train_tokens * recompute + 2 * arch.params * train_tokens / t.epochs
    weight_bytes = arch.params * 2
    load_s = weight_bytes / 2e9  # a fresh engine reads the weights at ~2 GB/s from shared storage

    def seconds(flops: float, gpus: int, util: float) -> float:
        return flops / (max(gpus, 1) * peak * util)

    return [
        StagePlan("generate", {"generators": gen_gpus}, total - gen_gpus,
                  seconds(gen_flops, gen_gpus, cluster.generate_utilization),
                  seconds(gen_flops, total, cluster.generate_utilization) + load_s + 60,
                  ["reference: a fresh vLLM on every GPU each round (+ weight load and ~60 s start-up)"]),
        StagePlan("judge", {"judges": judge_gpus}, total - judge_gpus,
                  seconds(judge_flops, judge_gpus, cluster.judge_utilization),
                  seconds(judge_flops, total, cluster.judge_batch1_utilization),
                  ["reference: PairRM ranks one prompt's candidates per call on every GPU"]),
        StagePlan("train", {"train_workers": train_gpus}, total - train_gpus,
                  seconds(train_flops, train_gpus, cluster.train_utilization),
                  seconds(train_flops + 2 * arch.params * train_tokens, total, cluster.train_utilization),
                  ["reference: all GPUs, a second reference model forwarded every step"]),
        _broadcast_stage(cfg, gen_gpus, total, weight_bytes, load_s),
    ]


# Bytes per second: the weight transfer (CUDA IPC copies within a GPU are far faster; 25 GB/s is NCCL over a
# 200 Gb/s InfiniBand link, the slowest case) and one engine's weights between host and GPU (PCIe 4 x16, pinned).
NCCL_BYTES_PER_S = 25e9
HOST_GPU_BYTES_PER_S = 20e9


def _broadcast_stage(cfg: RunConfig, gen_gpus: int, total: int, weight_bytes: float, load_s: float) -> StagePlan:
    reference = ["reference: the next round's engines load the saved model (counted here)"]
    if cfg.resources.placement != "colocated":
        return StagePlan("broadcast", {"generators": gen_gpus}, total - gen_gpus,
                         load_s / max(1, cfg.resources.generators), weight_bytes / 2e9, reference)
    # sleep level 1 moves each engine's weights to host and back once a round; level 2 only reallocates
    moves = 2 * weight_bytes / HOST_GPU_BYTES_PER_S if cfg.generation.sleep_level == 1 else 0.0
    send = weight_bytes / NCCL_BYTES_PER_S if cfg.weight_transfer else load_s
    how = {"ipc": "CUDA IPC from the train worker on each GPU", "nccl": "NCCL from train rank 0",
           None: "every engine reads the export"}[cfg.weight_transfer]
    return StagePlan("broadcast", {"generators": gen_gpus, "train_workers": gen_gpus}, total - gen_gpus, send + moves,
                     weight_bytes / 2e9, [f"ours: {how}, plus {moves:.0f} s of engine sleep/wake", *reference])


def plan_table(plan: dict[str, Any]) -> str:
    """The plan as the text `sppo-ray plan` prints."""
    c = plan["cluster"]
    lines = [f"plan: {plan['config']} ({plan['layout']}), {plan['model_parameters'] / 1e9:.2f} B parameters, "
             f"{c['nodes']} node(s) x {c['gpus_per_node']} GPUs of {c['gpu_memory_gib']:g} GiB "
             f"({c['gpu_tflops']:g} TFLOPS bf16 peak)",
             "stage      GPUs busy (role)              idle  est. s  reference s"]
    for s in plan["stages"]:
        busy = ", ".join(f"{v} {k}" for k, v in s["busy"].items())
        lines.append(f"{s['stage']:<10} {busy:<30} {s['idle_gpus']:>4} {s['seconds']:>7.0f} "
                     f"{s['reference_seconds']:>12.0f}")
    if plan.get("bundles"):
        lines.insert(1, f"colocated: {plan['bundles']} bundles, one per GPU (generator + judge replica + train worker)"
                     + ("; set resources.generators, judges and train_workers to this to run it" if plan["resized"]
                        else ""))
    lines.append(f"round: {plan['round_seconds']:.0f} s estimated, reference {plan['reference_round_seconds']:.0f} s "
                 f"({plan['speedup_vs_reference']:.2f}x)")
    lines.append("GPU memory per GPU (GiB): " + "; ".join(
        f"{role} {m['total']:.1f}" for role, m in plan["memory_gib"].items() if "total" in m))
    if "per_stage" in plan["memory_gib"]:
        lines.append("  colocated, all roles on one GPU per stage: " + "; ".join(
            f"{stage} {gib:.1f}" for stage, gib in plan["memory_gib"]["per_stage"].items()))
    tm = plan["memory_gib"]["train"]
    lines.append(f"  train: model states {tm['model_states']:.1f} (DeepSpeed estimator), ZeRO and NCCL buffers "
                 f"{tm['buffers']:.1f}, activations {tm['activations_with_checkpointing']:.1f} with / "
                 f"{tm['activations_without_checkpointing']:.1f} without gradient checkpointing")
    lines.append(f"  judge: PairRM attention scores {plan['memory_gib']['judge']['attention_scores']:.1f} at "
                 "judge.max_batch_tokens")
    if (fast := plan.get("fastest_training")) is not None:
        lines.append(f"  fastest training that fits: gradient_checkpointing false, micro_batch_size "
                     f"{fast['micro_batch_size']} (train stage {fast['train_peak_gib']:.1f} GiB)")
    lines.append("host memory peaks (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in plan["host_memory_gib"].items()))
    lines += [f"DOES NOT FIT: {p}" for p in plan["problems"]] or ["fits: yes"]
    return "\n".join(lines)
