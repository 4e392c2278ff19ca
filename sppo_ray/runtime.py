"""What every role's process needs to know about where it runs and how loud to be (no role, no orchestration).

Roles (generation, judging, training) and the orchestration both import this module; it imports neither.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["VERBOSE_ENV", "engine_log_env", "verbose", "where_am_i"]

VERBOSE_ENV = "SPPO_RAY_VERBOSE"


def verbose() -> bool:
    """``sppo-ray ... --verbose`` (or SPPO_RAY_VERBOSE=1): other libraries' full output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def engine_log_env() -> dict[str, str]:
    """Environment for an engine's actor process: vLLM's log level."""
    return {"VLLM_LOGGING_LEVEL": "INFO" if verbose() else "WARNING"}


def gpu_uuid() -> str | None:
    """UUID of the CUDA device this process computes on (``torch.cuda.current_device()``), None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def where_am_i() -> dict[str, Any]:
    """Inside a Ray worker: its node, placement group, bundle indices, Ray's GPU ids and the CUDA device's UUID.

    The bundle is read from the resource ids Ray assigned the worker (a bundle's resources are named
    ``CPU_group_<bundle>_<group id>``), a diagnostic through Ray's core worker; empty if that is unavailable.
    ``gpu_ids`` are Ray's ids of the worker's GPUs (logical ones on CPU nodes that declare GPUs), which is also what
    Ray writes into CUDA_VISIBLE_DEVICES; ``gpu_uuid`` is the physical device (None without CUDA).
    """
    import ray

    ctx = ray.get_runtime_context()
    try:
        names = list(ray._private.worker.global_worker.core_worker.resource_ids())
    except Exception:  # noqa: BLE001 - only a report: leave the bundle unknown
        names = []
    bundles = sorted({int(parts[2]) for parts in (n.split("_") for n in names)
                      if len(parts) > 3 and parts[1] == "group" and parts[2].isdigit()})
    return {"node_id": ctx.get_node_id(), "placement_group_id": ctx.get_placement_group_id(), "bundles": bundles,
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "gpu_uuid": gpu_uuid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
