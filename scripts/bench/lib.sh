# shellcheck shell=bash
# Helpers shared by the benchmark scripts, scripts/gpu/run.sh among them (sourced; they use
# $BROKERS and, for the worker's `sink.properties`, $SINK_PROPERTIES when set).

# A streaming worker's configuration: $1 config path, $2 input topic, $3 group, $4 results
# topic, $5 dead letters.
worker_config() {
  cat >"$1" <<CONFIG
[source]
kind = "kafka"
brokers = "$BROKERS"
group_id = "$3"
topic = "$2"

[sink]
kind = "kafka"
brokers = "$BROKERS"
results_topic = "$4"
dead_letter_topic = "$5"
CONFIG
  if [[ -n "${SINK_PROPERTIES:-}" ]]; then echo "properties = $SINK_PROPERTIES" >>"$1"; fi
}

# The A/B scripts (ab.sh, stream-ab.sh, latency-ab.sh) compare variants, each NAME=BINARY
# then any VAR=VALUE words for its environment (no spaces in a value): $@ must hold two or more.
ab_usage() {
  [ "$#" -ge 2 ] || { echo "usage: $0 NAME=BINARY [VAR=VALUE ...] NAME=BINARY ..." >&2; exit 2; }
}

# Splits variant $1 into VARIANT_NAME and VARIANT_CMD (`env VAR=VALUE ... BINARY`, to be run
# with the binary's arguments; env execs the binary, so `$!` of a background run is its pid).
split_variant() {
  local spec envs
  read -r spec envs <<<"$1"
  # shellcheck disable=SC2034 # both are the caller's
  VARIANT_NAME="${spec%%=*}"
  # shellcheck disable=SC2034
  read -ra VARIANT_CMD <<<"env $envs ${spec#*=}"
}

# Runs a command; writes its wall time (s), peak RSS (KB) and CPU time (s, user + system)
# to $1, and with `--threads FILE` after it the CPU of the command's threads by name
# (scripts/bench/timed.py). Without GNU time, which a GPU machine may lack; with $PYTHON when set.
timed() {
  "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/timed.py" "$@"
}

# Peak (VmHWM) and current (VmRSS) resident memory of a process, in MB.
rss_mb() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# CPU time (s, user + system) of a running process; 0 when there is none.
cpu_s() {
  if [[ -n "$1" && -r "/proc/$1/stat" ]]; then
    awk -v tck="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / tck }' "/proc/$1/stat"
  else
    echo 0
  fi
}

# The state folder of the local test broker that scripts/kafka/broker.sh started for
# $BROKERS's port: $KAFKA_DIR when that is set (as for a broker whose log is in memory,
# KAFKA_DIR=/dev/shm/kafka-9192 KAFKA_PORT=9192), else broker.sh's default.
broker_dir() { echo "${KAFKA_DIR:-vendor/kafka/run-${BROKERS##*:}}"; }

# Its pid (its CPU is counted beside the worker's), if it runs here.
broker_pid() { cat "$(broker_dir)/broker.pid" 2>/dev/null || true; }

# The file system its log is on (ext4, tmpfs, ...; empty when it is not here).
broker_log_fs() { df --output=fstype "$(broker_dir)/data" 2>/dev/null | tail -n +2 || true; }

# Symlinks to the cutouts in $CUTOUTS, each under a distinct name (so a distinct source id):
# $1: folder, $2: how many links, $3: name prefix; cycles through the cutouts.
links() {
  "${PYTHON:-python3}" - "$CUTOUTS" "$@" <<'PY'
import os, sys
src, dst, n, prefix = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
files = sorted(f for f in os.listdir(src) if f.endswith(".fits"))
os.makedirs(dst, exist_ok=True)
for i in range(n):
    f = files[i % len(files)]
    os.symlink(os.path.join(src, f), os.path.join(dst, f"{prefix}{i // len(files):06d}_{f}"))
PY
}

# The latency of a paced stream through a running worker, printed as `radiogate-bench
# collect`'s JSON line. $1 detections topic, $2 its results topic (empty so far; one
# partition), $3 rate (detections/s), $4 folder of warm-up detections, $5 folder of the
# measured ones, $6 label, $7 where each measured record's latency and parts go (JSON
# lines, `collect --records`; a name ending in -records.jsonl), $8 the worker's pid. Uses $RG,
# $RB, $BROKERS and appends to $OUT/publish.log. While it runs, the machine's CPU and disks
# are traced (scripts/bench/cpu_trace.py: busy, steal, iowait, the worker, the local broker,
# any other process, the disks' busy time and writes) into $7's name with -cpu.jsonl for
# -records.jsonl, and what the slowest 1% of the records met goes beside it as
# -cpu-attribution.json.
# The warm-up and the measured detections are one stream from one publisher; the warm-up's
# results are read but not counted. Without the warm-up, the worker's first batches and a
# freshly started broker's JIT (the request paths of a paced stream are not those of a
# bulk drain) set the tail; with a publisher started anew for the measured part, so did
# its first ~0.5 s: detections stamped while it still connected, then sent at once.
paced_latency() {
  local warm live
  warm=$(find "$4" -name '*.fits' | wc -l)
  live=$(find "$5" -name '*.fits' | wc -l)
  local trace="${7%-records.jsonl}-cpu.jsonl" tracer broker
  broker="$(broker_pid)"
  "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/cpu_trace.py" trace "$trace" \
    "worker=$8" ${broker:+"broker=$broker"} &
  tracer=$!
  "$RG" publish --brokers "$BROKERS" --topic "$1" --inline --rate "$3" "$4" "$5" 2>>"$OUT/publish.log"
  "$RB" collect --brokers "$BROKERS" --topic "$2" --skip "$warm" --expect "$live" --label "$6" \
    --records "$7"
  kill -TERM "$tracer" 2>/dev/null || true # it stops by itself when the worker ends
  wait "$tracer" || true
  "${PYTHON:-python3}" "$(dirname "${BASH_SOURCE[0]}")/cpu_trace.py" attribute "$trace" "$7" \
    >"${7%-records.jsonl}-cpu-attribution.json"
}
