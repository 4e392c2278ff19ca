"""The live actors of a run (generators, judges) and the policy version they hold.

This is the only place that holds Ray handles to more than one role.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from safetensors.torch import load_file

from sppo_ray.actor_pool import NODE_WAIT_S, call_every, shutdown_pool, warm_up_streaming
from sppo_ray.config import RunConfig
from sppo_ray.contracts import PolicyWeights
from sppo_ray.generation.stage import CALLS_PER_GENERATOR, build_generator_actors, push_weights
from sppo_ray.judging.stage import build_judge_actors
from sppo_ray.orchestration.colocation import Colocation, Residency
from sppo_ray.orchestration.verbosity import configure_driver_output, verbose
from sppo_ray.training.trainer import load_fit_modules

__all__ = ["Session", "init_ray", "object_store_weights", "use_system_arrow_pool"]


def init_ray(config: RunConfig) -> bool:
    """Connect to the cluster of ``ray job submit`` (RAY_ADDRESS) or start a local Ray; True if it started one.

    On one machine the roles time-share the cores: only one stage is busy at a time, so Ray is given enough
    logical CPUs for every role's reservation (generators + judges + train workers) even on 2 cores.
    """
    configure_driver_output()
    use_system_arrow_pool()
    if ray.is_initialized():
        return False
    # the roles write their output to RUN_DIR/logs (runtime.log_role_output); --verbose forwards it here as well
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=verbose())
        return False
    r = config.resources
    need = r.generators * r.generator_cpus + r.judges * r.judge_cpus + r.train_workers * r.train_cpus_per_worker
    num_cpus = r.local_num_cpus or max(os.cpu_count() or 1, int(need + 1.999))
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,  # never a `ray start` cluster found here
             log_to_driver=verbose())
    return True


def use_system_arrow_pool() -> None:
    """Arrow's allocations in this (the driver's) process go to the system allocator, not Arrow's default pool
    (mimalloc on Linux). Freed pages of mimalloc's pool stayed resident even after its ``release_unused``: judging
    4,000 prompts grew the driver 6-8 MB with it and 0.1 MB with the system pool, and loading the round's responses
    23 MB against 7 (5.6 MB of Arrow). The system allocator's freed pages go back with the driver's ``malloc_trim``
    after each stage (BENCHMARKS.md "Scale"). The driver does little Arrow compute; the roles keep the default.
    This is pyarrow's default; Arrow's own C++ default (which Ray and Parquet code allocates from) is chosen by the
    CLI before pyarrow loads (``sppo_ray.cli``)."""
    pa.set_memory_pool(pa.system_memory_pool())


def _restart(actors: list[Any], wait_s: float) -> None:
    """Kill actors so that Ray restarts them (their ``max_restarts``), and wait until each is up again."""
    for actor in actors:
        ray.kill(actor, no_restart=False)
    call_every(actors, "ready", wait_s=wait_s)


def _warm_up_streaming_thread(width: int) -> threading.Thread:
    """Ray Data's start-up in the driver, in a thread while the actors load (``actor_pool.warm_up_streaming``),
    then the fit's modules (``training.trainer.load_fit_modules``)."""
    def warm() -> None:
        try:
            warm_up_streaming(width)
        except Exception as err:  # noqa: BLE001 - a head start only: the first stage then pays the start-up itself
            logging.getLogger(__name__).warning("Ray Data warm-up failed (%s: %s)", type(err).__name__, err)
        try:
            load_fit_modules()
        except ImportError as err:  # the first fit raises it again, after generation and judging: say so now
            logging.getLogger(__name__).warning("Ray Train cannot be imported, training will fail: %s", err)

    thread = threading.Thread(target=warm, name="sppo-ray-data-warm-up", daemon=True)
    thread.start()
    return thread


def object_store_weights(model_dir: Path, version: int) -> PolicyWeights:
    """A model directory's whole state dict as one Ray object owned by the caller.

    The caller holds the entire model while it puts it: benchmarks use this as the "before" of the driver-free
    broadcast (``generation.weights.policy_weights``), which the run itself uses.
    """
    state = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return PolicyWeights(version, ray.put(state))


@dataclass
class Session:
    generator_actors: list[Any]
    judge_actors: list[Any]
    base_policy: Path
    # Policy version every generator holds now (restarted actors are brought up to date by the stage itself).
    generator_version: int = 0
    weights: PolicyWeights = field(default_factory=lambda: PolicyWeights(0))
    startup_seconds: float = 0.0
    # Colocated layout: the placement group and the roles' residency per stage (None: disaggregated).
    colocation: Colocation | None = None
    residency: Residency | None = None
    # How each round's broadcast reached the generators: "trainer" (handed over by the train workers) or
    # "files"/"object store".
    broadcasts: list[str] = field(default_factory=list)
    # How long a call waits for a role that Ray is restarting (``resources.node_wait_s``).
    wait_s: float = NODE_WAIT_S

    @classmethod
    def start(cls, config: RunConfig, policy_path: Path, judge_path: Path | None) -> "Session":
        started = time.perf_counter()
        res = config.resources
        warming = _warm_up_streaming_thread(res.generators * CALLS_PER_GENERATOR)
        colocation = Colocation.create(res) if res.placement == "colocated" else None
        generation = config.generation.model_copy(update={"gpu_memory_utilization": config.engine_memory_utilization})
        generators = build_generator_actors(str(policy_path), generation, res, colocation,
                                            weight_transfer=config.weight_transfer)
        if colocation is not None:  # engines sleep before the judges load onto the same GPUs (as OpenRLHF orders it)
            ray.get([g.sleep.remote() for g in generators])
        judges = build_judge_actors(str(judge_path) if judge_path else None, config.judge, res, colocation)
        weights = PolicyWeights(0, path=str(policy_path))
        residency = Residency(generators, judges, wait_s=res.node_wait_s) if colocation else None
        warming.join(timeout=120)  # a head start only: never what a run waits on
        session = cls(generators, judges, policy_path, 0, weights, time.perf_counter() - started, colocation, residency,
                      wait_s=res.node_wait_s)
        session.enter("generate")
        return session

    def enter(self, stage: str) -> None:
        """Colocated layout: release the GPU memory of the roles idle in ``stage`` (generate, judge, train,
        broadcast) and bring back the active ones. Nothing to do when each role has its own devices."""
        if self.residency is not None:
            self.residency.enter(stage)

    def broadcast(self, weights: PolicyWeights, after_transfer: bool = False, record: bool = True) -> float:
        """Bring every generator to a policy version in place; returns the wall seconds.

        Generators that already hold it (handed over by the train workers at the end of the fit, see
        training/weight_transfer.py) are left alone; otherwise it is loaded from its directory or object.
        ``after_transfer``: the fit just tried to hand it over; a generator without it may be stuck in the failed
        transfer (blocked in a receive, weights half replaced), so it is restarted before the load. ``record``:
        note how it arrived in ``broadcasts`` (the rounds' broadcasts; not a resume's or an evaluation's loads).
        """
        started = time.perf_counter()
        self.enter("broadcast")
        # a restarted generator holds π_0: it is loaded below
        held = [r["version"] for r in call_every(self.generator_actors, "ready", wait_s=self.wait_s,
                                                 retry_on=(ray.exceptions.ActorUnavailableError,))]
        if all(v == weights.version for v in held):
            via = "trainer"
        else:
            if after_transfer:
                _restart([a for a, v in zip(self.generator_actors, held) if v != weights.version], self.wait_s)
            push_weights(self.generator_actors, weights)
            via = "files" if weights.path is not None else "object store"
        if record:
            self.broadcasts.append(via)
        self.weights, self.generator_version = weights, weights.version
        return time.perf_counter() - started

    def colocation_report(self) -> dict[str, Any] | None:
        """Colocated layout: where each role's actors run (placement group and bundle, from the resources Ray
        assigned them), the stage transitions made, and each actor's sleep/offload calls (None when disaggregated)."""
        if self.colocation is None:
            return None
        try:
            return self._colocation_report()
        except Exception as err:  # noqa: BLE001 - a failed run's dead actors must not hide the run's own error
            return {"error": f"{type(err).__name__}: {err}"}

    def _colocation_report(self) -> dict[str, Any]:
        bundles = self.colocation.table()
        return {
            "placement_groups": sorted({b["placement_group_id"] for b in bundles}),
            "strategy": sorted({b["strategy"] for b in bundles}),
            "bundles": bundles,
            "waiting_bundles": self.colocation.waiting(),  # their node lost, none with room for them joined yet
            **self.placement_report(),  # generators and judges
            "stages": list(self.residency.log),
            "generator_sleep": ray.get([a.sleep_events.remote() for a in self.generator_actors]),
            "judge_residency": ray.get([a.residency_events.remote() for a in self.judge_actors]),
            "broadcasts": list(self.broadcasts),
        }

    def placement_report(self) -> dict[str, Any]:
        """Where every generator and judge runs: node, placement group, bundles, Ray's GPU ids, CUDA device UUID."""
        try:
            return {"generators": ray.get([a.placement.remote() for a in self.generator_actors]),
                    "judges": ray.get([a.placement.remote() for a in self.judge_actors])}
        except Exception as err:  # noqa: BLE001 - a failed run's dead actors must not hide the run's own error
            return {"error": f"{type(err).__name__}: {err}"}

    def release_generator_memory(self, timeout_s: float = 10.0) -> list[dict[str, int]]:
        """Each generator hands the host memory its engine freed back to the OS (after a generation stage); their
        resident bytes before and after. Best effort: a generator that has not answered within ``timeout_s`` (its
        node lost, say) is left out, and the next stage finds out about it."""
        refs = [a.release_memory.remote() for a in self.generator_actors]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=timeout_s)[0])
        released = []
        for ref in (r for r in refs if r in ready):  # in the generators' order
            try:
                released.append(ray.get(ref))
            except Exception:  # noqa: BLE001 - freeing memory never fails a run
                pass
        return released

    def fingerprints(self, text: str) -> list[dict[str, Any]]:
        """Every generator's per-token log-probs of ``text`` under the weights it holds (see
        ``GeneratorActor.prompt_logprobs``): equal across generators after a broadcast, and equal to the export's."""
        return ray.get([a.prompt_logprobs.remote(text) for a in self.generator_actors])

    def probe(self, question: str, max_new_tokens: int = 32) -> str:
        """Greedy answer of the first generator, to see the broadcast weights in action."""
        return ray.get(self.generator_actors[0].greedy.remote([[{"role": "user", "content": question}]], max_new_tokens))[0]

    def shutdown(self) -> None:
        """Stop every engine explicitly, then release the actors."""
        shutdown_pool(self.generator_actors)
        shutdown_pool(self.judge_actors)
        if self.colocation is not None:
            self.colocation.remove()
