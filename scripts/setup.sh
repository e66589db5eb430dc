#!/usr/bin/env bash
# Create .venv and install streamloc with its test tools (CPU build of torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# A CPU build of torch first, so that the dependency range below does not pull a multi-GB CUDA build.
# On a GPU machine install your CUDA torch first; a torch that satisfies the range is kept.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev,train,onnx]"
