#!/usr/bin/env bash
# The GPU benchmark, run ONCE from the repository root on a single-GPU machine without
# network access, with the pieces that scripts/gpu/prepare.sh made (vendor/gpu by default):
#
#   scripts/gpu/run.sh                 # results under $OUT (default out/gpu/<UTC time>)
#   QUICK=1 scripts/gpu/run.sh         # shorter sweep and end-to-end run (about 2 minutes)
#
# 1. reassembles and checks the pieces, unpacks ONNX Runtime's GPU build and the binaries;
# 2. finds the CUDA 13 / cuDNN 9 libraries of the machine's Python packages (PyPI nvidia-*
#    wheels, as PyTorch installs them) and puts them on LD_LIBRARY_PATH (1 and 2:
#    scripts/gpu/env.sh, which scripts/gpu/profile.sh shares);
# 3. checks that the CUDA execution provider really runs the model (ONNX Runtime's node
#    placement log and the process on the GPU): it stops with an error otherwise;
#    Then the same cutouts through `radiogate classify` on the GPU and on the CPU (the GPU
#    build's own CPU provider): labels must agree, and the largest probability difference
#    is recorded (parity.json);
# 4. bare GPU inference over a sweep of batch sizes and sessions (radiogate-bench infer);
#    then, at the best setting, each arithmetic VARIANT: TF32 convolutions
#    (inference.gpu_tf32), channels-last kernels (inference.gpu_nhwc), the float16 copy of
#    the model that prepare.sh bundles, the model's fused form (models/*-fused.onnx) and the
#    bundle's copy of it with the Resizes kept, each timed and its results on the bundled
#    cutouts compared with the CPU's (variants.jsonl);
# 5. offline end to end: `radiogate classify` over the bundled real FIRST cutouts repeated
#    to ITEMS items (symlinks; the 20 files stay in the page cache), and the same pipeline
#    over ITEMS detections that carry the cutouts inline (`radiogate-bench memory`: end to
#    end from cutouts already in memory, the target's measure, no file opened), with the
#    best batch/sessions of the sweep and several cutout workers, once for each GPU_WAITS
#    setting (how session threads wait for the GPU: "blocking" sleeps, "auto" is CUDA's
#    default, which spins a core per waiting session); once more from memory with the
#    fastest variant of step 4 whose labels agree with the CPU's, at the best wait and worker
#    count; once more with VIEWS test-time views (inference.views); then the host's own cost: the null model (benches/models/null.onnx) on the CPU over HOST_ITEMS
#    of the items, at each of HOST_WORKERS cutout workers: the rate that no GPU could lift
#    on this machine, and whether the CPU an item costs grows with the threads sharing the
#    cores (contention) or is the cores' own speed.
#
# Environment: SRC (vendor/gpu), OUT, ITEMS (100000; QUICK: 50000), WORKERS (cutout worker
# counts to try, default "$(nproc)-2 and $(nproc)"), SWEEP_ARGS (the sweep's settings), PYTHON (the Python whose `nvidia`
# packages hold the CUDA libraries; default: the first of python3, python, conda's that
# has them), DEVICE_ID (0), GPU_WAITS ("blocking auto"; inference.gpu_wait values),
# VARIANTS ("fp32 tf32 fp16 fused tf32+fused tf32+fusedconv"; "" skips them; also nhwc),
# VIEWS (8; inference.views of the views run, "" skips it),
# HOST_ITEMS (20000), HOST_WORKERS ("1 $(nproc)/2 $(nproc)").
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
QUICK="${QUICK:-0}"
OUT="${OUT:-out/gpu/$(date -u +%Y%m%dT%H%M%SZ)}"
DEVICE_ID="${DEVICE_ID:-0}"
CORES="$(nproc)"
# The commas below are radiogate-bench's list syntax, not array separators.
# shellcheck disable=SC2054
if [[ "$QUICK" == 1 ]]; then
  ITEMS="${ITEMS:-50000}"
  SWEEP=(--batch 64,256 --sessions 2,4 --threads 1 --seconds 2)
else
  ITEMS="${ITEMS:-100000}"
  # Batches above ~1,400 overflow a 32-bit element count in the CUDA Resize kernel (the
  # 64-channel 150x150 gate tensor): 1,024 is the largest power of two that runs.
  SWEEP=(--batch 64,128,256,512 --sessions 1,2,4,8 --threads 1 --seconds 2)
fi
# SWEEP_ARGS replaces the sweep's settings (radiogate-bench infer options).
if [[ -n "${SWEEP_ARGS:-}" ]]; then read -ra SWEEP <<<"$SWEEP_ARGS"; fi
WORKERS="${WORKERS:-$((CORES > 4 ? CORES - 2 : 2)) $CORES}"
GPU_WAITS="${GPU_WAITS:-blocking auto}"
VIEWS="${VIEWS-8}"
VARIANTS="${VARIANTS-fp32 tf32 fp16 fused tf32+fused tf32+fusedconv}"
HOST_ITEMS="${HOST_ITEMS:-20000}"
HOST_WORKERS="${HOST_WORKERS:-1 $((CORES > 3 ? CORES / 2 : 1)) $CORES}"

# 1-2. The results folder, log and die; unpack the bundle; the CUDA libraries on
# LD_LIBRARY_PATH.
GPU_SCRIPT=run
# shellcheck source=scripts/gpu/env.sh
. scripts/gpu/env.sh

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  echo "cores: $CORES; load: $(uptime)"
  lscpu 2>/dev/null | grep -E '^(Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)):' || true
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
} | tee "$OUT/machine.txt" >&2

export RADIOGATE__INFERENCE__EXECUTION_PROVIDER=cuda
export RADIOGATE__INFERENCE__DEVICE_ID="$DEVICE_ID"
PROVIDER=(--provider cuda --device-id "$DEVICE_ID")

# 3. Which provider really runs: ONNX Runtime's verbose log names each node's provider,
#    and the process must hold memory on the GPU while it runs.
log "checking the CUDA execution provider"
ORT_LOG=verbose "$RB" infer --inputs samples/first "${PROVIDER[@]}" --batch 64 --seconds 4 \
  >"$OUT/provider-check.jsonl" 2>"$OUT/provider-check.log" &
pid=$!
on_gpu=""
for _ in $(seq 1 60); do
  sleep 0.5
  if nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | grep -qw "$pid"; then on_gpu=1; fi
  kill -0 "$pid" 2>/dev/null || break
done
wait "$pid" || die "inference with the CUDA provider failed: see $OUT/provider-check.log"
grep -E 'placed on \[|Node placements|assigned to' "$OUT/provider-check.log" | sort | uniq -c | tee -a "$OUT/run.log" >&2 || true
grep -q 'CUDAExecutionProvider' "$OUT/provider-check.log" || die "ONNX Runtime never mentions CUDAExecutionProvider"
if grep -qE 'placed on \[CUDAExecutionProvider\]|All nodes placed on \[CUDAExecutionProvider\]' "$OUT/provider-check.log"; then
  log "nodes run on CUDAExecutionProvider"
else
  die "no node was placed on CUDAExecutionProvider (see $OUT/provider-check.log)"
fi
[[ -n "$on_gpu" ]] || log "warning: nvidia-smi did not list the process (containers often hide PIDs)"

# GPU and CPU results on the bundled cutouts: same labels, probabilities within 1e-4.
for provider in cuda cpu; do
  with=(env)
  # The CPU takes no device id (the config refuses one).
  [[ "$provider" == cpu ]] && with=(env -u RADIOGATE__INFERENCE__DEVICE_ID RADIOGATE__INFERENCE__EXECUTION_PROVIDER=cpu)
  "${with[@]}" "$RG" classify --quiet \
    --out "$OUT/parity-$provider.jsonl" samples/first 2>"$OUT/parity-$provider.log" ||
    die "classify with the $provider provider failed: see $OUT/parity-$provider.log"
done
"$PYTHON" scripts/gpu/compare_results.py "$OUT/parity-cuda.jsonl" "$OUT/parity-cpu.jsonl" \
  --max-diff 1e-4 | tee "$OUT/parity.json" >&2 || die "GPU and CPU results differ (parity.json)"

# 4. Bare inference sweep.
log "bare inference sweep: ${SWEEP[*]}"
"$RB" infer --inputs samples/first "${PROVIDER[@]}" "${SWEEP[@]}" | tee "$OUT/sweep.jsonl" >&2
read -r BEST_BATCH BEST_SESSIONS < <("$PYTHON" -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
b = max((r for r in rows if "images_per_s" in r), key=lambda r: r["images_per_s"])
print(b["batch"], b["sessions"])' "$OUT/sweep.jsonl")
log "best: batch $BEST_BATCH, $BEST_SESSIONS session(s)"

# How busy the GPU is at the best setting (nvidia-smi samples every 200 ms).
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/gpu-util.csv" &
smi=$!
"$RB" infer --inputs samples/first "${PROVIDER[@]}" --batch "$BEST_BATCH" --sessions "$BEST_SESSIONS" \
  --threads 1 --seconds 4 >"$OUT/best.jsonl"
kill "$smi" 2>/dev/null || true
wait "$smi" 2>/dev/null || true
# The best setting once per wait, with the CPU time the process took (spinning shows there).
for wait in $GPU_WAITS; do
  "$PYTHON" -c '
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[2:], check=True, capture_output=True, text=True).stdout
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
for line in out.splitlines():
    r = json.loads(line)
    r.update(gpu_wait=sys.argv[1], cpu_s=ru.ru_utime + ru.ru_stime)
    print(json.dumps(r))' "$wait" "$RB" infer --inputs samples/first "${PROVIDER[@]}" --batch "$BEST_BATCH" \
    --sessions "$BEST_SESSIONS" --threads 1 --seconds 4 --gpu-wait "$wait" >>"$OUT/waits.jsonl" ||
    die "bare inference with gpu_wait $wait failed"
  tail -1 "$OUT/waits.jsonl" >&2
done

# The arithmetic variants at the best setting: speed, and results against the CPU's.
for variant in $VARIANTS; do
  variant_settings "$variant"
  log "variant $variant: bare inference, then the bundled cutouts"
  "$RB" infer --model "$model" --inputs samples/first "${PROVIDER[@]}" --batch "$BEST_BATCH" \
    --sessions "$BEST_SESSIONS" --threads 1 --seconds 4 "${flags[@]}" 2>"$OUT/variant-$variant.log" |
    sed "s/^{/{\"variant\":\"$variant\",/" >>"$OUT/variants-bare.jsonl" ||
    log "variant $variant: bare inference failed (variant-$variant.log)"
  env "${settings[@]}" RADIOGATE__INFERENCE__MODEL="$model" "$RG" classify --quiet \
    --out "$OUT/parity-$variant.jsonl" samples/first 2>>"$OUT/variant-$variant.log" ||
    log "variant $variant: classify failed (variant-$variant.log)"
  "$PYTHON" scripts/gpu/compare_results.py "$OUT/parity-$variant.jsonl" "$OUT/parity-cpu.jsonl" \
    --variant "$variant" | tee -a "$OUT/variants.jsonl" >&2
done

# End to end, every session's batch can be in flight twice: keep the rows on the GPU at
# once within what the sweep ran (a batch of 512 holds ~12 GB of intermediate tensors).
while ((BEST_BATCH * BEST_SESSIONS > 2048 && BEST_BATCH > 64)); do BEST_BATCH=$((BEST_BATCH / 2)); done

# 5. Offline end to end.
CUTOUTS="$ROOT/samples/first" links "$OUT/items" "$ITEMS" i
cat samples/first/*.fits >/dev/null
export RADIOGATE__BATCH__MAX_BATCH="$BEST_BATCH"
export RADIOGATE__INFERENCE__SESSIONS="$BEST_SESSIONS"
export RADIOGATE__INFERENCE__INTRA_THREADS=1
export RADIOGATE__PIPELINE__QUEUE_CAPACITY=$((2 * BEST_BATCH * BEST_SESSIONS > 1024 ? 2 * BEST_BATCH * BEST_SESSIONS : 1024))
# One end-to-end run with $2 cutout workers: `radiogate classify` over the items of the
# folder $ITEMS_DIR, or with FROM=memory `radiogate-bench memory` over as many detections
# carrying the bundled cutouts inline; $1: the run's name, $3: what the run is (its "what" in
# offline.jsonl); the rest: `env` options and settings (options first).
ITEMS_DIR="$OUT/items"
FROM=files
offline() {
  local run="$1" workers="$2" what="$3" items
  shift 3
  items="$(find "$ITEMS_DIR" -maxdepth 1 -type l | wc -l)"
  local run_it=("$RG" classify --quiet --out "$OUT/offline-$run.jsonl" "$ITEMS_DIR")
  if [[ "$FROM" == memory ]]; then
    run_it=("$RB" memory --inputs samples/first --items "$items" --out "$OUT/offline-$run.jsonl")
  fi
  log "end to end from $FROM ($what): $items items, $workers cutout workers"
  # How busy the GPU was meanwhile (its median), and where the CPU went by thread pool.
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 200 \
    >"$OUT/offline-$run.gpu.csv" 2>/dev/null &
  local smi=$! ok=1
  timed "$OUT/offline-$run.time" --threads "$OUT/offline-$run.threads.json" \
    env "$@" RADIOGATE__CUTOUT__WORKERS="$workers" "${run_it[@]}" >"$OUT/offline-$run.log" 2>&1 || ok=""
  kill "$smi" 2>/dev/null || true
  wait "$smi" 2>/dev/null || true
  [[ -n "$ok" ]] || die "the run failed: see $OUT/offline-$run.log"
  read -r wall peak_kb cpu_s <"$OUT/offline-$run.time"
  local busy batch
  busy="$(awk -F, '/^ *[0-9]/ { print $1 + 0 }' "$OUT/offline-$run.gpu.csv" | sort -n |
    awk '{ v[NR] = $1 } END { print NR ? v[int((NR + 1) / 2)] : "null" }')"
  # The mean batch, from the run's summary line (classify) or JSON line (radiogate-bench).
  batch="$(grep -oE '(batches of |"mean_batch":)[0-9.]+' "$OUT/offline-$run.log" | grep -oE '[0-9.]+$' | tail -1)"
  "$PYTHON" scripts/bench/offline_record.py "$OUT/offline-$run.jsonl" "$wall" "$peak_kb" "$cpu_s" \
    bench=offline from="$FROM" what="$what" workers="$workers" gpu_busy_pct="$busy" \
    mean_batch="${batch:-null}" thread_cpu_s="$(cat "$OUT/offline-$run.threads.json")" >>"$OUT/offline.jsonl"
  tail -1 "$OUT/offline.jsonl" >&2
  rm -f "$OUT/offline-$run.jsonl"
}
for wait in $GPU_WAITS; do for workers in $WORKERS; do
  FROM=files offline "$wait-$workers" "$workers" "gpu_wait $wait" RADIOGATE__INFERENCE__GPU_WAIT="$wait"
  FROM=memory offline "memory-$wait-$workers" "$workers" "gpu_wait $wait" \
    RADIOGATE__INFERENCE__GPU_WAIT="$wait"
done; done
# The fastest variant whose labels agree with the CPU's, end to end from memory at the best
# wait and worker count above: what cheaper arithmetic is worth once the host feeds it.
read -r fast_variant fast_wait fast_workers < <("$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def lines(name):
    path = out / name
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
agree = {r["variant"] for r in lines("variants.jsonl") if r["answered"] and r["labels_agree"]}
bare = [r for r in lines("variants-bare.jsonl") if "images_per_s" in r and r["variant"] in agree]
e2e = max((r for r in lines("offline.jsonl") if r["from"] == "memory"), key=lambda r: r["items_per_s"])
fast = max(bare, key=lambda r: r["images_per_s"])["variant"] if bare else "fp32"
print(fast, e2e["what"].split()[-1], e2e["workers"])
PY
) || true
if [[ -n "$fast_variant" && "$fast_variant" != fp32 ]]; then
  variant_settings "$fast_variant"
  FROM=memory offline "memory-$fast_variant" "$fast_workers" "gpu_wait $fast_wait, variant $fast_variant" \
    RADIOGATE__INFERENCE__GPU_WAIT="$fast_wait" RADIOGATE__INFERENCE__MODEL="$model" "${settings[@]}"
fi
# What the worker's test-time views cost on the GPU (inference.views: each image also run
# mirrored and turned, VIEWS times the inference), end to end from memory at the best wait
# and worker count; in a subshell, so that a failure here leaves the rest of the run.
if [[ -n "$VIEWS" && -n "${fast_wait:-}" ]]; then
  (FROM=memory offline "memory-views$VIEWS" "$fast_workers" "gpu_wait $fast_wait, $VIEWS views" \
    RADIOGATE__INFERENCE__GPU_WAIT="$fast_wait" RADIOGATE__INFERENCE__VIEWS="$VIEWS") ||
    echo "run.sh: the $VIEWS-view run failed (see $OUT/offline-memory-views$VIEWS.log)" >&2
fi
rm -rf "$OUT/items"
# The host's own cost on this machine: the null model on the CPU (benches/models/null.onnx,
# the contract with almost no arithmetic) at each worker count: the rate that no GPU can
# lift, and the CPU per item that is not the model's, alone on the cores and sharing them.
CUTOUTS="$ROOT/samples/first" links "$OUT/host-items" "$HOST_ITEMS" h
ITEMS_DIR="$OUT/host-items"
host=(-u RADIOGATE__INFERENCE__DEVICE_ID RADIOGATE__INFERENCE__EXECUTION_PROVIDER=cpu
  RADIOGATE__INFERENCE__MODEL=benches/models/null.onnx RADIOGATE__INFERENCE__SESSIONS=2)
for workers in $HOST_WORKERS; do
  offline "host-$workers" "$workers" "the host's own cost (null model on the CPU)" "${host[@]}"
done
most="${HOST_WORKERS##* }"
FROM=memory offline "host-memory-$most" "$most" "the host's own cost (null model on the CPU)" "${host[@]}"
rm -rf "$OUT/host-items"

"$PYTHON" - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
sweep = [json.loads(l) for l in (out / "sweep.jsonl").read_text().splitlines() if l.strip()]
offline = [json.loads(l) for l in (out / "offline.jsonl").read_text().splitlines() if l.strip()]
best = max((r for r in sweep if "images_per_s" in r), key=lambda r: r["images_per_s"])
gpu = [r for r in offline if r["what"].startswith("gpu_wait")]
print(f"# radiogate on the GPU\n\n{(out / 'machine.txt').read_text().splitlines()[0]}\n")
print(f"- bare inference: {best['images_per_s']:.0f} images/s (batch {best['batch']}, "
      f"{best['sessions']} sessions); target >= 50,000: {'met' if best['images_per_s'] >= 5e4 else 'NOT met'}")
util = [int(l.split(",")[0]) for l in (out / "gpu-util.csv").read_text().splitlines()
        if l.split(",")[0].strip().isdigit()]
busy = sorted(util)[len(util) // 2] if util else float("nan")
print(f"- GPU utilisation at that setting (nvidia-smi, median of {len(util)} samples): {busy}%")
parity = json.loads((out / "parity.json").read_text())
print(f"- GPU vs CPU on the {parity['items']} bundled cutouts: labels agree: {parity['labels_agree']}, "
      f"largest probability difference {parity['max_prob_diff']:.2e}")
for r in map(json.loads, (out / "waits.jsonl").read_text().splitlines()):
    print(f"- bare inference at that setting, gpu_wait {r['gpu_wait']}: {r['images_per_s']:.0f} images/s, "
          f"{r['cpu_s']:.1f} s of CPU in all")
def lines(name):
    path = out / name
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
bare = {r["variant"]: r for r in lines("variants-bare.jsonl")}
for r in lines("variants.jsonl"):
    b = bare.get(r["variant"], {})
    rate = f"{b['images_per_s']:.0f} images/s" if "images_per_s" in b else f"failed ({b.get('error', 'no record')})"
    diff = "" if r["max_prob_diff"] is None else f", largest probability difference {r['max_prob_diff']:.2e}"
    agree = f"labels agree with the CPU: {r['labels_agree']}" if r["answered"] else "classify failed"
    print(f"- variant {r['variant']} at that setting: {rate}; {agree}{diff}")
for r in offline:
    threads = ", ".join(f"{k} {v:.1f}" for k, v in list(r.get("thread_cpu_s", {}).items())[:5])
    print(f"- end to end from {r['from']}, {r['what']}, {r['workers']} cutout workers: {r['items_per_s']:.0f} cutouts/s "
          f"({r['items']} items, {r['rejected']} rejected, peak RSS {r['peak_rss_mb']:.0f} MB, "
          f"{r['cpu_ms_per_item']:.3f} ms CPU per item, {r['cores_busy']:.1f} cores busy; mean us per "
          f"item: " + ", ".join(f"{k} {v:.0f}" for k, v in r["mean_stage_us"].items())
          + f"; mean batch {r.get('mean_batch')}; GPU busy {r.get('gpu_busy_pct')}%; CPU s by thread: {threads})")
for source, what in (("memory", "from cutouts in memory (the target's measure)"), ("files", "from files")):
    e2e = max((r for r in gpu if r["from"] == source), key=lambda r: r["items_per_s"])
    print(f"- best end to end {what}: {e2e['items_per_s']:.0f} cutouts/s ({e2e['what']}); "
          f"target >= 20,000: {'met' if e2e['items_per_s'] >= 2e4 else 'NOT met'}")
print()
print("| batch | sessions | images/s | ms per batch |\n|---|---|---|---|")
for r in sweep:
    if "error" in r:
        print(f"| {r['batch']} | {r['sessions']} | failed: {r['error'][-120:]} | |")
    else:
        print(f"| {r['batch']} | {r['sessions']} | {r['images_per_s']:.0f} | {r['ms_per_batch']:.2f} |")
PY
