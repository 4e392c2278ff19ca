"""JudgeActor: one long-lived judge model, scoring K×K tables for batches of generated rows."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sppo_ray.config import JudgeConfig
from sppo_ray.judging.judges import build_judge
from sppo_ray.judging.scoring import judge_rows

__all__ = ["JudgeActor"]


class JudgeActor:
    """Owns one judge (PairRM, an LLM, or the scripted length judge). Wrap with ``ray.remote``.

    Args:
        model_path: HF directory of the judge model (unused by kind "length").
        cfg: the judge part of the run config.
        threads: torch threads (0: every core of the node).
        device: "cuda" or "cpu" for the judge model; None: cuda when one is visible.
    """

    def __init__(self, model_path: str | None, cfg: JudgeConfig, threads: int = 0, device: str | None = None,
                 index: int = 0) -> None:
        import torch

        from sppo_ray.runtime import log_role_output

        log_role_output(f"judge-{index}")  # transformers' output into the run's logs/, not the driver's terminal

        # Ray sets OMP_NUM_THREADS to the actor's CPU reservation (1); while judging, the other roles are idle.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        started = time.perf_counter()
        self.cfg = cfg
        self.judge = build_judge(cfg.kind, model_path, cfg, device)
        self.device = getattr(self.judge, "device", "cpu")
        self.events: list[dict[str, Any]] = []
        self.on_host = False  # offloaded (colocated layout); the next call brings it back
        self.residency_lock = threading.Lock()
        self.startup_seconds = time.perf_counter() - started

    def ready(self) -> dict[str, Any]:
        return {"judge": self.judge.name, "startup_seconds": self.startup_seconds}

    def judge_batch(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """JudgedPrompt rows for GeneratedPrompt rows; records carry the pair count and seconds for metrics."""
        started = time.perf_counter()
        self.onload()  # an offloaded judge comes back for work it is given (no-op when resident)
        out = judge_rows(rows, self.judge, self.cfg.table, self.cfg.selection)
        pairs = sum(len(r["responses"]) * (len(r["responses"]) - 1) for r in rows)
        return {"rows": out, "records": [{"pairs": pairs, "seconds": time.perf_counter() - started}]}

    def pair_logits(self, prompts: list[str], first: list[str], second: list[str],
                    batch_size: int | None = None, instructions: list[str | None] | None = None) -> list[float]:
        """Raw logits for arbitrary pairs (evaluation and benchmarks use this).

        ``batch_size`` overrides the configured pairs per forward pass; 1 scores one pair per call, as uclaml/SPPO
        ranks with PairRM (the benchmarks' reference-style baseline). ``instructions``: each pair's prompt's
        instructions as JSON (the verifier judge needs them; the others ignore them).
        """
        self.onload()
        if batch_size == 1:  # one call per pair, as the reference ranks
            ins = instructions or [None] * len(prompts)
            return [float(self.judge.pair_logits([p], [a], [b], 1, instructions=[i])[0])
                    for p, a, b, i in zip(prompts, first, second, ins)]
        return self.judge.pair_logits(prompts, first, second, batch_size, instructions=instructions).tolist()

    def time_pair_logits(self, prompts: list[str], first: list[str], second: list[str], batch_size: int) -> float:
        """Seconds to score these pairs at ``batch_size`` inside the actor (benchmarks: bare engine baselines)."""
        started = time.perf_counter()
        self.pair_logits(prompts, first, second, batch_size)
        return time.perf_counter() - started

    def memory_probe(self, max_batch_tokens: int, max_source: int, max_candidate: int) -> dict[str, Any]:
        """Score one batch of the longest pairs the config allows, up to ``max_batch_tokens`` padded tokens, and
        report the GPU memory it peaked at (`sppo-ray rehearse` on GPUs): {"pairs", "seconds", "peak_gib",
        "device_gib"}; on CPU only the pairs and seconds."""
        import torch

        self.onload()
        words = " ".join(["token"] * max(max_source, max_candidate) * 2)  # longer than any truncation
        pairs = max(1, max_batch_tokens // (max_source + 2 * max_candidate))
        cuda = torch.cuda.is_available() and self.device != "cpu"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        self.judge.pair_logits([words] * pairs, [words] * pairs, [words] * pairs, pairs)
        out = {"pairs": pairs, "seconds": time.perf_counter() - started, "peak_gib": None, "device_gib": None}
        if cuda:
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["device_gib"] = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        return out

    # -- colocated layout: the judge leaves its GPU share to the trainer and the engine -------------------------

    def offload(self) -> None:
        """Move the judge model to host memory and free its GPU cache (no-op, recorded, for a CPU judge)."""
        self._move("cpu", "offload")

    def onload(self) -> None:
        """Bring the judge model back to its device before judging."""
        self._move(self.device, "onload")

    def placement(self) -> dict[str, Any]:
        """Node, placement group and bundle this actor runs in (see orchestration/colocation.py)."""
        from sppo_ray.runtime import where_am_i

        return where_am_i()

    def residency_events(self) -> list[dict[str, Any]]:
        """Every offload/onload so far: {call, real, at} (real False: a CPU judge, nothing moved)."""
        return list(self.events)

    def _move(self, device: str, call: str) -> None:
        with self.residency_lock:
            if self.on_host == (call == "offload"):
                return
            model = getattr(self.judge, "model", None)
            real = model is not None and self.device != "cpu"
            if real:
                import torch

                model.to(device)
                self.judge.device = device
                if device == "cpu":
                    torch.cuda.empty_cache()
            self.on_host = call == "offload"
            self.events.append({"call": call, "real": real, "at": time.time()})

    def shutdown(self) -> None:
        self.judge = None
