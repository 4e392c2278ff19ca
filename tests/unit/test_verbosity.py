"""Quiet engines and Ray Data by default; --verbose brings the logs back (sppo_ray/orchestration/verbosity.py)."""

from __future__ import annotations

import pytest

from sppo_ray.config import ResourcesConfig
from sppo_ray.generation.stage import generator_options
from sppo_ray.orchestration.verbosity import VERBOSE_ENV, configure_driver_output

pytestmark = pytest.mark.unit


def test_engines_log_warnings_only_unless_verbose(monkeypatch):
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    cpu = generator_options(ResourcesConfig(actor_threads=2))["runtime_env"]["env_vars"]
    gpu = generator_options(ResourcesConfig(generator_gpus=1))["runtime_env"]["env_vars"]
    assert cpu == {"VLLM_LOGGING_LEVEL": "WARNING", "OMP_NUM_THREADS": "2"}
    assert gpu == {"VLLM_LOGGING_LEVEL": "WARNING"}
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert generator_options(ResourcesConfig(actor_threads=2))["runtime_env"]["env_vars"]["VLLM_LOGGING_LEVEL"] == "INFO"


def test_ray_data_progress_bars_only_on_a_terminal(monkeypatch):
    from ray.data import DataContext

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    ctx = DataContext.get_current()
    configure_driver_output(on_terminal=False)
    assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
    configure_driver_output(on_terminal=True)
    assert ctx.enable_progress_bars and not ctx.print_on_execution_start
    monkeypatch.setenv(VERBOSE_ENV, "1")
    configure_driver_output(on_terminal=False)
    assert ctx.enable_progress_bars and ctx.print_on_execution_start
