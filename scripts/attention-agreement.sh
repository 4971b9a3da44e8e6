#!/usr/bin/env bash
# Attention-to-emission agreement (python -m radiogate_model.agreement) of both shipped models,
# written into their cards (the `attention_agreement` key and an "Attention and emission"
# section). Run it after scripts/train-models.sh or radiogate_model.card rewrote the cards;
# running it again changes nothing.
#
# For MiraBest*, it compares the shipped model with variants that use the other attention
# normalisations, trained here when missing: the shipped model's recipe (read from its card)
# with `--normalisation X`, EPOCHS epochs, seed SEED, one at a time, niced, single-threaded.
#
#   scripts/attention-agreement.sh
#   NORMALISATIONS="softmax sigmoid std_mean_norm range_norm" scripts/attention-agreement.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs-agree}
EPOCHS=${EPOCHS:-20}
SEED=${SEED:-1}
# Empty: no variants (only the shipped models).
NORMALISATIONS=${NORMALISATIONS-"softmax sigmoid std_mean_norm"}
PYTHON=${PYTHON:-python3}
card=models/agcnn-mirabest-confident
mkdir -p "$RUNS"

# The shipped recipe, less the options that the variants change.
recipe=$("$PYTHON" - "$card.card.json" <<'PY'
import json
import sys

card = json.load(open(sys.argv[1]))
t, a = card["training"]["config"], card["architecture"]
args = {
    "--lr": t["lr"],
    "--batch-size": t["batch_size"],
    "--weight-decay": t["weight_decay"],
    "--head-lr-mult": t["head_lr_mult"],
    "--precise-bn-images": t["precise_bn_images"],
    "--ema-decay": t.get("ema_decay", 0.0),
    "--gates": a["gates"],
    "--aggregation": a["aggregation"],
}
print(" ".join(f"{k} {v}" for k, v in args.items()) + ("" if t["hflip"] else " --no-hflip"))
PY
)

variants=()
for n in $NORMALISATIONS; do
  run=$RUNS/mirabest_confident-$n-s$SEED
  if [[ -e $run && ! -f $run/training.json ]]; then
    echo "$run is incomplete (still training, or interrupted): wait for it, or remove it to retrain" >&2
    exit 1
  fi
  if [[ ! -e $run ]]; then
    echo "training $run ($recipe --epochs $EPOCHS), log in $run.log"
    # shellcheck disable=SC2086
    (cd python && nice -n 15 "$PYTHON" -m radiogate_model.train --subset mirabest_confident --seed "$SEED" \
      --epochs "$EPOCHS" --normalisation "$n" $recipe --out "../$run") >"$run.log" 2>&1
  fi
  variants+=("../$run")
done

cd python
"$PYTHON" -m radiogate_model.agreement --model "../$card" --variants "${variants[@]}" --update-card
"$PYTHON" -m radiogate_model.agreement --model ../models/agcnn-mirabest --update-card
