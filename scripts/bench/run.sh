#!/usr/bin/env bash
# radiogate's end-to-end benchmark: everything measured in ONE run on the same machine, so
# that the ratios between the numbers hold even when the machine is busy.
#
#   scripts/bench/run.sh            # full run: sweep, then REPEATS rounds, medians
#   QUICK=1 scripts/bench/run.sh    # a few minutes: short sweep, 1 round, fewer items
#   LONG=1 scripts/bench/run.sh     # also the 100,000-detection streaming run (RSS over time)
#
# What it measures (see BENCHMARKS.md for the definitions):
#   1. the limit: bare inference (radiogate-bench infer: radiogate's own src/infer, ready-made
#      tensors) over a sweep of batch size, sessions and intra-op threads; the two best
#      settings are then re-measured before and after every end-to-end run, and each run's
#      ratio is to the mean of the limits around it;
#   2. offline: `radiogate classify` over the MiraBest test cutouts repeated COPIES times
#      (symlinks with distinct names, so distinct source ids; files in page cache);
#   3. streaming: `radiogate run` draining the same detections, published beforehand with
#      `radiogate publish --inline` (FITS bytes in each message), from the Kafka broker to a
#      results topic (first consume to last publication, broker clock); then the same with
#      detections that name their cutout file (`radiogate publish` without --inline);
#   4. latency at about half the streaming rate (`radiogate publish --rate`), peak RSS;
# and in every round the host's own cost: offline `classify` with the null model
# (benches/models/null.onnx, the model's contract with almost no arithmetic), what reading,
# cutting, preprocessing, summarising and writing cost per item: the ceiling that no faster
# inference (a GPU) can lift.
#
# Environment: REPEATS (3; QUICK: 1), COPIES (32 -> 5,024 items; QUICK: 8), BROKERS
# (127.0.0.1:9092), KAFKA_DIR (the broker's state folder when broker.sh was given one, as for
# a broker whose log is in memory: BENCHMARKS.md, "How to run"), CUTOUTS (the MiraBest test
# cutouts), OUT (out/bench/<UTC time>), CARGO_TARGET_DIR (where cargo builds), LONG_ITEMS
# (100000), RATE_SECONDS (20; QUICK: 10), WARM_SECONDS (the paced warm-up before the latency
# is measured, 20; QUICK: 5),
# QUEUE_CAPACITY (pipeline.queue_capacity of every run, default 64: the shipped 256 holds up
# to ~350 MB of inline cutouts in flight), SINK_PROPERTIES (the streaming workers'
# `sink.properties`, a TOML inline table, e.g. '{ "linger.ms" = "50" }'), WORKER_SETTING
# (shipped: the workers run the shipped configuration; best: the sweep's best setting), MODEL
# (the model of every run but the null one: models/agcnn-mirabest-confident.onnx, or e.g. its
# fused form models/agcnn-mirabest-confident-fused.onnx).
# Needs the broker (scripts/kafka/broker.sh start) and python3. Prints a summary and writes
# everything to $OUT (summary.json, summary.md, raw JSON lines, logs; the latency stage's CPU
# and disk trace, latency-cpu.jsonl, and what its slowest records met).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

QUICK="${QUICK:-0}"
LONG="${LONG:-0}"
# The commas below are radiogate-bench's list syntax, not array separators.
# shellcheck disable=SC2054
if [[ "$QUICK" == 1 ]]; then
  REPEATS="${REPEATS:-1}" COPIES="${COPIES:-8}" RATE_SECONDS="${RATE_SECONDS:-10}" WARM_SECONDS="${WARM_SECONDS:-5}"
  SWEEP=(--batch 1,4,32 --sessions 1,2 --threads 1,2 --seconds 2)
  BARE_SECONDS=3
else
  REPEATS="${REPEATS:-3}" COPIES="${COPIES:-32}" RATE_SECONDS="${RATE_SECONDS:-20}" WARM_SECONDS="${WARM_SECONDS:-20}"
  SWEEP=(--batch 1,2,4,8,32 --sessions 1,2 --threads 1,2 --seconds 3)
  BARE_SECONDS=5
fi
BROKERS="${BROKERS:-127.0.0.1:9092}"
CUTOUTS="${CUTOUTS:-/work/shared/data/first-cutouts/mirabest-test}"
LONG_ITEMS="${LONG_ITEMS:-100000}"
SINK_PROPERTIES="${SINK_PROPERTIES:-}"
WORKER_SETTING="${WORKER_SETTING:-shipped}"
[[ "$WORKER_SETTING" == shipped || "$WORKER_SETTING" == best ]] ||
  { echo "run.sh: WORKER_SETTING must be shipped or best, got $WORKER_SETTING" >&2; exit 2; }
MODEL="${MODEL:-models/agcnn-mirabest-confident.onnx}"
# The same contract with almost no arithmetic (scripts/bench/null_model.py).
NULL_MODEL="benches/models/null.onnx"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-out/bench/$RUN_ID}"
PREFIX="bench-$RUN_ID"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
W="$OUT/work"
mkdir -p "$W"

log() { echo "bench: $*" >&2; }
RG="${CARGO_TARGET_DIR:-$ROOT/target}/release/radiogate"
RB="${CARGO_TARGET_DIR:-$ROOT/target}/release/radiogate-bench"

log "building (release)"
cargo build --release --quiet --bin radiogate --bin radiogate-bench
# The local broker for $BROKERS's port (and $KAFKA_DIR's state folder, when set).
export KAFKA_PORT="${BROKERS##*:}"
scripts/kafka/broker.sh status >/dev/null 2>&1 || scripts/kafka/broker.sh start

# Everything this run created on the broker is deleted at the end (inline detections are
# about 360 KB each).
TOPICS=()
WORKER_PID=""
cleanup() {
  if [[ -n "$WORKER_PID" ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    wait "$WORKER_PID" 2>/dev/null || true
  fi
  if ((${#TOPICS[@]})); then "$RB" topics --brokers "$BROKERS" --delete "${TOPICS[@]}" || true; fi
}
trap cleanup EXIT

machine() {
  {
    echo "{\"bench\":\"machine\",\"when\":\"$(date -u +%FT%TZ)\",\"uptime\":\"$(uptime | sed 's/^ *//')\","
    echo "\"cpus\":$(nproc),\"cpu\":\"$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)\","
    echo "\"model\":\"$MODEL\",\"broker_log_fs\":\"$(broker_log_fs)\","
    echo "\"commit\":\"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)\"}"
  } | tr -d '\n'
  echo
}
machine >"$OUT/machine-start.json"
log "$(uptime)"

# The items: COPIES symlinks per cutout (`links`, lib.sh).
CUTOUT_FILES=("$CUTOUTS"/*.fits)
ITEMS=$((COPIES * ${#CUTOUT_FILES[@]}))
links "$W/items" "$ITEMS" c
cat "$CUTOUTS"/*.fits >/dev/null # page cache
log "$ITEMS items ($COPIES copies of ${#CUTOUT_FILES[@]} cutouts)"

# 1. The limit: sweep, pick the best setting.
log "bare inference sweep: ${SWEEP[*]}"
"$RB" infer --model "$MODEL" --inputs "$CUTOUTS" "${SWEEP[@]}" | tee "$OUT/sweep.jsonl" >&2
# The two best settings are both re-measured in every round and the round's limit is the
# faster: settings a few percent apart trade places from one short sweep step to the next.
read -r BEST_BATCH BEST_SESSIONS BEST_THREADS SECOND_BATCH SECOND_SESSIONS SECOND_THREADS < <(python3 -c '
import json, sys
rows = sorted((json.loads(l) for l in open(sys.argv[1])), key=lambda r: -r["images_per_s"])
print(*[r[k] for r in (rows + rows)[:2] for k in ("batch", "sessions", "intra_threads")])' "$OUT/sweep.jsonl")
log "best: batch $BEST_BATCH, $BEST_SESSIONS session(s), $BEST_THREADS intra-op thread(s);" \
  "second: batch $SECOND_BATCH, $SECOND_SESSIONS session(s), $SECOND_THREADS thread(s)"

# The workers run the shipped configuration (WORKER_SETTING=shipped): what an operator
# gets, measured against the best the model can do. With WORKER_SETTING=best they run the
# sweep's best batching, sessions and threads instead (a setting that wins bare inference by
# a few percent can lose more in the worker, whose stages share the cores).
if [[ "$WORKER_SETTING" == best ]]; then
  export RADIOGATE__BATCH__MAX_BATCH="$BEST_BATCH"
  export RADIOGATE__INFERENCE__SESSIONS="$BEST_SESSIONS"
  export RADIOGATE__INFERENCE__INTRA_THREADS="$BEST_THREADS"
fi
python3 - "$WORKER_SETTING" "${RADIOGATE__BATCH__MAX_BATCH:-}" "${RADIOGATE__INFERENCE__SESSIONS:-}" \
  "${RADIOGATE__INFERENCE__INTRA_THREADS:-}" >"$OUT/worker-setting.json" <<'PY'
import json, sys, tomllib
origin, *given = sys.argv[1:]
shipped = tomllib.load(open("config/radiogate.toml", "rb"))
keys = (("batch", "max_batch"), ("inference", "sessions"), ("inference", "intra_threads"))
values = [int(g) if g else shipped[t][k] for g, (t, k) in zip(given, keys)]
print(json.dumps({"from": origin, **dict(zip(("batch", "sessions", "intra_threads"), values))}))
PY
log "workers: $(cat "$OUT/worker-setting.json")"
export RADIOGATE__INFERENCE__MODEL="$MODEL"
export RADIOGATE__PIPELINE__QUEUE_CAPACITY="${QUEUE_CAPACITY:-64}"

# Streaming input: published once, read by every round with a fresh consumer group. The
# same items twice: each detection carrying its cutout's FITS bytes (inline, ~360 KB), and
# each naming its cutout file (by reference, a few hundred bytes; the worker reads the file).
DETECTIONS="$PREFIX.detections"
REFS="$PREFIX.refs"
TOPICS+=("$DETECTIONS" "$REFS")
"$RB" topics --brokers "$BROKERS" "$DETECTIONS:4" "$REFS:4"
log "publishing $ITEMS inline detections to $DETECTIONS, and by reference to $REFS"
"$RG" publish --brokers "$BROKERS" --topic "$DETECTIONS" --inline "$W/items" 2>>"$OUT/publish.log"
"$RG" publish --brokers "$BROKERS" --topic "$REFS" "$W/items" 2>>"$OUT/publish.log"

BROKER_PID="$(broker_pid)"

stop_worker() {
  kill -TERM "$WORKER_PID"
  wait "$WORKER_PID" || log "worker exited with $?"
  WORKER_PID=""
}

# One streaming round: a fresh worker drains topic $2 to its own results topic.
# $1: name (results and logs), $3: round; appends a line to $OUT/$1.jsonl.
stream() {
  local name="$1" topic="$2" r="$3"
  local results="$PREFIX.$name-results-$r" dead="$PREFIX.$name-dead-$r"
  TOPICS+=("$results" "$dead")
  "$RB" topics --brokers "$BROKERS" "$results:1:logappend" "$dead:1"
  worker_config "$W/$name-$r.toml" "$topic" "$PREFIX-$name-group-$r" "$results" "$dead"
  local broker_cpu peak cpu
  broker_cpu="$(cpu_s "$BROKER_PID")"
  "$RG" run --config "$W/$name-$r.toml" 2>"$OUT/$name-worker-$r.log" &
  WORKER_PID=$!
  "$RB" collect --brokers "$BROKERS" --topic "$results" --expect "$ITEMS" --label "$name $r" >"$W/collect"
  peak="$(rss_mb "$WORKER_PID" VmHWM)"
  # CPU of the whole run (start-up and the collector's idle wait included) and of the broker.
  cpu="$(cpu_s "$WORKER_PID")"
  broker_cpu="$(awk -v a="$broker_cpu" -v b="$(cpu_s "$BROKER_PID")" 'BEGIN { printf "%.2f", b - a }')"
  stop_worker
  sed "s/^{/{\"round\":$r,\"after_point\":$((POINT - 1)),\"peak_rss_mb\":$peak,\"cpu_s\":$cpu,\"broker_cpu_s\":$broker_cpu,/" "$W/collect" >>"$OUT/$name.jsonl"
}

# One offline round: `radiogate classify` over the items, with any further options ("$@");
# $1: name (results and logs), $2: round; appends a line to $OUT/$1.jsonl.
offline() {
  local name="$1" r="$2"
  shift 2
  timed "$W/$name-time" "$RG" classify --quiet --out "$W/$name-$r.jsonl" "$W/items" "$@" 2>>"$OUT/$name.log"
  read -r wall peak_kb cpu <"$W/$name-time"
  python3 scripts/bench/offline_record.py "$W/$name-$r.jsonl" "$wall" "$peak_kb" "$cpu" \
    bench="$name" round="$r" after_point="$((POINT - 1))" >>"$OUT/$name.jsonl"
  rm -f "$W/$name-$r.jsonl"
}

# The limit, measured before and after every end-to-end run (the two best settings, the faster
# counts): each run's ratio is to the mean of the two, so that the neighbours' load, which
# drifts over a minute, weighs on both sides of the ratio alike. $1: round.
POINT=0
limit_point() {
  log "round $1/$REPEATS: bare inference, point $POINT (the two best settings, ${BARE_SECONDS}s each)"
  for setting in "$BEST_BATCH $BEST_SESSIONS $BEST_THREADS" "$SECOND_BATCH $SECOND_SESSIONS $SECOND_THREADS"; do
    read -r b s t <<<"$setting"
    "$RB" infer --model "$MODEL" --inputs "$CUTOUTS" --batch "$b" --sessions "$s" --threads "$t" \
      --seconds "$BARE_SECONDS" | sed "s/^{/{\"round\":$1,\"point\":$POINT,/" >>"$OUT/bare-candidates.jsonl"
  done
  python3 - "$OUT/bare-candidates.jsonl" "$POINT" >>"$OUT/bare.jsonl" <<'PY'
import json, sys
rows = [r for r in map(json.loads, open(sys.argv[1])) if r["point"] == int(sys.argv[2])]
print(json.dumps(max(rows, key=lambda r: r["images_per_s"])))
PY
  POINT=$((POINT + 1))
}

for ((r = 1; r <= REPEATS; r++)); do
  log "round $r/$REPEATS: offline classify with the null model (the host's own cost)"
  offline host "$r" --model "$NULL_MODEL"
  limit_point "$r"
  log "round $r/$REPEATS: offline classify"
  offline offline "$r"

  limit_point "$r"
  log "round $r/$REPEATS: streaming (inline cutouts)"
  stream streaming "$DETECTIONS" "$r"
  limit_point "$r"
  log "round $r/$REPEATS: streaming (cutouts by reference)"
  stream streaming-refs "$REFS" "$r"
done
limit_point "$REPEATS"

# 4. Latency at about half the streaming rate.
RATE="$(python3 -c '
import json, statistics, sys
print(round(0.5 * statistics.median(json.loads(l)["items_per_s"] for l in open(sys.argv[1])), 1))' \
  "$OUT/streaming.jsonl")"
LIVE_ITEMS="$(python3 -c "print(max(50, int($RATE * $RATE_SECONDS)))")"
log "latency: $LIVE_ITEMS detections at $RATE/s"
LIVE="$PREFIX.live"
TOPICS+=("$LIVE" "$LIVE.results" "$LIVE.dead")
"$RB" topics --brokers "$BROKERS" "$LIVE:4" "$LIVE.results:1:logappend" "$LIVE.dead:1"
links "$W/warmup" "$(python3 -c "print(max(32, int($RATE * $WARM_SECONDS)))")" w
links "$W/live" "$LIVE_ITEMS" l
worker_config "$W/worker-live.toml" "$LIVE" "$PREFIX-group-live" "$LIVE.results" "$LIVE.dead"
"$RG" run --config "$W/worker-live.toml" 2>"$OUT/worker-live.log" &
WORKER_PID=$!
paced_latency "$LIVE" "$LIVE.results" "$RATE" "$W/warmup" "$W/live" "half load" \
  "$OUT/latency-records.jsonl" "$WORKER_PID" >"$W/collect"
peak="$(rss_mb "$WORKER_PID" VmHWM)"
stop_worker
sed "s/^{/{\"rate\":$RATE,\"peak_rss_mb\":$peak,/" "$W/collect" >"$OUT/latency.jsonl"

# 5. The long run: LONG_ITEMS detections by path (the same cutouts; an inline topic of that
#    size would take ~36 GB), resident memory sampled every second.
if [[ "$LONG" == 1 ]]; then
  log "long run: $LONG_ITEMS detections"
  links "$W/long" "$LONG_ITEMS" l
  LONGT="$PREFIX.long"
  TOPICS+=("$LONGT" "$LONGT.results" "$LONGT.dead")
  "$RB" topics --brokers "$BROKERS" "$LONGT:4" "$LONGT.results:1:logappend" "$LONGT.dead:1"
  "$RG" publish --brokers "$BROKERS" --topic "$LONGT" "$W/long" 2>>"$OUT/publish.log"
  worker_config "$W/worker-long.toml" "$LONGT" "$PREFIX-group-long" "$LONGT.results" "$LONGT.dead"
  "$RG" run --config "$W/worker-long.toml" 2>"$OUT/worker-long.log" &
  WORKER_PID=$!
  (
    while kill -0 "$WORKER_PID" 2>/dev/null; do
      echo "$(date +%s.%N) $(rss_mb "$WORKER_PID" VmRSS 2>/dev/null)"
      sleep 1
    done
  ) >"$OUT/long-rss.txt" &
  sampler=$!
  "$RB" collect --brokers "$BROKERS" --topic "$LONGT.results" --expect "$LONG_ITEMS" \
    --idle-timeout 300 --label long >"$W/collect"
  peak="$(rss_mb "$WORKER_PID" VmHWM)"
  stop_worker
  wait "$sampler" || true
  sed "s/^{/{\"peak_rss_mb\":$peak,/" "$W/collect" >"$OUT/long.jsonl"
fi

machine >"$OUT/machine-end.json"
python3 scripts/bench/summarise.py "$OUT" | tee "$OUT/summary.md"
