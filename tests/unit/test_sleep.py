"""Engine sleep mode bookkeeping (sppo_ray/generation/sleep.py) and the colocated stage residency it serves."""

from __future__ import annotations

import pytest

from sppo_ray.generation.sleep import EngineSleep

pytestmark = pytest.mark.unit


class _Engine:
    """Records what vLLM's LLM.sleep / LLM.wake_up were asked (the GPU branch of EngineSleep calls exactly these)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None) -> bool:
        self.calls.append(("wake_up", tags))
        return True


def test_cpu_sleep_is_a_recorded_no_op():
    engine = _Engine()
    s = EngineSleep(engine, level=1, real=False)
    assert s.sleep() is False  # weights kept
    assert s.asleep and s.sleep() is False  # a second sleep does nothing
    s.wake_up(["weights"])
    assert s.asleep  # the KV cache is still released
    s.wake_up(["kv_cache"])
    assert not s.asleep
    assert engine.calls == []  # vLLM has no sleep mode on CPU: nothing was called
    assert [(e.call, e.detail, e.real) for e in s.events] == [
        ("sleep", 1, False), ("wake_up", ["weights"], False), ("wake_up", ["kv_cache"], False)]


def test_gpu_sleep_calls_vllm_and_level_two_drops_the_weights():
    engine = _Engine()
    s = EngineSleep(engine, level=2, real=True)
    assert s.sleep() is True  # level 2: the engine holds no weights until the next load
    s.wake_up()
    assert not s.asleep
    s.wake_up()  # awake: nothing to do
    assert engine.calls == [("sleep", 2), ("wake_up", None)]
    assert EngineSleep(_Engine(), level=1, real=True).sleep() is False  # level 1 keeps them on host
