"""Shared, expensive fixtures: one Ray cluster and one model cache per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_policy() -> Path:
    """The embedded SmolLM2 as an HF directory in the shared cache (converted once per machine)."""
    from sppo_ray.models import prepare_embedded

    return prepare_embedded()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole session; CLI subprocesses join it through RAY_ADDRESS.

    Logical CPUs exceed the 2 cores on purpose: roles time-share the cores (see README, "CPUs on one machine").
    """
    import ray

    ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def cli_env(ray_cluster) -> dict[str, str]:
    """Environment for `sppo-ray` subprocesses: same cache, same Ray cluster."""
    env = dict(os.environ)
    env["RAY_ADDRESS"] = ray_cluster
    env.setdefault("SPPO_RAY_CACHE", str(Path.home() / ".cache" / "sppo_ray"))
    return env


@pytest.fixture(scope="session")
def multinode():
    """One multi-node Ray cluster on this machine for the whole session (sppo_ray/orchestration/sim_cluster.py):
    a head without CPUs and worker nodes declaring logical GPUs. Tests reshape it (``multinode.shape(2, 2, 15)``)
    and drive the CLI against it through RAY_ADDRESS; nothing in this process connects to it."""
    from sppo_ray.orchestration.sim_cluster import SimulatedCluster

    cluster = SimulatedCluster()
    yield cluster
    cluster.shutdown()


@pytest.fixture(scope="session")
def multinode_env(multinode) -> dict[str, str]:
    """Environment for `sppo-ray` subprocesses on the multi-node cluster."""
    env = dict(os.environ)
    env["RAY_ADDRESS"] = multinode.address
    env.setdefault("SPPO_RAY_CACHE", str(Path.home() / ".cache" / "sppo_ray"))
    return env
