"""What every node of the cluster offers a role's process: CUDA (and the driver it runs on), and the run directory.

A task pinned to each node (node affinity, no CPUs or GPUs reserved, so it sees the node's GPUs as an unrestricted
role process would) reports them. `sppo-ray run` refuses a GPU config whose GPU nodes cannot run CUDA before any
role starts; `sppo-ray rehearse` records the same probe as checks.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["check_cuda", "cuda_version_code", "probe_nodes"]


def _node_probe(token_path: str | None, token: str) -> dict[str, Any]:
    """Runs on one node: what CUDA it has (as a role's process sees it) and whether it reads the run directory."""
    import ray
    import torch

    info: dict[str, Any] = {"node_id": ray.get_runtime_context().get_node_id(), "cuda": torch.cuda.is_available(),
                            "torch_cuda": torch.version.cuda, "devices": 0, "driver_api": None, "uuids": []}
    if info["cuda"]:
        info["devices"] = torch.cuda.device_count()
        info["driver_api"] = int(torch._C._cuda_getDriverVersion())  # the CUDA version the driver supports, x1000
        info["uuids"] = [str(torch.cuda.get_device_properties(i).uuid) for i in range(info["devices"])]
    if token_path is not None:
        try:
            info["reads_run_dir"] = Path(token_path).read_text() == token
        except OSError as err:
            info["reads_run_dir"], info["run_dir_error"] = False, str(err)
    return info


def probe_nodes(token_file: Path | None = None) -> list[dict[str, Any]]:
    """:func:`_node_probe` on every alive node with CPUs, with Ray's GPU count of the node (``ray_gpus``). With
    ``token_file`` (in the run directory), the driver writes it first and each node reports whether it reads it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = f"probe {time.time()}"
    if token_file is not None:
        token_file.write_text(token)
    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0)(_node_probe)
    infos = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                     .remote(str(token_file) if token_file else None, token) for n in nodes])
    for info, node in zip(infos, nodes):
        info["ray_gpus"] = node["Resources"].get("GPU", 0.0)
    return infos


def cuda_version_code(text: str | None) -> int:
    """"13.0" -> 13000, the form the CUDA driver API reports its version in."""
    major, _, minor = (text or "0.0").partition(".")
    return int(major) * 1000 + int(minor or 0) * 10


def check_cuda(config) -> None:
    """A config that computes on GPUs: every GPU node must run CUDA with the driver the pinned torch needs.

    Without this a node whose driver is too old makes ``torch.cuda.is_available()`` False in every actor, and the
    roles quietly take their CPU paths. Nothing to check without GPUs, or with ``resources.logical_gpus``.

    Raises:
        PlanError: naming the node, what it lacks and the driver to install.
    """
    from sppo_ray.planning import PlanError

    r = config.resources
    if r.logical_gpus or not (r.train_use_gpu or r.generator_gpus or r.judge_gpus):
        return
    for n in probe_nodes():
        if n["ray_gpus"] <= 0:
            continue
        need = n["torch_cuda"] or "13.0"
        if not n["cuda"] or (n["driver_api"] or 0) < cuda_version_code(need):
            have = f"its driver supports CUDA {n['driver_api'] / 1000:g}" if n["driver_api"] else "CUDA is not usable"
            raise PlanError(
                f"resources: the config computes on GPUs, but on node {n['node_id'][:8]} (which declares "
                f"{n['ray_gpus']:g} GPUs) {have} in a role's process; the pinned torch is built for CUDA {need} "
                f"(torch {'CPU-only' if n['torch_cuda'] is None else 'CUDA'} build here), which needs an NVIDIA "
                "driver of the R580 line or newer for CUDA 13. Install it (and the GPU extra), or, on CPU nodes "
                "that only declare GPUs, set resources.logical_gpus: true (what `sppo-ray rehearse` does)")
