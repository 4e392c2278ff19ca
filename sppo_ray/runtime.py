"""What every role's process needs to know about where it runs and how loud to be (no role, no orchestration).

Roles (generation, judging, training) and the orchestration both import this module; it imports neither.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LOG_DIR_ENV", "VERBOSE_ENV", "bound_heap", "log_role_output", "process_rss", "role_env", "set_role_log_dir",
           "trim_heap", "verbose", "where_am_i"]

VERBOSE_ENV = "SPPO_RAY_VERBOSE"
# In a role's environment: RUN_DIR/logs, where the role's process writes its output (see log_role_output).
LOG_DIR_ENV = "SPPO_RAY_LOG_DIR"
# The driver's run log dir, handed to the roles it starts through role_env() (never its own environment: the
# driver's own output stays on its terminal).
_role_log_dir: str | None = None


def trim_heap() -> None:
    """Hand the pages this process's C heap has freed back to the OS (glibc's ``malloc_trim``; elsewhere, such as
    macOS or musl, nothing is done). glibc keeps what a burst of allocations freed, so a process's RSS keeps each
    stage's high-water mark (BENCHMARKS.md "Scale")."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
HEAP_BOUNDS = {"arenas": 2, "mmap_threshold": 128 * 1024, "trim_threshold": 128 * 1024}


def bound_heap() -> bool:
    """Keep what this process frees from staying resident (glibc; elsewhere nothing is done, and False returned).

    Three glibc settings, each a cause of a driver whose RSS kept what a stage had freed: large blocks (over 128
    KiB) get pages of their own that go back when freed (glibc otherwise raises that threshold to the largest block
    freed so far, up to 32 MiB, and later blocks of that size are carved from the heap, where a small live neighbour
    pins them); the heap's top is trimmed past 128 KiB free (that threshold otherwise rises with it); and at most
    two arenas (glibc otherwise gives up to 8 per core to the threads that allocate at once, Ray's client threads
    among them, and freed memory stays in each). Call it before the process starts threads. The driver's own work at
    the paper's round shape then grows it by half as much, and takes 2-3x the seconds, most of them the kernel's
    page faults, a few seconds a round (BENCHMARKS.md "Scale")."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_ARENA_MAX, HEAP_BOUNDS["arenas"]), (_M_MMAP_THRESHOLD, HEAP_BOUNDS["mmap_threshold"]),
        (_M_TRIM_THRESHOLD, HEAP_BOUNDS["trim_threshold"])))


def process_rss() -> int:
    """This process's resident bytes (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def set_role_log_dir(path: str | None) -> None:
    """The driver names RUN_DIR/logs for the roles it starts from now on."""
    global _role_log_dir
    _role_log_dir = path


def verbose() -> bool:
    """``sppo-ray ... --verbose`` (or SPPO_RAY_VERBOSE=1): other libraries' full output."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def role_env() -> dict[str, str]:
    """Environment a role's process gets from the driver: vLLM's log level, ``--verbose``, the run's log dir."""
    env = {"VLLM_LOGGING_LEVEL": "INFO" if verbose() else "WARNING"}
    if verbose():
        env[VERBOSE_ENV] = "1"
    if _role_log_dir:
        env[LOG_DIR_ENV] = _role_log_dir
    return env


def log_role_output(name: str) -> str | None:
    """From here on this process's stdout and stderr (its libraries' too: vLLM, DeepSpeed, transformers, Ray Train)
    go to ``LOG_DIR/<name>.log``, appended (a restarted actor adds to its log), when the driver named a log dir and
    ``--verbose`` is off. Returns the path, or None when the output stays where Ray sends it."""
    log_dir = os.environ.get(LOG_DIR_ENV)
    if not log_dir or verbose():
        return None
    path = Path(log_dir) / f"{name}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # an unwritable log dir must not stop a role: its output stays in Ray's logs
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    # straight to the file, not through print (Ray Train patches print in its workers to log each line twice)
    os.write(1, f"=== {name}: pid {os.getpid()} on {socket.gethostname()}, {stamp}\n".encode())
    return str(path)


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
