"""Pure helpers for sampling: per-sample seeds and prompt length policy (no Ray, no vLLM)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["FittedPrompt", "fit_prompt", "sample_seed"]


def sample_seed(run_seed: int, iteration: int, prompt_id: str, sample_index: int) -> int:
    """A 31-bit seed that depends only on (run seed, iteration, prompt id, sample index).

    Every sample is its own vLLM request with this seed, so a rerun reproduces each response whatever the batching,
    the number of generator actors, or which actor served the prompt.
    """
    key = f"{run_seed}:{iteration}:{prompt_id}:{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


@dataclass(frozen=True)
class FittedPrompt:
    # Chat-templated prompt token ids (with the generation prompt), or None when the prompt is skipped.
    token_ids: list[int] | None
    # True when the last user turn was shortened from the left to fit.
    truncated: bool
    # Why the prompt was skipped ("" when it was not).
    skipped_reason: str = ""


def _template(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def fit_prompt(tokenizer: Any, messages: Sequence[dict[str, str]], max_tokens: int, policy: str) -> FittedPrompt:
    """Apply the chat template and enforce ``max_tokens``.

    Truncation drops tokens from the *start of the last user turn's content*, never the template's role markers,
    so the model still sees a well-formed chat that ends with the generation prompt.

    Args:
        policy: "truncate" or "skip".
    """
    if not messages or not str(messages[-1].get("content", "")).strip():
        return FittedPrompt(None, False, "empty prompt")
    ids = _template(tokenizer, messages)
    if len(ids) <= max_tokens:
        return FittedPrompt(ids, False)
    if policy == "skip":
        return FittedPrompt(None, False, f"prompt has {len(ids)} tokens > max_prompt_tokens {max_tokens}")
    head, last = list(messages[:-1]), dict(messages[-1])
    content_ids = tokenizer.encode(last["content"], add_special_tokens=False)
    overflow = len(ids) - max_tokens
    for _ in range(4):  # re-tokenising a cut string can shift by a token or two; a few rounds always settle it
        keep = len(content_ids) - overflow
        if keep <= 0:
            return FittedPrompt(None, False, f"chat template alone exceeds max_prompt_tokens {max_tokens}")
        last["content"] = tokenizer.decode(content_ids[-keep:])
        ids = _template(tokenizer, head + [last])
        if len(ids) <= max_tokens:
            return FittedPrompt(ids, True)
        overflow += len(ids) - max_tokens
    return FittedPrompt(None, False, f"could not truncate prompt to {max_tokens} tokens")
