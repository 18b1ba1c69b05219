#!/usr/bin/env bash
# The benchmark on one GPU: a ~110M-parameter BERT-base-sized sequence classifier (random weights,
# built here with rewardlab.tiny_models; throughput does not depend on the weights) served as a
# `sequence_classifier` in bfloat16 on cuda:0; the same phases as `python -m bench`.
# Sized to finish in under 5 minutes on one H100 (2 s cells after 0.5 s warm-up).
#
#   bench/gpu.sh                      # full GPU run -> bench/results/gpu.json
#   bench/gpu.sh --quick              # any `python -m bench` option is passed on
#   OUT=/tmp/gpu.json bench/gpu.sh
# Then the GRPO benchmark (`python -m bench grpo`: prompt-prefix sharing on SmolLM2-135M as a reward
# model, in $DTYPE on $DEVICE; 8 clients, 5 s cells) -> bench/results/gpu-grpo.json (GRPO_OUT);
# BENCH_GRPO=0 skips it, BENCH_GRPO=only runs it alone.
# Overrides (for trying the script elsewhere): BENCH_DEVICE (cuda:0), BENCH_DTYPE (bfloat16),
# BENCH_HIDDEN (768), BENCH_LAYERS (12), BENCH_HEADS (12), BENCH_MAX_LENGTH (512), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${BENCH_DEVICE:-cuda:0}
DTYPE=${BENCH_DTYPE:-bfloat16}
HIDDEN=${BENCH_HIDDEN:-768}
LAYERS=${BENCH_LAYERS:-12}
HEADS=${BENCH_HEADS:-12}
MAX_LENGTH=${BENCH_MAX_LENGTH:-512}
OUT=${OUT:-bench/results/gpu.json}

if [[ $DEVICE == cuda* ]]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: no CUDA GPU available (torch.cuda.is_available() is False): this benchmark needs one." >&2
    echo "  On a CPU machine run the CPU benchmark instead: python -m bench   (or: python -m bench --quick)" >&2
    exit 2
  fi
fi

WORK=$(mktemp -d -t rewardserve-gpu-bench-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

echo "bench/gpu.sh: building a hidden=$HIDDEN layers=$LAYERS encoder classifier in $WORK" >&2
"$PY" - "$WORK" "$DEVICE" "$DTYPE" "$HIDDEN" "$LAYERS" "$HEADS" "$MAX_LENGTH" <<'PYEOF'
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from rewardlab import tiny_models

work, device, dtype, hidden, layers, heads, max_length = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:])
model = tiny_models.make_encoder_classifier(Path(work) / "rm", hidden=hidden, layers=layers, heads=heads,
                                            max_pos=max(512, max_length), seed=0)
n_params = sum(t.numel() for f in model.glob("*.safetensors") for t in load_file(str(f)).values())
config = {
    "references": {"store": f"sqlite:///{Path(work) / 'refs.db'}"},
    "backbones": {
        "rm": {
            "kind": "sequence_classifier", "path": str(model), "device": device, "dtype": dtype,
            "max_length": max_length, "models": {"rm": {}},
        }
    },
}
(Path(work) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
print(f"bench/gpu.sh: model {model} ({n_params / 1e6:.0f}M parameters), config {work}/config.yaml", file=sys.stderr)
PYEOF

if [[ ${BENCH_GRPO:-1} != only ]]; then
  "$PY" -m bench --config "$WORK/config.yaml" --out "$OUT" --seconds 2 --warmup 0.5 --limit-seconds 1 "$@"
fi
if [[ ${BENCH_GRPO:-1} != 0 ]]; then
  "$PY" -m bench grpo --device "$DEVICE" --dtype "$DTYPE" --concurrency "${BENCH_GRPO_CONCURRENCY:-8}" \
    --seconds 5 --warmup 1 --out "${GRPO_OUT:-bench/results/gpu-grpo.json}"
fi
