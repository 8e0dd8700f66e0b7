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

# llama-cpp-python is built here, not by pip's resolver, for two reasons:
# - GGML_NATIVE builds for this CPU, and on Intel Xeons with AMX (Sapphire Rapids and later) that
#   compiles llama.cpp's AMX kernels, which crash at the first generation (ggml_backend_amx_mul_mat,
#   upstream llama.cpp #20824). -mno-amx-* keeps every other native instruction set and drops those.
# - pip's wheel cache keys a built wheel on name and version only, not on CMAKE_ARGS, CFLAGS or the
#   CPU: a wheel cached from another build (with AMX, or -march=native on another CPU) would be
#   reused silently. Our wheels are kept under a key of all of those; the venv records which it has.
LLAMA_VERSION=$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' setup.py)
CMAKE_ARGS=${CMAKE_ARGS:--DLLAVA_BUILD=OFF}
NO_AMX="-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"
if ! echo 'int main(void){return 0;}' | ${CC:-cc} $NO_AMX -x c -o /dev/null - 2>/dev/null; then
  NO_AMX=""  # a compiler that does not know AMX cannot emit it either
fi
LLAMA_CFLAGS="${CFLAGS:-} $NO_AMX"
LLAMA_CXXFLAGS="${CXXFLAGS:-} $NO_AMX"
CPU_FLAGS=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)
LLAMA_KEY=$(printf '%s\n' "$LLAMA_VERSION" "$CMAKE_ARGS" "$LLAMA_CFLAGS" "$LLAMA_CXXFLAGS" "$CPU_FLAGS" \
  "$(${CC:-cc} --version 2>/dev/null | head -n 1)" "$(.venv/bin/python -c 'import sys; print(sys.version)')" \
  | sha256sum | cut -c1-16)
WHEEL_DIR="${TINYLLM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinyllm/wheels}/llama-cpp-python-$LLAMA_VERSION-$LLAMA_KEY"
MARKER=.venv/tinyllm-llama-cpp-build
if [ "$(cat "$MARKER" 2>/dev/null)" != "$LLAMA_KEY" ]; then
  if ! ls "$WHEEL_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "[setup] compiling llama-cpp-python $LLAMA_VERSION for this CPU (once per CPU and flags, 3-5 min; build $LLAMA_KEY)"
    mkdir -p "$WHEEL_DIR.partial"
    CMAKE_ARGS="$CMAKE_ARGS" CFLAGS="$LLAMA_CFLAGS" CXXFLAGS="$LLAMA_CXXFLAGS" \
      "${PIP[@]}" wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$WHEEL_DIR.partial" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
  fi
  "${PIP[@]}" install -q --force-reinstall --no-deps "$WHEEL_DIR"/llama_cpp_python-*.whl
  echo "$LLAMA_KEY" > "$MARKER"
fi

echo "[setup] installing tinyllm and its pinned dependencies"
"${PIP[@]}" install -q -e ".[${EXTRAS:-test}]"
"${PIP[@]}" check

# The build above must generate on this CPU; a crash here is one sentence, not a hang later on.
echo "[setup] checking that llama.cpp generates on this CPU"
.venv/bin/python -m distill.llama_runtime --check || exit 1
echo "[setup] done: .venv/bin/tinyllm-distill --help"
