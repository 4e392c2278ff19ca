"""Judges on real models: a tiny random PairRM through the real loading path, and the SmolLM2 LLM judge."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from sppo_ray.config import JudgeConfig, ResourcesConfig
from sppo_ray.judging.judges import LLMJudge, PairRMJudge
from sppo_ray.judging.stage import build_judge_actors, build_training_table, run_judging_stage
from sppo_ray.judging.tables import debiased_table

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]


def _tiny_pairrm(path: Path) -> Path:
    """A randomly initialised DebertaV2PairRM with a small WordPiece tokenizer, saved as an HF directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, PreTrainedTokenizerFast

    from sppo_ray.judging.judges import _import_llm_blender_pairrm

    texts = [json.loads(line)["prompt"] + " " + json.loads(line)["good"] for line in (DATA / "obvious_pairs.jsonl").open()]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts * 3, trainers.WordPieceTrainer(vocab_size=400, special_tokens=_SPECIAL))
    tok.add_special_tokens(_SPECIAL)
    ids = {t: tok.token_to_id(t) for t in _SPECIAL}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]")
    config = DebertaV2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                             pad_token_id=ids["[PAD]"])
    config.n_tasks, config.drop_out = 1, 0.0
    config.sep_token_id, config.source_prefix_id = ids["[SEP]"], ids["<|source|>"]
    config.cand_prefix_id, config.cand1_prefix_id, config.cand2_prefix_id = (
        ids["<|candidate|>"], ids["<|candidate1|>"], ids["<|candidate2|>"])
    torch.manual_seed(0)
    _import_llm_blender_pairrm()(config).save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def obvious_pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / "obvious_pairs.jsonl").open()]


def test_pairrm_loads_and_swapping_candidates_flips_probability(tmp_path, obvious_pairs):
    judge = PairRMJudge(str(_tiny_pairrm(tmp_path / "pairrm")), batch_size=4, max_source=64, max_candidate=32)
    pairs = obvious_pairs[:6]
    prompts = [p["prompt"] for p in pairs]
    ab = judge.pair_logits(prompts, [p["good"] for p in pairs], [p["bad"] for p in pairs])
    ba = judge.pair_logits(prompts, [p["bad"] for p in pairs], [p["good"] for p in pairs])
    assert ab.shape == (6,) and np.all(np.isfinite(ab))
    # one forward pass per order; random weights are position-biased, so the raw logits are not antisymmetric
    assert not np.allclose(ab, -ba)
    p_good = debiased_table(np.stack([[[0, a], [b, 0]] for a, b in zip(ab, ba)]))[:, 0, 1]
    p_bad = debiased_table(np.stack([[[0, b], [a, 0]] for a, b in zip(ab, ba)]))[:, 0, 1]
    np.testing.assert_allclose(p_good + p_bad, 1.0)
    assert not np.allclose(p_good, 0.5)
    # batching and packing do not change a pair's score
    single = judge.pair_logits(prompts[:1], [pairs[0]["good"]], [pairs[0]["bad"]])
    np.testing.assert_allclose(single, ab[:1], atol=1e-4)


def test_pairrm_respects_truncation_budget(tmp_path):
    judge = PairRMJudge(str(_tiny_pairrm(tmp_path / "pairrm")), max_source=16, max_candidate=8)
    ids = judge._encode("word " * 100, "answer " * 100, "reply " * 100)
    assert len(ids) <= 16 + 2 * 8


def test_pairrm_out_of_memory_splits_to_the_same_logits(tmp_path, obvious_pairs, monkeypatch):
    import torch

    judge = PairRMJudge(str(_tiny_pairrm(tmp_path / "pairrm")), batch_size=8, max_source=64, max_candidate=32)
    pairs = obvious_pairs[:8]
    args = ([p["prompt"] for p in pairs], [p["good"] for p in pairs], [p["bad"] for p in pairs])
    expected = judge.pair_logits(*args)
    real, rows_seen = judge.model.forward, []

    def tight_memory(input_ids, **kw):  # a GPU that holds 2 pairs at a time
        rows_seen.append(input_ids.shape[0])
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(input_ids=input_ids, **kw)

    monkeypatch.setattr(judge.model, "forward", tight_memory)
    assert judge.pair_logits(*args) == pytest.approx(expected, abs=1e-5)
    assert rows_seen == [8, 4, 2, 2, 4, 2, 2]  # halves until they fit


def test_pairrm_in_bfloat16_runs_and_agrees_with_float32(tmp_path, obvious_pairs):
    path = _tiny_pairrm(tmp_path / "pairrm")
    pairs = obvious_pairs[:6]
    args = ([p["prompt"] for p in pairs], [p["good"] for p in pairs], [p["bad"] for p in pairs])
    fp32 = PairRMJudge(str(path), max_source=64, max_candidate=32).pair_logits(*args)
    bf16 = PairRMJudge(str(path), max_source=64, max_candidate=32, dtype="bfloat16").pair_logits(*args)
    assert bf16.dtype == np.float64 and np.isfinite(bf16).all()
    assert bf16 == pytest.approx(fp32, abs=0.05)


def test_llm_judge_prefers_the_right_answer_on_obvious_pairs(embedded_policy, obvious_pairs):
    judge = LLMJudge(str(embedded_policy), batch_size=8)
    prompts = [p["prompt"] for p in obvious_pairs]
    good, bad = [p["good"] for p in obvious_pairs], [p["bad"] for p in obvious_pairs]
    good_first = judge.pair_logits(prompts, good, bad)
    bad_first = judge.pair_logits(prompts, bad, good)
    p_good = debiased_table(np.stack([[[0, a], [b, 0]] for a, b in zip(good_first, bad_first)]))[:, 0, 1]
    accuracy = float(np.mean(p_good > 0.5))
    print(f"LLM judge (SmolLM2-135M) accuracy on {len(p_good)} obvious pairs: {accuracy:.3f}; "
          f"mean P(good) {p_good.mean():.3f}; raw 'A' preference {np.mean(good_first > 0):.2f}/{np.mean(bad_first > 0):.2f}")
    assert accuracy > 0.5


def test_judging_stage_writes_training_set(ray_cluster, tmp_path):
    import pyarrow as pa

    from sppo_ray.generation.stage import GENERATION_SCHEMA

    rows = []
    for n in range(5):
        responses = ["short", "a bit longer answer", "the longest answer of all three here"]
        rows.append({"prompt_id": f"p{n}", "messages_json": json.dumps([{"role": "user", "content": f"q{n}"}]),
                     "prompt_token_ids": [1, 2, 3], "responses": responses,
                     "response_token_ids": [[4], [5, 6], [7, 8, 9]], "num_tokens": [1, 2, 3],
                     "finish_reasons": ["stop"] * 3, "policy_version": 2, "truncated": False})
    generated = pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)
    cfg = JudgeConfig(kind="length", batch_size=4)
    actors = build_judge_actors(None, cfg, ResourcesConfig(judges=2, judge_cpus=0.5))
    try:
        judged = run_judging_stage(generated, actors, cfg)
    finally:
        for a in actors:
            ray.kill(a)
    assert judged.pairs == 5 * 6
    assert judged.table.column("prompt_id").to_pylist() == [f"p{n}" for n in range(5)]
    table = build_training_table(generated, judged.table)
    pq.write_table(table, tmp_path / "train.parquet")
    back = pq.read_table(tmp_path / "train.parquet")
    assert back.num_rows == 5
    row = back.to_pylist()[0]
    assert row["chosen"][-1] == {"content": "short", "role": "assistant"}
    assert row["rejected"][-1]["content"].startswith("the longest")
    assert row["chosen_probs_win"] > 0.5 > row["chosen_probs_lose"]
    assert 0.5 < row["chosen_probs"] <= 1.0 and row["policy_version"] == 2
