#!/usr/bin/env bash
# Install TinyLLM into ./.venv (created if missing). Safe to re-run: pip skips what is there.
#
# torch is installed first on purpose: on a host without an NVIDIA GPU we pin the CPU build
# (torch==2.13.0, a local wheel on our machines); letting pip resolve torch on its own pulls a
# multi-GB CUDA build. llama-cpp-python compiles from source once (~5 min), then pip's cache has it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing the default (CUDA) torch and the GPU extra"
    "${PIP[@]}" install torch
    EXTRAS="test,gpu"
  else
    echo "[setup] no GPU: installing the CPU build torch==2.13.0"
    "${PIP[@]}" install torch==2.13.0
  fi
fi

echo "[setup] installing tinyllm and its pinned dependencies (llama-cpp-python compiles once, ~5 min)"
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" "${PIP[@]}" install -q -e ".[${EXTRAS:-test}]"
"${PIP[@]}" check
echo "[setup] done: .venv/bin/tinyllm-distill --help"
