#!/usr/bin/env bash
# Trains the shipped models from scratch and writes their cards: for each MiraBest subset,
# SEEDS seeds (default 1 2 3), then radiogate_model.card picks the run with the lowest
# validation loss, exports it to models/ and evaluates every seed on the test batch.
#
#   scripts/train-models.sh                 # both subsets, seeds 1 2 3
#   SUBSETS=mirabest PARALLEL=1 scripts/train-models.sh
#
# Training options go in TRAIN_ARGS (default: the shipped recipe; add `--device cuda` to train
# on a GPU). PARALLEL runs that many trainings at once (each single-threaded). CARDS=0 trains
# only (a candidate recipe, compared with others by radiogate_model.select before a card is
# written: see README, "The model").
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSETS=${SUBSETS:-"mirabest_confident mirabest"}
SEEDS=${SEEDS:-"1 2 3"}
PARALLEL=${PARALLEL:-2}
RUNS=${RUNS:-runs}
CARDS=${CARDS:-1}
# The MiraBest* recipe (each card's "Reproduce" line gives the TRAIN_ARGS of its model).
TRAIN_ARGS=${TRAIN_ARGS:-"--epochs 60 --lr 3e-3 --aggregation concat --normalisation range_norm"}
mkdir -p "$RUNS"

jobs_file=$(mktemp)
for subset in $SUBSETS; do
  for seed in $SEEDS; do
    echo "$subset $seed" >>"$jobs_file"
  done
done
# The single quotes are the inner shell's script: $0 and $1 expand there, not here.
# shellcheck disable=SC2016,SC2086
xargs -P "$PARALLEL" -L 1 bash -c 'cd python && python3 -m radiogate_model.train --subset "$0" --seed "$1" \
  --out "../'"$RUNS"'/$0-s$1" '"$TRAIN_ARGS"' > "../'"$RUNS"'/$0-s$1.log" 2>&1 && echo "trained $0 seed $1"' <"$jobs_file"
rm -f "$jobs_file"
[[ "$CARDS" == 1 ]] || exit 0

for subset in $SUBSETS; do
  runs=()
  for seed in $SEEDS; do runs+=("../$RUNS/$subset-s$seed"); done
  name=agcnn-${subset//_/-}
  (cd python && python3 -m radiogate_model.card --subset "$subset" --runs "${runs[@]}" --out "../models/$name")
done
