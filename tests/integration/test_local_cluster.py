"""A local Ray left running by a SIGKILLed driver is stopped by the next run of that run directory, and nothing
else is ever touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sppo_ray.orchestration.local_cluster import RECORD, stop_stale_local_cluster, wait_until_gone
from sppo_ray.orchestration.rundir import RunDir

pytestmark = pytest.mark.integration

_DRIVER = """
import sys, time
from sppo_ray.config import parse_config
from sppo_ray.orchestration.local_cluster import record_local_cluster
from sppo_ray.orchestration.rundir import RunDir
from sppo_ray.orchestration.session import init_ray
assert init_ray(parse_config({"resources": {"train_workers": 1, "local_num_cpus": 2}}))
time.sleep(3)  # let the node's agents come up, as Session.start does before the driver records
record_local_cluster(RunDir(sys.argv[1]))
print("READY", flush=True)
time.sleep(600)
"""


def test_killed_drivers_local_ray_is_stopped_by_the_next_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own, as `sppo-ray run`
    log = tmp_path / "driver.log"
    with open(log, "w") as err:
        driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                  stderr=err, text=True)
    assert driver.stdout.readline().strip() == "READY", log.read_text()[-3000:]
    rd = RunDir(str(tmp_path))
    recorded = [p["pid"] for p in rd.read_json(RECORD)["processes"]]
    assert len(recorded) >= 3  # gcs, raylet, dashboard and agents
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(2)
    left = [pid for pid in recorded if psutil.pid_exists(pid)]
    assert left, "nothing of the killed driver's local Ray outlived it"
    stopped = stop_stale_local_cluster(rd)
    assert set(left) <= set(stopped) | {pid for pid in left if not psutil.pid_exists(pid)}
    assert wait_until_gone(recorded)
    assert not rd.exists(RECORD)


def test_processes_not_started_by_the_run_are_never_touched(tmp_path):
    rd = RunDir(str(tmp_path))
    me = psutil.Process()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ident = {"pid": sleeper.pid, "create_time": psutil.Process(sleeper.pid).create_time(), "name": "sleep"}
        # the driver that recorded it still runs (this test process): its cluster is in use
        rd.write_json(RECORD, {"driver": {"pid": me.pid, "create_time": me.create_time(), "name": me.name()},
                               "processes": [ident]})
        assert stop_stale_local_cluster(rd) == [] and sleeper.poll() is None
        # the driver is gone, but the pid now belongs to another process (start time differs): a recycled pid
        dead = {"pid": 2**22 + 7, "create_time": 0.0, "name": "python"}
        rd.write_json(RECORD, {"driver": dead, "processes": [{**ident, "create_time": ident["create_time"] - 50}]})
        assert stop_stale_local_cluster(rd) == [] and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
