"""Sleep mode of a generator's vLLM engine (colocated layout): free the GPU for the judge and the trainer, then
wake for the broadcast (weights first) and the next generation (KV cache).

On a GPU this is vLLM's own sleep mode: the engine is built with ``enable_sleep_mode=True`` (see
``vllm_compat.engine_kwargs``), ``LLM.sleep(level)`` offloads (level 1) or discards (level 2) the weights and drops
the KV cache, ``LLM.wake_up(tags)`` reallocates them. vLLM has no sleep mode on CPU, where the roles share cores,
not memory: there every call is recorded and does nothing, so the orchestration around it is tested on CPU.
Every call, real or not, is kept in :attr:`EngineSleep.events` for tests and for the run's logs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EngineSleep", "SleepEvent"]

_ALL_TAGS = ("weights", "kv_cache")


@dataclass(frozen=True)
class SleepEvent:
    # "sleep" or "wake_up"
    call: str
    # sleep level, or the woken tags (None: everything)
    detail: Any
    # whether vLLM actually released or reallocated memory (False: recorded no-op on CPU)
    real: bool
    at: float = field(default_factory=time.time)
    # free memory of the engine's GPU before and after the call, GiB (torch.cuda.mem_get_info; None on CPU)
    free_gib_before: float | None = None
    free_gib_after: float | None = None


class EngineSleep:
    """Puts one ``vllm.LLM`` to sleep and wakes it; tracks whether its weights survived.

    Args:
        llm: the engine (built with sleep mode enabled when ``real``).
        level: 1 keeps the weights in host memory, 2 discards them.
        real: False on CPU: calls are recorded no-ops.
    """

    def __init__(self, llm: Any, level: int, real: bool) -> None:
        self.llm, self.level, self.real = llm, level, real
        self.asleep = False
        self.woken: set[str] = set()  # tags woken since the last sleep
        self.events: list[SleepEvent] = []

    def sleep(self) -> bool:
        """Release the engine's GPU memory (no requests may be in flight). Returns whether the weights are gone
        (level 2 on a GPU: the next load must bring a whole model)."""
        if self.asleep:
            return False
        before = _free_gib(self.real)
        if self.real:
            self.llm.sleep(level=self.level)
        self.asleep = True
        self.events.append(SleepEvent("sleep", self.level, self.real, free_gib_before=before,
                                      free_gib_after=_free_gib(self.real)))
        return self.real and self.level == 2

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate the tagged memory ("weights", "kv_cache"; None: all). Awake once everything is back."""
        if not self.asleep or (tags is not None and set(tags) <= self.woken):
            return
        before = _free_gib(self.real)
        if self.real:
            self.llm.wake_up(tags)
        self.events.append(SleepEvent("wake_up", tags, self.real, free_gib_before=before,
                                      free_gib_after=_free_gib(self.real)))
        self.woken |= set(tags or _ALL_TAGS)
        if self.woken >= set(_ALL_TAGS):
            self.asleep, self.woken = False, set()


def _free_gib(real: bool) -> float | None:
    """Free memory of this process's GPU in GiB (what the driver sees of a sleep), None on CPU."""
    import torch

    if not (real and torch.cuda.is_available()):
        return None
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0] / 2**30
