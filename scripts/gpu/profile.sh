#!/usr/bin/env bash
# Where bare GPU inference spends its time, kernel by kernel: Nsight Compute (ncu) times every
# CUDA kernel of a short `radiogate-bench infer` run (one session, batch BATCH) for each
# arithmetic VARIANT, and scripts/gpu/kernels.py finds the last whole batch among them and sums
# its kernels by name (kernels.jsonl: GPU time per image, and each kernel's share); then the
# same model and settings without ncu at SESSIONS sessions (bare.jsonl: the rate the GPU gives
# with its sessions overlapping). Run on the GPU machine, from the repository root, with the
# pieces of scripts/gpu/prepare.sh in SRC:
#
#   scripts/gpu/profile.sh      # results under $OUT (default out/gpu/profile-<UTC time>)
#
# ncu runs each kernel alone (serialised, one timing pass), so the times are the kernels' own,
# not the overlap that several sessions give; `--clock-control none` leaves the clocks as the
# GPU sets them. Environment: SRC (vendor/gpu), OUT, BATCH (128), SESSIONS (8), VARIANTS
# ("fp32 tf32 tf32+fused tf32+fusedconv"; as in run.sh), MODEL (the shipped model), DEVICE_ID (0), NCU (default: ncu
# on the PATH, else the newest under /opt/nvidia/nsight-compute), LIMIT_S (120: each variant's
# run is stopped after it, keeping the kernels timed so far).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-out/gpu/profile-$(date -u +%Y%m%dT%H%M%SZ)}"
BATCH="${BATCH:-128}"
SESSIONS="${SESSIONS:-8}"
VARIANTS="${VARIANTS:-fp32 tf32 tf32+fused tf32+fusedconv}"
DEVICE_ID="${DEVICE_ID:-0}"
LIMIT_S="${LIMIT_S:-120}"
GPU_SCRIPT=profile
# shellcheck source=scripts/gpu/env.sh
. scripts/gpu/env.sh
NCU="${NCU:-$(command -v ncu || compgen -G '/opt/nvidia/nsight-compute/*/ncu' | sort -V | tail -1 || true)}"
[[ -n "$NCU" && -x "$NCU" ]] || die "no ncu (Nsight Compute) found: set NCU"
log "ncu: $NCU ($("$NCU" --version | tail -1))"
for variant in $VARIANTS; do
  variant_settings "$variant"
  log "variant $variant: every kernel of a short run, batch $BATCH, one session"
  timeout "$LIMIT_S" "$NCU" --clock-control none --metrics gpu__time_duration.sum --print-units base \
    --csv --log-file "$OUT/kernels-$variant.csv" \
    "$RB" infer --model "$model" --inputs samples/first --provider cuda --device-id "$DEVICE_ID" \
    --batch "$BATCH" --sessions 1 --threads 1 --seconds 1 "${flags[@]}" \
    >"$OUT/infer-$variant.jsonl" 2>"$OUT/ncu-$variant.log" ||
    log "variant $variant: the run failed or ran out of time (ncu-$variant.log); summing what was timed"
  "$PYTHON" scripts/gpu/kernels.py "$OUT/kernels-$variant.csv" --batch "$BATCH" --variant "$variant" |
    tee -a "$OUT/kernels.jsonl" >&2 || log "variant $variant: no whole batch among the kernels timed"
  "$RB" infer --model "$model" --inputs samples/first --provider cuda --device-id "$DEVICE_ID" \
    --batch "$BATCH" --sessions "$SESSIONS" --threads 1 --seconds 3 "${flags[@]}" 2>>"$OUT/ncu-$variant.log" |
    sed "s/^{/{\"variant\":\"$variant\",/" | tee -a "$OUT/bare.jsonl" >&2 || log "variant $variant: bare inference failed"
done
