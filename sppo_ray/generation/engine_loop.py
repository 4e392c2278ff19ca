"""One in-process vLLM engine serving several concurrent calls from a single engine thread (no Ray here).

A generator actor runs a few calls at once (Ray's threaded actors), so the next Ray Data batch is already in the
engine while the current one finishes: vLLM's continuous batching then spans batches, and the engine never drains
to a handful of long sequences between two batches. ``LLM.generate`` cannot be shared like that (each call steps the
engine and takes every finished output), so calls go through :class:`SharedEngine`.

All engine work happens on one thread: on CPU every thread that computes brings its own OpenMP team, and two teams
taking turns on the same cores spin against each other.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["SharedEngine"]


@dataclass
class _Requests:
    prompts: Sequence[Any]
    params: Sequence[Any]
    before_add: Callable[[], None] | None
    future: Future = field(default_factory=Future)
    ids: list[str] = field(default_factory=list)


@dataclass
class _Call:
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)


class SharedEngine:
    """Owns an engine on a thread of its own; :meth:`run` and :meth:`call` may be used from any thread.

    Jobs are taken in order. Requests join the engine as soon as they arrive (continuous batching across calls);
    a :meth:`call` waits until no request is in flight and holds back later jobs until it has run, so a weight
    reload never lands in the middle of a batch.

    Args:
        build: makes the ``vllm.LLM`` on the engine thread (available as ``.llm`` afterwards). Its ``llm_engine``
            is used through ``add_request(request_id, prompt, params)``, ``step()`` (outputs carry the
            ``request_id`` they were added with, and ``finished``), ``has_unfinished_requests()`` and
            ``abort_request(ids)``; sampling params must ask for final outputs only.

    Raises:
        Whatever ``build`` raises.
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.waiting: list[_Requests] = []  # added to the engine, not finished
        self.finished: dict[str, Any] = {}
        self.counter = 0
        started: Future = Future()
        self.thread = threading.Thread(target=self._serve, args=(build, started), name="vllm-engine", daemon=True)
        self.thread.start()
        self.llm = started.result()
        self.engine = self.llm.llm_engine

    def run(self, prompts: Sequence[Any], params: Sequence[Any], before_add: Callable[[], None] | None = None) -> list:
        """Outputs for ``prompts`` in order. ``before_add`` runs on the engine thread just before the requests go in
        (e.g. a check that the engine holds the expected policy version; if it raises, nothing is added)."""
        job = _Requests(prompts, params, before_add)
        self.jobs.put(job)
        return job.future.result()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine thread once no request is in flight (weight reloads, shutdown)."""
        job = _Call(fn)
        self.jobs.put(job)
        return job.future.result()

    def stop(self) -> None:
        """End the engine thread once the jobs queued before are done (call it when no caller waits any more)."""
        self.jobs.put(None)
        self.thread.join()

    # -- the engine thread -------------------------------------------------------------------------------------
    def _serve(self, build: Callable[[], Any], started: Future) -> None:
        try:
            llm = build()
        except BaseException as err:  # noqa: BLE001 - handed to the constructor's caller
            started.set_exception(err)
            return
        self.engine = llm.llm_engine
        started.set_result(llm)
        held: _Call | None = None  # a call waiting for the engine to drain; later jobs wait behind it
        while True:
            if held is None:
                try:  # block only when there is nothing to step
                    job = self.jobs.get(block=not self.waiting)
                except queue.Empty:
                    job = False
                if job is None:
                    return
                if isinstance(job, _Call):
                    held = job
                elif job:
                    self._add(job)
                    continue  # take every queued job before the next step
            if held is not None and not self.waiting:
                self._settle(held.future, held.fn)
                held = None
                continue
            self._step()

    def _add(self, job: _Requests) -> None:
        try:
            if job.before_add is not None:
                job.before_add()
            for prompt, params in zip(job.prompts, job.params):
                self.counter += 1
                job.ids.append(f"r{self.counter}")  # outputs carry this id (add_request returns an internal one)
                self.engine.add_request(job.ids[-1], prompt, params)
        except BaseException as err:  # noqa: BLE001 - the caller gets it
            if job.ids:
                self.engine.abort_request(job.ids)
            job.future.set_exception(err)
            return
        self.waiting.append(job)
        self._deliver()

    def _step(self) -> None:
        try:
            if not self.engine.has_unfinished_requests():
                raise RuntimeError("the engine finished without outputs for requests still waiting")
            for out in self.engine.step():
                if out.finished:
                    self.finished[out.request_id] = out
        except BaseException as err:  # noqa: BLE001 - every waiting caller gets it; the engine thread goes on
            for job in self.waiting:
                self.engine.abort_request([i for i in job.ids if i not in self.finished])
                job.future.set_exception(err)
            self.waiting, self.finished = [], {}
            return
        self._deliver()

    def _deliver(self) -> None:
        for job in [j for j in self.waiting if all(i in self.finished for i in j.ids)]:
            self.waiting.remove(job)
            job.future.set_result([self.finished.pop(i) for i in job.ids])

    @staticmethod
    def _settle(future: Future, fn: Callable[[], Any]) -> None:
        try:
            future.set_result(fn())
        except BaseException as err:  # noqa: BLE001 - the caller gets it
            future.set_exception(err)
