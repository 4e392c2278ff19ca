"""K×K preference tables, win rates and winner/loser selection (numpy only, no Ray).

Convention: ``logits[..., i, j]`` is the judge's logit that candidate i beats candidate j when i is shown first.
Leading batch dimensions are allowed everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Selection",
    "debiased_table",
    "reference_scores",
    "reference_table",
    "select",
    "sigmoid",
    "win_rates",
]


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _check_square(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"expected [..., K, K] logits, got shape {logits.shape}")
    return logits


def debiased_table(logits: np.ndarray) -> np.ndarray:
    """P[i, j] = (σ(l[i, j]) + σ(−l[j, i])) / 2, P[i, i] = ½: both presentation orders averaged.

    Averaging the two orders removes a judge's position bias and makes P[i, j] + P[j, i] = 1 exactly; P[i, j] depends
    only on candidates i and j (unlike :func:`reference_table`).
    """
    logits = _check_square(logits)
    p = (sigmoid(logits) + sigmoid(-np.swapaxes(logits, -1, -2))) / 2.0
    k = logits.shape[-1]
    p[..., np.arange(k), np.arange(k)] = 0.5
    return p


def reference_scores(logits: np.ndarray) -> np.ndarray:
    """uclaml/SPPO's rank score s_i = mean over j of (l[i, j] − l[j, i]), diagonal taken as 0, mean over K."""
    logits = _check_square(logits).copy()
    k = logits.shape[-1]
    logits[..., np.arange(k), np.arange(k)] = 0.0
    return (logits - np.swapaxes(logits, -1, -2)).mean(axis=-1)


def reference_table(logits: np.ndarray) -> np.ndarray:
    """The reference implementation's table P[i, j] = σ(s_i − s_j), for comparability with its published runs."""
    s = reference_scores(logits)
    return sigmoid(s[..., :, None] - s[..., None, :])


def win_rates(table: np.ndarray) -> np.ndarray:
    """P̂(y_i ≻ π_t) = mean over k of P[i, k], the ½ self term included (design.md, step 4)."""
    return np.asarray(table, dtype=np.float64).mean(axis=-1)


@dataclass(frozen=True)
class Selection:
    # Indices of the kept responses, (winner, loser); empty when every score is equal (no preference signal).
    kept: tuple[int, ...]
    # Why nothing was kept, or "" when something was.
    skipped_reason: str = ""


def select(scores: np.ndarray, mode: str = "pair", *, atol: float = 1e-9) -> Selection:
    """Choose the winner and loser of one prompt's K responses: the highest and the lowest score (design.md, step 5).

    Tie rule: among equal best (or equal worst) scores, within ``atol``, the lowest sample index wins the tie, so the
    choice is deterministic and independent of the sort algorithm; the loser is never the winner, even when the
    scores' range lies between ``atol`` and ``2 * atol`` (then one response can be within ``atol`` of both ends).
    If max − min ≤ atol there is no pair.

    Args:
        scores: shape [K]; win rates (debiased mode) or s_i (reference mode).
        mode: "pair", the only mode (keeping all K as pairs with the best counted the best response K − 1 times
            and trained tied responses as preferences; it was removed).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 2:
        raise ValueError(f"expected a 1-D array of at least 2 scores, got shape {scores.shape}")
    if mode != "pair":
        raise ValueError(f"unknown selection mode {mode!r} (use 'pair')")
    if not np.all(np.isfinite(scores)):
        return Selection((), "judge returned a non-finite score")
    if scores.max() - scores.min() <= atol:
        return Selection((), "all scores equal")
    winner = int(np.flatnonzero(scores >= scores.max() - atol)[0])
    losers = [int(i) for i in np.flatnonzero(scores <= scores.min() + atol) if i != winner]
    return Selection((winner, losers[0] if losers else int(np.argmin(scores))))
