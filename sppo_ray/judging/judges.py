"""Pairwise judges. Each gives, for a batch of (prompt, first, second) triples, the logit that ``first`` beats
``second`` when shown first. Tables are built from these logits in :mod:`sppo_ray.judging.tables`.

- :class:`PairRMJudge`: llm-blender's PairRM (DeBERTa-v3 pairwise ranker), the judge of the paper.
- :class:`LLMJudge`: any causal LM asked "which response is better, A or B?"; the logit is log p(A) − log p(B).
  Weak with small models (see README): SmolLM2-135M answers "A" almost always, so only the debiased (both-orders)
  table carries signal, and that signal is faint.
- :class:`LengthJudge`: scripted, prefers the shorter (or longer) response; a judge of known taste for checking that
  the loop moves the policy the way the judge prefers.
- :class:`~sppo_ray.judging.verifier.VerifierJudge`: IFEval's instruction checkers on prompts that carry
  instructions; the only judge that reads ``instructions``.
"""

from __future__ import annotations

import inspect
import threading
from typing import Protocol, Sequence

import numpy as np

from sppo_ray.judging.batching import score_in_batches

__all__ = ["LLMJudge", "LengthJudge", "PairJudge", "PairRMJudge", "build_judge", "judge_prompt"]


class PairJudge(Protocol):
    name: str

    def pair_logits(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                    max_rows: int | None = None, instructions: Sequence[str | None] | None = None) -> np.ndarray:
        """Logit that ``first[n]`` beats ``second[n]`` for ``prompts[n]`` (first shown first); shape [N].

        ``max_rows`` caps the pairs per forward pass for this call (model judges; 1 = one pair at a time).
        ``instructions[n]``: the verifiable instructions of ``prompts[n]`` as JSON, or None; only the verifier reads
        them."""


class LengthJudge:
    """Prefers the shorter (or longer) response: logit = ±(len(second) − len(first)) / 10 characters."""

    def __init__(self, prefer: str = "shorter") -> None:
        self.sign = 1.0 if prefer == "shorter" else -1.0
        self.name = f"length:{prefer}"

    def pair_logits(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                    max_rows: int | None = None, instructions: Sequence[str | None] | None = None) -> np.ndarray:
        return np.array([self.sign * (len(b) - len(a)) / 10.0 for a, b in zip(first, second)], dtype=np.float64)


_JUDGE_TEMPLATE = (
    "Which response answers the question better? Reply with one letter, A or B.\n\n"
    "Question:\n{prompt}\n\nResponse A:\n{first}\n\nResponse B:\n{second}\n\n"
    "Which response is better, A or B?"
)
_ANSWER_PREFIX = "The better response is"


def judge_prompt(prompt: str, first: str, second: str) -> list[dict[str, str]]:
    """The chat an :class:`LLMJudge` reads: the question, response A (= first), response B (= second)."""
    return [{"role": "user", "content": _JUDGE_TEMPLATE.format(prompt=prompt, first=first, second=second)}]


def _padded(rows: list[list[int]], pad: int, left: bool):
    """(input ids, attention mask) of token rows padded to the longest, on the left or the right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[n, span] = torch.tensor(r, dtype=torch.long)
        mask[n, span] = 1
    return ids, mask


class LLMJudge:
    """A causal LM as a pairwise judge; scores come from the next-token logits of the labels " A" and " B".

    Thread-safe: calls may overlap (the actor takes two); they encode one at a time and run one forward at a time.

    Args:
        model_path: HF directory of any causal LM with a chat template.
        batch_size: most pairs per forward pass.
        max_length: pairs longer than this are truncated from the left of the question.
        dtype: "float32" or "bfloat16" weights; scores are computed in float32 either way.
        max_batch_tokens: most padded tokens per forward pass (pairs x the batch's longest pair).
        device: "cuda" or "cpu"; None: cuda when one is visible.
    Raises:
        JudgeOutOfMemory: (from ``pair_logits``) a single pair runs out of GPU memory on its own.
    """

    def __init__(self, model_path: str, batch_size: int = 16, max_length: int = 2048, dtype: str = "float32",
                 max_batch_tokens: int = 16384, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), use_safetensors=True
        ).to(self.device)
        self.model.eval()
        self.batch_size, self.max_length, self.max_batch_tokens = batch_size, max_length, max_batch_tokens
        self.lock = threading.Lock()  # one forward at a time; the next batch encodes meanwhile
        self.encode_lock = threading.Lock()  # see PairRMJudge: one tokenizer, two calls in flight
        # Only the answer slot's logits: the full [rows, width, vocab] tensor would dwarf the activations that
        # judge.max_batch_tokens budgets (2 GB at 16384 tokens x 32k vocabulary in float32).
        keeps = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.forward_kwargs = {"logits_to_keep": 1} if keeps else {}
        self.label_ids = [self._label_id(" A"), self._label_id(" B")]
        self.name = f"llm:{model_path}"

    def _label_id(self, label: str) -> int:
        ids = self.tokenizer.encode(label, add_special_tokens=False)
        return ids[-1]  # " A" is one token in BPE vocabularies; the last piece is the letter otherwise

    def _encode(self, prompt: str, first: str, second: str) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            judge_prompt(prompt, first, second), add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        ids += self.tokenizer.encode(_ANSWER_PREFIX, add_special_tokens=False)
        return ids[-self.max_length :]

    def pair_logits(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                    max_rows: int | None = None, instructions: Sequence[str | None] | None = None) -> np.ndarray:
        """Logits for each pair; ``max_rows`` overrides ``batch_size`` for this call (1: one pair per forward).
        ``instructions`` are ignored: the model judges what it reads."""
        torch = self.torch
        with self.encode_lock:
            encoded = [self._encode(p, a, b) for p, a, b in zip(prompts, first, second)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        def forward(idx: np.ndarray) -> np.ndarray:
            ids, mask = _padded([encoded[i] for i in idx], pad, left=True)  # the last position: the answer slot
            with self.lock, torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    **self.forward_kwargs).logits[:, -1]
                logp = torch.log_softmax(logits.float(), dim=-1)[:, self.label_ids]
                return (logp[:, 0] - logp[:, 1]).cpu().numpy()

        return score_in_batches([len(e) for e in encoded], self.max_batch_tokens, max_rows or self.batch_size,
                                forward)


def _import_llm_blender_pairrm():
    """llm-blender 0.0.2 imports ``TRANSFORMERS_CACHE`` from transformers.utils.hub, removed in transformers 5."""
    import transformers.utils.hub as hub

    if not hasattr(hub, "TRANSFORMERS_CACHE"):
        from huggingface_hub.constants import HF_HUB_CACHE

        hub.TRANSFORMERS_CACHE = HF_HUB_CACHE
    from llm_blender.pair_ranker.pairrm import DebertaV2PairRM

    return DebertaV2PairRM


class PairRMJudge:
    """llm-blender's PairRM in HF format (as published as llm-blender/PairRM-hf).

    Input per pair: ``<|source|>prompt`` (≤ max_source tokens) + ``<|candidate1|>first`` + ``<|candidate2|>second``,
    each encoded with the tokenizer's special tokens; the source's unused budget goes to the candidates, as the
    published model was used. The output logit > 0 means candidate 1 is preferred. Thread-safe like
    :class:`LLMJudge`.

    Args:
        model_path: HF directory of a DebertaV2PairRM and its tokenizer.
        batch_size: most pairs per forward pass.
        max_source: most tokens of the prompt part.
        max_candidate: most tokens of each response (plus what the prompt leaves unused).
        dtype: "float32" or "bfloat16" weights; logits are returned as float64 either way.
        max_batch_tokens: most padded tokens per forward pass (pairs x the batch's longest pair).
        device: "cuda" or "cpu"; None: cuda when one is visible.
    Raises:
        JudgeOutOfMemory: (from ``pair_logits``) a single pair runs out of GPU memory on its own.
    """

    def __init__(
        self, model_path: str, batch_size: int = 32, max_source: int = 1224, max_candidate: int = 412,
        dtype: str = "float32", max_batch_tokens: int = 16384, device: str | None = None,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        pairrm_cls = _import_llm_blender_pairrm()
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = pairrm_cls.from_pretrained(model_path, dtype=getattr(torch, dtype), use_safetensors=True)
        self.model.to(self.device).eval()
        self.batch_size, self.max_source, self.max_candidate = batch_size, max_source, max_candidate
        self.max_batch_tokens = max_batch_tokens
        self.lock = threading.Lock()  # one forward at a time; the next batch encodes meanwhile
        # A fast tokenizer keeps its truncation length in the shared backend, and encode(max_length=...) rewrites it:
        # two calls encoding at once (two in flight per actor) would truncate with each other's lengths.
        self.encode_lock = threading.Lock()
        self.name = f"pairrm:{model_path}"

    def _encode(self, prompt: str, first: str, second: str) -> list[int]:
        enc = self.tokenizer.encode
        source = enc("<|source|>" + prompt, max_length=self.max_source, truncation=True)
        budget = (self.max_source + 2 * self.max_candidate - len(source)) // 2
        cand1 = enc("<|candidate1|>" + first, max_length=budget, truncation=True)
        cand2 = enc("<|candidate2|>" + second, max_length=budget, truncation=True)
        return source + cand1 + cand2

    def pair_logits(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str],
                    max_rows: int | None = None, instructions: Sequence[str | None] | None = None) -> np.ndarray:
        """Logits for each pair; ``max_rows`` overrides ``batch_size`` for this call (1: one pair per forward).
        ``instructions`` are ignored: the model judges what it reads."""
        torch = self.torch
        with self.encode_lock:
            encoded = [self._encode(p, a, b) for p, a, b in zip(prompts, first, second)]
        pad = self.tokenizer.pad_token_id or 0

        def forward(idx: np.ndarray) -> np.ndarray:
            ids, mask = _padded([encoded[i] for i in idx], pad, left=False)
            with self.lock, torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                return logits.float().cpu().numpy().reshape(-1)

        return score_in_batches([len(e) for e in encoded], self.max_batch_tokens, max_rows or self.batch_size,
                                forward)


def build_judge(kind: str, model_path: str | None, cfg, device: str | None = None) -> PairJudge:
    """The judge named by ``cfg.kind`` (``cfg`` is the run config's ``judge`` section) on ``device`` (None: cuda when
    one is visible)."""
    if kind == "length":
        return LengthJudge(cfg.prefer)
    if kind == "verifier":
        from sppo_ray.judging.verifier import VerifierJudge

        return VerifierJudge(cfg.tau, cfg.verifier_mode)
    if kind == "llm":
        return LLMJudge(model_path, cfg.batch_size, cfg.max_source_tokens + 2 * cfg.max_candidate_tokens, cfg.dtype,
                        cfg.max_batch_tokens, device)
    if kind == "pairrm":
        return PairRMJudge(model_path, cfg.batch_size, cfg.max_source_tokens, cfg.max_candidate_tokens, cfg.dtype,
                           cfg.max_batch_tokens, device)
    raise ValueError(f"unknown judge kind {kind!r}")
