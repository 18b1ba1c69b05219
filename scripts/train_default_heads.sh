#!/usr/bin/env bash
# Retrain the default reward models and evaluate them on the held-out test splits (docs/models.md).
# Usage: bash scripts/train_default_heads.sh [DATA_DIR]   (default: ../shared/data)
# 1. frozen-encoder heads (warm start), 2. one multi-task fine-tune of the encoder's top 3 layers and
# both heads (length-balanced helpful pairs, validation picks the epoch, seed 0; the delta is stored
# in fp16), 3. helpful's length correction (the slope of reward on reply length over the validation
# replies, written into the head), 4. test-split evaluation into the cards (helpful as served and
# uncorrected).
# Wall time on 2 CPU cores: heads ~5 min, fine-tuning ~39 min (measured with other jobs on the CPU),
# length correction ~1 min, evaluation ~6 min.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
HEADS=service/rewardserve/data/heads
RS=${RS:-.venv/bin/rewardserve}
PY=${PY:-.venv/bin/python}
WARM=$(mktemp -d)
trap 'rm -rf "$WARM"' EXIT
$RS train-head --data "$DATA/hh-harmless.train.jsonl.gz" --out "$WARM" --name harmless --head mlp
$RS train-head --data "$DATA/alpaca-helpful.train.jsonl.gz" --out "$WARM" --name helpful --head mlp --balance-length --length-penalty 10
$PY -m rewardlab.training.finetune --helpful "$DATA/alpaca-helpful.train.jsonl.gz" \
  --harmless "$DATA/hh-harmless.train.jsonl.gz" --out "$HEADS" --init-heads "$WARM" \
  --top-layers 3 --epochs 2 --helpful-pairs 100000 --seed 0
$PY -m rewardlab.training.length_control --head "$HEADS/helpful.safetensors" \
  --data "$DATA/alpaca-helpful.train.jsonl.gz" --seed 0
$RS eval-rm --model harmless --data "$DATA/hh-harmless.test.jsonl.gz" --update-card test
$RS eval-rm --model helpful --data "$DATA/alpaca-helpful.test.jsonl.gz" --update-card test
cat > "$WARM/uncorrected.yaml" <<EOF
backbones:
  minilm:
    kind: encoder_head
    models:
      helpful: {head: $PWD/$HEADS/helpful.safetensors, length_correction: false}
EOF
$RS eval-rm --config "$WARM/uncorrected.yaml" --model helpful --data "$DATA/alpaca-helpful.test.jsonl.gz" \
  --update-card test_uncorrected
