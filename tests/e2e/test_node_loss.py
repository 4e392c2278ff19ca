"""A lost node costs only the work in flight on it (issue 23), shown on the shared multi-node cluster: the node
that hosts the generator is removed mid-generation (its raylet and workers killed, as a lost pod) and a replacement
joins, as KubeRay replaces a pod; then, the same, a node of a train worker mid-fit. The run finishes, and its data are those of an undisturbed run on the same seeds."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from e2e_helpers import CLI, REPO, TINY

pytestmark = pytest.mark.e2e

NODES, CPUS = 2, 3  # generator, judge and 2 train workers (1 CPU each) need more than one node's 3 CPUs


def _config(root: Path) -> Path:
    """The shared e2e job for one round of 16 prompts on the embedded set, long enough to be hit mid-generation."""
    config = json.loads(json.dumps(TINY))
    config.update(name="node-loss", iterations=1, eval_at_end=False, run_dir=str(root / "run"),
                  tracking={"kind": "none"})
    config["data"] = {"prompts_per_iteration": 16, "eval_prompts": 8}
    config["training"].update(epochs=1, global_batch_size=8, micro_batch_size=2)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(multinode, env, root: Path, lose_generator_node: bool) -> dict:
    multinode.shape(NODES, 0, CPUS)
    root.mkdir(parents=True)
    run_dir = root / "run"
    proc = subprocess.Popen([*CLI, "run", str(_config(root))], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lost = lost_in_fit = None
    if lose_generator_node:
        placement = run_dir / "placement.json"  # written as the roles start, before round 0 generates
        while not placement.exists() and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        lost = json.loads(placement.read_text())["generators"][0]["node_id"]
        generated_before = (run_dir / "round_0" / "responses.parquet").exists()
        multinode.remove_node(multinode.worker(lost), graceful=False)
        multinode.add_node(0, CPUS)
        assert not generated_before, "the generation had finished before the node was lost"
        # then a node of a train worker, once the fit is under way
        while "round_0/dataset" not in _stages(run_dir) and proc.poll() is None:
            time.sleep(0.5)
        workers = _alive(multinode, "RayTrainWorker", 2, proc)
        time.sleep(10)  # DeepSpeed is setting up or stepping
        lost_in_fit = workers[0]["node_id"]
        assert "round_0/train" not in _stages(run_dir), "the fit had finished before the node was lost"
        multinode.remove_node(multinode.worker(lost_in_fit), graceful=False)
        multinode.add_node(0, CPUS)
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-4000:]
    return {"dir": run_dir, "lost": lost, "lost_in_fit": lost_in_fit, "stdout": out, "placement": json.loads((run_dir / "placement.json").read_text())}


def _stages(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text())["stages"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _alive(multinode, cls: str, count: int, proc) -> list[dict]:
    """The live actors of a class on the cluster (Ray's state API through the head's dashboard)."""
    from ray.util.state import list_actors

    while proc.poll() is None:
        found = list_actors(address=multinode.dashboard_url, filters=[("class_name", "=", cls), ("state", "=", "ALIVE")])
        if len(found) >= count:
            return [a if isinstance(a, dict) else a.__dict__ for a in found]
        time.sleep(0.5)
    raise AssertionError(f"the run ended before {count} {cls} were up: {proc.communicate()[1][-3000:]}")


@pytest.fixture(scope="module")
def undisturbed(multinode, multinode_env, tmp_path_factory) -> dict:
    return _run(multinode, multinode_env, tmp_path_factory.mktemp("node-loss") / "undisturbed", False)


def test_nodes_lost_mid_generation_and_mid_training_lose_nothing(multinode, multinode_env, tmp_path, undisturbed):
    disturbed = _run(multinode, multinode_env, tmp_path / "disturbed", True)
    now = disturbed["placement"]["generators"][0]["node_id"]
    assert now != disturbed["lost"]  # the generator was restarted on a surviving or the replacement node
    manifest = json.loads((disturbed["dir"] / "manifest.json").read_text())
    generated = manifest["stages"]["round_0/generate"]
    usable = generated["prompts"] - generated["rejected"]  # the embedded set has a prompt over 96 tokens
    for rel in ("responses.parquet", "tables.parquet", "train.parquet"):
        ours, theirs = (pq.read_table(r["dir"] / "round_0" / rel) for r in (disturbed, undisturbed))
        assert ours.num_rows == usable, rel  # every usable prompt exactly once
        assert ours.equals(theirs), f"{rel} differs from the undisturbed run's"
    assert set(manifest["rounds"]) == {"0"}
    # the fit was redone on the surviving and replacement nodes: the same π_1 as the undisturbed run's
    ranks = json.loads((disturbed["dir"] / "round_0" / "model" / "train_ranks.json").read_text())
    assert disturbed["lost_in_fit"] not in {r["node_id"] for r in ranks}
    theirs = json.loads((undisturbed["dir"] / "manifest.json").read_text())["stages"]["round_0/train"]["outputs"]
    assert manifest["stages"]["round_0/train"]["outputs"] == theirs
