"""``call_every``: the one retry loop the driver's calls to every role go through (the colocated residency calls,
the broadcast's version check, a restart): an actor Ray restarts is called again once it is back; one that stays
gone ends the wait with the message naming resources.node_wait_s; one dead for good raises at once."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from sppo_ray.actor_pool import ActorsLost, call_every, warm_up_streaming

pytestmark = pytest.mark.integration


def _counters(ray_cluster, restarts: int) -> list:
    class Counter:  # defined here: cloudpickle ships it by value (the workers cannot import a test module)
        def __init__(self, start: int) -> None:
            self.value = start

        def bump(self, by: int) -> dict:
            self.value += by
            return {"value": self.value, "pid": os.getpid()}

        def pid(self) -> int:
            return os.getpid()

    return [ray.remote(Counter).options(num_cpus=0, max_restarts=restarts).remote(10 * i) for i in range(3)]


def test_a_restarted_actor_is_called_again_and_results_keep_their_order(ray_cluster):
    actors = _counters(ray_cluster, restarts=1)
    pids = ray.get([a.pid.remote() for a in actors])
    os.kill(pids[1], signal.SIGKILL)  # as a lost process: Ray restarts it (its state starts again)
    out = call_every(actors, "bump", (1,), wait_s=60, every_s=0.5)
    assert [o["value"] for o in out] == [1, 11, 21]
    assert out[1]["pid"] != pids[1] and [o["pid"] for o in out][::2] == pids[::2]


def test_an_actor_that_stays_gone_ends_the_wait_naming_it(ray_cluster):
    actors = _counters(ray_cluster, restarts=0)
    ray.kill(actors[2])
    started = time.monotonic()
    with pytest.raises(ActorsLost) as lost:
        call_every(actors, "bump", (1,), wait_s=3, every_s=0.5)
    assert time.monotonic() - started < 30
    assert str(lost.value).startswith("bump: no actor answered for 3 s (resources.node_wait_s)")
    assert "1 actors" in str(lost.value) and "sppo-ray resume" in str(lost.value)
    # where a dead actor cannot come back (the broadcast's version check), it raises at once
    with pytest.raises(ray.exceptions.RayActorError):
        call_every(actors, "bump", (1,), wait_s=600, retry_on=(ray.exceptions.ActorUnavailableError,))


def test_a_batch_run_twice_keeps_one_copy_of_its_records(ray_cluster):
    """Ray re-runs a forwarding task whose output was lost with its node; the batch's records (rejects, pairs
    judged) must then replace its first run's, not be added to them."""
    from sppo_ray.actor_pool import _broker_for, shutdown_pool

    actors = _counters(ray_cluster, restarts=0)
    broker = _broker_for(actors)
    try:
        ray.get(broker.add.remote("x", "p0", [{"pairs": 20}, {"pairs": 20}]))
        ray.get(broker.add.remote("x", "p3", [{"pairs": 20}]))
        ray.get(broker.add.remote("x", "p0", [{"pairs": 20}, {"pairs": 20}]))  # p0's batch again
        ray.get(broker.add.remote("y", "p0", [{"pairs": 1}]))  # another execution of the pool
        assert sum(r["pairs"] for r in ray.get(broker.collect.remote("x"))) == 60
        assert ray.get(broker.collect.remote("x")) == []  # collected once
        assert ray.get(broker.collect.remote("y")) == [{"pairs": 1}]
    finally:
        shutdown_pool(actors)


def test_the_streaming_warm_up_runs_the_forwarding_path_without_an_actor(ray_cluster):
    # Session.start runs it in a thread while the engines load, and a failure there is only logged: here it must
    # run through (Ray Data's executor started, forwarding-width tasks on the driver's node done), and warn nothing:
    # a deprecation warning printed by Ray Data lands in the middle of the stage's progress line
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warm_up_streaming(2) > 0
    assert not [w for w in caught if issubclass(w.category, RayDeprecationWarning)], [str(w.message) for w in caught]
