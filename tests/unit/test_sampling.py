"""Per-sample seeds and prompt length policy (sppo_ray/generation/sampling.py)."""

from __future__ import annotations

import hashlib

import pytest

from sppo_ray.generation.sampling import fit_prompt, sample_seed

pytestmark = pytest.mark.unit

GEN_PROMPT = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from sppo_ray.models import prepare_embedded

    return AutoTokenizer.from_pretrained(str(prepare_embedded(quiet=True)))


def test_sample_seed_deterministic_and_31_bit():
    a = sample_seed(0, 1, "p0001", 2)
    assert a == sample_seed(0, 1, "p0001", 2)
    # first 4 bytes of sha256("0:1:p0001:2"), little-endian, top bit cleared
    digest = hashlib.sha256(b"0:1:p0001:2").digest()
    assert a == int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
    seeds = [sample_seed(s, it, pid, k) for s in (0, 1) for it in (-1, 0, 5) for pid in ("a", "p0001") for k in range(4)]
    assert all(0 <= x < 2**31 for x in seeds)


def test_sample_seed_varies():
    base = sample_seed(0, 0, "p0001", 0)
    assert sample_seed(0, 0, "p0001", 1) != base  # sample index
    assert sample_seed(0, 0, "p0002", 0) != base  # prompt id
    assert sample_seed(0, 1, "p0001", 0) != base  # iteration
    assert sample_seed(1, 0, "p0001", 0) != base  # run seed
    # K samples of one prompt all get different seeds
    assert len({sample_seed(0, 0, "p0001", k) for k in range(16)}) == 16


def _template_ids(tok, messages):
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_short_prompt_unchanged(tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    fitted = fit_prompt(tokenizer, messages, 128, "truncate")
    assert fitted.token_ids == _template_ids(tokenizer, messages)
    assert fitted.truncated is False and fitted.skipped_reason == ""
    assert tokenizer.decode(fitted.token_ids).endswith(GEN_PROMPT)


def test_long_prompt_truncated_from_left(tokenizer):
    content = " ".join(f"word{i}" for i in range(400))
    messages = [{"role": "user", "content": content}]
    full = _template_ids(tokenizer, messages)
    assert len(full) > 64
    fitted = fit_prompt(tokenizer, messages, 64, "truncate")
    assert fitted.truncated is True and fitted.skipped_reason == ""
    assert fitted.token_ids is not None
    assert len(fitted.token_ids) <= 64
    # not cut far more than needed (the template itself is ~30 tokens)
    assert len(fitted.token_ids) >= 56
    text = tokenizer.decode(fitted.token_ids)
    assert text.endswith(GEN_PROMPT)
    assert text.startswith("<|im_start|>system\n")  # the template's start is kept
    assert "<|im_start|>user\n" in text
    assert "word399<|im_end|>" in text  # the end of the user turn survives
    assert "word0 " not in text and "word1 " not in text  # its start was dropped


def test_truncation_keeps_earlier_turns(tokenizer):
    content = " ".join(f"word{i}" for i in range(400))
    messages = [
        {"role": "system", "content": "Answer tersely."},
        {"role": "user", "content": content},
    ]
    fitted = fit_prompt(tokenizer, messages, 80, "truncate")
    text = tokenizer.decode(fitted.token_ids)
    assert len(fitted.token_ids) <= 80
    assert text.startswith("<|im_start|>system\nAnswer tersely.<|im_end|>")
    assert text.endswith(GEN_PROMPT)


def test_skip_policy(tokenizer):
    messages = [{"role": "user", "content": " ".join(f"word{i}" for i in range(400))}]
    fitted = fit_prompt(tokenizer, messages, 64, "skip")
    assert fitted.token_ids is None
    assert fitted.truncated is False
    assert "max_prompt_tokens 64" in fitted.skipped_reason


def test_template_alone_too_long(tokenizer):
    messages = [{"role": "user", "content": "Hello there, how are you today?"}]
    fitted = fit_prompt(tokenizer, messages, 8, "truncate")
    assert fitted.token_ids is None
    assert "template alone exceeds" in fitted.skipped_reason


@pytest.mark.parametrize("messages", [[{"role": "user", "content": "   "}], []])
def test_empty_prompt(tokenizer, messages):
    fitted = fit_prompt(tokenizer, messages, 64, "truncate")
    assert fitted.token_ids is None
    assert fitted.skipped_reason == "empty prompt"


@pytest.mark.parametrize(
    ("prompts", "actors", "configured", "expected"),
    [
        (16, 1, 12, 8),  # one generator: two calls of 8 share its engine
        (16, 2, 12, 4),  # two generators: two calls each, the work split evenly
        (20000, 4, 16, 16),  # a large round: the configured size
        (1, 2, 16, 1),
    ],
)
def test_generation_batch_size_gives_every_generator_two_calls(prompts, actors, configured, expected):
    from sppo_ray.generation.stage import _batch_size

    assert _batch_size(prompts, actors, configured) == expected
