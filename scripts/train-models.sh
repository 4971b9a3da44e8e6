#!/usr/bin/env bash
# Trains the shipped models from scratch and writes their cards: for each MiraBest subset,
# SEEDS seeds (default 1 2 3) of its shipped recipe, then radiogate_model.card picks the run
# with the lowest validation loss, exports it to models/ and evaluates every seed on the test
# batch, and the fused form and the emission-extent section are written again for it.
#
#   scripts/train-models.sh                 # both subsets, seeds 1 2 3, the shipped recipes
#   SUBSETS=mirabest PARALLEL=1 scripts/train-models.sh
#
# Training options: each subset's shipped recipe (the TRAIN_ARGS of its card's "Reproduce"
# line), or TRAIN_ARGS for every subset (add `--device cuda` to train on a GPU). PARALLEL runs
# that many trainings at once (each single-threaded). CARDS=0 trains only (a candidate recipe,
# compared with others by radiogate_model.select before a card is written: see README, "The
# model"). Two sections of the shipped cards need more than these runs, and are written by
# their own commands afterwards: "How the recipe was chosen" (radiogate_model.select over every
# candidate recipe's runs, then radiogate_model.card --selection) and "Attention and emission"
# (scripts/attention-agreement.sh). A retrained model is not the shipped file bit for bit
# (training on a CPU is not deterministic across machines); its card says how it scores.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSETS=${SUBSETS:-"mirabest_confident mirabest"}
SEEDS=${SEEDS:-"1 2 3"}
PARALLEL=${PARALLEL:-2}
RUNS=${RUNS:-runs}
CARDS=${CARDS:-1}
# The shipped recipes (models/*.card.json, "reproduce"); TRAIN_ARGS, when set, replaces them.
recipe() {
  case "$1" in
    mirabest_confident) echo "--epochs 60 --lr 0.003 --gates 3 --aggregation concat --normalisation range_norm" ;;
    mirabest) echo "--epochs 240 --lr 0.003 --gates 2 --aggregation concat --normalisation range_norm" ;;
    *) echo "train-models.sh: no recipe for subset $1 (set TRAIN_ARGS)" >&2; return 1 ;;
  esac
}
mkdir -p "$RUNS"

jobs_file=$(mktemp)
for subset in $SUBSETS; do
  args=${TRAIN_ARGS:-$(recipe "$subset")}
  for seed in $SEEDS; do
    echo "$subset $seed $args" >>"$jobs_file"
  done
done
# The single quotes are the inner shell's script: $0, $1 and $@ expand there, not here.
# shellcheck disable=SC2016
xargs -P "$PARALLEL" -L 1 bash -c 'cd python && python3 -m radiogate_model.train --subset "$0" --seed "$1" \
  --out "../'"$RUNS"'/$0-s$1" "${@:2}" > "../'"$RUNS"'/$0-s$1.log" 2>&1 && echo "trained $0 seed $1"' <"$jobs_file"
rm -f "$jobs_file"
[[ "$CARDS" == 1 ]] || exit 0

for subset in $SUBSETS; do
  runs=()
  for seed in $SEEDS; do runs+=("../$RUNS/$subset-s$seed"); done
  name=agcnn-${subset//_/-}
  (
    cd python
    python3 -m radiogate_model.card --subset "$subset" --runs "${runs[@]}" --out "../models/$name"
    python3 -m radiogate_model.fuse "../models/$name.onnx" "../models/$name-fused.onnx" --card "../models/$name.card.json"
    python3 -m radiogate_model.morphology card --card "../models/$name.card.json"
  )
done
echo "cards written; next: scripts/attention-agreement.sh (their \"Attention and emission\" sections)"
