"""Typed contracts for what crosses a role boundary (rows between stages, weights between trainer and generators).

Rows travel through Ray Data and Parquet as plain dicts; these dataclasses name and document every column, and
``to_row`` / ``from_row`` are the only places that convert.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GeneratedPrompt", "JudgedPrompt", "PolicyWeights"]


@dataclass(frozen=True)
class PolicyWeights:
    """One version of the policy, as the generators receive it."""

    # 0 is π_0 (the starting model); round t's update produces version t + 1.
    version: int
    # ObjectRef of a {name: tensor} state dict in HF naming (the default broadcast), or None.
    state_dict_ref: Any = None
    # An HF directory of this version (an exported round model), or None.
    path: str | None = None
    # (file name, bytes) of each safetensors file under ``path``. A generator that sees these files loads them from
    # disk itself; one that does not pulls them one at a time from ``shard_source``.
    files: tuple[tuple[str, int], ...] = ()
    # Handle of a ShardSource actor on a node that can read ``path`` (only when some generator cannot), or None.
    shard_source: Any = None


@dataclass(frozen=True)
class GeneratedPrompt:
    """One prompt's K samples from the policy (a row of ``responses.parquet``)."""

    prompt_id: str
    # The chat turns given to the model, JSON-encoded list of {role, content}.
    messages_json: str
    # Chat-templated prompt tokens exactly as generated from (training reuses them).
    prompt_token_ids: list[int]
    # The K responses, their token ids, token counts and vLLM finish reasons ("stop" or "length").
    responses: list[str]
    response_token_ids: list[list[int]]
    num_tokens: list[int]
    finish_reasons: list[str]
    # Policy version that produced every sample of this row.
    policy_version: int
    # The last user turn was shortened from the left to fit generation.max_prompt_tokens.
    truncated: bool = False

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "GeneratedPrompt":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})

    @property
    def messages(self) -> list[dict[str, str]]:
        return json.loads(self.messages_json)


@dataclass(frozen=True)
class JudgedPrompt:
    """One prompt's K×K preference table from the judge (a row of ``tables.parquet``)."""

    prompt_id: str
    # Raw judge logits, row-major K×K: logits[i*K + j] = logit that i beats j with i shown first (diagonal 0).
    logits: list[float]
    # Preference table P (row-major K×K) in the configured mode, and the per-response scores used for selection
    # (win rates in "debiased" mode, rank scores s_i in "reference" mode).
    table: list[float]
    win_rates: list[float]
    scores: list[float]
    k: int
    judge: str
    table_mode: str
    policy_version: int
    # Selected response indices (winner first); empty when every score is equal.
    kept: list[int] = field(default_factory=list)
    skipped_reason: str = ""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "JudgedPrompt":
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})
