"""The loop moves the policy the way the judge prefers: a scripted judge that likes short answers."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import cli, write_config

pytestmark = pytest.mark.e2e


def test_length_judge_makes_answers_shorter(cli_env, tmp_path):
    config = write_config(
        tmp_path / "learn.yaml", tmp_path / "run", "embedded:default",
        data={"prompts_per_iteration": 12, "eval_prompts": 12},
        judge={"kind": "length", "prefer": "shorter", "batch_size": 64},
        # room for answers to end on their own: if every sample hits max_new_tokens, "shorter" only means
        # "fewer characters" and the policy cannot learn to stop earlier
        generation={"k": 4, "max_new_tokens": 96, "max_prompt_tokens": 96, "dtype": "float32", "batch_size": 12},
        training={"loss": "sppo", "beta": 0.1, "lr": 1.0e-6, "epochs": 3, "global_batch_size": 4,
                  "micro_batch_size": 1, "zero_stage": 2, "precision": "fp32", "max_length": 192,
                  "max_prompt_length": 96},
    )
    cli("run", str(config), env=cli_env)
    ev = json.loads((tmp_path / "run" / "eval" / "matrix.json").read_text())
    lengths = dict(zip(ev["models"], ev["mean_response_tokens"]))
    print(f"held-out mean response tokens: {lengths}")
    assert lengths["pi_2"] < lengths["pi_0"]
    # and the length judge itself agrees that π_2 beats π_0 on the held-out prompts
    assert ev["matrix"][2][0] > 0.5
