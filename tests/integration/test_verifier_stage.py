"""The verifier judge in a real judge actor: instructions travel with the rows through Ray Data (no model)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from sppo_ray.actor_pool import shutdown_pool
from sppo_ray.config import JudgeConfig, ResourcesConfig
from sppo_ray.data.prompts import Prompt
from sppo_ray.instructions import Instruction
from sppo_ray.judging.stage import build_judge_actors, run_judging_stage

pytestmark = pytest.mark.integration

LOWER_NO_COMMA = (Instruction("change_case:english_lowercase", {}), Instruction("punctuation:no_comma", {}))
# scores in strict mode: 1, 1/2, 0
RESPONSES = ["our grey cat is lost and we miss her very much", "our grey cat is lost, we miss her",
             "Our cat, Misty, is lost."]


def test_stage_and_eval_matrix_judge_by_instructions(ray_cluster):
    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.judging.stage import ReplicatedJudge
    from sppo_ray.orchestration.evaluate import _pairwise

    prompts = [Prompt(f"v{n}", ({"role": "user", "content": "Write a note about a lost cat."},), LOWER_NO_COMMA)
               for n in range(4)]
    rows = [{"prompt_id": p.id, "messages_json": json.dumps(list(p.messages)), "prompt_token_ids": [1],
             "responses": RESPONSES, "response_token_ids": [[2], [3], [4]], "num_tokens": [1, 1, 1],
             "finish_reasons": ["stop"] * 3, "policy_version": 0, "truncated": False} for p in prompts]
    generated = pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)
    cfg = JudgeConfig(kind="verifier", verifier_mode="strict", tau=0.25, batch_size=4)
    actors = build_judge_actors(None, cfg, ResourcesConfig(judges=1, judge_cpus=0.5))
    try:
        judged = run_judging_stage(generated, actors, cfg, {p.id: p.instructions_json for p in prompts})
        answers = [pa.Table.from_pylist([{"prompt_id": p.id, "messages_json": r["messages_json"], "response": text}
                                         for p, r in zip(prompts, rows)]) for text in RESPONSES[:2]]
        matrix = _pairwise(ReplicatedJudge(actors), answers, {p.id: p.instructions_json for p in prompts})
    finally:
        shutdown_pool(actors)
    s = np.array([1.0, 0.5, 0.0])
    expected = 1 / (1 + np.exp(-(s[:, None] - s[None, :]) / 0.25))
    for row in judged.table.to_pylist():
        np.testing.assert_allclose(np.array(row["table"]).reshape(3, 3), expected, atol=1e-12)
        assert row["kept"] == [0, 2] and row["judge"] == "verifier:strict"
    np.testing.assert_allclose(matrix[(0, 1)], [1 / (1 + np.exp(-2.0))] * 4, atol=1e-12)
