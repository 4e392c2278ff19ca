"""π_{t+1} from DeepSpeed rank 0 straight into the generators' engines over NCCL, through vLLM's own weight-transfer
API (GPU only; the files path in generation/weights.py serves CPU runs, resumes and the fallback).

vLLM's pieces, used as documented in ``vllm.distributed.weight_transfer``: the generators' engines are built with
``weight_transfer_config={"backend": "nccl"}``; ``RayVLLMWeightSyncClient`` drives their control plane
(``init_weight_transfer_engine``, ``start_weight_update``, ``update_weights``, ``finish_weight_update`` on each
``GeneratorActor``); ``NCCLTrainerWeightTransferEngine`` opens rank 0 of a trainer+engines NCCL group and broadcasts
what a ``WeightSource`` yields. Ours is :class:`DeepSpeedSource`: the engine's named parameters, each ZeRO-3
partitioned one gathered in turn (a collective every train rank joins, so every rank calls :func:`send_policy`).

Rank 0 that cannot open the group (no route to the generators' nodes, an engine built without weight transfer)
reports why, still joins the gathers, and the driver loads π_{t+1} from the exported directory instead.
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
    (``deepspeed.zero.GatheredParameters``, a collective), so every rank iterates in the same order. ``skip``
    makes the next pass start after the first ``skip`` parameters (a rank 0 whose transfer failed part-way still
    joins the remaining gathers).
    """

    def __init__(self, module: torch.nn.Module, zero3: bool) -> None:
        self.module, self.zero3 = module, zero3
        self.yielded = 0  # parameters handed out in the current pass

    def metadata(self) -> list[ParamMeta]:
        return [ParamMeta(name, p.dtype, tuple(p.ds_shape if self.zero3 else p.shape))
                for name, p in self.module.named_parameters()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.iterate()

    def iterate(self, skip: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        import deepspeed

        self.yielded = skip
        for n, (name, p) in enumerate(self.module.named_parameters()):
            if n < skip:
                continue
            if self.zero3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    whole = p.data.detach().clone()  # the gathered buffer is released when the context ends
            else:
                whole = p.data.detach()
            self.yielded = n + 1
            yield name, whole


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def send_policy(module: torch.nn.Module, zero3: bool, generators: list[Any], version: int, rank: int,
                address: str, port: int) -> dict[str, Any]:
    """Send the trained weights to every generator; call on every train rank (ZeRO-3 gathers are collectives).

    ``address``/``port``: rank 0's reachable address and a free port there (the NCCL group's TCP rendezvous), the
    same on every rank. Returns {"sent": bool, "seconds", "error"} on rank 0 (``sent`` False with the reason if the
    transfer could not run); other ranks return {"sent": None}.
    """
    import time

    import ray
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient
    from vllm.distributed.weight_transfer.nccl_engine import (
        NCCLTrainerInitInfo,
        NCCLTrainerWeightTransferEngine,
    )

    started = time.perf_counter()
    source = DeepSpeedSource(module, zero3)
    client = RayVLLMWeightSyncClient(generators)
    info = NCCLTrainerInitInfo(master_address=address, master_port=port, world_size=1 + len(generators), rank=rank)
    try:
        if rank == 0:  # the engines slept through training: their weight memory must exist before it is written
            ray.get([g.wake_up.remote(["weights"]) for g in generators])
        engine = NCCLTrainerWeightTransferEngine.trainer_init(info, client=client, source=source)
    except Exception as err:  # noqa: BLE001 - rank 0 could not open the group: fall back to the files
        for _ in source.iterate():  # still join every gather the other ranks run
            pass
        return {"sent": False, "seconds": time.perf_counter() - started, "error": f"init: {err}"}
    try:
        engine.send_weights()
    except Exception as err:  # noqa: BLE001
        for _ in source.iterate(skip=source.yielded):
            pass
        engine.shutdown()
        return {"sent": False, "seconds": time.perf_counter() - started, "error": f"send: {err}"}
    if rank != 0:
        return {"sent": None}
    ray.get([g.update_weight_version.remote(str(version)) for g in generators])
    client.shutdown_weight_transfer_engine()
    engine.shutdown()
    return {"sent": True, "seconds": time.perf_counter() - started, "error": None}


def rendezvous(rank: int) -> tuple[str, int]:
    """(address, port) of rank 0's node for the transfer group, the same on every rank (a collective)."""
    import ray
    import torch.distributed as dist

    mine = [ray.util.get_node_ip_address(), _free_port()] if rank == 0 else [None, None]
    dist.broadcast_object_list(mine, src=0)
    return mine[0], int(mine[1])
