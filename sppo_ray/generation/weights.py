"""How π_{t+1} reaches the generators without the driver ever holding the model.

A policy version is named by its HF directory and the list of its safetensors files. A generator that sees those
files (one node, or a run directory on shared storage) hands the directory to vLLM, whose loader reads one shard at
a time. A generator on a node that cannot see them pulls the shards one at a time from a :class:`ShardSource` actor
placed on a node that can (the driver's): only the shard in flight is ever in memory outside the engine. The driver
itself only lists file names and sizes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from sppo_ray.contracts import PolicyWeights

__all__ = ["ShardSource", "has_files", "policy_weights", "pulled_weights"]


def policy_weights(model_dir: Path | str, version: int) -> PolicyWeights:
    """The policy version held in ``model_dir``, described by its weight files (nothing is read)."""
    files = tuple((f.name, f.stat().st_size) for f in sorted(Path(model_dir).glob("*.safetensors")))
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors files: not an exported policy")
    return PolicyWeights(version, path=str(model_dir), files=files)


def has_files(path: str, files: tuple[tuple[str, int], ...]) -> bool:
    """True when this node sees every weight file of the version at ``path`` with the expected size."""
    try:
        return bool(files) and all(os.path.getsize(os.path.join(path, name)) == size for name, size in files)
    except OSError:
        return False


class ShardSource:
    """Serves one policy directory's weight files, one file per call. Wrap with ``ray.remote`` and place it on a
    node that can read the directory.

    Args:
        model_dir: the HF directory of the policy version being broadcast.
    """

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir

    def read(self, name: str) -> bytes:
        """The bytes of one safetensors file (at most ``training.export_max_shard_gb``)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"not a file of the policy directory: {name!r}")
        return Path(self.model_dir, name).read_bytes()


def pulled_weights(source: Any, files: tuple[tuple[str, int], ...], dtype: Any) -> Iterator[tuple[str, Any]]:
    """(name, tensor) pairs of every file, fetched from ``source`` one file at a time and cast to ``dtype``."""
    import ray
    from safetensors.torch import load

    for name, _ in files:
        tensors = load(ray.get(source.read.remote(name)))
        for key in list(tensors):
            tensor = tensors.pop(key)  # hand each tensor over so the shard's memory goes as it is loaded
            yield key, tensor.to(dtype) if tensor.is_floating_point() else tensor
