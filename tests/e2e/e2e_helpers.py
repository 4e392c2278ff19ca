"""Helpers for end-to-end tests: run the real `sppo-ray` CLI in subprocesses, write job configs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "sppo_ray.cli"]

# The LLM judge as the e2e job-submit test runs it (SmolLM2, short inputs).
LLM_JUDGE = {"kind": "llm", "batch_size": 16, "max_source_tokens": 128, "max_candidate_tokens": 48}

# The shared e2e job: 2 rounds of 8 prompts, K=3, 8 held-out prompts. Its judge is the scripted length judge
# (prefers the shorter response), a judge of known taste: test_run.py checks that the rounds move the policy its
# way (the verifier judge's learning test runs the default demo job: test_demo.py). Up to 64 new tokens leaves room
# for answers to end by themselves (with 32 most were cut, and lengths differed by noise); AdamW at 2e-5 for 2
# epochs moves a 135M policy within 4 optimiser steps a round (RMSprop at 3e-7 left the held-out answers unchanged).
TINY = {
    "name": "e2e",
    "iterations": 2,
    "eval_at_end": True,
    "data": {"prompts_per_iteration": 8, "eval_prompts": 8},
    "generation": {"k": 3, "max_new_tokens": 64, "max_prompt_tokens": 96, "overlong_prompts": "skip",
                   "dtype": "float32", "batch_size": 8},
    "judge": {"kind": "length", "prefer": "shorter", "batch_size": 64},
    "training": {"loss": "sppo", "beta": 0.05, "lr": 2.0e-5, "optimizer": "adamw", "epochs": 2,
                 "global_batch_size": 4, "micro_batch_size": 1, "zero_stage": 2, "precision": "fp32",
                 "max_length": 160, "max_prompt_length": 96},
    "resources": {"generators": 1, "judges": 1, "train_workers": 2},
    "tracking": {"kind": "tensorboard"},
}


def cli(*args: str, env: dict[str, str], timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sppo-ray {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def write_config(path: Path, run_dir: Path, prompts: Path, **changes) -> Path:
    config = json.loads(json.dumps(TINY))
    config["run_dir"] = str(run_dir)
    config["data"]["prompts"] = str(prompts)
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            config[section][leaf] = value
        else:
            config[section] = value
    path.write_text(yaml.safe_dump(config))
    return path


def llm_judge_config(path: Path, run_dir: Path, prompts: Path) -> Path:
    """The shared job with the LLM judge and no final eval, generating in batches and chunks of 2 prompts (so that
    a driver can be killed between two chunks: test_resume.py), one epoch a round (its tests check the machinery,
    not learning; training is most of CI's time)."""
    generation = {**TINY["generation"], "batch_size": 2, "chunk_prompts": 2}
    return write_config(path, run_dir, prompts, judge=LLM_JUDGE, eval_at_end=False, generation=generation,
                        training={**TINY["training"], "epochs": 1})


GRAFANA = REPO / "cluster" / "grafana" / "sppo-ray.json"


def dashboard_metrics() -> set[str]:
    """Every metric name the shipped Grafana dashboard's PromQL reads."""
    import re

    panels = json.loads(GRAFANA.read_text())["panels"]
    return {m for p in panels for t in p["targets"] for m in re.findall(r"\bray_[a-z_]+", t["expr"])}
