#!/usr/bin/env bash
# The one-GPU benchmark, in one go on a fresh GPU machine (sized for <= 10 minutes on one H100):
#   1. installs what it needs: a CUDA torch when the one present is CPU-only — from wheels carried in
#      a folder (WHEELS, default .whl/: pip --no-index --find-links; a GPU machine without internet
#      needs them there: torch's CUDA wheel and its nvidia-* dependencies, `pip download torch==2.13.0
#      --index-url https://download.pytorch.org/whl/cu128 -d .whl` on a machine with internet), else
#      from TORCH_INDEX_URL; the repository itself (scripts/setup.sh's editable installs) if absent;
#   2. builds an 8B-shaped Llama sequence classifier (Llama-3.1-8B's config, 1 label) with random
#      weights in bfloat16 on the GPU, saved as a checkpoint (no download) — bench/gpu.py;
#   3. loads it as the service does (straight to the GPU) and runs GRPO groups (G = 8, 16, 64;
#      prompts 1000–2000 tokens, responses 50–400) and distinct prompts, prompt sharing on and off:
#      items/s, tokens/s, p50/p99, peak GPU memory;
#   4. then the peer benchmark on the same model where bench/peer.py exists (vLLM's python from
#      VLLM_PYTHON, else this python if it imports vllm; skipped and said so otherwise), with its
#      judge cells (SmolLM2-135M-Instruct as a yes/no judge vs vLLM's generate runner; a few minutes:
#      BENCH_PEER_SKIP=judge leaves them out);
#   one table on stdout, one JSON ($OUT, default bench/results/gpu.json).
#
#   bash bench/gpu.sh                 # on the GPU machine
#   bash bench/gpu.sh --dry-run       # anywhere: builds a tiny model through the same code path, runs
#                                     # it on the CPU in short cells, and prints the GPU commands
# Overrides: PYTHON, WHEELS (.whl), TORCH_VERSION (2.13.0), TORCH_INDEX_URL (…/whl/cu128), OUT,
# BENCH_SECONDS (20), BENCH_GROUPS (8,16,64), BENCH_CONCURRENCY (4), WORK (a temp folder), VLLM_PYTHON,
# BENCH_PEER_SKIP (passed to `bench peer --skip`, e.g. judge).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
for arg in "$@"; do
  case $arg in
    --dry-run) DRY=1 ;;
    *) echo "bench/gpu.sh: unknown option $arg (only --dry-run)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
WHEELS=${WHEELS:-.whl}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
OUT=${OUT:-bench/results/gpu.json}
SECONDS_PER_CELL=${BENCH_SECONDS:-20}
CELL_GROUPS=${BENCH_GROUPS:-8,16,64}
CONCURRENCY=${BENCH_CONCURRENCY:-4}
WORK=${WORK:-$(mktemp -d -t rewardserve-gpu-XXXXXX)}
say() { echo "bench/gpu.sh: $*" >&2; }
run() { if [ "$DRY" = 1 ]; then echo "  would run: $*"; else say "running: $*"; "$@"; fi; }

# 1. what to install
has_cuda_torch() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; }
has_repo() { "$PY" -c 'import rewardserve, rewardlab, transformers' 2>/dev/null; }
[ "$DRY" = 1 ] && echo "bench/gpu.sh --dry-run: on a GPU machine this script would run:"
if ! has_cuda_torch; then
  if ls "$WHEELS"/torch-*.whl >/dev/null 2>&1; then
    run "$PY" -m pip install --no-index --find-links "$WHEELS" "torch==$TORCH_VERSION"
  else
    [ "$DRY" = 1 ] || say "no CUDA torch and no wheels in $WHEELS/: trying $TORCH_INDEX_URL (needs internet)"
    run "$PY" -m pip install "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
  fi
fi
if ! has_repo; then
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    run "$PY" -m pip install --find-links "$WHEELS" -e ./client -e "./service[redis]" -e ./lab
  else
    run "$PY" -m pip install -e ./client -e "./service[redis]" -e ./lab
  fi
fi
if [ "$DRY" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  say "torch.cuda.is_available() is False after the install: no usable GPU here (nvidia-smi says: $(nvidia-smi -L 2>&1 | head -1))"
  exit 2
fi

# 2-3. the service's cells on an 8B (tiny on the dry run, on the CPU)
GPU_ARGS=(--shape 8b --device cuda:0 --dtype bfloat16 --work "$WORK" --groups "$CELL_GROUPS"
  --seconds "$SECONDS_PER_CELL" --concurrency "$CONCURRENCY" --out "$OUT")
PEER_OUT=${OUT%.json}-peer.json
VLLM=${VLLM_PYTHON:-}
if [ -z "$VLLM" ] && "$PY" -c 'import vllm' 2>/dev/null; then VLLM=$PY; fi
PEER_ARGS=(-m bench peer --model "$WORK/llama-8b-rm" --device cuda --dtype bfloat16 --vllm-python "${VLLM:-VLLM_PYTHON}" --out "$PEER_OUT")
[ -z "${BENCH_PEER_SKIP:-}" ] || PEER_ARGS+=(--skip "$BENCH_PEER_SKIP")
if [ "$DRY" = 1 ]; then
  echo "  would run: $PY -m bench.gpu ${GPU_ARGS[*]}"
  if [ -f bench/peer.py ]; then
    echo "  would run: $PY ${PEER_ARGS[*]}   (then merge $PEER_OUT into $OUT under \"peer\")"
  else
    echo "  would skip the peer benchmark: bench/peer.py is not in this checkout"
  fi
  [ -n "$VLLM" ] || echo "  (no vLLM python found: set VLLM_PYTHON, or the peer benchmark is skipped)"
  echo "bench/gpu.sh --dry-run: now the same code path on this machine's CPU with a tiny model:"
  DRY_OUT=$WORK/gpu-dry.json
  "$PY" -m bench.gpu --shape tiny --device cpu --dtype bfloat16 --work "$WORK" --groups 8,16 \
    --prompt-words 100,200 --response-words 10,40 --seconds 1 --concurrency 2 --max-length 512 --out "$DRY_OUT"
  echo "bench/gpu.sh --dry-run: JSON in $DRY_OUT"
  exit 0
fi
"$PY" -m bench.gpu "${GPU_ARGS[@]}"

# 4. the peer benchmark (vLLM on the same model), where this checkout has it
if [ -f bench/peer.py ] && [ -n "$VLLM" ]; then
  if "$PY" "${PEER_ARGS[@]}"; then
    "$PY" - "$OUT" "$PEER_OUT" <<'PYEOF'
import json, sys
from bench.gpu import table
out, peer = sys.argv[1], sys.argv[2]
result = json.load(open(out))
result["peer"] = json.load(open(peer))
json.dump(result, open(out, "w"), indent=2)
print(table(result))
PYEOF
  else
    say "the peer benchmark failed (its output above); $OUT has the service's cells only"
  fi
else
  say "peer benchmark skipped: $([ -f bench/peer.py ] && echo 'no vLLM python (set VLLM_PYTHON)' || echo 'bench/peer.py is not in this checkout')"
fi
say "results in $OUT (model kept in $WORK)"
