"""A finished run's round_t/train_trl.parquet is a dataset TRL's DPOTrainer trains on as it is."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_dpo_trainer_takes_a_step_on_the_trl_file(tiny_run, embedded_policy, tmp_path):
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = load_dataset("parquet", data_files=str(tiny_run["dir"] / "round_0" / "train_trl.parquet"), split="train")
    assert data.num_rows > 0 and {"prompt", "chosen", "rejected", "chosen_probs"} <= set(data.column_names)
    model = AutoModelForCausalLM.from_pretrained(embedded_policy, dtype=torch.float32)
    before = {k: v.clone() for k, v in model.named_parameters() if "layers.0.self_attn.q_proj" in k}
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=1, learning_rate=1e-4,
                     report_to=[], save_strategy="no", use_cpu=True, max_length=256, logging_steps=1)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(embedded_policy))
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
    after = dict(model.named_parameters())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step moved the weights
