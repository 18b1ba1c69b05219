#!/usr/bin/env bash
# Experiment C end to end (docs/experiments.md): gold and proxy reward models, their test-split
# evaluation, then `rewardserve experiment kl-curves`. Every step is skipped when its output exists,
# so an interrupted run continues; the pool of base-policy samples is kept under ~/.cache.
# Usage: bash scripts/kl_curves.sh [DATA_DIR]   (default: ../shared/data)
# Wall time on 2 CPU cores: gold heads + fine-tuning ~44 min (other jobs shared the CPU), proxies ~4 min,
# evaluation ~5 min, pool generation ~71 min (100 prompts x 48 samples), two scoring + analysis runs ~4 min.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
PY=${PY:-.venv/bin/python}
RS=${RS:-.venv/bin/rewardserve}
M=~/.cache/rewardserve/experiments/kl-curves/models
E=~/.cache/rewardserve/experiments/kl-curves/eval
CFG=docs/experiments/kl-curves
mkdir -p "$M/gold" "$M/proxy" "$E"

# gold: the default models' recipe (scripts/train_default_heads.sh) — frozen-encoder warm-start heads,
# then the shared encoder's top 3 layers fine-tuned on both properties (multi-task Bradley-Terry, every
# length-balanced helpful train pair, 2 epochs); it never selects anything
if [ ! -f "$M/gold/helpful.safetensors" ]; then
  [ -f "$M/gold-warm/helpful.safetensors" ] || {
    $RS train-head --data "$DATA/hh-harmless.train.jsonl.gz" --out "$M/gold-warm" --name harmless --head mlp
    $RS train-head --data "$DATA/alpaca-helpful.train.jsonl.gz" --out "$M/gold-warm" --name helpful --head mlp \
      --balance-length --length-penalty 10; }
  $PY -m rewardlab.training.finetune --helpful "$DATA/alpaca-helpful.train.jsonl.gz" \
    --harmless "$DATA/hh-harmless.train.jsonl.gz" --out "$M/gold" --init-heads "$M/gold-warm" \
    --top-layers 3 --epochs 2 --helpful-pairs 100000 --seed 0
fi
# proxies: the gold's recipe on less data, the first 850 pairs of each train file (47 % of harmless,
# 12.5 % of helpful): frozen-encoder heads first (the default's recipe), then the top 2 layers and
# the heads fine-tuned from them. Both are served by rewardserve; each gets its own run.
[ -f "$M/proxy/harmless.safetensors" ] || $RS train-head --data "$DATA/hh-harmless.train.jsonl.gz" \
  --out "$M/proxy" --name harmless --head mlp --limit 850
[ -f "$M/proxy/helpful.safetensors" ] || $RS train-head --data "$DATA/alpaca-helpful.train.jsonl.gz" \
  --out "$M/proxy" --name helpful --head mlp --balance-length --length-penalty 10 --limit 850
[ -f "$M/proxy-ft/helpful.safetensors" ] || $PY -m rewardlab.training.finetune \
  --helpful "$DATA/alpaca-helpful.train.jsonl.gz" --harmless "$DATA/hh-harmless.train.jsonl.gz" --out "$M/proxy-ft" \
  --init-heads "$M/proxy" --top-layers 2 --epochs 1 --seed 0 --limit 850
# all on the test splits (accuracy, length-balanced accuracy, calibration; per-pair rewards)
for role in gold proxy proxy-ft; do
  for m in helpful harmless; do
    d=$([ $m = helpful ] && echo alpaca-helpful || echo hh-harmless)
    [ -f "$E/$role-$m.npz" ] || $RS eval-rm --model $m --config "$CFG/$role.yaml" --data "$DATA/$d.test.jsonl.gz" \
      --out "$E/$role-$m.json" --scores-out "$E/$role-$m.npz" > /dev/null
  done
done
$PY -m rewardlab.experiments.agreement "$E" --proxies proxy-ft proxy --out "$CFG/agreement.json"
# the main run (fine-tuned proxies) and the frozen-head proxies' run
$RS experiment kl-curves --prompts "$DATA/prompts.jsonl.gz" \
  --proxy-config "$CFG/proxy-ft.yaml" --proxy-models helpful harmless \
  --gold-config "$CFG/gold.yaml" --gold-models helpful harmless --out-dir docs/experiments
$RS experiment kl-curves --prompts "$DATA/prompts.jsonl.gz" \
  --proxy-config "$CFG/proxy.yaml" --proxy-models helpful harmless \
  --gold-config "$CFG/gold.yaml" --gold-models helpful harmless --out-dir "$CFG/frozen-proxies"
