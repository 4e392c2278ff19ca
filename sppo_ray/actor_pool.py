"""Stream a Ray Dataset through a pool of long-lived actors.

Ray Data's own actor pools create and destroy their actors with each dataset execution, and nothing outside can
reach them to push new weights. Our engines must outlive every round, so ``map_batches`` runs a thin forwarding
class instead: one forwarder per long-lived actor, each claiming a distinct actor, handing it every batch it gets.
A batch whose actor died is retried (on the next actor, or on the same one after Ray restarts it).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import ray

__all__ = ["StaleState", "in_order", "stream_through_actors"]


class StaleState(RuntimeError):
    """An actor holds other state than the caller expects (a restarted generator serving π_0, say)."""

_RETRY_ATTEMPTS = 8
_RETRY_WAIT_S = 5.0


@ray.remote(num_cpus=0)
class _SlotBroker:
    """Hands each forwarder a distinct actor index and collects the side records actors return."""

    def __init__(self) -> None:
        self.next = 0
        self.records: list[dict[str, Any]] = []

    def claim(self) -> int:
        self.next += 1
        return self.next - 1

    def add(self, records: list[dict[str, Any]]) -> None:
        self.records.extend(records)

    def collect(self) -> list[dict[str, Any]]:
        return self.records


class _Forwarder:
    """Ray Data callable: ``actor.<method>.remote(rows, **kwargs)`` on its claimed actor, with retries.

    The actor method returns {"rows": [...], "records": [...]}; rows go downstream, records (rejects, counters) go
    to the broker. ``recover`` names a method called as ``actor.<recover[0]>.remote(*recover[1])`` when the actor
    reports a ``StaleState`` error (a restarted generator holding π_0, say) before the batch is retried.
    """

    def __init__(self, actors, broker, method: str, kwargs: dict[str, Any], schema: pa.Schema, recover) -> None:
        self.actors, self.broker, self.method = actors, broker, method
        self.kwargs, self.schema, self.recover = kwargs, schema, recover
        self.slot = ray.get(broker.claim.remote()) % len(actors)

    def __call__(self, batch: pa.Table) -> pa.Table:
        result = self._call_with_retry(batch.to_pylist())
        if result.get("records"):
            self.broker.add.remote(result["records"])
        return pa.Table.from_pylist(result["rows"], schema=self.schema)

    def _call_with_retry(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        from ray.exceptions import ActorUnavailableError, RayActorError

        last_error: Exception | None = None
        for attempt in range(_RETRY_ATTEMPTS):
            actor = self.actors[(self.slot + attempt) % len(self.actors)]
            try:
                return ray.get(getattr(actor, self.method).remote(rows, **self.kwargs))
            except (RayActorError, ActorUnavailableError) as err:
                last_error = err  # the actor died mid-batch; Ray restarts it and we try again
                time.sleep(_RETRY_WAIT_S)
            except ray.exceptions.RayTaskError as err:
                if self.recover is None or "StaleState" not in str(err):
                    raise
                last_error = err
                ray.get(getattr(actor, self.recover[0]).remote(*self.recover[1]))
        raise RuntimeError(f"{self.method} failed after {_RETRY_ATTEMPTS} attempts: {last_error}")


def stream_through_actors(
    ds: "ray.data.Dataset",
    actors: list[Any],
    method: str,
    *,
    kwargs: dict[str, Any],
    schema: pa.Schema,
    batch_size: int,
    recover: tuple[str, tuple] | None = None,
) -> tuple[pa.Table, list[dict[str, Any]]]:
    """Run ``ds`` through ``actor.<method>`` batch by batch; returns (output table, side records)."""
    broker = _SlotBroker.remote()
    out = ds.map_batches(
        _Forwarder,
        fn_constructor_kwargs={
            "actors": actors,
            "broker": broker,
            "method": method,
            "kwargs": kwargs,
            "schema": schema,
            "recover": recover,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=len(actors)),
        num_cpus=0,  # forwarders only wait; the long-lived actors hold the CPU reservations
    )
    tables = [ray.get(ref) for ref in out.to_arrow_refs()]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    records = ray.get(broker.collect.remote())
    ray.kill(broker)
    return table, records


def in_order(table: pa.Table, key: str, order: list[str]) -> pa.Table:
    """Rows sorted into ``order`` of ``key``, so a stage's output does not depend on scheduling."""
    position = {k: i for i, k in enumerate(order)}
    ids = table.column(key).to_pylist()
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"a stage produced a {key} twice")
    return table.take(sorted(range(len(ids)), key=lambda i: position[ids[i]]))

