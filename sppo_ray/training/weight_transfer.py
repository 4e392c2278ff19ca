"""π_{t+1} from the DeepSpeed train workers straight into the generators' engines, through vLLM's own
weight-transfer API (GPU only; the files path in generation/weights.py serves CPU runs, resumes and the fallback).

vLLM's pieces, used as documented in ``vllm.distributed.weight_transfer``: the generators' engines are built with
``weight_transfer_config={"backend": ...}``; ``RayVLLMWeightSyncClient`` drives their control plane
(``init_weight_transfer_engine``, ``start_weight_update``, ``update_weights``, ``finish_weight_update`` on each
``GeneratorActor``); a trainer-side engine sends what a ``WeightSource`` yields: ``IPCTrainerWeightTransferEngine``
in the colocated layout (each train worker shares its GPU's copy with the engine on the same GPU),
``NCCLTrainerWeightTransferEngine`` otherwise (rank 0 broadcasts). Our source is :class:`DeepSpeedSource`: the
engine's named parameters, each ZeRO-3 partitioned one gathered in turn (a collective every train rank joins, so
every rank calls :func:`send_policy`).

The export is in the fit's export directory (every rank waited for it) before the transfer, so a fit that loses a
rank during it is finished, never retrained. A transfer that cannot be set up, or whose calls to the generators
fail, is reported on every rank at the same point (rank 0 keeps joining the collectives, see
:func:`_guarded_client`); the driver then restarts the generators that did not get the new version and loads
π_{t+1} from the export. A failure inside a collective itself (a rank's GPU lost mid-gather) still waits for the
collective timeout: no rank can leave a collective the others are in.
"""

from __future__ import annotations

import socket
from typing import Any, Iterator

import torch
from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

__all__ = ["DeepSpeedSource", "rendezvous", "send_policy"]


class DeepSpeedSource(WeightSource):
    """The named parameters of a DeepSpeed engine's module, whole, in the training dtype.

    Under ZeRO-3 each parameter is partitioned over the ranks: iteration gathers one at a time
    (``deepspeed.zero.GatheredParameters``, a collective), so every rank iterates in the same order.
    """

    def __init__(self, module: torch.nn.Module, zero3: bool) -> None:
        self.module, self.zero3 = module, zero3

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, p.dtype, tuple(p.ds_shape if self.zero3 else p.shape))
                for name, p in self.module.named_parameters()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        import deepspeed

        for name, p in self.module.named_parameters():
            if self.zero3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    whole = p.data.detach().clone()  # the gathered buffer is released when the context ends
            else:
                whole = p.data.detach()
            yield name, whole


def _guarded_client(generators: list[Any]) -> Any:
    """vLLM's ``RayVLLMWeightSyncClient`` whose data-plane calls record a failure instead of raising.

    vLLM's senders run a lock-step sequence of collectives on every train rank (per chunk: gather the IPC handles,
    ship them, barrier). If rank 0's call to the generators raised, rank 0 would leave while the other ranks wait in
    the next barrier until the collective timeout (30 min), then Ray Train would retry the fit. With this client
    rank 0 keeps joining every collective after a failure, shipping nothing more, so all ranks finish the pass
    together and then learn the outcome from rank 0 (:func:`send_policy`)."""
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient

    class GuardedClient(RayVLLMWeightSyncClient):
        error: str | None = None

        def _guard(self, call, *args):
            if self.error is None:
                try:
                    call(*args)
                except Exception as err:  # noqa: BLE001 - reported once every rank has finished the pass
                    self.error = f"{call.__name__}: {type(err).__name__}: {err}"

        def start_weight_update(self) -> None:
            self._guard(super().start_weight_update)

        def update_weights(self, update_info) -> None:
            self._guard(super().update_weights, update_info)

        def finish_weight_update(self, weight_version: str | None = None) -> None:
            self._guard(super().finish_weight_update, weight_version)

    return GuardedClient(generators)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _trainer_engine(backend: str, rank: int, n_receivers: int, client: Any, source: DeepSpeedSource,
                    address: tuple[str, int] | None) -> Any:
    """vLLM's trainer-side engine for ``backend``, through its documented ``trainer_init`` handshake.

    ipc (colocated): every train rank shares its GPU's gathered copy by CUDA IPC handle with the engine on the same
    GPU (matched by GPU UUID); packed, so at most one 1 GB buffer a GPU at a time. nccl (disaggregated): rank 0
    broadcasts to a group of itself and every engine's workers (NCCL refuses two ranks of one group on one GPU,
    so this backend is for engines on GPUs of their own).
    """
    if backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo, IPCTrainerWeightTransferEngine

        return IPCTrainerWeightTransferEngine.trainer_init(IPCTrainerInitInfo(rank=rank, packed=True), client=client,
                                                           source=source)
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    info = NCCLTrainerInitInfo(master_address=address[0], master_port=address[1], world_size=1 + n_receivers,
                               rank=rank)
    return NCCLTrainerWeightTransferEngine.trainer_init(info, client=client, source=source)


def send_policy(module: torch.nn.Module, zero3: bool, generators: list[Any], version: int, rank: int,
                backend: str, tensor_parallel: int = 1) -> dict[str, Any]:
    """Hand the trained weights to every generator; call on every train rank (ZeRO-3 gathers are collectives).

    Rank 0 sets the transfer up and tells the other ranks whether it could; if not, no rank sends. Returns
    {"sent": bool, "seconds", "error"}: ``sent`` False with the reason if the transfer could not run (the driver
    then restarts the generators without π_{t+1} and loads the export; see ``Session.broadcast``). Call it after
    the export is written.
    """
    import time

    import ray
    import torch.distributed as dist

    started = time.perf_counter()
    source = DeepSpeedSource(module, zero3)
    client = _guarded_client(generators)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # what training left cached makes room for the engine's weights
    address = rendezvous(rank) if backend == "nccl" else None
    engine, error = None, None
    try:
        if rank == 0:  # the engines slept through training: their weight memory must exist before it is written
            ray.get([g.wake_up.remote(["weights"]) for g in generators])
        engine = _trainer_engine(backend, rank, len(generators) * tensor_parallel, client, source, address)
    except Exception as err:  # noqa: BLE001 - reported; the driver loads the export instead
        error = f"init: {err}"
    ready = [error is None]
    dist.broadcast_object_list(ready, src=0)  # every rank sends, or none does
    if not ready[0]:
        return {"sent": False, "seconds": time.perf_counter() - started, "error": error or "init failed on rank 0"}
    engine.send_weights()  # a failed call to the generators is recorded by the client; every rank finishes the pass
    outcome = [client.error]
    dist.broadcast_object_list(outcome, src=0)  # every rank learns rank 0's outcome at the same point
    if outcome[0] is None and rank == 0:
        ray.get([g.update_weight_version.remote(str(version)) for g in generators])
        client.shutdown_weight_transfer_engine()
    engine.shutdown()
    # not sent: the driver restarts the generators without π_{t+1} and loads the export (the fit is finished)
    return {"sent": outcome[0] is None, "seconds": time.perf_counter() - started, "error": outcome[0]}


def rendezvous(rank: int) -> tuple[str, int]:
    """(address, port) of rank 0's node for the NCCL group, the same on every rank (a collective)."""
    import ray
    import torch.distributed as dist

    mine = [ray.util.get_node_ip_address(), _free_port()] if rank == 0 else [None, None]
    dist.broadcast_object_list(mine, src=0)
    return mine[0], int(mine[1])
