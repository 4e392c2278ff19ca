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


def test_train_memory_is_deepspeeds_estimate():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    cfg = load_config(MISTRAL)
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


def test_paper_config_fits_80_gib_and_reports_idle_gpus():
    plan = make_plan(load_config(MISTRAL), ARCHITECTURES["mistralai/Mistral-7B-Instruct-v0.2"], ClusterSpec(1, 8, 80))
    assert plan["fits"] and not plan["problems"]
    idle = {s["stage"]: s["idle_gpus"] for s in plan["stages"]}
    assert idle == {"generate": 6, "judge": 6, "train": 4, "broadcast": 6}  # the disaggregated layout's cost


def test_cli_names_what_does_not_fit(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(MISTRAL), "--gpu-memory-gib", "24", "--json", str(out)]) == 3
    assert "DOES NOT FIT: train: needs" in capsys.readouterr().out
    assert json.loads(out.read_text())["fits"] is False
    assert main(["plan", str(MISTRAL), "--gpus-per-node", "4"]) == 3
    assert "layout: the roles hold 8 GPUs" in capsys.readouterr().out
    assert main(["plan", str(MISTRAL), "--nodes", "2", "--gpu-memory-gib", "80"]) == 0
