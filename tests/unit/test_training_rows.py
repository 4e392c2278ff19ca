"""Per-epoch reshuffling, the reference pass's coverage, reference log-probs matched by row after a re-split, and
dropout off in training (sppo_ray/training/worker.py)."""

from __future__ import annotations

import pytest
import torch

from sppo_ray.training.worker import (disable_dropout, epoch_batches, match_reference, memory_keys_named,
                                     reference_batches)


@pytest.mark.unit
def test_each_epoch_reshuffles_deterministically():
    e0, e1 = epoch_batches(10, 2, 4, seed=0, epoch=0), epoch_batches(10, 2, 4, seed=0, epoch=1)
    assert e0 == epoch_batches(10, 2, 4, seed=0, epoch=0)  # a resumed fit sees the same order
    assert e0 != e1 and e0 != epoch_batches(10, 2, 4, seed=1, epoch=0)
    for batches in (e0, e1):
        flat = [i for b in batches for i in b]
        assert len(batches) == 4 and all(len(b) == 2 for b in batches)
        assert len(set(flat)) == 8 and set(flat) <= set(range(10))  # 8 distinct rows of 10 (drop_last)


@pytest.mark.unit
def test_reference_pass_covers_every_row_once():
    batches = reference_batches(7, 3)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.unit
def test_reference_logprobs_follow_their_rows_across_a_resplit():
    keys = ["k0", "k1", "k2", "k3"]  # each row's token-id digest
    ref = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0], [-7.0, -8.0]])
    saved = [{"keys": keys[:2], "ref": ref[:2]}, {"keys": keys[2:], "ref": ref[2:]}]  # rank 0 and rank 1 before
    # after the restart rank 0 holds rows 3 and 1 (in that order), rank 1 rows 0 and 2
    assert match_reference(saved, [keys[3], keys[1]]).tolist() == [[-7.0, -8.0], [-3.0, -4.0]]
    assert match_reference(saved, [keys[0], keys[2]]).tolist() == [[-1.0, -2.0], [-5.0, -6.0]]
    with pytest.raises(RuntimeError, match=r"no saved reference log-probs for row k9"):
        match_reference(saved, ["k9"])


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_training_runs_without_dropout_on_a_model_whose_config_has_it(kind):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if kind == "llama":
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, attention_dropout=0.5)
    else:
        config = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.5, embd_pdrop=0.5,
                            attn_pdrop=0.5)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    noisy = AutoModelForCausalLM.from_config(config).train()
    assert not torch.equal(noisy(ids).logits, noisy(ids).logits)  # dropout on: two forwards differ
    changed = disable_dropout(config)
    assert changed and all(getattr(config, name) == 0.0 for name in changed)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).train()
    disable_dropout(config, model)
    assert torch.equal(model(ids).logits, model(ids).logits)  # in train mode, as DeepSpeed runs it


def test_out_of_gpu_memory_in_training_names_the_keys_to_change():
    t = {"micro_batch_size": 4, "gradient_checkpointing": False}
    with pytest.raises(RuntimeError) as err:
        with memory_keys_named(t):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    text = str(err.value)
    assert "training.micro_batch_size 4" in text and "training.gradient_checkpointing false" in text
    assert "set training.gradient_checkpointing: true" in text and "Tried to allocate 2.00 GiB" in text
    with pytest.raises(ValueError):  # any other error passes through as it was
        with memory_keys_named(t):
            raise ValueError("not memory")
