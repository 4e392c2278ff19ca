"""Training batches and log-probs, judging rows, the training table and the eval win-rate matrix."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sppo_ray.contracts import GeneratedPrompt
from sppo_ray.judging.judges import LengthJudge
from sppo_ray.judging.scoring import judge_rows, ordered_pairs
from sppo_ray.judging.stage import JUDGED_SCHEMA, build_training_table
from sppo_ray.orchestration.evaluate import win_rate_matrix
from sppo_ray.training.batching import collate_pairs, sequence_logps

pytestmark = pytest.mark.unit

# (prompt ids, chosen ids, rejected ids)
PAIRS = [
    ([1, 2, 3, 4, 5], [10, 11], [20, 21, 22]),
    ([6, 7], [12, 13, 14, 15, 16, 17], [23]),
]


def test_collate_pairs_hand_computed():
    b = collate_pairs(PAIRS, max_length=6, max_prompt_length=3, pad_id=0)
    # prompt 0 cut from the left to its last 3 ids [3, 4, 5]; responses cut from the right to 6 − len(prompt):
    #   chosen 0  : [3,4,5] + [10,11]          (5 tokens)
    #   chosen 1  : [6,7]   + [12,13,14,15]    (6 tokens, 17 − 12 cut)
    #   rejected 0: [3,4,5] + [20,21,22]       (6 tokens)
    #   rejected 1: [6,7]   + [23]             (3 tokens)
    assert b.input_ids.tolist() == [
        [3, 4, 5, 10, 11, 0],
        [6, 7, 12, 13, 14, 15],
        [3, 4, 5, 20, 21, 22],
        [6, 7, 23, 0, 0, 0],
    ]
    assert b.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 0, 0, 0],
    ]
    assert b.response_mask.tolist() == [
        [0, 0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 1, 0, 0, 0],
    ]
    assert b.num_tokens == 5 + 6 + 6 + 3


def test_collate_pairs_limits():
    rng = np.random.default_rng(0)
    pairs = [
        (list(rng.integers(1, 50, n_p)), list(rng.integers(1, 50, n_c)), list(rng.integers(1, 50, n_r)))
        for n_p, n_c, n_r in [(40, 30, 5), (3, 100, 100), (12, 1, 2)]
    ]
    b = collate_pairs(pairs, max_length=32, max_prompt_length=16, pad_id=0)
    assert b.input_ids.shape[0] == 6  # 3 chosen then 3 rejected
    assert b.input_ids.shape[1] <= 32
    assert int(b.attention_mask.sum(1).max()) <= 32
    for n in range(6):
        pair, side = pairs[n % 3], 1 + n // 3  # rows 0..2 chosen, rows 3..5 rejected
        prompt = [int(x) for x in pair[0][-16:]]
        p_len = len(prompt)
        r_len = int(b.response_mask[n].sum())
        assert p_len <= 16
        assert b.input_ids[n, :p_len].tolist() == prompt  # the prompt's end is kept
        assert b.input_ids[n, p_len : p_len + r_len].tolist() == [int(x) for x in pair[side][:r_len]]
        assert r_len == min(len(pair[side]), 32 - p_len)
        assert b.response_mask[n, :p_len].sum() == 0  # prompt never in the response mask


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    return LlamaForCausalLM(config).eval()


def test_sequence_logps_matches_manual_sum(tiny_llama):
    b = collate_pairs(PAIRS, max_length=6, max_prompt_length=3, pad_id=0)
    with torch.no_grad():
        got = sequence_logps(tiny_llama, b)
        logp = tiny_llama(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.float().log_softmax(-1)
    assert got.shape == (4,)
    # response positions from test_collate_pairs_hand_computed; token t is predicted by position t − 1
    spans = [range(3, 5), range(2, 6), range(3, 6), range(2, 3)]
    expected = [sum(logp[n, t - 1, b.input_ids[n, t]].item() for t in span) for n, span in enumerate(spans)]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert torch.all(got < 0)


def test_sequence_logps_unaffected_by_padding(tiny_llama):
    b = collate_pairs(PAIRS, max_length=6, max_prompt_length=3, pad_id=0)
    alone = collate_pairs([([3, 4, 5], [10, 11], [6])], max_length=6, max_prompt_length=3, pad_id=0)
    with torch.no_grad():
        batched = sequence_logps(tiny_llama, b)
        single = sequence_logps(tiny_llama, alone)
    # row 0 of the batch (chosen of pair 0, right-padded by one) equals the same sequence with no padding
    assert batched[0].item() == pytest.approx(single[0].item(), abs=1e-5)


class _UniformLM(torch.nn.Module):
    """Zero logits over a vocabulary of 50: every token has log-prob −ln 50."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 50) + 0 * self.w)


def test_sequence_logps_uniform_model_hand_computed():
    b = collate_pairs(PAIRS, max_length=6, max_prompt_length=3, pad_id=0)
    got = sequence_logps(_UniformLM(), b)
    # response lengths 2, 4, 3, 1 -> −n·ln 50, ln 50 = 3.912023005428146
    ln50 = math.log(50)
    torch.testing.assert_close(got, torch.tensor([-2 * ln50, -4 * ln50, -3 * ln50, -1 * ln50]))
    assert got[0].item() == pytest.approx(-7.824046010856292)


# --- judging ------------------------------------------------------------------------------------------------------

MESSAGES_A = [{"role": "user", "content": "Say something short."}]
MESSAGES_B = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Describe the sea."},
]
# response lengths: row A [20, 10, 30] chars, row B [30, 20, 10] chars
RESP_A = ["a" * 20, "b" * 10, "c" * 30]
RESP_B = ["x" * 30, "y" * 20, "z" * 10]


def _generated_rows():
    return [
        GeneratedPrompt(
            prompt_id=pid,
            messages_json=json.dumps(msgs),
            prompt_token_ids=[1, 2, 3],
            responses=resp,
            response_token_ids=[[10 + i] * (i + 1) for i in range(3)],
            num_tokens=[i + 1 for i in range(3)],
            finish_reasons=["stop"] * 3,
            policy_version=2,
        ).to_row()
        for pid, msgs, resp in (("pA", MESSAGES_A, RESP_A), ("pB", MESSAGES_B, RESP_B))
    ]


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_ordered_pairs():
    assert ordered_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def test_length_judge_logits():
    j = LengthJudge("shorter")
    # (len(second) − len(first)) / 10: (30 − 10)/10 = 2 ; (10 − 30)/10 = −2
    np.testing.assert_allclose(j.pair_logits(["q", "q"], ["b" * 10, "c" * 30], ["c" * 30, "b" * 10]), [2.0, -2.0])
    np.testing.assert_allclose(LengthJudge("longer").pair_logits(["q"], ["b" * 10], ["c" * 30]), [-2.0])


def test_judge_rows_length_judge():
    judged = judge_rows(_generated_rows(), LengthJudge("shorter"), "debiased", "pair")
    assert [j["prompt_id"] for j in judged] == ["pA", "pB"]
    a, b = judged
    assert a["kept"] == [1, 2]  # shortest (10 chars) wins, longest (30) loses
    assert b["kept"] == [2, 0]
    assert a["k"] == 3 and a["judge"] == "length:shorter" and a["policy_version"] == 2
    # row A logits l[i, j] = (len_j − len_i)/10 with lengths [20, 10, 30]
    np.testing.assert_allclose(np.reshape(a["logits"], (3, 3)), [[0, -1, 1], [1, 0, 2], [-1, -2, 0]])
    p = np.reshape(a["table"], (3, 3))
    np.testing.assert_allclose(p + p.T, np.ones((3, 3)), atol=1e-12)
    # l_ji = −l_ij here, so P_ij = σ(l_ij): P12 = σ(2) = 0.8807970779778823, P01 = σ(−1) = 0.2689414213699951
    assert p[1, 2] == pytest.approx(0.8807970779778823)
    assert p[0, 1] == pytest.approx(0.2689414213699951)
    # w0 = (½ + σ(−1) + σ(1))/3 = 1.5/3 = 0.5
    # w1 = (σ(1) + ½ + σ(2))/3 = (0.7310585786300049 + 0.5 + 0.8807970779778823)/3 = 0.7039518855359624
    # w2 = (σ(−1) + σ(−2) + ½)/3 = (0.2689414213699951 + 0.11920292202211755 + 0.5)/3 = 0.29604811446403756
    np.testing.assert_allclose(a["win_rates"], [0.5, 0.7039518855359624, 0.29604811446403756], atol=1e-12)
    assert a["scores"] == a["win_rates"]
    assert a["skipped_reason"] == ""
    for j in judged:
        jt = np.reshape(j["table"], (3, 3))
        np.testing.assert_allclose(jt + jt.T, np.ones((3, 3)), atol=1e-12)


def test_judge_rows_equal_lengths_skipped():
    rows = _generated_rows()[:1]
    rows[0]["responses"] = ["same", "also", "four"]  # all 4 characters
    (j,) = judge_rows(rows, LengthJudge("shorter"), "debiased", "pair")
    assert j["kept"] == [] and j["skipped_reason"]
    assert build_training_table(pa.Table.from_pylist(rows), pa.Table.from_pylist([j], schema=JUDGED_SCHEMA)).num_rows == 0


def test_judge_rows_reference_mode():
    (a,) = judge_rows(_generated_rows()[:1], LengthJudge("shorter"), "reference", "pair")
    # D = l − lᵀ = 2l ; s = row means of 2·[[0,−1,1],[1,0,2],[−1,−2,0]] = [0, 2, −2]
    np.testing.assert_allclose(a["scores"], [0.0, 2.0, -2.0], atol=1e-12)
    assert a["kept"] == [1, 2]
    # P12 = σ(2 − (−2)) = σ(4) = 0.9820137900379085
    assert np.reshape(a["table"], (3, 3))[1, 2] == pytest.approx(0.9820137900379085)


def _training_table(tmp_path, selection="pair"):
    rows = _generated_rows()
    judged = judge_rows(rows, LengthJudge("shorter"), "debiased", selection)
    train = build_training_table(pa.Table.from_pylist(rows), pa.Table.from_pylist(judged, schema=JUDGED_SCHEMA))
    path = tmp_path / "train.parquet"
    pq.write_table(train, path)
    return pq.read_table(path)


def test_build_training_table_reference_columns(tmp_path):
    back = _training_table(tmp_path)
    assert back.num_rows == 2
    schema = back.schema
    assert schema.field("prompt").type == pa.string()
    for col in ("chosen", "rejected"):
        t = schema.field(col).type
        assert pa.types.is_list(t) and pa.types.is_struct(t.value_type)
        assert {t.value_type.field(i).name for i in range(t.value_type.num_fields)} == {"role", "content"}
    for col in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose"):
        assert pa.types.is_floating(schema.field(col).type)

    a, b = back.to_pylist()
    assert a["prompt"] == "Say something short."
    assert a["chosen"] == [
        {"role": "user", "content": "Say something short."},
        {"role": "assistant", "content": "b" * 10},
    ]
    assert a["rejected"][-1] == {"role": "assistant", "content": "c" * 30}
    # P12 = σ(2); win rates from test_judge_rows_length_judge
    assert a["chosen_probs"] == pytest.approx(0.8807970779778823)
    assert a["chosen_probs_win"] == pytest.approx(0.7039518855359624)
    assert a["chosen_probs_lose"] == pytest.approx(0.29604811446403756)
    assert (a["chosen_index"], a["rejected_index"]) == (1, 2)
    assert a["chosen_token_ids"] == [11, 11] and a["rejected_token_ids"] == [12, 12, 12]

    # row B: the prompt is the last user turn, the chats keep the system turn
    assert b["prompt"] == "Describe the sea."
    assert b["chosen"][:-1] == MESSAGES_B
    assert b["chosen"][-1] == {"role": "assistant", "content": "z" * 10}
    assert b["rejected"][-1] == {"role": "assistant", "content": "x" * 30}
    # row B mirrors row A: lengths [30, 20, 10] -> winner 2, loser 0, P20 = σ(2)
    assert b["chosen_probs"] == pytest.approx(0.8807970779778823)
    assert b["chosen_probs_win"] + b["chosen_probs_lose"] == pytest.approx(1.0)  # 0.70395... + 0.29604...


def test_win_rate_matrix():
    pair_p = {(0, 1): np.array([0.8, 0.6]), (0, 2): np.array([0.3, 0.5]), (1, 2): np.array([0.9])}
    w = win_rate_matrix(pair_p, 3)
    # W01 = mean(0.8, 0.6) = 0.7, W02 = mean(0.3, 0.5) = 0.4, W12 = 0.9 ; W_ba = 1 − W_ab
    np.testing.assert_allclose(w, [[0.5, 0.7, 0.4], [0.3, 0.5, 0.9], [0.6, 0.1, 0.5]], atol=1e-12)
    np.testing.assert_array_equal(np.diag(w), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(w + w.T, np.ones((3, 3)), atol=1e-12)


def test_training_reads_the_token_ids_of_our_sets_and_the_chats_of_others():
    from sppo_ray.judging.stage import TRAINING_SCHEMA
    from sppo_ray.training.batching import training_columns

    ours = training_columns(TRAINING_SCHEMA.names)
    assert ours == ["prompt_token_ids", "chosen_token_ids", "rejected_token_ids", "chosen_probs", "chosen_probs_win",
                    "chosen_probs_lose"]  # not the K answers' text, the tables or the chats
    reference = ["prompt", "chosen", "rejected", "chosen_probs", "chosen_probs_win", "chosen_probs_lose"]
    assert training_columns(reference) == ["chosen", "rejected", "chosen_probs", "chosen_probs_win",
                                           "chosen_probs_lose"]
    # token ids without the response's: the chats are tokenised, as row_token_ids does
    assert "chosen" in training_columns(["prompt_token_ids", "chosen", "rejected", "chosen_probs"])
