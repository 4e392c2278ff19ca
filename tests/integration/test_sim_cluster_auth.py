"""The simulated multi-node cluster keeps one auth mode for all its nodes (sppo_ray/orchestration/sim_cluster.py).

Ray's ray.init() turns token auth on for its process when it starts a local cluster; ray.cluster_utils.Cluster
does not. Without the cluster pinning the mode at its start, a node added after some other local ray.init() in the
same process refused the head's requests and no actor could start on it: test_node_loss.py run on its own stalled
that way (its tiny run's ray.init came after the cluster's head). Run in a fresh interpreter, away from this one's
Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import os, subprocess, sys
    os.environ.pop("RAY_AUTH_MODE", None)
    from sppo_ray.orchestration.sim_cluster import SimulatedCluster
    cluster = SimulatedCluster()
    import ray
    ray.init(address="local", num_cpus=1, include_dashboard=False)  # another local cluster, as a fixture's
    ray.shutdown()
    cluster.add_node(0, 2)  # added after that ray.init() changed this process's RAY_AUTH_MODE
    driver = ("import ray; ray.init(); A = ray.remote(num_cpus=1)(type('A', (), {'ok': lambda self: 'ready'})); "
              "print(ray.get(A.remote().ok.remote(), timeout=90))")
    try:
        done = subprocess.run([sys.executable, "-c", driver], env={**os.environ, "RAY_ADDRESS": cluster.address},
                              capture_output=True, text=True, timeout=150)
        print("DRIVER", done.returncode, done.stdout.strip().splitlines()[-1:], done.stderr[-500:])
    finally:
        cluster.shutdown()
""")


def test_a_node_added_after_another_local_ray_init_still_runs_actors(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=280,
                         cwd=tmp_path)
    line = next((x for x in out.stdout.splitlines() if x.startswith("DRIVER")), out.stderr[-2000:])
    assert line.startswith("DRIVER 0 ['ready']"), line
