#!/usr/bin/env bash
# Retrain the two default reward heads and evaluate them on the held-out test splits.
# Usage: bash scripts/train_default_heads.sh [DATA_DIR]   (default: ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
HEADS=service/rewardserve/data/heads
RS=${RS:-.venv/bin/rewardserve}
$RS train-head --data "$DATA/hh-harmless.train.jsonl.gz" --out "$HEADS" --name harmless --head mlp
$RS train-head --data "$DATA/alpaca-helpful.train.jsonl.gz" --out "$HEADS" --name helpful --head mlp --balance-length --length-penalty 10
$RS eval-rm --model harmless --data "$DATA/hh-harmless.test.jsonl.gz" --update-card test
$RS eval-rm --model helpful --data "$DATA/alpaca-helpful.test.jsonl.gz" --update-card test
