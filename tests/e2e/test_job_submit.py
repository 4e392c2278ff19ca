"""`ray job submit` against a local head with token auth (the `submitted_run` fixture): the job succeeds, the API
refuses requests without the token, and our metrics reach the head's Prometheus endpoint."""

from __future__ import annotations

import json

import pytest
from e2e_helpers import dashboard_metrics

pytestmark = pytest.mark.e2e


def test_job_submit_with_token_auth_and_metrics(submitted_run):
    job = submitted_run["job"]
    assert job["unauthenticated_status"] == 401
    assert job["returncode"] == 0, job["output"][-6000:]
    assert "succeeded" in job["output"].lower()
    run_dir = submitted_run["dir"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {f"round_{t}/{s}" for t in (0, 1) for s in ("generate", "judge", "dataset", "train")} <= set(manifest["stages"])
    assert (run_dir / "round_1" / "model" / "model.safetensors").is_file()
    expected = {"sppo_round", "sppo_stage", "sppo_generated_tokens_per_s", "sppo_train_loss",
                "sppo_weight_sync_seconds", "sppo_stage_done", "sppo_stage_total", "sppo_stage_eta_seconds",
                "sppo_train_step", "sppo_train_steps_total", "sppo_train_step_loss", "sppo_train_tokens_per_s"}
    assert expected <= job["metrics"], f"metrics seen on the head's endpoint: {sorted(job['metrics'])}"
    # every metric the Grafana dashboard plots is exported (the GPU panels' only by GPU nodes)
    plotted = {m.removeprefix("ray_") for m in dashboard_metrics()} - {"node_gpus_utilization", "node_gram_used"}
    assert plotted <= job["metrics"], f"plotted but not exported: {sorted(plotted - job['metrics'])}"
