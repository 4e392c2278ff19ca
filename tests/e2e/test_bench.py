"""A tiny version of every benchmark runs and writes its JSON (the numbers themselves are not asserted)."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import cli

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # ~6-10 min on 2 cores: `make test-slow`, not CI


def test_tiny_benchmarks_write_their_json(cli_env, tmp_path):
    proc = cli("bench", "all", "--tiny", "--out", str(tmp_path), env=cli_env)
    expected = {
        "generation": ("ratio_pipeline_over_bare", "ratio_2_over_1_generators"),
        "judging": ("ratio_stage_over_bare", "ratio_stage_over_batch1"),
        "weight_sync": ("ratio_sync_over_copy", "engine_restarted"),
        "training": ("ratio_ray_train_over_bare",),
        "round": ("ratio_reference_over_pipeline", "ratio_reference_over_pipeline_with_startup"),
    }
    for name, keys in expected.items():
        result = json.loads((tmp_path / f"{name}.json").read_text())
        for key in keys:
            assert key in result, (name, key)
        assert f"bench {name}:" in proc.stdout
    assert json.loads((tmp_path / "weight_sync.json").read_text())["engine_restarted"] is False
    rounds = json.loads((tmp_path / "round.json").read_text())
    # both rounds trained on the same prompts: the pipeline's round and the reference-style one
    assert rounds["pipeline"]["train_rows"] > 0 and rounds["reference"]["train_rows"] > 0
    assert set(rounds["reference"]["phases"]) == {"generate", "judge", "train"}
