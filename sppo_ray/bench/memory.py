"""`sppo-ray bench memory`: host-memory peaks of the driver and a generator while π_{t+1} is hashed and broadcast.

A 7-8B policy is 15-30 GB; a driver that reads it whole does not fit a head pod. This measures, on a randomly
initialised Llama of ~1.1 B parameters built from a config (nothing downloaded), the resident memory (RSS) of the
driver process and of one generator process during each way of broadcasting a policy version:

- ``object_store``: the driver reads every shard and ``ray.put``-s the whole state dict (how runs broadcast before);
- ``directory``: the generators read the exported shards themselves (one node, or shared storage);
- ``shard_source``: generators that cannot see the directory pull it one shard at a time from a ShardSource actor.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import psutil

__all__ = ["RssSampler", "bench_memory", "make_random_llama", "measure_broadcasts", "measure_hashing"]

# ~1.13 B parameters: 20 layers of width 2048 (TinyLlama's shape with full multi-head attention), SmolLM2's vocab.
_LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=20, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True)


def _write_random_llama(out: str, tokenizer_dir: str, shard_gb: float, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**_LLAMA_1B, torch_dtype="bfloat16")
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size=int(shard_gb * 1e9))
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    Path(out, "params.json").write_text(json.dumps({"parameters": params}))


def make_random_llama(out: Path, tokenizer_dir: Path, shard_gb: float = 1.0, seed: int = 0) -> int:
    """Write a randomly initialised ~1.1 B Llama (bf16, shards of ``shard_gb``) to ``out``; returns its parameters.

    Built in a child process, so the caller's memory never holds the model (callers measure their own RSS).
    """
    if not (out / "params.json").is_file():
        code = (f"from sppo_ray.bench.memory import _write_random_llama; "
                f"_write_random_llama({str(out)!r}, {str(tokenizer_dir)!r}, {shard_gb!r}, {seed!r})")
        subprocess.run([sys.executable, "-c", code], check=True)
    return json.loads((out / "params.json").read_text())["parameters"]


class RssSampler:
    """Samples the resident memory of some processes every ``interval`` seconds while in a ``with`` block.

    ``peak[pid]`` is the highest RSS seen, ``start[pid]`` the RSS when the block began (bytes).
    """

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.interval = interval
        self.start = {pid: p.memory_info().rss for pid, p in self.procs.items()}
        self.peak = dict(self.start)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, proc in self.procs.items():
                self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for pid, proc in self.procs.items():  # one last sample: the block may be shorter than an interval
            self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)

    def growth(self, pid: int) -> int:
        return self.peak[pid] - self.start[pid]


def measure_broadcasts(generator_actor: Any, model_dir: Path) -> dict[str, Any]:
    """Broadcast ``model_dir`` to one generator in each of the three ways; RSS growth of driver and generator.

    Each way gets a fresh version number, so every broadcast really reloads the engine.
    """
    import os

    import ray

    from sppo_ray.contracts import PolicyWeights
    from sppo_ray.generation.stage import _shard_source, push_weights
    from sppo_ray.generation.weights import policy_weights
    from sppo_ray.orchestration.session import object_store_weights

    generator_pid = ray.get(generator_actor.ready.remote())["pid"]
    files = policy_weights(model_dir, 0).files

    def shard_source(version: int) -> PolicyWeights:
        # a path this generator cannot see, as on a node without the run directory: it must pull every shard
        return PolicyWeights(version, path=str(model_dir) + ".not-mounted", files=files,
                             shard_source=_shard_source(str(model_dir)))

    # the object store last: the memory it makes the processes grow is not all given back, which would raise the
    # starting point of the ways measured after it
    ways: dict[str, Callable[[int], PolicyWeights]] = {
        "directory": lambda v: policy_weights(model_dir, v),
        "shard_source": shard_source,
        "object_store": lambda v: object_store_weights(model_dir, v),
    }
    out: dict[str, Any] = {"weight_bytes": sum(size for _, size in files), "shards": len(files),
                           "largest_shard_bytes": max(size for _, size in files)}
    for version, (name, weights_for) in enumerate(ways.items(), start=1):
        with RssSampler([os.getpid(), generator_pid]) as rss:
            started = time.perf_counter()
            weights = weights_for(version)
            push_weights([generator_actor], weights)
            seconds = time.perf_counter() - started
            del weights  # the object-store copy goes with its last reference
        out[name] = {"seconds": seconds, "driver_rss_growth_bytes": rss.growth(os.getpid()),
                     "driver_rss_peak_bytes": rss.peak[os.getpid()],
                     "generator_rss_growth_bytes": rss.growth(generator_pid),
                     "generator_rss_peak_bytes": rss.peak[generator_pid]}
    return out


def measure_hashing(model_dir: Path) -> dict[str, Any]:
    """Driver RSS growth while the manifest hashes the export: streamed (now) vs each file read whole (before)."""
    import hashlib
    import os

    from sppo_ray.orchestration.driver import _dir_digest

    def whole_files() -> str:
        h = hashlib.sha256()
        for f in sorted(model_dir.glob("*.safetensors")):
            h.update(f.read_bytes())
        return h.hexdigest()

    out: dict[str, Any] = {}
    for name, digest in (("streamed", lambda: _dir_digest(model_dir)), ("whole_files", whole_files)):
        with RssSampler([os.getpid()]) as rss:
            out[name] = {"sha256": digest()}
        out[name]["driver_rss_growth_bytes"] = rss.growth(os.getpid())
    assert out["streamed"]["sha256"] == out["whole_files"]["sha256"]
    return out


def bench_memory(config, plan, out: Path) -> dict[str, Any]:
    """The broadcast memory benchmark on a random ~1.1 B Llama in ``out/random-llama-1b`` (built once)."""
    from sppo_ray.actor_pool import shutdown_pool
    from sppo_ray.config import GenerationConfig
    from sppo_ray.generation.stage import build_generator_actors

    model_dir = out / "random-llama-1b"
    params = make_random_llama(model_dir, plan.policy_path)
    gen_cfg = GenerationConfig(k=2, max_new_tokens=8, max_prompt_tokens=32, dtype="bfloat16")
    actors = build_generator_actors(str(model_dir), gen_cfg, config.resources.model_copy(update={"generators": 1}))
    try:
        return {"parameters": params, "manifest_hash": measure_hashing(model_dir),
                **measure_broadcasts(actors[0], model_dir)}
    finally:
        shutdown_pool(actors)
