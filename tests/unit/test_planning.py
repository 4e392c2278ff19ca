"""`sppo-ray plan`: model shapes, DeepSpeed's memory estimate, what does not fit (sppo_ray/planning.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sppo_ray.cli import main
from sppo_ray.config import load_config
from sppo_ray.planning import ARCHITECTURES, Architecture, ClusterSpec, architecture_of, make_plan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
MISTRAL = REPO / "jobs" / "paper-mistral-7b.yaml"


def test_parameter_count_by_hand_and_against_transformers():
    small = Architecture(hidden=8, intermediate=16, layers=2, heads=2, kv_heads=1, vocab=10)
    # per layer: q 64 + o 64 + k 32 + v 32 + MLP 3*8*16 = 384, norms 16 -> 592; embeddings 2*80; final norm 8
    assert small.layer_params == 592 and small.params == 2 * 592 + 160 + 8
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=10,
                                         tie_word_embeddings=False))
    assert small.params == sum(p.numel() for p in model.parameters())
    assert ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.2"].params == 7_241_732_096  # its published size


def test_embedded_model_shape_comes_from_its_config(embedded_policy):
    arch = architecture_of("embedded:smollm2-135m-instruct")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_policy)
    assert arch.tied_embeddings and arch.params == sum(p.numel() for p in model.parameters())


# The paper config as it was before the colocated layout: 2 generators, 2 judges, 4 train workers, 1 GPU each.
DISAGGREGATED = ["resources.layout=disaggregated", "resources.generators=2", "resources.generator_gpus=1",
                 "resources.judges=2", "resources.judge_gpus=1", "resources.train_workers=4"]


def test_train_memory_is_deepspeeds_estimate():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cfg = load_config(MISTRAL, DISAGGREGATED)
    arch = ARCHITECTURES[cfg.models.policy]
    plan = make_plan(cfg, arch, ClusterSpec(1, 8, 80))
    _, gpu, _ = estimate_zero3_model_states_mem_needs(arch.params, arch.largest_layer_params, 4, 1,
                                                      cpu_offload=False, cpu_offload_params=False)
    assert plan["memory_gib"]["train"]["model_states"] == pytest.approx(gpu / 2**30)
    # ~18 bytes a parameter over 4 workers plus the largest gathered layer: about 31 GiB for Mistral-7B
    assert 28 < plan["memory_gib"]["train"]["model_states"] < 34
    tm = plan["memory_gib"]["train"]
    assert tm["activations_with_checkpointing"] < tm["activations_without_checkpointing"]
    assert plan["memory_gib"]["generate"]["weights"] == pytest.approx(arch.params * 2 / 2**30)


def test_disaggregated_layout_reports_idle_gpus():
    plan = make_plan(load_config(MISTRAL, DISAGGREGATED), ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.2"],
                     ClusterSpec(1, 8, 80))
    assert plan["fits"] and not plan["problems"] and plan["layout"] == "disaggregated"
    idle = {s["stage"]: s["idle_gpus"] for s in plan["stages"]}
    assert idle == {"generate": 6, "judge": 6, "train": 4, "broadcast": 6}  # the disaggregated layout's cost


@pytest.mark.parametrize("nodes", [1, 2])
def test_colocated_paper_config_keeps_every_gpu_busy(nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cfg = load_config(MISTRAL)
    assert cfg.resources.placement == "colocated"
    arch = ARCHITECTURES[cfg.models.policy]
    plan = make_plan(cfg, arch, ClusterSpec(nodes, 8, 80))
    assert plan["fits"], plan["problems"]
    assert plan["bundles"] == 8 * nodes and plan["resized"] == (nodes == 2)
    assert all(s["idle_gpus"] == 0 for s in plan["stages"]) and set(plan["busy_fraction"].values()) == {1.0}
    # ZeRO-3 over every GPU of the cluster: DeepSpeed's estimate for 8 per node
    _, gpu, _ = estimate_zero3_model_states_mem_needs(arch.params, arch.largest_layer_params, 8, nodes,
                                                      cpu_offload=False, cpu_offload_params=False)
    assert plan["memory_gib"]["train"]["model_states"] == pytest.approx(gpu / 2**30)
    peaks = plan["memory_gib"]["per_stage"]
    m = plan["memory_gib"]
    # at the weight transfer the trainer's states and ZeRO-3 buffers (1e9 live 16-bit parameters, two 5e8 reduce
    # buckets) with NCCL's 1 GiB, the woken engine's bf16 weights, one gathered parameter (the embedding) and vLLM's
    # 1 GiB packing buffer share a GPU, beside the train worker's CUDA context and what the sleeping engine keeps
    # (its context and its CUDA-graph pool, 0.5 + 2)
    buffers = 2 * (1e9 + 2 * 5e8) / 2**30 + 1.0
    assert m["train"]["buffers"] == pytest.approx(buffers)
    embedding = arch.vocab * arch.hidden * 2 / 2**30
    assert peaks["broadcast"] == pytest.approx(m["train"]["model_states"] + buffers + arch.params * 2 / 2**30
                                               + embedding + 1.0 + 0.5 + 2.5)
    # PairRM's four live [pairs, 16 heads, L, L] score tensors at 65,536 tokens of 2,048-token pairs in bf16
    assert m["judge"]["attention_scores"] == pytest.approx(4 * 65536 * 16 * 2048 * 2 / 2**30)  # 16 GiB
    assert peaks["judge"] == pytest.approx(m["judge"]["total"] + 0.5 + 2.5)
    # without checkpointing the train stage fits at micro-batch 4 (8 would need ~95 GiB), global batch 64 = 4 x 8 x 2
    # on one node (4 x 16 on two)
    fast = plan["fastest_training"]
    per = m["train"]["activations_per_micro_batch_without_checkpointing"]
    assert fast["micro_batch_size"] == 4 and not fast["gradient_checkpointing"]
    assert fast["train_peak_gib"] == pytest.approx(m["train"]["model_states"] + buffers + 3.0
                                                   + fast["micro_batch_size"] * per)
    assert peaks["generate"] == pytest.approx(80 * cfg.engine_memory_utilization + 0.5)
    assert plan["host_memory_gib"]["sleeping_engines_per_node"] == 0  # sleep level 2 keeps no copy on host
    level1 = make_plan(load_config(MISTRAL, ["generation.sleep_level=1"]), arch, ClusterSpec(nodes, 8, 80))
    # level 1 keeps one bf16 copy of the weights per engine in host memory
    assert level1["host_memory_gib"]["sleeping_engines_per_node"] == pytest.approx(8 * arch.params * 2 / 2**30)


def test_colocated_per_stage_memory_by_hand():
    """A small config whose figures are computed here by hand: 2 bundles, ZeRO-2, no offload."""
    small = Architecture(hidden=512, intermediate=1024, layers=4, heads=8, kv_heads=8, vocab=1000)
    cfg = load_config(MISTRAL, ["training.zero_stage=2", "training.global_batch_size=2", "training.micro_batch_size=1",
                                "resources.generators=2", "resources.judges=2", "resources.train_workers=2",
                                "generation.sleep_level=2"])
    plan = make_plan(cfg, small, ClusterSpec(1, 2, 80))
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, states = estimate_zero2_model_states_mem_needs(small.params, 2, 1, cpu_offload=False)
    assert plan["memory_gib"]["train"]["model_states"] == pytest.approx(states / 2**30)
    weights, embedding = small.params * 2 / 2**30, 512 * 1024 * 2 / 2**30  # the largest parameter: an MLP matrix
    buffers = 2 * (5e8 + 2 * 5e8) / 2**30 + 1.0  # ZeRO-2: the allgather bucket, two reduce buckets, NCCL
    assert plan["memory_gib"]["train"]["buffers"] == pytest.approx(buffers)
    assert plan["memory_gib"]["per_stage"]["broadcast"] == pytest.approx(states / 2**30 + buffers + weights
                                                                         + embedding + 1.0 + 0.5 + 2.5)
    assert plan["host_memory_gib"]["sleeping_engines_per_node"] == 0  # level 2 keeps no copy


def test_cli_names_what_does_not_fit(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(MISTRAL), "--gpu-memory-gib", "24", "--json", str(out)]) == 3
    assert "DOES NOT FIT: broadcast: the roles on one GPU need" in capsys.readouterr().out
    assert json.loads(out.read_text())["fits"] is False
    assert main(["plan", str(MISTRAL), "--gpus-per-node", "4"]) == 3
    assert "layout: the colocated layout puts one bundle on each of 8 GPUs but the cluster has 4" in \
        capsys.readouterr().out
    assert main(["plan", str(MISTRAL), "--nodes", "2", "--gpu-memory-gib", "80"]) == 0
    assert "16 bundles, one per GPU" in capsys.readouterr().out
    assert main(["plan", str(MISTRAL), *sum((["--set", o] for o in DISAGGREGATED), []), "--gpus-per-node", "4"]) == 3
    assert "layout: the roles hold 8 GPUs" in capsys.readouterr().out


def _gpu_nodes(monkeypatch, nodes: int, gpus: int) -> None:
    import ray

    fake = [{"Alive": True, "Resources": {"CPU": 64.0, "GPU": float(gpus)}} for _ in range(nodes)]
    fake.append({"Alive": True, "Resources": {"CPU": 4.0}})  # a head without GPUs does not count
    monkeypatch.setattr(ray, "nodes", lambda: fake)


def test_run_checks_the_plan_against_the_clusters_gpu_nodes(monkeypatch):
    """`sppo-ray run` calls check_cluster_plan after connecting to Ray, before any actor starts."""
    from sppo_ray.orchestration.preflight import check_cluster_plan
    from sppo_ray.planning import PlanError

    cfg = load_config(MISTRAL)
    policy = "mistralai/Mistral-7B-Instruct-v0.2"  # a known shape: no config.json needed
    _gpu_nodes(monkeypatch, 1, 8)
    assert check_cluster_plan(cfg, policy)["fits"]
    _gpu_nodes(monkeypatch, 1, 4)
    with pytest.raises(PlanError, match="layout: the colocated layout puts one bundle on each of 8 GPUs"):
        check_cluster_plan(cfg, policy)
    _gpu_nodes(monkeypatch, 1, 8)
    with pytest.raises(PlanError, match="broadcast: the roles on one GPU need 38.1 GiB"):
        check_cluster_plan(load_config(MISTRAL, ["resources.gpu_memory_gib=24"]), policy)
    _gpu_nodes(monkeypatch, 2, 8)  # 8 GPUs without a bundle: two train workers could share one of them
    with pytest.raises(PlanError, match="16 GPUs for 8 bundles; set resources.train_workers, generators and judges "
                                        "to 16"):
        check_cluster_plan(cfg, policy)
    assert check_cluster_plan(load_config(MISTRAL, [f"resources.{k}=16" for k in ("train_workers", "generators",
                                                                                   "judges")]), policy)["fits"]
    assert check_cluster_plan(load_config(REPO / "jobs" / "tiny-cpu.yaml"), policy) is None  # CPU runs: no check


def test_bundles_fit_nodes_one_per_gpu_and_within_their_cpus():
    """The arithmetic behind the per-node placement groups (orchestration/colocation.py)."""
    from sppo_ray.placement import assign_bundles, bundle_shape, bundles_on_node

    res = load_config(MISTRAL).resources
    bundle = bundle_shape(res)
    assert bundle == {"CPU": 3.0, "GPU": pytest.approx(0.6)}
    assert bundles_on_node(bundle, {"CPU": 64.0, "GPU": 8.0}) == 8  # one per GPU, not floor(8 / 0.6) = 13
    assert bundles_on_node(bundle, {"CPU": 12.0, "GPU": 8.0}) == 4  # the CPUs bound it
    assert bundles_on_node(bundle, {"CPU": 64.0}) == 0
    assert bundles_on_node({"CPU": 2.0, "GPU": 0.25}, {"CPU": 64.0, "GPU": 2.0}) == 8  # four a GPU
    assert bundles_on_node({"CPU": 2.0}, {"CPU": 5.0}) == 2
    assert assign_bundles(16, [8, 8]) == [8, 8]
    assert assign_bundles(10, [8, 8, 8]) == [8, 2, 0]
    assert assign_bundles(17, [8, 8]) is None
