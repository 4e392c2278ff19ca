"""Judge batches sized by a token budget, scored with an out-of-memory split (torch only, no Ray).

A batch's memory grows with rows × its longest row, not with its row count: batches are formed from pairs sorted
longest first, each holding as many rows as fit ``max_tokens`` padded tokens (and at most ``max_rows``), so the
largest batch is known before the first forward. If a forward still runs out of GPU memory (fragmentation, another
process on the GPU), the batch is split in halves and retried instead of failing the round.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

__all__ = ["JudgeOutOfMemory", "is_out_of_memory", "score_in_batches", "token_budget_batches"]

log = logging.getLogger(__name__)


class JudgeOutOfMemory(RuntimeError):
    """A single pair does not fit in GPU memory; the message names its length and the keys to change."""


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[np.ndarray]:
    """Index batches of length-sorted rows (longest first) with rows × longest ≤ ``max_tokens``, rows ≤ ``max_rows``.

    A row longer than the budget forms a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)  # the first row of a batch is its longest
        rows = max(1, min(max_rows, max_tokens // longest))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def is_out_of_memory(err: BaseException) -> bool:
    """True for torch's device out-of-memory error (the class exists in CPU builds too)."""
    import torch

    return isinstance(err, torch.OutOfMemoryError)


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def score_in_batches(lengths: Sequence[int], max_tokens: int, max_rows: int,
                     forward: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``forward(idx)`` over token-budget batches, splitting a batch that runs out of memory; one value per row.

    Args:
        lengths: token count of each row (pair).
        max_tokens: most padded tokens per batch (rows x the batch's longest row).
        max_rows: most rows per batch.
        forward: the values of the rows ``idx`` (indices into ``lengths``), in that order.
    Returns:
        One value per row, in the order of ``lengths``; equal to what unsplit batches give.
    Raises:
        JudgeOutOfMemory: a single pair runs out of memory on its own.
        Exception: any other error of ``forward``, unchanged (only out-of-memory splits).
    """
    out = np.zeros(len(lengths), dtype=np.float64)
    for idx in token_budget_batches(lengths, max_tokens, max_rows):
        _score_splitting(idx, lengths, forward, out)
    return out


def _single_pair_message(tokens: int) -> str:
    return (
        f"one judge pair of {tokens} tokens runs out of GPU memory even alone. Shorten pairs with "
        "judge.max_source_tokens / judge.max_candidate_tokens (a pair has at most max_source_tokens + "
        "2 x max_candidate_tokens tokens), use judge.dtype: bfloat16, or give each judge a whole GPU "
        "(resources.judge_gpus: 1); lower judge.max_batch_tokens if other batches come close too."
    )


def _score_splitting(idx: np.ndarray, lengths: Sequence[int], forward, out: np.ndarray) -> None:
    try:
        out[idx] = forward(idx)
        return
    except Exception as err:  # noqa: BLE001 - only out-of-memory is handled; everything else goes up
        if not is_out_of_memory(err):
            raise
        if len(idx) == 1:
            raise JudgeOutOfMemory(_single_pair_message(int(lengths[idx[0]]))) from err
    # Freed only here: inside the except block the error's traceback still holds the failed forward's tensors.
    _free_device_cache()
    half = len(idx) // 2
    log.warning("judge batch of %d pairs (longest %d tokens) ran out of memory; retrying as %d + %d pairs",
                len(idx), int(max(lengths[i] for i in idx)), half, len(idx) - half)
    _score_splitting(idx[:half], lengths, forward, out)
    _score_splitting(idx[half:], lengths, forward, out)
