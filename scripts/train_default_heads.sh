#!/usr/bin/env bash
# Retrain the default reward models and evaluate them on the held-out test splits (docs/models.md).
# Usage: bash scripts/train_default_heads.sh [DATA_DIR]   (default: ../shared/data)
# 1. frozen-encoder heads (warm start), 2. one multi-task fine-tune of the encoder's top 3 layers and
# both heads (length-balanced helpful pairs, validation picks the epoch, seed 0; the delta is stored
# in fp16), 3. test-split evaluation into the cards.
# Wall time on 2 CPU cores: heads ~5 min, fine-tuning ~39 min (measured with other jobs on the CPU),
# evaluation ~4 min.
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
$RS eval-rm --model harmless --data "$DATA/hh-harmless.test.jsonl.gz" --update-card test
$RS eval-rm --model helpful --data "$DATA/alpaca-helpful.test.jsonl.gz" --update-card test
