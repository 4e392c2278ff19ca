"""GeneratorActor: one long-lived vLLM engine serving the current policy, with in-place weight updates."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from sppo_ray.actor_pool import StaleState
from sppo_ray.config import GenerationConfig
from sppo_ray.contracts import GeneratedPrompt
from sppo_ray.generation.engine_loop import SharedEngine
from sppo_ray.generation.reload_log import install_reload_filter
from sppo_ray.generation.sampling import FittedPrompt, fit_prompt, sample_seed
from sppo_ray.generation.sleep import EngineSleep
from sppo_ray.generation.vllm_compat import check_vllm, engine_kwargs
from sppo_ray.generation.weights import has_files, pulled_weights

__all__ = ["GeneratorActor", "build_engine", "generated_row"]


def _engine_dtype(dtype: str) -> str:
    """"auto" is float32 on CPU (vLLM's CPU bf16 kernels turn SmolLM2's greedy "Paris" into French noise) and
    bfloat16 on GPU."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def generated_row(prompt_id: str, messages_json: str, fit: FittedPrompt, samples: list[Any], version: int) -> dict:
    """One prompt's row of responses.parquet from its fitted prompt and K vLLM ``CompletionOutput`` samples."""
    return GeneratedPrompt(
        prompt_id=prompt_id,
        messages_json=messages_json,
        prompt_token_ids=fit.token_ids,
        responses=[s.text for s in samples],
        response_token_ids=[list(s.token_ids) for s in samples],
        num_tokens=[len(s.token_ids) for s in samples],
        finish_reasons=[str(s.finish_reason) for s in samples],
        policy_version=version,
        truncated=fit.truncated,
    ).to_row()


def _sampling(**kwargs: Any) -> Any:
    """SamplingParams for :class:`SharedEngine`: one sample, final output only."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(n=1, output_kind=RequestOutputKind.FINAL_ONLY, **kwargs)


def build_engine(model_path: str, cfg: GenerationConfig, tensor_parallel: int = 1, sleep_mode: bool = False,
                 weight_transfer: str | None = None) -> Any:
    """A vLLM ``LLM`` running in this process, with the run's engine settings (see ``vllm_compat.engine_kwargs``).

    On CPU its threads come from OMP_NUM_THREADS, which the actor's options set (see ``generator_options``).

    Raises:
        VLLMVersionError: the installed vLLM is not the release line whose APIs the generators call.
    """
    check_vllm()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    from vllm import LLM

    max_model_len = cfg.max_model_len or cfg.max_prompt_tokens + cfg.max_new_tokens
    return LLM(model=model_path, dtype=_engine_dtype(cfg.dtype),
               **engine_kwargs(cfg, max_model_len, tensor_parallel, on_gpu=torch.cuda.is_available(),
                               sleep_mode=sleep_mode, weight_transfer=weight_transfer))


class GeneratorActor:
    """Owns one vLLM engine. Wrap with ``ray.remote`` (see ``build_generator_actors``).

    Args:
        model_path: HF directory of the starting policy π_0.
        cfg: the generation part of the run config.
        tensor_parallel: vLLM tensor parallel size (GPU clusters; 1 on CPU).
        sleep_mode: build the engine to sleep while other roles use its GPU (colocated layout; see
            generation/sleep.py). On CPU the sleeps are recorded no-ops.
        weight_transfer: "ipc" or "nccl": build the engine with vLLM's weight-transfer engine of that backend, so
            the train workers can hand over π_{t+1} straight from GPU memory (see training/weight_transfer.py). GPU
            only.
        index: this generator's position in the pool (its NCCL rank is 1 + index x tensor_parallel).

    The engine runs inside this actor's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so weights can be handed to it
    as Ray objects and reloaded without a restart; start-up takes ~11 s on 2 CPU cores instead of ~43 s.
    Calls may run concurrently (a threaded actor): they share the engine, which runs on a thread of its own, through
    :class:`SharedEngine`; weight reloads wait until no request is in flight.
    """

    def __init__(self, model_path: str, cfg: GenerationConfig, tensor_parallel: int = 1, sleep_mode: bool = False,
                 weight_transfer: str | None = None, index: int = 0) -> None:
        import torch

        from sppo_ray.runtime import log_role_output

        log_role_output(f"generator-{index}")  # vLLM's output into the run's logs/, not the driver's terminal

        self.cfg = cfg
        self.version = 0
        started = time.perf_counter()
        on_gpu = torch.cuda.is_available()
        self.index, self.tensor_parallel = index, tensor_parallel
        self.engine = SharedEngine(lambda: build_engine(model_path, cfg, tensor_parallel, sleep_mode, weight_transfer))
        self.llm = self.engine.llm
        self.sleeper = EngineSleep(self.llm, cfg.sleep_level, real=sleep_mode and on_gpu)
        self.tokenizer = self.llm.get_tokenizer()
        self.startup_seconds = time.perf_counter() - started
        tied = bool(getattr(self.llm.llm_engine.model_config.hf_config, "tie_word_embeddings", False))
        self.reload_warnings = install_reload_filter(tied)

    def ready(self) -> dict[str, Any]:
        """Version held, start-up seconds, process id, and the reload warnings dropped as expected / let through."""
        return {"version": self.version, "startup_seconds": self.startup_seconds, "pid": os.getpid(),
                "reload_warnings": {"suppressed": self.reload_warnings.suppressed,
                                    "logged": self.reload_warnings.passed}}

    def generate(
        self, rows: list[dict[str, Any]], iteration: int, expected_version: int, samples: int | None = None
    ) -> dict[str, Any]:
        """K samples (or ``samples``) for each prompt row ({prompt_id, messages_json}).

        Returns {"rows": [GeneratedPrompt rows], "records": [{prompt_id, reason}]} where records list the prompts
        skipped (reason) or truncated (reason "truncated").
        Over-long or empty prompts are skipped or truncated per config and never fail the batch.

        Raises:
            StaleState: this engine does not hold ``expected_version`` (the caller pushes weights and retries).
        """
        cfg, k = self.cfg, samples or self.cfg.k
        self.wake_up()  # a sleeping engine wakes for work it is given (no-op when awake)
        fitted, rejects, requests, params = [], [], [], []
        for row in rows:
            messages = json.loads(row["messages_json"])
            fit = fit_prompt(self.tokenizer, messages, cfg.max_prompt_tokens, cfg.overlong_prompts)
            if fit.token_ids is None:
                rejects.append({"prompt_id": row["prompt_id"], "reason": fit.skipped_reason})
                continue
            fitted.append((row, fit))
            for j in range(k):  # one request per sample so each has its own reproducible seed
                requests.append(fit.token_ids)
                params.append(_sampling(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                                        seed=sample_seed(cfg.seed, iteration, row["prompt_id"], j)))

        def check_version() -> None:
            if self.version != expected_version:
                raise StaleState(f"generator holds policy v{self.version}, expected v{expected_version}")

        outputs = self._run(requests, params, check_version)
        out_rows = [
            generated_row(row["prompt_id"], row["messages_json"], fit,
                          [outputs[n * k + j].outputs[0] for j in range(k)], expected_version)
            for n, (row, fit) in enumerate(fitted)
        ]
        truncated = [{"prompt_id": row["prompt_id"], "reason": "truncated"} for row, f in fitted if f.truncated]
        return {"rows": out_rows, "records": rejects + truncated}

    def greedy(self, conversations: list[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
        """Greedy answers (temperature 0), e.g. for probes that check a weight broadcast."""
        self.wake_up()
        prompts = [fit_prompt(self.tokenizer, c, 10**9, "skip").token_ids for c in conversations]
        outputs = self._run(prompts, [_sampling(temperature=0.0, max_tokens=max_new_tokens) for _ in prompts])
        return [o.outputs[0].text for o in outputs]

    def prompt_logprobs(self, text: str) -> dict[str, Any]:
        """{"version", "token_ids", "logprobs"}: each token's log-prob after the ones before it (the first has none)
        under the weights this engine holds now; a fingerprint of the policy that `sppo-ray rehearse` compares with
        the trainer's export computed by transformers."""
        self.wake_up()
        ids = list(self.tokenizer.encode(text))
        out = self._run([ids], [_sampling(temperature=0.0, max_tokens=1, prompt_logprobs=0)])[0]
        return {"version": self.version, "token_ids": ids,
                "logprobs": [float(lp[t].logprob) for lp, t in zip(out.prompt_logprobs[1:], ids[1:])]}

    def _run(self, token_ids: list[list[int]], params: list[Any], before_add=None) -> list[Any]:
        from vllm.inputs import TokensPrompt

        return self.engine.run([TokensPrompt(prompt_token_ids=ids) for ids in token_ids], params, before_add)

    def can_read(self, path: str, files: tuple[tuple[str, int], ...]) -> bool:
        """Whether this generator's node sees a policy directory's weight files (shared storage or the same node)."""
        return has_files(path, files)

    def load_policy(self, version: int, state_dict: dict[str, Any] | None = None, path: str | None = None,
                       files: tuple[tuple[str, int], ...] = (), source: Any = None) -> float:
        """Replace the engine's weights in place (no restart) and return the seconds it took.

        Give ``state_dict`` (resolved from the ObjectRef the caller passed) or ``path``, an HF directory. A directory
        this node sees (its ``files`` present, or no ``files`` given) is read by vLLM's loader one shard at a time;
        otherwise the shards are pulled one at a time from ``source`` (a ShardSource actor). ``reload_weights``
        re-runs the CPU backend's weight repacking, which a bare ``load_weights`` skips.

        Raises:
            ValueError: neither or both of state_dict and path.
            FileNotFoundError: the directory is not visible here and no source was given.
        """
        if (state_dict is None) == (path is None):
            raise ValueError("give exactly one of state_dict or path")
        if path is not None and files and not has_files(path, files) and source is None:
            raise FileNotFoundError(f"policy v{version}: {path} is not readable on this generator's node and no "
                                    "shard source was given")
        started = time.perf_counter()
        self.wake_up(["weights"])  # weights are loaded into woken memory; the KV cache waits for generation
        self.engine.call(lambda: self._reload(version, state_dict, path, files, source))  # waits for batches
        return time.perf_counter() - started

    def _reload(self, version: int, state_dict, path, files, source) -> None:
        dtype = self.llm.llm_engine.model_config.dtype  # cast here: the engine warns per tensor otherwise
        if state_dict is not None:
            weights = ((name, t.to(dtype) if t.is_floating_point() else t) for name, t in state_dict.items())
        elif files and not has_files(path, files):
            weights = pulled_weights(source, files, dtype)
        else:
            weights = None
        if weights is None:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        else:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self.version = version

    def release_memory(self) -> dict[str, int]:
        """Hand the host memory the engine freed while generating back to the OS, once no batch is in flight;
        returns this process's resident bytes before and after. On CPU the engine's process otherwise keeps its
        freed heap pages: ~150-200 MB after 1,000 prompts at the scale bench's settings (BENCHMARKS.md "Scale")."""
        from sppo_ray.runtime import process_rss, trim_heap

        before = process_rss()
        self.engine.call(trim_heap)
        return {"rss_before": before, "rss_after": process_rss()}

    # -- sleep mode (colocated layout) -------------------------------------------------------------------------

    def sleep(self) -> None:
        """Release this engine's GPU memory until ``wake_up`` (waits for batches in flight). A level-2 sleep on a GPU
        drops the weights: the engine then holds no policy version until the next load."""
        if self.engine.call(self.sleeper.sleep):
            self.version = -1

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Reallocate "weights" and/or "kv_cache" (None: both); weights before a load, the cache before generating.
        Nothing happens when the engine is awake."""
        if self.sleeper.asleep:
            self.engine.call(lambda: self.sleeper.wake_up(tags))

    def placement(self) -> dict[str, Any]:
        """Node, placement group and bundle this actor runs in (see orchestration/colocation.py)."""
        from sppo_ray.runtime import where_am_i

        return where_am_i()

    def sleep_events(self) -> list[dict[str, Any]]:
        """Every sleep and wake-up so far: {call, detail, real, at} (real False: a recorded no-op on CPU)."""
        return [dict(e.__dict__) for e in self.sleeper.events]

    # -- vLLM's weight-transfer control plane, called by vllm's RayVLLMWeightSyncClient from train rank 0 -------

    def init_weight_transfer_engine(self, request: Any) -> None:
        """Set up the receiving side (NCCL: join the trainer's group, blocking until it joins).

        vLLM gives every engine of the request the same NCCL rank offset (it expects one engine with data-parallel
        ranks); ours are separate engines, so each takes the ranks after its predecessors'."""
        info = dict(request.init_info)
        if "rank_offset" in info:
            info["rank_offset"] = 1 + self.index * self.tensor_parallel
        self.engine.call(lambda: self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": info}))

    def start_weight_update(self) -> None:
        self.engine.call(lambda: self.llm.collective_rpc("start_weight_update"))

    def update_weights(self, request: Any) -> None:
        """Receive one update from the trainer (runs while the trainer broadcasts)."""
        self.engine.call(lambda: self.llm.collective_rpc("update_weights",
                                                         kwargs={"update_info": request.update_info}))

    def finish_weight_update(self) -> None:
        def finish() -> None:
            self.llm.collective_rpc("finish_weight_update")
            self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights

        self.engine.call(finish)

    def update_weight_version(self, version: str) -> None:
        """The policy version the transferred weights are (the trainer names it when it finishes the update)."""
        self.version = int(version)

    def shutdown_weight_transfer_engine(self) -> None:
        self.engine.call(lambda: self.llm.collective_rpc("shutdown_weight_transfer_engine"))

    def shutdown(self) -> None:
        """Stop the engine explicitly instead of leaving it to garbage collection."""
        if getattr(self, "llm", None) is not None:
            self.engine.call(self.llm.llm_engine.engine_core.shutdown)
            self.engine.stop()
            self.llm = None
