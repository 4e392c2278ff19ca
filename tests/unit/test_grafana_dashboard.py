"""The shipped Grafana dashboard reads only metrics that exist: ours (orchestration/metrics.py, training/live.py)
and Ray's own node metrics as the installed Ray's reporter defines them. (test_job_submit checks they reach the
head's endpoint.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((REPO / "cluster" / "grafana" / "sppo-ray.json").read_text())


def _plotted() -> set[str]:
    return {m for p in DASHBOARD["panels"] for t in p["targets"] for m in re.findall(r"\bray_[a-z_]+", t["expr"])}


def test_every_plotted_metric_is_ours_or_rays():
    ours = {m for f in ("orchestration/metrics.py", "training/live.py")
            for m in re.findall(r'(?:Gauge|Counter)\(\s*"(sppo_\w+)"', (REPO / "sppo_ray" / f).read_text())}
    reporter = Path(ray.__file__).parent / "dashboard" / "modules" / "reporter" / "reporter_agent.py"
    rays = set(re.findall(r'"(node_[a-z_]+)"', reporter.read_text()))
    plotted = {m.removeprefix("ray_") for m in _plotted()}
    assert plotted <= ours | rays, f"unknown metrics: {sorted(plotted - ours - rays)}"
    # the panels: stage timeline, progress and ETA, tokens/s, judge, loss, win rates, weight sync, Ray's own
    for wanted in ("sppo_stage", "sppo_stage_done", "sppo_stage_eta_seconds", "sppo_generated_tokens_per_s",
                   "sppo_judge_seconds_per_pair", "sppo_train_loss", "sppo_train_step_loss", "sppo_train_step",
                   "sppo_train_tokens_per_s", "sppo_win_rate_chosen",
                   "sppo_weight_sync_seconds", "node_cpu_utilization", "node_gpus_utilization"):
        assert wanted in plotted, wanted


def test_the_dashboard_imports_into_rays_grafana():
    """What Grafana's import needs: a uid and title, a Prometheus data-source variable every target uses, a run
    filter on every sppo_ query, panels that do not overlap."""
    assert DASHBOARD["uid"] == "sppo-ray" and DASHBOARD["title"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    cells = set()
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            if "ray_sppo_" in target["expr"]:
                assert target["expr"].count('run=~"$run"') == target["expr"].count("ray_sppo_")
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, panel["title"]
        cells |= mine
