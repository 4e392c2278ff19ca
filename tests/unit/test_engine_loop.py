"""SharedEngine: concurrent calls share one engine thread, each gets its own outputs, reloads wait for an idle engine."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from sppo_ray.generation.engine_loop import SharedEngine

pytestmark = pytest.mark.unit


class FakeEngine:
    """A request with prompt n finishes after n steps; its output's text is f"out:{n}". Records every step's batch
    as the set of "request_id:params" tags, and the thread that stepped."""

    def __init__(self, step_seconds: float = 0.0) -> None:
        self.remaining: dict[str, int] = {}
        self.prompts: dict[str, int] = {}
        self.batches: list[set[str]] = []
        self.threads: set[str] = set()
        self.step_seconds = step_seconds
        self.llm_engine = self  # SharedEngine builds an LLM and steps its llm_engine

    def add_request(self, request_id: str, prompt: int, params) -> str:
        tag = f"{request_id}:{params}"
        self.remaining[tag], self.prompts[tag] = prompt, prompt
        return f"{request_id}-internal"  # as vLLM: an id the outputs do not carry

    def has_unfinished_requests(self) -> bool:
        return bool(self.remaining)

    def step(self):
        time.sleep(self.step_seconds)
        self.threads.add(threading.current_thread().name)
        self.batches.append(set(self.remaining))
        out = []
        for tag in list(self.remaining):
            self.remaining[tag] -= 1
            if self.remaining[tag] <= 0:
                del self.remaining[tag]
                out.append(SimpleNamespace(request_id=tag.split(":")[0], finished=True, text=f"out:{self.prompts[tag]}"))
        return out

    def abort_request(self, ids):
        for tag in [t for t in self.remaining if t.split(":")[0] in ids]:
            del self.remaining[tag]


def _shared(engine: FakeEngine) -> SharedEngine:
    return SharedEngine(lambda: engine)


def _in_threads(*calls) -> None:
    threads = [threading.Thread(target=fn, args=args) for fn, *args in calls]
    for t in threads:
        t.start()
        time.sleep(0.01)  # in this order
    for t in threads:
        t.join()


def test_outputs_come_back_in_request_order():
    shared = _shared(FakeEngine())
    assert [o.text for o in shared.run([3, 1, 2], ["a", "b", "c"])] == ["out:3", "out:1", "out:2"]
    assert shared.run([], []) == []
    shared.stop()


def test_concurrent_calls_share_steps_on_one_thread_and_keep_their_own_outputs():
    engine = FakeEngine(step_seconds=0.002)
    shared = _shared(engine)
    results: dict[str, list[str]] = {}

    def call(name: str, prompts: list[int]) -> None:
        results[name] = [o.text for o in shared.run(prompts, [name] * len(prompts))]

    _in_threads((call, "a", [40, 5, 20]), (call, "b", [30, 10]))
    assert results == {"a": ["out:40", "out:5", "out:20"], "b": ["out:30", "out:10"]}
    # some step advanced both calls' requests at once: batching spans the calls
    assert any({tag.split(":")[1] for tag in batch} == {"a", "b"} for batch in engine.batches)
    assert engine.threads == {"vllm-engine"}  # one thread computes, whoever calls
    shared.stop()


def test_call_waits_for_batches_in_flight_and_holds_later_ones_back():
    engine = FakeEngine(step_seconds=0.002)
    shared = _shared(engine)
    seen: dict[str, object] = {}

    def reload() -> str:
        seen["in_flight_at_reload"] = set(engine.remaining)
        seen["steps_at_reload"] = len(engine.batches)
        return "reloaded"

    _in_threads((shared.run, [30], ["before"]), (lambda: seen.update(result=shared.call(reload)),),
                (shared.run, [5], ["after"]))
    assert seen["result"] == "reloaded" and seen["in_flight_at_reload"] == set()
    # the batch sent after the reload never shared a step with the one before it
    first_after = next(n for n, b in enumerate(engine.batches) if any(t.endswith(":after") for t in b))
    assert first_after >= seen["steps_at_reload"]
    shared.stop()


def test_a_failed_check_adds_nothing_and_the_engine_goes_on():
    engine = FakeEngine()
    shared = _shared(engine)

    def stale() -> None:
        raise RuntimeError("stale weights")

    with pytest.raises(RuntimeError, match="stale"):
        shared.run([1, 2], ["a", "a"], before_add=stale)
    assert not engine.prompts
    assert [o.text for o in shared.run([2], ["b"])] == ["out:2"]
    shared.stop()


def test_an_engine_that_loses_requests_fails_the_call_instead_of_spinning():
    engine = FakeEngine()
    shared = _shared(engine)
    engine.add_request = lambda request_id, prompt, params: request_id  # accepted, never scheduled
    with pytest.raises(RuntimeError, match="without outputs"):
        shared.run([1], ["a"])
    shared.stop()


def test_a_failing_build_is_raised_to_the_constructor():
    def broken():
        raise OSError("no such model")

    with pytest.raises(OSError, match="no such model"):
        SharedEngine(broken)
