#!/usr/bin/env bash
# Trains a grid of AG-CNN recipes x seeds on one GPU, several runs at once, from the repository
# root of a machine whose Python has PyTorch with CUDA (no network needed). The runs are then
# compared on their validation splits, where the choice of recipe is made
# (python -m radiogate_model.select), never on the test batch.
#
#   DATA=vendor/mirabest OUT=out/gpu-train scripts/gpu/train.sh
#
# Environment: DATA (MiraBest batches, 28 MB; default ../shared/data/mirabest: copy them beside
# the script, e.g. to the ignored vendor/mirabest, where the GPU machine has no ../shared), OUT (runs and logs;
# default out/gpu-train/<UTC time>), SUBSET (mirabest), SEEDS ("1 2 3"), PARALLEL (runs at once,
# default 3), RECIPES (lines "name: train options"; default below), DEADLINE_S (no run starts
# after this many seconds and running ones are stopped then: their directories are removed, so
# what comes back is only complete runs; default 86400), DEVICE (cuda), PYTHON (python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA="${DATA:-../shared/data/mirabest}"
OUT="${OUT:-out/gpu-train/$(date -u +%Y%m%dT%H%M%SZ)}"
SUBSET="${SUBSET:-mirabest}"
SEEDS="${SEEDS:-1 2 3}"
# Measured on one H100 (16 vCPUs), batch 16: a 2-gate run alone takes 1.5 s per epoch; 3 at
# once 3.8 s each (0.8 epochs/s in all); 12 at once 15 s (2 gates) and 33 s (3 gates) per epoch,
# slower in all than one at a time: the processes' CUDA contexts time-slice the GPU.
PARALLEL="${PARALLEL:-3}"
DEADLINE_S="${DEADLINE_S:-86400}"
PYTHON="${PYTHON:-python3}"
# The MiraBest comparison of the README ("The model"): the shipped recipe (2 gates, 240 epochs)
# first, then 3 gates and 2 gates for fewer epochs.
RECIPES="${RECIPES:-g2-240: --gates 2 --epochs 240
g2-120: --gates 2 --epochs 120
r3-60: --gates 3 --epochs 60
g2-60: --gates 2 --epochs 60
g2-30: --gates 2 --epochs 30
r3-30: --gates 3 --epochs 30}"
# Common to every recipe (the shipped recipe's other settings; a recipe's options come after
# these and override them).
COMMON="--lr 3e-3 --aggregation concat --normalisation range_norm --device ${DEVICE:-cuda}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
DATA="$(cd "$DATA" && pwd)"
# Deterministic cuBLAS (torch.use_deterministic_algorithms asks for it on CUDA).
export CUBLAS_WORKSPACE_CONFIG=:4096:8
start=$(date +%s)
{
  echo "start $(date -u +%FT%TZ), $(nproc) CPUs"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
} | tee "$OUT/machine.txt"

run_one() {
  local name=$1 seed=$2 opts=$3 dir="$OUT/$SUBSET-$1-s$2"
  local left=$((DEADLINE_S - ($(date +%s) - start)))
  # shellcheck disable=SC2086
  if (cd python && timeout "$left" "$PYTHON" -m radiogate_model.train --subset "$SUBSET" --seed "$seed" \
    --data-dir "$DATA" --out "$dir" $COMMON $opts) >"$dir.log" 2>&1; then
    echo "done $name s$seed after $(($(date +%s) - start)) s"
  else
    echo "stopped $name s$seed (exit $?) after $(($(date +%s) - start)) s"
    rm -rf "$dir"
  fi
}

while IFS= read -r line; do
  [[ -n "$line" ]] || continue
  name=${line%%:*}
  opts=${line#*:}
  for seed in $SEEDS; do
    while (($(jobs -rp | wc -l) >= PARALLEL)); do wait -n || true; done
    # After waiting for a slot (`timeout 0` would mean no limit).
    if (($(date +%s) - start >= DEADLINE_S - 10)); then
      echo "deadline: not starting $name s$seed"
      continue
    fi
    run_one "$name" "$seed" "$opts" &
  done
done <<<"$RECIPES"
wait
echo "end after $(($(date +%s) - start)) s" | tee -a "$OUT/machine.txt"
