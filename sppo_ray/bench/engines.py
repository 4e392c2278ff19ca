"""Bare engines the benchmarks measure the pipeline against (no sppo_ray actor, pool or stage around them)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["BareVLLM", "chat_on_generator", "start_step_log", "take_step_log", "timed_chat"]


def timed_chat(llm: Any, cfg, conversations: list[list[dict[str, str]]]) -> dict[str, float]:
    """One plain ``LLM.chat`` call over ``conversations``, K samples each at the run's sampling: tokens, seconds."""
    from vllm import SamplingParams

    params = SamplingParams(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                            seed=cfg.seed)
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    return {"tokens": sum(len(o.token_ids) for out in outputs for o in out.outputs), "seconds": seconds}


def chat_on_generator(generator: Any, conversations: list[list[dict[str, str]]]) -> dict[str, float]:
    """:func:`timed_chat` on a live GeneratorActor's own engine, for ``actor.__ray_call__``: the bare engine in the
    generator's process, run on its engine thread once no request of the pipeline is in flight (a sleeping engine
    is woken first, as for the pipeline's own calls)."""
    generator.wake_up()
    return generator.engine.call(lambda: timed_chat(generator.llm, generator.cfg, conversations))


def start_step_log(generator: Any) -> float:
    """For ``actor.__ray_call__``: from now on the generator's engine notes each of its steps as (start, end) on
    this process's ``perf_counter`` (both the pipeline's calls and a bare ``LLM.chat`` step the same engine object);
    returns that clock's now. Calling it again starts a new log."""
    engine = generator.llm.llm_engine
    if getattr(engine, "bench_steps", None) is None:
        step = engine.step

        def logged_step() -> Any:
            started = time.perf_counter()
            try:
                return step()
            finally:
                engine.bench_steps.append((started, time.perf_counter()))

        engine.step = logged_step
    engine.bench_steps = []
    return time.perf_counter()


def take_step_log(generator: Any) -> tuple[list[tuple[float, float]], float]:
    """For ``actor.__ray_call__``: the steps noted since :func:`start_step_log`, and this process's clock now."""
    return generator.llm.llm_engine.bench_steps, time.perf_counter()


class BareVLLM:
    """A plain vLLM engine in a Ray actor, driven with one `LLM.chat` call: the generation baseline."""

    def __init__(self, model_path: str, cfg) -> None:
        from sppo_ray.generation.actor import build_engine

        self.llm = build_engine(model_path, cfg)  # the generators' engine settings (and Ray options, see callers)
        self.cfg = cfg

    def pid(self) -> int:
        return os.getpid()

    def run(self, conversations: list[list[dict[str, str]]]) -> dict[str, float]:
        return timed_chat(self.llm, self.cfg, conversations)

    def sample_passes(self, prompts: list[tuple[str, list[dict[str, str]]]]) -> list[dict[str, Any]]:
        """uclaml/SPPO's sampling: one pass over all prompts per sample index j, with seed j; GeneratedPrompt rows."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from sppo_ray.generation.actor import generated_row
        from sppo_ray.generation.sampling import fit_prompt

        c, tokenizer = self.cfg, self.llm.get_tokenizer()
        fitted = [(pid, messages, fit_prompt(tokenizer, messages, c.max_prompt_tokens, c.overlong_prompts))
                  for pid, messages in prompts]
        fitted = [f for f in fitted if f[2].token_ids is not None]
        requests = [TokensPrompt(prompt_token_ids=fit.token_ids) for _, _, fit in fitted]
        passes = [self.llm.generate(requests, SamplingParams(temperature=c.temperature, top_p=c.top_p,
                                                             max_tokens=c.max_new_tokens, seed=j), use_tqdm=False)
                  for j in range(c.k)]
        return [generated_row(pid, json.dumps(messages), fit, [p[n].outputs[0] for p in passes], 0)
                for n, (pid, messages, fit) in enumerate(fitted)]

    def shutdown(self) -> None:
        self.llm.llm_engine.engine_core.shutdown()
