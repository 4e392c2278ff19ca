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


def test_ray_data_progress_bars_only_when_verbose(monkeypatch):
    from ray.data import DataContext

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    ctx = DataContext.get_current()
    configure_driver_output()
    assert not ctx.enable_progress_bars and not ctx.print_on_execution_start
    import logging

    consoles = [h for h in logging.getLogger("ray.data").handlers if "File" not in type(h).__name__]
    assert consoles and all(h.level == logging.ERROR for h in consoles)  # its warnings stay off the terminal
    monkeypatch.setenv(VERBOSE_ENV, "1")
    configure_driver_output()
    assert ctx.enable_progress_bars and ctx.print_on_execution_start


def _role_process(tmp_path, verbose: bool):
    import subprocess
    import sys

    code = ("import logging, sys; from sppo_ray.runtime import log_role_output; "
            "print(log_role_output('generator-0')); print('from vLLM'); "
            "logging.basicConfig(); logging.getLogger('deepspeed').warning('from DeepSpeed'); "
            "sys.stderr.write('to stderr\\n')")
    env = {"PATH": "/usr/bin:/bin", "SPPO_RAY_LOG_DIR": str(tmp_path / "logs"),
           **({VERBOSE_ENV: "1"} if verbose else {})}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_a_roles_output_goes_to_its_log_in_the_run_dir_unless_verbose(tmp_path):
    proc = _role_process(tmp_path, verbose=False)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""  # nothing reaches Ray's log files
    log = (tmp_path / "logs" / "generator-0.log").read_text()
    assert log.startswith("=== generator-0: pid ") and str(tmp_path / "logs" / "generator-0.log") in log
    assert "from vLLM" in log and "from DeepSpeed" in log and "to stderr" in log
    loud = _role_process(tmp_path / "verbose", verbose=True)
    assert loud.stdout.splitlines() == ["None", "from vLLM"] and "from DeepSpeed" in loud.stderr
    assert not (tmp_path / "verbose" / "logs").exists()


def test_a_failed_stage_is_one_line_naming_it_with_the_traceback_in_the_run_dir(tmp_path):
    import ray.exceptions

    from sppo_ray.orchestration.driver import _failed
    from sppo_ray.orchestration.rundir import RunDir

    cause = ValueError("the engine ran out of KV cache blocks\nmore detail")
    err = ray.exceptions.RayTaskError("GeneratorActor.generate", "Traceback (most recent call last): ...", cause)
    failed = _failed(err, RunDir(str(tmp_path)), {"round": 1, "stage": "generate"})
    first, second = str(failed).splitlines()
    assert first == ("round 1 generate failed in GeneratorActor.generate: ValueError: the engine ran out of KV "
                     "cache blocks")
    assert f"traceback: {tmp_path / 'logs' / 'driver-traceback.log'}" in second and "sppo-ray resume" in second
    assert "the engine ran out of KV cache blocks" in (tmp_path / "logs" / "driver-traceback.log").read_text()


def test_a_stage_whose_lost_actors_never_came_back_says_so_in_its_one_line(tmp_path):
    """Ray Data wraps a forwarding task's error twice (RayTaskError of a UserCodeException raised from it): the
    one line shows ours, which names resources.node_wait_s and `sppo-ray resume`."""
    import ray.exceptions
    from ray.exceptions import UserCodeException

    from sppo_ray.actor_pool import ActorsLost, lost_message
    from sppo_ray.orchestration.driver import _failed
    from sppo_ray.orchestration.rundir import RunDir

    try:
        try:
            raise ActorsLost(lost_message("generate", 900, "40 attempts; last: ActorUnavailableError"))
        except ActorsLost as lost:
            raise UserCodeException("UDF failed to process a data block.") from lost
    except UserCodeException as udf:
        err = ray.exceptions.RayTaskError("MapBatches(_forward)", "Traceback ...", udf)
    first = str(_failed(err, RunDir(str(tmp_path)), {"round": 0, "stage": "generate"})).splitlines()[0]
    assert first.startswith("round 0 generate failed in MapBatches(_forward): ActorsLost: generate: no actor "
                            "answered for 900 s (resources.node_wait_s)"), first
    assert "40 attempts" not in first  # the detail is in the traceback file
    # as Ray carries it to the driver: the wrapper without its cause, the task's error only in the remote traceback
    remote = ("\x1b[36mray::MapBatches(_forward)()\x1b[39m (pid=1, ip=10.0.0.1)\n  File \"actor_pool.py\", line 9\n"
              "sppo_ray.actor_pool.ActorsLost: generate: no actor answered for 900 s (resources.node_wait_s): ...\n"
              "(40 attempts)\n\nThe above exception was the direct cause of the following exception:\n\n"
              "ray.exceptions.UserCodeException: UDF failed to process a data block.")
    carried = ray.exceptions.RayTaskError("MapBatches(_forward)", remote, UserCodeException("UDF failed"))
    first = str(_failed(carried, RunDir(str(tmp_path)), {"round": 0, "stage": "generate"})).splitlines()[0]
    assert first.startswith("round 0 generate failed in MapBatches(_forward): ActorsLost: generate: no actor "
                            "answered for 900 s (resources.node_wait_s)"), first


def test_the_driver_hands_its_log_dir_to_the_roles_it_starts_not_to_itself(monkeypatch, tmp_path):
    import os

    from sppo_ray.runtime import LOG_DIR_ENV, log_role_output, role_env, set_role_log_dir

    monkeypatch.delenv(LOG_DIR_ENV, raising=False)
    set_role_log_dir(str(tmp_path / "logs"))
    try:
        assert role_env()[LOG_DIR_ENV] == str(tmp_path / "logs")
        assert LOG_DIR_ENV not in os.environ and log_role_output("judge-0") is None  # the driver keeps its output
    finally:
        set_role_log_dir(None)
    assert LOG_DIR_ENV not in role_env()


def test_start_up_and_stage_errors_pass_through_one_filter(monkeypatch, tmp_path):
    from sppo_ray.errors import ConfigError, RunFailedError
    from sppo_ray.orchestration.driver import _one_line_errors
    from sppo_ray.orchestration.rundir import RunDir

    rd = RunDir(str(tmp_path))
    monkeypatch.delenv("SPPO_RAY_VERBOSE", raising=False)
    with pytest.raises(ConfigError):  # the user's own mistake keeps its message and type
        with _one_line_errors(rd, {}):
            raise ConfigError("policy.path: no such directory")
    with pytest.raises(RunFailedError, match="round 2 judge failed") as failed:
        with _one_line_errors(rd, {"round": 2, "stage": "judge"}):
            raise OSError("judge weights unreadable")
    assert failed.value.__suppress_context__ and "judge weights unreadable" in str(failed.value)
    monkeypatch.setenv("SPPO_RAY_VERBOSE", "1")  # --verbose: the original error, traceback and all
    with pytest.raises(OSError):
        with _one_line_errors(rd, {}):
            raise OSError("judge weights unreadable")
