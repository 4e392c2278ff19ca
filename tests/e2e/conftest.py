"""End-to-end fixtures: the real `sppo-ray` CLI in subprocesses, joined to the session's Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_helpers import cli, llm_judge_config, write_config
from job_head import submit_job, token_head

from sppo_ray.data.prompts import Prompt, load_prompts, split_prompts


@pytest.fixture(scope="session")
def bad_prompts(tmp_path_factory) -> Path:
    """24 usable prompts (8 held out + 2 rounds x 8; short factual questions) plus one of every kind of bad row.

    The over-long prompt gets an id that the split puts into a training round, so generation must skip it.
    """
    good = [{"id": p.id, "prompt": p.messages[-1]["content"]} for p in load_prompts("embedded:default").prompts[:23]]
    long_text = "Please summarise the following notes. " + "The meeting covered budgets and plans. " * 40
    for n in range(100):
        long_row = {"id": f"long{n}", "prompt": long_text}
        rows = [Prompt(r["id"], ({"role": "user", "content": r["prompt"]},)) for r in good + [long_row]]
        rounds, _ = split_prompts(tuple(rows), per_iteration=8, iterations=2, eval_size=8, seed=0)
        if any(p.id == long_row["id"] for r in rounds for p in r):
            break
    lines = [json.dumps(r) for r in good[:10]]
    lines += ['{"id": "empty1", "prompt": "   "}', json.dumps({"id": good[0]["id"], "prompt": "duplicate id"}),
              '{"id": "broken", "prompt": ', '{"id": "nofield", "text": "no prompt here"}']
    lines += [json.dumps(long_row)] + [json.dumps(r) for r in good[10:]]
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_run(cli_env, bad_prompts, tmp_path_factory) -> dict:
    """One finished 2-round run through `sppo-ray run`, shared by the e2e tests."""
    root = tmp_path_factory.mktemp("tiny")
    config = write_config(root / "tiny.yaml", root / "run", bad_prompts)
    proc = cli("run", str(config), env=cli_env)
    return {"dir": root / "run", "config": config, "stdout": proc.stdout, "stderr": proc.stderr, "root": root}


@pytest.fixture(scope="session")
def submitted_run(bad_prompts, tmp_path_factory) -> dict:
    """The LLM-judge job, 2 rounds, submitted with `ray job submit` to a throwaway token-auth head (stopped before
    this returns). Checked by test_job_submit; the crash test compares its resumed run with this one."""
    root = tmp_path_factory.mktemp("submitted")
    config = llm_judge_config(root / "job.yaml", root / "run", bad_prompts)
    with token_head() as head:
        job = submit_job(head, config)
    return {"dir": root / "run", "config": config, "job": job}
