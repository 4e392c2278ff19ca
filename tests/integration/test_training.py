"""Ray Train + DeepSpeed SPPO update on the embedded SmolLM2 (2 CPU workers, ZeRO-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from sppo_ray.config import GenerationConfig, ResourcesConfig, TrainingConfig
from sppo_ray.training.trainer import run_training

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
RES = ResourcesConfig(train_workers=2, train_cpus_per_worker=1)


def _config(**kw) -> TrainingConfig:
    base = dict(loss="sppo", beta=0.1, lr=3e-7, optimizer="rmsprop", global_batch_size=4, micro_batch_size=1,
                zero_stage=2, precision="fp32", max_length=128, max_prompt_length=64, epochs=2, warmup_ratio=0.0,
                schedule="constant")
    base.update(kw)
    return TrainingConfig(**base)


@pytest.fixture(scope="module")
def train_parquet(tmp_path_factory) -> Path:
    """8 chat-message rows (no token ids: the chat-template path), good answers preferred over bad ones."""
    rows = []
    for n, line in enumerate((DATA / "obvious_pairs.jsonl").read_text().splitlines()[:8]):
        p = json.loads(line)
        user = [{"role": "user", "content": p["prompt"]}]
        rows.append({"prompt": p["prompt"], "chosen": user + [{"role": "assistant", "content": p["good"]}],
                     "rejected": user + [{"role": "assistant", "content": p["bad"]}],
                     "chosen_probs": 0.8, "chosen_probs_win": 0.7, "chosen_probs_lose": 0.3})
    path = tmp_path_factory.mktemp("train") / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module")
def trained(ray_cluster, embedded_policy, train_parquet, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    return run_training(str(train_parquet), str(embedded_policy), out / "model", _config(), RES,
                        storage_path=str(out / "ray_train"), name="fit")


def test_fit_lowers_loss_and_reports_metrics(trained):
    losses = [m["loss"] for m in trained.metrics]
    assert len(losses) == 4  # 8 rows / global batch 4 x 2 epochs
    assert losses[-1] < losses[0]
    last = trained.metrics[-1]
    for key in ("logratio_chosen", "logratio_rejected", "target_chosen", "target_rejected", "grad_norm", "lr",
                "tokens_per_s"):
        assert key in last
    # targets are (p - 1/2) / beta; the policy moved towards them
    assert last["target_chosen"] == pytest.approx(2.0) and last["target_rejected"] == pytest.approx(-2.0)
    assert last["logratio_chosen"] > last["logratio_rejected"]
    # the exported model is in place and Ray Train's own state of the fit (a second copy of it) is gone
    assert (trained.model_dir / "model.safetensors").is_file()
    assert not (trained.model_dir.parent / "ray_train" / "fit").exists()


def _assert_export_is_the_trained_model(model_dir: Path) -> None:
    """The exported weights reproduce the log-probs the trained engine computed at the end of the fit."""
    from transformers import AutoModelForCausalLM

    from sppo_ray.training.batching import PairBatch, sequence_logps

    check = json.loads((model_dir / "export_check.json").read_text())
    batch = PairBatch(*(torch.tensor(check[k]) for k in ("input_ids", "attention_mask", "response_mask")))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logps = sequence_logps(model, batch)
    assert logps.tolist() == pytest.approx(check["logps"], abs=1e-3)


def test_export_is_the_trained_model(trained):
    _assert_export_is_the_trained_model(trained.model_dir)


def test_zero3_fit_exports_the_gathered_model(ray_cluster, embedded_policy, train_parquet, tmp_path):
    result = run_training(str(train_parquet), str(embedded_policy), tmp_path / "model", _config(zero_stage=3, epochs=1),
                          RES, storage_path=str(tmp_path / "ray_train"), name="fit-zero3")
    assert len(result.metrics) == 2
    _assert_export_is_the_trained_model(result.model_dir)


def test_export_loads_in_transformers_and_vllm(trained, embedded_policy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sppo_ray.generation.stage import build_generator_actors

    model_dir = trained.model_dir
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "chat_template.jinja").is_file()
    tok = AutoTokenizer.from_pretrained(model_dir)
    new = AutoModelForCausalLM.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(embedded_policy)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert not torch.allclose(new(**ids).logits, base(**ids).logits)  # the weights moved
        greedy = new.generate(**ids, max_new_tokens=12, do_sample=False)
    hf_text = tok.decode(greedy[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)
    gen_cfg = GenerationConfig(k=2, max_new_tokens=12, max_prompt_tokens=64, dtype="float32")
    actor = build_generator_actors(str(model_dir), gen_cfg, ResourcesConfig())[0]
    try:
        vllm_text = ray.get(actor.greedy.remote([question], 12))[0]
    finally:
        ray.get(actor.shutdown.remote())
        ray.kill(actor)
    assert vllm_text.strip() == hf_text.strip()


def test_killed_worker_resumes_from_checkpoint(ray_cluster, embedded_policy, train_parquet, tmp_path):
    marker = tmp_path / "killed.txt"
    result = run_training(
        str(train_parquet), str(embedded_policy), tmp_path / "model", _config(epochs=1, checkpoint_every=1), RES,
        storage_path=str(tmp_path / "ray_train"), name="fit-killed",
        worker_env={"SPPO_RAY_FAIL_AT_STEP": "1", "SPPO_RAY_FAIL_MARKER": str(marker)},
    )
    assert marker.read_text().startswith("killed rank 1 at step 1")
    assert [m["step"] for m in result.metrics] == [1, 2]  # step 1 came from the checkpoint, not a restart
    assert (result.model_dir / "model.safetensors").is_file()
