"""From generated rows to K×K tables and selections, given any :class:`PairJudge` (no Ray)."""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from sppo_ray.contracts import JudgedPrompt
from sppo_ray.judging.judges import PairJudge
from sppo_ray.judging.tables import debiased_table, reference_scores, reference_table, select, win_rates

__all__ = ["judge_rows", "ordered_pairs", "prompt_text"]


def ordered_pairs(k: int) -> list[tuple[int, int]]:
    """All K(K−1) ordered pairs (i, j), i ≠ j: each unordered pair is judged in both presentation orders."""
    return [(i, j) for i in range(k) for j in range(k) if i != j]


def prompt_text(messages: Sequence[dict[str, str]]) -> str:
    """What the judge sees as the question: the last user turn (earlier turns, if any, are prefixed)."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def judge_rows(rows: list[dict[str, Any]], judge: PairJudge, table_mode: str, selection: str) -> list[dict[str, Any]]:
    """Judge every ordered pair of each row's K responses in one packed call, then build tables and selections.

    Args:
        rows: GeneratedPrompt rows (``prompt_id``, ``messages_json``, ``responses``, ``policy_version``), and the
            prompt's instructions as JSON in ``instructions_json`` when it has any (the verifier judge's input).
        table_mode: "debiased" or "reference" (see :mod:`sppo_ray.judging.tables`).
        selection: "pair" or "all".
    Returns:
        JudgedPrompt rows, one per input row.
    """
    prompts, first, second, instructions, owners = [], [], [], [], []
    for n, row in enumerate(rows):
        text, responses = prompt_text(json.loads(row["messages_json"])), row["responses"]
        for i, j in ordered_pairs(len(responses)):
            prompts.append(text)
            first.append(responses[i])
            second.append(responses[j])
            instructions.append(row.get("instructions_json") or None)
            owners.append((n, i, j))
    flat = judge.pair_logits(prompts, first, second, instructions=instructions) if prompts else np.zeros(0)
    matrices = [np.zeros((len(r["responses"]),) * 2) for r in rows]
    for (n, i, j), value in zip(owners, flat):
        matrices[n][i, j] = value
    return [_judged(row, logits, judge.name, table_mode, selection) for row, logits in zip(rows, matrices)]


def _judged(row: dict[str, Any], logits: np.ndarray, judge_name: str, mode: str, selection: str) -> dict[str, Any]:
    if mode == "debiased":
        table = debiased_table(logits)
        rates = win_rates(table)
        scores = rates
    else:
        table = reference_table(logits)
        rates = win_rates(table)
        scores = reference_scores(logits)
    chosen = select(scores, selection)
    return JudgedPrompt(
        prompt_id=row["prompt_id"],
        logits=logits.reshape(-1).tolist(),
        table=table.reshape(-1).tolist(),
        win_rates=rates.tolist(),
        scores=np.asarray(scores).tolist(),
        k=int(logits.shape[0]),
        judge=judge_name,
        table_mode=mode,
        policy_version=int(row["policy_version"]),
        kept=list(chosen.kept),
        skipped_reason=chosen.skipped_reason,
    ).to_row()
