"""train.parquet rows -> TRL's conversational preference format (sppo_ray/data/trl_format.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from sppo_ray.data.trl_format import trl_preference_table
from sppo_ray.judging.stage import TRAINING_SCHEMA

pytestmark = pytest.mark.unit


def _train_row(prompt_id: str, chosen: str, rejected: str, **kw) -> dict:
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"question {prompt_id}"}]
    row = {name: None for name in TRAINING_SCHEMA.names}
    row.update(prompt=turns[-1]["content"], chosen=turns + [{"role": "assistant", "content": chosen}],
               rejected=turns + [{"role": "assistant", "content": rejected}], chosen_probs=0.8,
               chosen_probs_win=0.7, chosen_probs_lose=0.3, prompt_id=prompt_id, policy_version=1, **kw)
    return row


def test_rows_become_prompt_turns_and_single_assistant_answers():
    train = pa.Table.from_pylist([_train_row("a", "yes", "no"), _train_row("b", "up", "down")], schema=TRAINING_SCHEMA)
    rows = trl_preference_table(train).to_pylist()
    assert [r["prompt_id"] for r in rows] == ["a", "b"]
    assert rows[0]["prompt"] == [{"content": "Be brief.", "role": "system"}, {"content": "question a", "role": "user"}]
    assert rows[0]["chosen"] == [{"content": "yes", "role": "assistant"}]
    assert rows[1]["rejected"] == [{"content": "down", "role": "assistant"}]
    assert (rows[0]["chosen_probs"], rows[0]["chosen_probs_win"], rows[0]["chosen_probs_lose"]) == (0.8, 0.7, 0.3)


def test_a_conversation_without_an_answer_names_the_row():
    bad = _train_row("c", "x", "y")
    bad["rejected"] = bad["rejected"][:-1]
    train = pa.Table.from_pylist([_train_row("a", "yes", "no"), bad], schema=TRAINING_SCHEMA)
    with pytest.raises(ValueError, match=r"row 1 \(prompt_id c\): rejected does not end with an assistant turn"):
        trl_preference_table(train)
