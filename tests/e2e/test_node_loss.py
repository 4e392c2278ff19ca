"""A lost node costs only the work in flight on it (issue 23), shown on the shared multi-node cluster: the node
that hosts the generator is removed mid-generation (its raylet and workers killed, as a lost pod) and a replacement
joins, as KubeRay replaces a pod; then, the same, a node of a train worker mid-fit. Round 0 finishes with the data
and π_1 of the shared e2e run (the same job and seeds, undisturbed, on the session's one-node cluster). A judging
stage loses its judge's node the same way, and the colocated layout loses a node of its bundles, first with no
replacement (the stage stops after resources.node_wait_s, saying so), then with one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from e2e_helpers import CLI, REPO, write_config

pytestmark = pytest.mark.e2e

NODES, CPUS = 2, 3  # generator, judge and 2 train workers (1 CPU each) need more than one node's 3 CPUs


def _stages(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "manifest.json").read_text())["stages"]
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _wait(what, proc: subprocess.Popen, log: Path, every: float = 0.2):
    while proc.poll() is None:
        if found := what():
            return found
        time.sleep(every)
    raise AssertionError(f"the run ended first: {log.read_text()[-3000:]}")


def _alive(multinode, cls: str, count: int) -> list[dict] | None:
    """The live actors of a class on the cluster (Ray's state API through the head's dashboard), once ``count``."""
    from ray.util.state import list_actors

    found = list_actors(address=multinode.dashboard_url, filters=[("class_name", "=", cls), ("state", "=", "ALIVE")])
    return [a if isinstance(a, dict) else a.__dict__ for a in found] if len(found) >= count else None


def test_nodes_lost_mid_generation_and_mid_training_lose_nothing(multinode, multinode_env, bad_prompts, tiny_run,
                                                                  tmp_path):
    multinode.shape(NODES, 0, CPUS)
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    config = write_config(tmp_path / "job.yaml", run_dir, bad_prompts)  # the shared e2e run's job
    with log.open("w") as out:  # a file, not a pipe: an unread pipe fills up and blocks the run
        proc = subprocess.Popen([*CLI, "run", str(config)], env=multinode_env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        placement = run_dir / "placement.json"  # written as the roles start, before round 0 generates
        lost = _wait(lambda: placement.exists() and json.loads(placement.read_text())["generators"][0]["node_id"],
                     proc, log)
        generated_before = (run_dir / "round_0" / "responses.parquet").exists()
        multinode.remove_node(multinode.worker(lost), graceful=False)
        multinode.add_node(0, CPUS)
        assert not generated_before, "the generation had finished before the node was lost"
        # then a node of a train worker, once the fit is under way
        _wait(lambda: "round_0/dataset" in _stages(run_dir), proc, log, every=0.5)
        workers = _wait(lambda: _alive(multinode, "RayTrainWorker", 2), proc, log, every=0.5)
        time.sleep(10)  # DeepSpeed is setting up or stepping
        lost_in_fit = workers[0]["node_id"]
        assert "round_0/train" not in _stages(run_dir), "the fit had finished before the node was lost"
        multinode.remove_node(multinode.worker(lost_in_fit), graceful=False)
        multinode.add_node(0, CPUS)
        _wait(lambda: "round_0/train" in _stages(run_dir), proc, log, every=0.5)
        # where the generator runs now (the driver is killed below, before it would rewrite placement.json)
        now = _wait(lambda: _alive(multinode, "GeneratorActor", 1), proc, log)[0]["node_id"]
    finally:  # round 0 is what the test compares: the driver is not needed beyond it
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert now != lost  # the generator was restarted on a surviving or the replacement node
    generated = manifest["stages"]["round_0/generate"]
    usable = generated["prompts"] - generated["rejected"]  # the prompt set has an over-long prompt and bad rows
    reference = tiny_run["dir"]
    for rel in ("responses.parquet", "tables.parquet", "train.parquet"):
        ours, theirs = (pq.read_table(d / "round_0" / rel) for d in (run_dir, reference))
        assert ours.num_rows == usable if rel != "train.parquet" else ours.num_rows > 0, rel  # each prompt once
        assert ours.equals(theirs), f"{rel} differs from the undisturbed run's"
    # the fit was redone on the surviving and replacement nodes: the same π_1 as the undisturbed run's
    ranks = json.loads((run_dir / "round_0" / "model" / "train_ranks.json").read_text())
    assert lost_in_fit not in {r["node_id"] for r in ranks}
    theirs = json.loads((reference / "manifest.json").read_text())["stages"]["round_0/train"]["outputs"]
    assert manifest["stages"]["round_0/train"]["outputs"] == theirs


def test_a_lost_nodes_colocated_bundles_come_back_on_a_replacement_node(multinode, multinode_env):
    """Colocated layout, 2 nodes of 1 logical GPU: a node lost with no replacement stops the round's residency
    calls after resources.node_wait_s with the message that says so; once a replacement node joins, Ray re-reserves
    the lost node's bundle there and restarts its role, and the same calls go through."""
    multinode.shape(2, 1, 3)
    proc, report = _driver("colocated", multinode_env)
    try:
        placed = report()
        assert placed["groups"] == 2 and len(set(placed["nodes"])) == 2  # a STRICT_PACK group on each node
        lost = placed["nodes"][1]
        multinode.remove_node(multinode.worker(lost), graceful=False)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        stopped = report()
        assert stopped["waiting"] == [1]  # the lost node's bundle, and only it
        assert stopped["error"] and "no actor answered for 20 s (resources.node_wait_s)" in stopped["error"]
        assert "sppo-ray resume" in stopped["error"]
        replacement = multinode.add_node(1, 3)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        replaced = report()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert replaced["waiting"] == []
    assert replaced["nodes"] == [placed["nodes"][0], replacement.node_id]  # the survivor stayed where it was


def _driver(mode: str, env: dict[str, str]):
    """node_loss_driver.py in ``mode`` on the cluster, and a function reading its next report."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "node_loss_driver.py"), mode], env=env,
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def report() -> dict:
        while line := proc.stdout.readline():
            if line.startswith("{"):  # Ray may still print a line of its own (a raylet's death)
                return json.loads(line)
        raise AssertionError(f"the driver ended (exit {proc.wait(timeout=60)})")

    return proc, report


def test_a_node_lost_mid_judging_costs_only_its_calls_in_flight(multinode, multinode_env):
    """The judge's node is removed while a 1,500-prompt judging stage runs and a replacement joins: the judge
    restarts elsewhere, its batches are retried, and the stage's table equals the undisturbed one's."""
    multinode.shape(2, 0, 2)
    proc, report = _driver("judging", multinode_env)
    try:
        lost = report()["node"]
        multinode.remove_node(multinode.worker(lost), graceful=False)
        multinode.add_node(0, 2)
        judged = report()
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert judged["equal"] and judged["rows"] == 1500 and judged["pairs"] == 1500 * 20
    assert judged["now"] != lost
    print(f"judging undisturbed / disturbed: {judged['seconds'][0]:.1f} / {judged['seconds'][1]:.1f} s")


@pytest.mark.slow  # ~4 min (two colocated runs on tiny models): `make test-slow`
def test_a_colocated_round_that_loses_a_node_mid_generation_ends_as_an_undisturbed_one(multinode, multinode_env,
                                                                                       tmp_path):
    """The paper's Mistral config in miniature (colocated, 2 nodes x 1 logical GPU, tiny models of its
    architectures): the node of generator 1's bundle is removed mid-generation and a replacement joins. Ray
    re-reserves that node's placement group on the replacement and restarts its generator and judge there; the
    round finishes with the responses, tables, training set and π_1 of an undisturbed run of the same job."""
    import yaml

    from sppo_ray.config import load_config
    from sppo_ray.orchestration.rehearse import rehearsal_config, tiny_models

    cpus = 8  # a bundle's generator (2) and judge (1) CPUs, a train worker's 4, one for Ray Data's tasks
    multinode.shape(2, 1, cpus)
    paper = load_config(str(REPO / "jobs" / "paper-mistral-7b.yaml"), [])
    policy, judge = tiny_models(paper, tmp_path / "tiny_models")

    def job(name: str) -> tuple[Path, Path]:
        data = rehearsal_config(paper, 2, False, tmp_path / name, policy, judge)
        data.update(iterations=1, eval_at_end=False)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path, tmp_path / name

    config, reference = job("undisturbed")
    undisturbed = subprocess.run([*CLI, "run", str(config)], env=multinode_env, cwd=REPO, capture_output=True,
                                 text=True, timeout=1200)
    assert undisturbed.returncode == 0, undisturbed.stderr[-3000:]
    config, run_dir = job("disturbed")
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*CLI, "run", str(config)], env=multinode_env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        placement = run_dir / "placement.json"  # written as the roles start, before round 0 generates
        nodes = _wait(lambda: placement.exists() and [g["node_id"] for g in
                                                      json.loads(placement.read_text())["generators"]], proc, log)
        assert len(set(nodes)) == 2, nodes  # one bundle on each node
        generated_before = (run_dir / "round_0" / "responses.parquet").exists()
        started = time.monotonic()
        multinode.remove_node(multinode.worker(nodes[1]), graceful=False)
        replacement = multinode.add_node(1, cpus)
        assert not generated_before, "the generation had finished before the node was lost"
        assert proc.wait(timeout=1200) == 0, log.read_text()[-3000:]
    finally:
        proc.kill()
    print(f"disturbed run: {time.monotonic() - started:.1f} s from the node's loss to its exit")
    for rel in ("responses.parquet", "tables.parquet", "train.parquet"):
        ours, theirs = (pq.read_table(d / "round_0" / rel) for d in (run_dir, reference))
        assert ours.num_rows > 0 and ours.equals(theirs), f"{rel} differs from the undisturbed run's"
    manifest, theirs = (json.loads((d / "manifest.json").read_text()) for d in (run_dir, reference))
    assert manifest["stages"]["round_0/train"]["outputs"] == theirs["stages"]["round_0/train"]["outputs"]
    coloc = json.loads((run_dir / "colocation.json").read_text())  # as the driver left it
    assert [b["node_id"] for b in coloc["bundles"]] == [nodes[0], replacement.node_id]  # bundle 1 re-reserved
    assert [g["node_id"] for g in coloc["generators"]] == [nodes[0], replacement.node_id]
    assert [j["node_id"] for j in coloc["judges"]] == [nodes[0], replacement.node_id]  # judge 1 restarted beside it
    assert not coloc["waiting_bundles"]
    ranks = json.loads((run_dir / "round_0" / "model" / "train_ranks.json").read_text())
    assert {r["node_id"] for r in ranks} == {nodes[0], replacement.node_id}  # the fit on the survivor and replacement
