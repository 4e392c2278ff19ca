"""The verifier judge: preferences from IFEval's instruction checkers instead of a model (no Ray, no torch).

A response's score s is the fraction of its prompt's instructions it follows (:func:`sppo_ray.instructions.
follow_score`, strict or loose). The logit that i beats j is (s_i − s_j)/τ, so the debiased table of
:mod:`sppo_ray.judging.tables` is exactly P(i ≻ j) = σ((s_i − s_j)/τ), and ½ when the scores tie.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from sppo_ray.instructions import check_response, follow_score, instructions_from_json

__all__ = ["VerifierJudge"]


class VerifierJudge:
    """Scores responses with the instructions their prompt carries; cheap, deterministic, one actor is plenty.

    Each (instructions, response) is checked once: a prompt's K responses appear in 2(K−1) pairs each.

    Args:
        tau: temperature τ of P(i ≻ j) = σ((s_i − s_j)/τ).
        mode: "strict" or "loose" (IFEval's definitions).
    Raises:
        ValueError: (from ``pair_logits``) a pair whose prompt carries no instructions.
    """

    def __init__(self, tau: float = 0.25, mode: str = "loose") -> None:
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if mode not in ("strict", "loose"):
            raise ValueError(f"unknown verifier mode {mode!r} (use 'strict' or 'loose')")
        self.tau, self.mode = tau, mode
        self.name = f"verifier:{mode}"
        self.score = lru_cache(maxsize=65536)(self._score)

    def _score(self, instructions_json: str, response: str) -> float:
        return follow_score(check_response(instructions_from_json(instructions_json), response), self.mode)

    def pair_logits(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                    max_rows: int | None = None, instructions: Sequence[str | None] | None = None) -> np.ndarray:
        """(s(first) − s(second))/τ per pair; ``instructions[n]`` is pair n's prompt's instructions as JSON."""
        if instructions is None or len(instructions) != len(first) or not all(instructions):
            raise ValueError("the verifier judge needs every prompt's instructions (data.prompts with an "
                             "'instructions' field, e.g. embedded:verifiable)")
        return np.array([(self.score(ins, a) - self.score(ins, b)) / self.tau
                         for ins, a, b in zip(instructions, first, second)], dtype=np.float64)
