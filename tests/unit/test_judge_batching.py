"""Token-budget judge batches and the out-of-memory split (sppo_ray/judging/batching.py), hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sppo_ray.judging.batching import JudgeOutOfMemory, score_in_batches, token_budget_batches

pytestmark = pytest.mark.unit


def test_batches_fill_the_token_budget_longest_first():
    lengths = [10, 100, 30, 40, 100, 5]
    batches = [b.tolist() for b in token_budget_batches(lengths, max_tokens=200, max_rows=8)]
    # 100-token rows: 2 fit 200 tokens; then 40 (longest left) allows 5 rows but only 4 remain
    assert batches == [[1, 4], [3, 2, 0, 5]]
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 200
    assert [b.tolist() for b in token_budget_batches(lengths, 200, max_rows=3)] == [[1, 4], [3, 2, 0], [5]]
    assert [b.tolist() for b in token_budget_batches([500, 20], 200, 8)] == [[0], [1]]  # over budget: alone


def _forward_failing_above(rows: int, seen: list[int]):
    def forward(idx: np.ndarray) -> np.ndarray:
        seen.append(len(idx))
        if len(idx) > rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.asarray(idx, dtype=np.float64) * 10
    return forward


def test_out_of_memory_splits_and_keeps_every_result_in_place():
    seen: list[int] = []
    lengths = [8] * 10
    out = score_in_batches(lengths, max_tokens=1000, max_rows=16, forward=_forward_failing_above(3, seen))
    assert out.tolist() == [i * 10.0 for i in range(10)]  # same values, same order as unsplit
    assert seen[0] == 10 and max(seen[1:]) <= 5 and sum(s for s in seen if s <= 3) == 10


def test_a_single_pair_out_of_memory_names_the_length_and_keys():
    with pytest.raises(JudgeOutOfMemory, match=r"one judge pair of 8 tokens .*judge.max_source_tokens"):
        score_in_batches([8, 8], 1000, 16, _forward_failing_above(0, []))


def test_other_errors_are_not_split():
    def broken(idx):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        score_in_batches([8, 8], 1000, 16, broken)


def test_batches_cover_every_row_once_within_the_budget():
    assert token_budget_batches([], 100, 4) == []
    # equal lengths keep their order (stable sort): 3 rows of 3 tokens, budget 6 -> 2 rows, then 1
    assert [b.tolist() for b in token_budget_batches([3, 3, 3], 6, 8)] == [[0, 1], [2]]
    lengths = np.random.default_rng(0).integers(1, 300, 500).tolist()
    batches = token_budget_batches(lengths, 1024, 16)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 16 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 1024)


def test_only_the_cuda_out_of_memory_class_counts_as_out_of_memory():
    from sppo_ray.judging.batching import is_out_of_memory

    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError  # present in CPU builds of torch too
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("CUDA out of memory"))
    assert not is_out_of_memory(MemoryError())


def test_each_split_is_logged_once_with_its_sizes(caplog):
    seen: list[int] = []
    with caplog.at_level("WARNING", logger="sppo_ray.judging.batching"):
        score_in_batches([30, 20, 10, 10], 1000, 16, _forward_failing_above(2, seen))
    # 4 rows fail -> 2 + 2, both fit: one split
    assert seen == [4, 2, 2]
    assert [r.getMessage() for r in caplog.records] == [
        "judge batch of 4 pairs (longest 30 tokens) ran out of memory; retrying as 2 + 2 pairs"]


def test_a_large_stage_judges_several_batches_per_call_and_still_feeds_every_replica():
    from sppo_ray.judging.stage import CALL_PROMPTS, prompts_per_call

    # a small stage keeps the smallest call (6 prompts: 4 batches of 32 pairs at K = 5)
    assert prompts_per_call(40, judges=1, batch_prompts=6) == 6
    # 20,000 prompts: whole smallest calls up to CALL_PROMPTS, 334 calls instead of 3,334
    per_call = prompts_per_call(20_000, judges=1, batch_prompts=6)
    assert per_call % 6 == 0 and per_call <= CALL_PROMPTS and -(-20_000 // per_call) == 334
    # every replica's two call slots get at least 4 calls each
    assert -(-1000 // prompts_per_call(1000, judges=8, batch_prompts=6)) >= 8 * 2 * 4
    # a smallest call above the cap is not cut
    assert prompts_per_call(5000, judges=1, batch_prompts=200) == 200
