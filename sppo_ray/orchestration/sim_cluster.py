"""A multi-node Ray cluster on one machine: Ray's own ``ray.cluster_utils.Cluster``, GPUs declared as logical
resources. `sppo-ray rehearse --nodes N` runs on it, and so do the multi-node tests (one shared fixture that
reshapes it, and removes or adds nodes as a lost and replaced pod would)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["SimulatedCluster", "simulated_cluster"]


class SimulatedCluster:
    """A head that runs nothing (no CPUs, as a KubeRay head with ``num-cpus: 0``) and worker nodes that each
    declare ``gpus_per_node`` logical GPUs and ``cpus_per_node`` logical CPUs; compute happens on this machine's
    cores. The driver connects through :attr:`address` (``RAY_ADDRESS``)."""

    def __init__(self, object_store_gib: float = 0.5) -> None:
        from ray._private.authentication.authentication_token_setup import (enable_token_auth_by_default,
                                                                           ensure_token_if_auth_enabled)
        from ray.cluster_utils import Cluster

        # The auth mode is pinned before the head starts, as ray.init() pins it for a local cluster (token auth,
        # unless RAY_AUTH_MODE says otherwise). Cluster does not: its head would start without auth, and a node
        # added after any ray.init() in this process (which sets RAY_AUTH_MODE=token here) would refuse the head's
        # lease requests ("Missing authorization header"), leaving every actor pending creation.
        enable_token_auth_by_default()
        ensure_token_if_auth_enabled()
        self.store = int(object_store_gib * 2**30)
        head = {"num_cpus": 0, "num_gpus": 0, "object_store_memory": self.store,
                "include_dashboard": True, "dashboard_port": _free_port()}  # 8265 may be another cluster's
        self.cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
        self.workers: list[Any] = []

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, gpus: int, cpus: float) -> Any:
        node = self.cluster.add_node(num_cpus=cpus, num_gpus=gpus, object_store_memory=self.store)
        self.workers.append(node)
        self.cluster.wait_for_nodes()
        return node

    @property
    def dashboard_url(self) -> str:
        """The head's dashboard (Ray's state API: ``ray.util.state.list_actors(address=...)``) without connecting."""
        url = self.cluster.head_node.webui_url
        if not url:
            raise RuntimeError("the simulated cluster's head has no dashboard")
        return url if url.startswith("http") else f"http://{url}"

    def worker(self, node_id: str) -> Any:
        """The worker node of a Ray node id (as ``ray.get_runtime_context().get_node_id()`` names it)."""
        found = [n for n in self.workers if n.node_id == node_id]
        if not found:
            raise KeyError(f"no worker node {node_id} (the head runs no role)")
        return found[0]

    def remove_node(self, node: Any, graceful: bool = False) -> None:
        """Take a worker node away; ``graceful`` False kills its raylet and workers, as a lost pod."""
        self.cluster.remove_node(node, allow_graceful=graceful)
        self.workers.remove(node)

    def shape(self, nodes: int, gpus_per_node: int, cpus_per_node: float) -> "SimulatedCluster":
        """Replace the worker nodes by ``nodes`` new ones of this shape (the head and its GCS stay)."""
        for node in list(self.workers):
            self.remove_node(node, graceful=True)
        for _ in range(nodes):
            self.add_node(gpus_per_node, cpus_per_node)
        return self

    def shutdown(self) -> None:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            ray.shutdown()  # a driver connected to the head would refuse its removal
        self.cluster.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def simulated_cluster(nodes: int, gpus_per_node: int, cpus_per_node: float) -> Iterator[str]:
    """A :class:`SimulatedCluster` of ``nodes`` worker nodes for the duration of the block; yields its address."""
    cluster = SimulatedCluster()
    try:
        cluster.shape(nodes, gpus_per_node, cpus_per_node)
        yield cluster.address
    finally:
        cluster.shutdown()
