"""Training rows -> token tensors, and per-sequence response log-probs (torch, no Ray).

The tokens trained on are the tokens generated: rows carry the chat-templated prompt ids and the sampled response
ids from the generation stage. Rows from elsewhere (a uclaml/SPPO or TRL Parquet) have only chat messages; the
tokenizer's chat template is applied to them the same way the generators apply it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["PairBatch", "collate_pairs", "row_token_ids", "sequence_logps", "training_columns"]


def _template_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


_TOKEN_COLUMNS = ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids")
_PROBABILITY_COLUMNS = ("chosen_probs", "chosen_probs_win", "chosen_probs_lose")


def training_columns(names: Sequence[str]) -> list[str]:
    """The columns of a training set (with columns ``names``) that training reads: token ids where it has them,
    else the chats to tokenise, and the three probabilities. Our own train.parquet also holds every answer's text
    and each prompt's K×K table, about three quarters of its bytes at the paper's shape, which no worker reads."""
    text = () if all(c in names for c in _TOKEN_COLUMNS) else ("chosen", "rejected")
    return [c for c in (*_TOKEN_COLUMNS, *text, *_PROBABILITY_COLUMNS) if c in names]


def row_token_ids(row: dict[str, Any], tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen response ids, rejected response ids) of one training row."""
    if row.get("prompt_token_ids") is not None and row.get("chosen_token_ids") is not None:
        return list(row["prompt_token_ids"]), list(row["chosen_token_ids"]), list(row["rejected_token_ids"])
    prompt = _template_ids(tokenizer, row["chosen"][:-1])
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def response(messages: Sequence[dict[str, str]]) -> list[int]:
        return tokenizer.encode(messages[-1]["content"], add_special_tokens=False) + eos

    return prompt, response(row["chosen"]), response(row["rejected"])


@dataclass(frozen=True)
class PairBatch:
    # [2B, T]: the B chosen sequences, then the B rejected ones (one forward pass for both).
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    # [2B, T]: 1 on response tokens (the ones whose log-probs are summed), 0 on prompt and padding.
    response_mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate_pairs(
    pairs: Sequence[tuple[list[int], list[int], list[int]]], max_length: int, max_prompt_length: int, pad_id: int
) -> PairBatch:
    """Right-padded [chosen..., rejected...] sequences; prompts cut from the left, responses from the right."""
    seqs: list[tuple[list[int], list[int]]] = []
    for side in (1, 2):
        for pair in pairs:
            prompt = pair[0][-max_prompt_length:]
            seqs.append((prompt, pair[side][: max_length - len(prompt)]))
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.long)
    for n, (p, r) in enumerate(seqs):
        ids[n, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        mask[n, : len(p) + len(r)] = 1
        resp[n, len(p) : len(p) + len(r)] = 1
    return PairBatch(ids, mask, resp)


def sequence_logps(model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
    """Sum of log π(token) over each sequence's response tokens; shape [2B]."""
    device = next(model.parameters()).device
    ids = batch.input_ids.to(device)
    logits = model(input_ids=ids, attention_mask=batch.attention_mask.to(device)).logits[:, :-1].float()
    targets = ids[:, 1:]
    token_logps = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (token_logps * batch.response_mask[:, 1:].to(device)).sum(-1)
