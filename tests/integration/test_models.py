"""The embedded default model: materialised once, atomically, and it knows the capital of France."""

from __future__ import annotations

import pytest

from sppo_ray.models import ModelSourceError, prepare_embedded, resolve_model

pytestmark = pytest.mark.integration


def test_embedded_policy_answers_paris(embedded_policy):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_policy)
    model = AutoModelForCausalLM.from_pretrained(embedded_policy, use_safetensors=True)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_half_written_cache_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv("SPPO_RAY_CACHE", str(tmp_path))
    half = tmp_path / "models" / "smollm2-135m-instruct"
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # what a killed conversion could leave: no completion marker
    path = prepare_embedded(quiet=True)
    assert path == half and (path / ".sppo-ray-complete").is_file() and (path / "model.safetensors").is_file()
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".smollm2")]  # no temp dirs left
    assert resolve_model("embedded:smollm2-135m-instruct") == path


def test_unknown_model_sources_fail_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="sppo-test/not-a-model"):
        resolve_model("sppo-test/not-a-model")
