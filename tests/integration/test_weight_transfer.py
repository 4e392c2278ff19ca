"""The trainer side of the NCCL weight transfer, on CPU: what ``DeepSpeedSource`` hands vLLM's
``NCCLTrainerWeightTransferEngine`` from a ZeRO-3 engine (sppo_ray/training/weight_transfer.py).

The NCCL broadcast itself needs GPUs; the ZeRO-3 gathers that feed it are collectives over the train ranks and run
on CPU with gloo. Two processes build the same small random Llama, wrap it in DeepSpeed ZeRO-3 exactly as the train
worker does, and iterate the source in lockstep.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket

import pytest

pytestmark = pytest.mark.integration


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sppo_ray.config import TrainingConfig
    from sppo_ray.training.weight_transfer import DeepSpeedSource
    from sppo_ray.training.worker import _setup_engine, deepspeed_config

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    whole = {k: v.clone() for k, v in model.named_parameters()}
    t = TrainingConfig(zero_stage=3, precision="fp32", global_batch_size=2, micro_batch_size=1).model_dump()
    engine, _ = _setup_engine(model, t, deepspeed_config(t, 2), total_steps=1)
    source = DeepSpeedSource(engine.module, zero3=True)
    partitioned = sum(p.numel() for p in engine.module.parameters())  # what this rank holds between gathers
    meta = source.metadata()
    pairs = [(name, tensor) for name, tensor in source]
    if rank == 0:
        json.dump({
            "names": [m.name for m in meta], "iterated": [n for n, _ in pairs],
            "meta_shapes": [list(m.shape) for m in meta], "shapes": [list(t.shape) for _, t in pairs],
            "dtypes_match": all(m.dtype == t.dtype for m, (_, t) in zip(meta, pairs)),
            "equal": all(torch.equal(t, whole[n]) for n, t in pairs),
            "partitioned": partitioned, "total": sum(v.numel() for v in whole.values()),
        }, open(out, "w"))


def test_zero3_source_yields_whole_parameters_in_metadata_order(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.json"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    got = json.loads(out.read_text())
    assert got["partitioned"] < got["total"] / 1.5  # ZeRO-3 really partitioned the weights over the 2 ranks
    assert got["names"] == got["iterated"] and got["meta_shapes"] == got["shapes"] and got["dtypes_match"]
    assert got["equal"]  # the gathered tensors are the model's whole parameters
