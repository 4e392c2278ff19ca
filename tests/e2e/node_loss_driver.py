"""Drivers for test_node_loss.py on the shared multi-node cluster (RAY_ADDRESS). Each reports on stdout as JSON
lines, and the test removes and adds nodes between them (it never connects to the cluster itself).

``colocated``: the colocated layout's bundles, with a stand-in role actor per bundle answering the residency calls a
round makes (sleep, wake_up, offload, onload); it waits for a line on stdin between its phases.
``judging``: a judging stage of 1,500 prompts x K = 5 with the scripted length judge, once undisturbed and once
while the test takes the judge's node away."""

from __future__ import annotations

import json
import sys
import time

import ray

from sppo_ray.actor_pool import ActorsLost
from sppo_ray.config import JudgeConfig, ResourcesConfig
from sppo_ray.orchestration.colocation import Colocation, Residency


class Role:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def sleep(self) -> None: ...

    def wake_up(self, tags=None) -> None: ...

    def offload(self) -> None: ...

    def onload(self) -> None: ...


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


def colocated() -> None:
    res = ResourcesConfig(train_workers=2, generators=2, judges=2, generator_cpus=1, judge_cpus=1, generator_gpus=0.5,
                          judge_gpus=0.1, train_use_gpu=True, logical_gpus=True, node_wait_s=20)
    colocation = Colocation.create(res)
    roles = [ray.remote(Role).options(num_cpus=1, num_gpus=0.5, max_restarts=-1, **colocation.options(i)).remote()
             for i in range(2)]
    residency = Residency(roles[:1], roles[1:], wait_s=res.node_wait_s)
    say(phase="placed", nodes=ray.get([r.node.remote() for r in roles]), groups=len(colocation.groups))
    sys.stdin.readline()  # the test removed a node and added none
    deadline = time.monotonic() + 120
    while not colocation.waiting() and time.monotonic() < deadline:  # until Ray has marked the node dead (its
        time.sleep(0.5)  # actors answer direct calls until their processes see the raylet gone)
    try:
        residency.enter("judge")
        error = None
    except ActorsLost as err:
        error = str(err)
    say(phase="no node", waiting=colocation.waiting(), error=error)
    sys.stdin.readline()  # the test added a replacement node
    started = time.monotonic()
    residency.enter("train")  # waits (up to node_wait_s) for the bundle and its role to come back
    say(phase="replaced", waiting=colocation.waiting(), nodes=ray.get([r.node.remote() for r in roles]),
        seconds=time.monotonic() - started)


def judging() -> None:
    import pyarrow as pa

    from sppo_ray.generation.stage import GENERATION_SCHEMA
    from sppo_ray.judging.stage import build_judge_actors, run_judging_stage

    k, n = 5, 1500
    rows = [{"prompt_id": f"p{i}", "messages_json": json.dumps([{"role": "user", "content": f"q{i}"}]),
             "prompt_token_ids": [1], "responses": ["x" * ((i * 7 + j * 13) % 23 + 1) for j in range(k)],
             "response_token_ids": [[2]] * k, "num_tokens": [1] * k, "finish_reasons": ["stop"] * k,
             "policy_version": 0, "truncated": False} for i in range(n)]
    generated = pa.Table.from_pylist(rows, schema=GENERATION_SCHEMA)
    from sppo_ray.judging import stage

    stage.CALL_PROMPTS = 3  # a large stage would send 63 prompts a call; 3 a call (500 calls) keeps it long
    cfg = JudgeConfig(kind="length", batch_size=16)  # 3 prompts a call: 500 calls
    judges = build_judge_actors(None, cfg, ResourcesConfig(judges=1, judge_cpus=1))
    whole = run_judging_stage(generated, judges, cfg)
    lost = ray.get(judges[0].placement.remote())["node_id"]
    seen = []

    def first_block(block) -> None:
        if not seen:
            say(phase="judging", node=lost)  # the test takes this node away now
        seen.append(block.num_rows)

    disturbed = run_judging_stage(generated, judges, cfg, on_rows=first_block)
    say(phase="judged", equal=disturbed.table.equals(whole.table), rows=disturbed.table.num_rows,
        pairs=disturbed.pairs, lost=lost, now=ray.get(judges[0].placement.remote())["node_id"],
        seconds=[whole.seconds, disturbed.seconds])


if __name__ == "__main__":
    ray.init(log_to_driver=False)  # stdout carries the reports only
    {"colocated": colocated, "judging": judging}[sys.argv[1]]()
