"""The local Ray a run started itself: recorded in the run directory, and stopped if a killed driver left it behind.

A driver killed with SIGKILL cannot stop the local Ray it started; some of that cluster's processes (the dashboard
agent, the runtime-env agent) outlive it. ``sppo-ray run`` / ``resume`` record the processes of a local Ray they
start in ``RUN_DIR/local_ray.json``; the next ``run`` or ``resume`` of that run directory stops whichever of them
still run, once the driver that started them is gone. A process is identified by pid *and* start time, so a
recycled pid, a cluster joined through RAY_ADDRESS, or any other Ray is never touched.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil

__all__ = ["RECORD", "record_local_cluster", "stop_stale_local_cluster", "wait_until_gone"]

RECORD = "local_ray.json"


def _identity(proc: psutil.Process) -> dict[str, Any]:
    return {"pid": proc.pid, "create_time": proc.create_time(), "name": proc.name()}


def record_local_cluster(rd) -> None:
    """Record this driver and the processes of the local Ray it started (its descendants) in the run directory."""
    me = psutil.Process()
    processes = []
    for child in me.children(recursive=True):
        try:
            processes.append(_identity(child))
        except psutil.NoSuchProcess:
            continue
    rd.write_json(RECORD, {"driver": _identity(me), "processes": processes})


def _still_running(ident: dict[str, Any]) -> psutil.Process | None:
    """The process ``ident`` names, if the same one (same pid and start time) still runs."""
    try:
        proc = psutil.Process(ident["pid"])
        return proc if abs(proc.create_time() - ident["create_time"]) < 0.01 else None
    except psutil.NoSuchProcess:
        return None


def stop_stale_local_cluster(rd, *, grace_s: float = 5.0) -> list[int]:
    """Stop the recorded local Ray of a previous driver of this run directory that died; returns the pids stopped.

    Does nothing when there is no record, or when the recorded driver still runs (its cluster is in use).
    """
    if not rd.exists(RECORD):
        return []
    record = rd.read_json(RECORD)
    if _still_running(record["driver"]) is not None:
        return []
    stale = [p for p in map(_still_running, record["processes"]) if p is not None]
    for proc in stale:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(stale, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=grace_s)
    rd.fs.delete_file(rd.path(RECORD))
    if stale:
        print(f"stopped {len(stale)} process(es) of the local Ray a killed driver of this run left running: "
              + ", ".join(f"{p.pid}" for p in stale), flush=True)
    return [p.pid for p in stale]


def wait_until_gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    """True once none of ``pids`` exists (for tests and callers that must see the cluster gone)."""
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False
