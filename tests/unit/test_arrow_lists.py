"""List columns picked and reshaped through their offsets (sppo_ray/arrow_lists.py), and the training set built
from them: the same rows as reading the tables row by row, on chunked, sliced and shuffled tables."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from sppo_ray.arrow_lists import append_item, pick, split_last
from sppo_ray.bench.paper_round import synthetic_round
from sppo_ray.data.trl_format import trl_preference_table
from sppo_ray.judging.stage import build_training_table

pytestmark = pytest.mark.unit

ROWS = [[1, 2, 3], [], None, [4], [5, 6]]


def _chunked() -> pa.ChunkedArray:
    """ROWS in two chunks, the first a slice of a longer array (its offsets do not start at 0)."""
    whole = pa.array([[9, 9], *ROWS[:3]], pa.list_(pa.int32()))
    return pa.chunked_array([whole.slice(1), pa.array(ROWS[3:], pa.list_(pa.int32()))])


def test_pick_takes_the_item_of_each_row_across_chunks_and_slices():
    rows, items = np.array([4, 0, 3, 0, 4]), np.array([1, 2, 0, 0, 0])
    assert pick(_chunked(), rows, items).to_pylist() == [ROWS[r][i] for r, i in zip(rows, items)]


@pytest.mark.parametrize("row,item", [(1, 0), (2, 0), (0, 3), (0, -1)])
def test_pick_past_a_rows_end_names_the_row(row, item):
    with pytest.raises(IndexError, match=f"row {row} has"):
        pick(_chunked(), np.array([0, row]), np.array([0, item]))


def test_append_then_split_last_gives_back_the_rows_and_the_items():
    items = pa.array([10, 11, 12, 13, 14], pa.int32())
    grown = append_item(_chunked(), items)
    assert grown.to_pylist() == [(r or []) + [x] for r, x in zip(ROWS, items.to_pylist())]
    head, last = split_last(grown)
    assert head.to_pylist() == [r or [] for r in ROWS]
    assert last.to_pylist() == [[x] for x in items.to_pylist()]


def test_split_last_of_an_empty_row_names_it():
    with pytest.raises(ValueError, match="row 1 is empty"):
        split_last(_chunked())


def test_training_table_is_the_row_by_row_reading_of_the_tables():
    generated, judged = synthetic_round(60, 4, 6, prompt_tokens=3, seed=1)
    kept = judged.column("kept").to_pylist()
    kept[5] = kept[17] = []  # no preference: no row
    judged = judged.set_column(judged.schema.get_field_index("kept"), "kept", pa.array(kept, pa.list_(pa.int64())))
    judged = pa.concat_tables([judged.slice(40), judged.slice(0, 40)])  # another order than generated's
    generated = pa.concat_tables([generated.slice(0, 25), generated.slice(25)])
    train = build_training_table(generated, judged)

    gen = {g["prompt_id"]: g for g in generated.to_pylist()}
    expected = [j for j in judged.to_pylist() if j["kept"]]
    assert train.column("prompt_id").to_pylist() == [j["prompt_id"] for j in expected]
    for row, j in zip(train.to_pylist(), expected):
        g, (w, l) = gen[j["prompt_id"]], j["kept"]
        chat = json.loads(g["messages_json"])
        assert row["prompt"] == chat[-1]["content"]
        assert row["chosen"] == chat + [{"role": "assistant", "content": g["responses"][w]}]
        assert row["rejected"] == chat + [{"role": "assistant", "content": g["responses"][l]}]
        assert row["chosen_token_ids"] == g["response_token_ids"][w]
        assert row["rejected_token_ids"] == g["response_token_ids"][l]
        assert row["chosen_probs"] == j["table"][w * 4 + l]
        assert (row["chosen_probs_win"], row["chosen_probs_lose"]) == (j["win_rates"][w], j["win_rates"][l])
        assert (row["chosen_index"], row["rejected_index"]) == (w, l)
        assert row["prompt_token_ids"] == g["prompt_token_ids"] and row["responses"] == g["responses"]

    trl = trl_preference_table(train).to_pylist()
    assert [t["prompt"] for t in trl] == [json.loads(gen[j["prompt_id"]]["messages_json"]) for j in expected]
    assert [t["chosen"][0]["content"] for t in trl] == [gen[j["prompt_id"]]["responses"][j["kept"][0]]
                                                        for j in expected]


def test_no_rows_give_an_empty_training_set_of_the_schema():
    generated, judged = synthetic_round(3, 2, 2)
    train = build_training_table(generated.slice(0, 0), judged.slice(0, 0))
    assert train.num_rows == 0 and trl_preference_table(train).num_rows == 0
