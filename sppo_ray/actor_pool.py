"""Stream a Ray Dataset through a pool of long-lived actors.

Ray Data's own actor pools create and destroy their actors with each dataset execution, and nothing outside can
reach them to push new weights. Our engines must outlive every round, so ``map_batches`` runs a thin forwarding
*task* instead: it leases the least busy actor from the pool's broker, hands it the batch, and returns the lease. Tasks reuse
Ray's idle worker processes, where per-execution forwarding actors cost a process start each (~1-2 s on 2 cores).
A batch whose actor died is retried (on the next actor, or on the same one after Ray restarts it).

The forwarding tasks run on the driver's node. Ray Data spreads tasks over the cluster by default, and a lost node
then took the forwarders on it, and the output blocks in its object store, with it: Ray re-ran those tasks, so
batches that other nodes' actors had finished were computed again, and their side records added twice.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import pyarrow as pa
import ray
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.placement_group import NODE_ID_LABEL_KEY

__all__ = ["NODE_WAIT_S", "ActorsLost", "StaleState", "call_every", "in_order", "shutdown_pool",
           "stream_through_actors", "warm_up_streaming"]


class StaleState(RuntimeError):
    """An actor holds other state than the caller expects (a restarted generator serving π_0, say)."""


_RETRY_WAIT_S = 5.0
# How long a batch keeps being retried while its actors die or restart (``resources.node_wait_s``). A call to a
# restarting actor fails at once (ActorUnavailableError), and an engine that Ray restarts on a replacement node
# loads its model again: seconds for a tiny model on idle cores, a minute or more under load, minutes for a 7B.
NODE_WAIT_S = 900.0


class ActorsLost(RuntimeError):
    """A stage's actors did not come back within the wait (a lost node and no node to restart them on)."""


@ray.remote(num_cpus=0)
class _LeaseBroker:
    """Hands each forwarding task the least busy actor of one pool, and collects the side records of its calls.

    Leases never block: a lease lost with a dead task only biases the choice. One broker per pool lives as long as
    the pool (see ``shutdown_pool``), so a stage execution starts no process.
    """

    def __init__(self, size: int) -> None:
        self.busy = [0] * size
        self.records: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def acquire(self) -> int:
        slot = min(range(len(self.busy)), key=self.busy.__getitem__)
        self.busy[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        self.busy[slot] = max(0, self.busy[slot] - 1)

    def add(self, execution: str, batch: str, records: list[dict[str, Any]]) -> None:
        """A batch's records; a batch run again (Ray retried its task) replaces its own, never adds to them."""
        self.records.setdefault(execution, {})[batch] = records

    def collect(self, execution: str) -> list[dict[str, Any]]:
        return [r for records in self.records.pop(execution, {}).values() for r in records]


# The brokers of the pools this driver streams through, keyed by the pool's actor handles (hashed by actor id).
_BROKERS: dict[tuple[Any, ...], Any] = {}


def _broker_for(actors: list[Any]) -> Any:
    """The pool's broker, on the caller's (the driver's) node: anywhere else a lost node could take it, and with it
    every forwarding task of the stage and the side records (rejects) collected so far."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    key = tuple(actors)
    if key not in _BROKERS:
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        _BROKERS[key] = _LeaseBroker.options(scheduling_strategy=here).remote(len(actors))
    return _BROKERS[key]


def shutdown_pool(actors: list[Any]) -> None:
    """Stop every actor's engine explicitly (``actor.shutdown``), release the actors, and stop the pool's broker."""
    for actor in actors:
        try:
            ray.get(actor.shutdown.remote(), timeout=60)
        except Exception:  # noqa: BLE001 - an actor that already died has nothing left to stop
            pass
        ray.kill(actor)
    broker = _BROKERS.pop(tuple(actors), None)
    if broker is not None:
        ray.kill(broker)


def _call_with_retry(actors, slot: int, method: str, rows: list[dict[str, Any]], kwargs, recover,
                     wait_s: float = NODE_WAIT_S) -> dict[str, Any]:
    """``actor.<method>.remote(rows, **kwargs)``; on a dead actor try the next one, on a stale one ``recover`` it."""
    deadline, attempt = time.monotonic() + wait_s, 0
    while True:
        actor = actors[(slot + attempt) % len(actors)]
        attempt += 1
        try:
            return ray.get(getattr(actor, method).remote(rows, **kwargs))
        except (RayActorError, ActorUnavailableError) as err:
            last_error: Exception = err  # the actor died or is restarting; Ray restarts it and we try again
        except ray.exceptions.RayTaskError as err:
            if recover is None or "StaleState" not in str(err):
                raise
            last_error = err
            try:
                ray.get(getattr(actor, recover[0]).remote(*recover[1]))
                continue
            except (RayActorError, ActorUnavailableError) as lost:
                last_error = lost
        if time.monotonic() > deadline:
            raise ActorsLost(lost_message(method, wait_s, f"{attempt} attempts; last: {last_error}"))
        time.sleep(_RETRY_WAIT_S)


def call_every(actors: list[Any], method: str, args: tuple = (), *, wait_s: float = NODE_WAIT_S,
               retry_on: tuple[type[BaseException], ...] = (RayActorError, ActorUnavailableError),
               every_s: float = _RETRY_WAIT_S) -> list[Any]:
    """``actor.<method>(*args)`` on every actor, the results in order. An actor that Ray is restarting (its process
    died, its node was lost) is called again every ``every_s`` once it is back, for up to ``wait_s``; then
    :class:`ActorsLost` names the method. An error not in ``retry_on`` (an actor dead for good) raises at once."""
    deadline, results, pending = time.monotonic() + wait_s, {}, list(range(len(actors)))
    while True:
        refs = [(i, getattr(actors[i], method).remote(*args)) for i in pending]
        pending, last = [], None
        for i, ref in refs:
            try:  # a call queued for an actor that waits for its node ends at the deadline
                results[i] = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except (*retry_on, ray.exceptions.GetTimeoutError) as err:
                pending.append(i)
                last = err
        if not pending:
            return [results[i] for i in range(len(actors))]
        if time.monotonic() > deadline:
            raise ActorsLost(lost_message(method, wait_s, f"{len(pending)} actors; last: {last}"))
        time.sleep(every_s)


def lost_message(what: str, wait_s: float, detail: str) -> str:
    """The first line says it all: the driver's one-line error of a failed stage shows it alone."""
    return (f"{what}: no actor answered for {wait_s:.0f} s (resources.node_wait_s): a lost node's roles found no "
            "node to restart on; once the cluster has the node back (KubeRay replaces a lost pod), `sppo-ray resume` "
            f"continues the run, keeping the stage's finished chunks\n({detail})")


def _forward(batch: pa.Table, *, actors, broker, execution: str, method: str, kwargs: dict[str, Any],
             schema: pa.Schema, recover, wait_s: float, key: str) -> pa.Table:
    """Ray Data task: one batch to one leased actor. The actor returns {"rows": [...], "records": [...]}; rows go
    downstream, records (rejects, counters) to the broker under the batch's first ``key``."""
    slot = ray.get(broker.acquire.remote())
    try:
        result = _call_with_retry(actors, slot, method, batch.to_pylist(), kwargs, recover, wait_s)
    finally:
        broker.release.remote(slot)
    if result.get("records"):  # before the task ends, so `collect` sees them
        ray.get(broker.add.remote(execution, str(batch.column(key)[0]), result["records"]))
    return pa.Table.from_pylist(result["rows"], schema=schema)


def stream_through_actors(
    ds: "ray.data.Dataset",
    actors: list[Any],
    method: str,
    *,
    kwargs: dict[str, Any],
    schema: pa.Schema,
    batch_size: int,
    per_actor: int = 1,
    recover: tuple[str, tuple] | None = None,
    on_block: Callable[[pa.Table], None] | None = None,
    wait_s: float = NODE_WAIT_S,
    key: str = "prompt_id",
    keep: bool = True,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Run ``ds`` through ``actor.<method>`` batch by batch, at most ``per_actor`` batches per actor at a time
    (more than 1 needs actors that take concurrent calls).

    ``recover`` names a method called as ``actor.<recover[0]>.remote(*recover[1])`` when an actor reports a
    ``StaleState`` error (a restarted generator holding π_0, say) before the batch is retried. ``on_block`` is
    called with each block of output rows as it arrives (in completion order), while the rest is still running.
    A batch whose actors die is retried for ``wait_s`` seconds, then the stage fails with :class:`ActorsLost`.
    ``key`` is a column that tells batches apart (its first value names the batch's side records).
    Returns (output table, side records); with ``keep`` False the rows go only to ``on_block`` and the table is
    empty (a caller that writes them as they come holds none).
    """
    broker, execution = _broker_for(actors), uuid.uuid4().hex
    out = ds.map_batches(
        _forward,
        fn_kwargs={"actors": actors, "broker": broker, "execution": execution, "method": method, "kwargs": kwargs,
                   "schema": schema, "recover": recover, "wait_s": wait_s, "key": key},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.TaskPoolStrategy(size=len(actors) * per_actor),
        num_cpus=0,  # forwarders only wait; the long-lived actors hold the CPU reservations
        label_selector=_beside_driver(),
    )
    tables = []
    for block in out.iter_batches(batch_size=None, batch_format="pyarrow"):  # streamed as the blocks finish
        if keep:
            tables.append(block)
        if on_block is not None and block.num_rows:
            on_block(block)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table, ray.get(broker.collect.remote(execution))


def _beside_driver() -> dict[str, str]:
    """Where forwarding tasks run (see the module's docstring): the driver's node, the one node a stage cannot
    lose without losing the driver too. A label selector on the node's id, as Ray Data itself pins local reads
    (its ``scheduling_strategy`` keyword is deprecated and warns on the progress line)."""
    return {NODE_ID_LABEL_KEY: ray.get_runtime_context().get_node_id()}


def _identity(batch: pa.Table) -> pa.Table:
    return batch


def warm_up_streaming(width: int) -> float:
    """One trivial execution of the forwarding path, ``width`` tasks wide and where the forwarders run; returns its
    seconds. A process's first Ray Data execution starts the streaming executor and the tasks' worker processes
    (4.0 s on 2 cores for one row, against 1.3 s for a later execution of 1,000 rows, BENCHMARKS.md "Scale"): run
    while the engines load, the first stage does not pay it."""
    started = time.perf_counter()
    out = ray.data.from_items([{"i": i} for i in range(width)]).map_batches(
        _identity, batch_size=1, batch_format="pyarrow", compute=ray.data.TaskPoolStrategy(size=width), num_cpus=0,
        label_selector=_beside_driver())
    for _ in out.iter_batches(batch_size=None, batch_format="pyarrow"):
        pass
    return time.perf_counter() - started


def in_order(table: pa.Table, key: str, order: list[str]) -> pa.Table:
    """Rows sorted into ``order`` of ``key``, so a stage's output does not depend on scheduling.

    A stage's blocks each hold one call's rows, a run of consecutive prompts in order: sorting the blocks is enough,
    and the result shares their buffers (a 20,000-prompt generation's responses are not copied once more while
    the driver holds them). Rows that a block sort cannot order are copied into place (``take``).
    """
    position = {k: i for i, k in enumerate(order)}
    ids = table.column(key).to_pylist()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"a stage produced a {key} twice")
    batches = [b for b in table.to_batches() if b.num_rows]
    batches.sort(key=lambda b: position[b.column(key)[0].as_py()])
    placed = [position[k] for b in batches for k in b.column(key).to_pylist()]
    if all(a < b for a, b in zip(placed, placed[1:])):
        return pa.Table.from_batches(batches, schema=table.schema)
    return table.take(sorted(range(len(ids)), key=lambda i: position[ids[i]]))
