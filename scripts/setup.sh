#!/usr/bin/env bash
# One-time (idempotent) setup: a virtual environment in .venv with hybridlab and
# everything the dashboard, notebook and tests need. Safe to run again: it only
# installs what is missing. Set HYBRIDLAB_SKIP_APT=1 to skip the browser install.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python

stamp=.venv/.hybridlab-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VPY" -m pip install -q --upgrade pip
  # Pin torch first: a CPU build where there is no GPU. An unpinned torch would pull
  # a multi-GB CUDA build; with a torch already present this installs nothing.
  if ! "$VPY" -c "import torch" 2>/dev/null; then
    "$VPY" -m pip install -q "torch==${HYBRIDLAB_TORCH_VERSION:-2.13.0}"
  fi
  "$VPY" -m pip install -q -e ".[all]"
  if command -v nvidia-smi >/dev/null 2>&1 && [ -z "${HYBRIDLAB_NO_CUDA_KERNELS:-}" ]; then
    "$VPY" -m pip install -q -e ".[cuda]" || echo "mamba-ssm kernels did not build; the PyTorch path will be used"
  fi
  touch "$stamp"
fi

# The native CPU Mamba2 kernels (hybridlab/model/native): compiled once into .cache/hybridlab-native
# (about a minute); without a compiler hybridlab uses its PyTorch path, so a failure only warns.
"$VPY" -m hybridlab.model.native build || true
