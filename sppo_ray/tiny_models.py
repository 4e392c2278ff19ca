"""Tiny randomly initialised models of the real architectures, for `sppo-ray rehearse` and the tests.

The policy keeps its architecture (its model type and head layout) shrunk to a few small layers, with its own
tokenizer when the model is a local directory, else the embedded SmolLM2's; PairRM keeps its DeBERTa-v2 pairwise
ranker, shrunk, with a small WordPiece tokenizer carrying PairRM's special tokens. Both are written as HF
directories of safetensors, deterministic for a seed. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HUB_MODEL_TYPES", "tiny_pairrm", "tiny_policy"]

# The paper's policies by hub id -> their transformers model type (their config.json is not on this machine).
HUB_MODEL_TYPES = {
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama",
}
# The shrunk shape: 2 layers of width 64, heads of 32 (the smallest head size vLLM's CPU attention runs); a 49k
# vocabulary makes it ~6 M parameters, mostly embeddings.
TINY_SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}

_PAIRRM_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|source|>", "<|candidate1|>", "<|candidate2|>",
                   "<|candidate|>"]


def _policy_source(spec: str):
    """(config, tokenizer directory) of a policy spec: a local directory, the embedded model, or a known hub id."""
    from transformers import AutoConfig

    from sppo_ray.models import prepare_embedded
    from sppo_ray.planning import PlanError

    embedded = prepare_embedded(quiet=True)
    path = prepare_embedded(spec.split(":", 1)[1], quiet=True) if spec.startswith("embedded:") else Path(spec)
    if (path / "config.json").is_file():
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))
        return AutoConfig.from_pretrained(path), path if has_tokenizer else embedded
    if spec in HUB_MODEL_TYPES:
        return AutoConfig.for_model(HUB_MODEL_TYPES[spec]), embedded
    raise PlanError(f"models.policy {spec!r}: no config.json here and not one of {', '.join(HUB_MODEL_TYPES)}; give "
                    "a local model directory to rehearse with its architecture")


def tiny_policy(spec: str, out: Path, seed: int = 0) -> Path:
    """A random ``spec``-architecture causal LM of :data:`TINY_SHAPE`, saved to ``out`` with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, tokenizer_dir = _policy_source(spec)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    from sppo_ray.planning import ARCHITECTURES

    known = ARCHITECTURES.get(spec)  # the published head layout (transformers' defaults differ for Llama-3)
    heads = known.heads if known else config.num_attention_heads
    kv = known.kv_heads if known else getattr(config, "num_key_value_heads", None) or heads
    shape = dict(TINY_SHAPE, num_key_value_heads=max(1, TINY_SHAPE["num_attention_heads"] * kv // heads),
                 vocab_size=len(tokenizer), head_dim=TINY_SHAPE["hidden_size"] // TINY_SHAPE["num_attention_heads"])
    for key, value in shape.items():
        setattr(config, key, value)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, key, getattr(tokenizer, key))
    config.quantization_config = None
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def tiny_pairrm(out: Path, seed: int = 0, texts: list[str] | None = None) -> Path:
    """A random DebertaV2PairRM (llm-blender's PairRM architecture) of width 32, with a WordPiece tokenizer
    trained on ``texts`` (default: the embedded prompts) and PairRM's special tokens, saved to ``out``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import DebertaV2Config, PreTrainedTokenizerFast

    from sppo_ray.judging.judges import _import_llm_blender_pairrm

    if texts is None:
        from sppo_ray.data.prompts import load_prompts

        texts = [p.messages[-1]["content"] for p in load_prompts("embedded:default").prompts]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts * 3, trainers.WordPieceTrainer(vocab_size=400, special_tokens=_PAIRRM_SPECIAL))
    tok.add_special_tokens(_PAIRRM_SPECIAL)
    ids = {t: tok.token_to_id(t) for t in _PAIRRM_SPECIAL}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                                   unk_token="[UNK]", mask_token="[MASK]")
    config = DebertaV2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=512,
                             pad_token_id=ids["[PAD]"])
    config.n_tasks, config.drop_out = 1, 0.0
    config.sep_token_id, config.source_prefix_id = ids["[SEP]"], ids["<|source|>"]
    config.cand_prefix_id, config.cand1_prefix_id, config.cand2_prefix_id = (
        ids["<|candidate|>"], ids["<|candidate1|>"], ids["<|candidate2|>"])
    torch.manual_seed(seed)
    _import_llm_blender_pairrm()(config).save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out
