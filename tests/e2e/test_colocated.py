"""The colocated layout on CPU bundles: the shared job again with one bundle per train worker, every role in it."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from e2e_helpers import cli, write_config

pytestmark = pytest.mark.e2e

TRAIN_COLUMNS = ["prompt_id", "chosen", "rejected", "chosen_probs", "chosen_probs_win", "chosen_probs_lose"]


@pytest.fixture(scope="module")
def colocated_run(tiny_run, bad_prompts, cli_env, tmp_path_factory) -> dict:
    """The shared tiny job (same prompts, seeds, judge, training) in the colocated layout: 2 bundles, each with a
    generator, a judge replica and a train worker; no final evaluation."""
    root = tmp_path_factory.mktemp("colocated")
    config = write_config(root / "colocated.yaml", root / "run", bad_prompts, eval_at_end=False,
                          resources={"layout": "colocated", "generators": 2, "judges": 2, "train_workers": 2})
    proc = cli("run", str(config), env=cli_env)
    return {"dir": root / "run", "stdout": proc.stdout,
            "report": json.loads((root / "run" / "colocation.json").read_text())}


def test_every_role_runs_in_its_bundle(colocated_run):
    report = colocated_run["report"]
    assert [b["index"] for b in report["bundles"]] == [0, 1]
    assert len(report["placement_groups"]) == 1 and report["strategy"] == ["PACK"]  # CPU bundles: one group
    assert report["bundles"][0]["resources"] == {"CPU": 2.0}  # a generator's and a judge's CPU
    for role in ("generators", "judges"):
        placed = report[role]
        assert [p["bundles"] for p in placed] == [[0], [1]], (role, placed)  # actor i in bundle i
        assert {p["placement_group_id"] for p in placed} == set(report["placement_groups"])


def test_engines_sleep_around_training_and_wake_for_the_broadcast(colocated_run):
    report = colocated_run["report"]
    assert [s["stage"] for s in report["stages"]] == ["generate"] + ["generate", "judge", "train", "broadcast"] * 2
    cycle = [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", None)] * 2  # level 2: the default
    for n, events in enumerate(report["generator_sleep"]):
        # per round: asleep from judging through training, weights back for the broadcast, then the KV cache when
        # it next generates (generator 0 answers the probe after each broadcast; the others wake in the next round)
        calls = [(e["call"], e["detail"]) for e in events]
        assert calls == (cycle if n == 0 else cycle[:5]), (n, calls)
        assert not any(e["real"] for e in events)  # CPU: recorded, nothing released
    for events in report["judge_residency"]:  # on host from the start, on their devices only to judge
        assert [e["call"] for e in events] == ["offload"] + ["onload", "offload"] * 2
    assert report["broadcasts"] == ["files", "files"]  # CPU runs load π_{t+1} from the export


def test_colocated_run_produces_the_disaggregated_runs_data(colocated_run, tiny_run):
    ours, theirs = colocated_run["dir"], tiny_run["dir"]
    for t in (0, 1):
        a = pq.read_table(ours / f"round_{t}" / "responses.parquet")
        b = pq.read_table(theirs / f"round_{t}" / "responses.parquet")
        assert a.column("prompt_id").to_pylist() == b.column("prompt_id").to_pylist()
        assert a.column("responses").to_pylist() == b.column("responses").to_pylist(), t
        x = pq.read_table(ours / f"round_{t}" / "train.parquet").select(TRAIN_COLUMNS).to_pylist()
        y = pq.read_table(theirs / f"round_{t}" / "train.parquet").select(TRAIN_COLUMNS).to_pylist()
        assert len(x) == len(y) > 0
        for r, s in zip(x, y):
            for key in TRAIN_COLUMNS:
                assert r[key] == (pytest.approx(s[key], abs=1e-6) if isinstance(s[key], float) else s[key]), (t, key)
