#!/usr/bin/env bash
# Latency A/B: `radiogate run` variants alternated in one sitting, each round a fresh worker
# answering a paced stream (`radiogate publish --rate`) as `make bench` measures latency
# (a paced warm-up first, not counted; latency = the result's broker append time - the
# detection's send time). Prints each variant's median p50, p99 and max over the rounds.
#
#   scripts/bench/latency-ab.sh new=target/release/radiogate \
#       'normal=target/release/radiogate RADIOGATE__PIPELINE__SCHEDULING=normal'
#
# A variant is NAME=BINARY, then any VAR=VALUE words for its environment (no spaces in a
# value). Needs the broker (scripts/kafka/broker.sh start; with KAFKA_DIR when it was given
# one, as for a broker whose log is in memory). Environment: ROUNDS (3), RATE
# (detections/s, 135: about half of what `make bench` measured on the machine of 2026-11-26;
# take half its streaming rate), SECONDS_PER_ROUND (20), WARM_SECONDS (20: the paced warm-up,
# not counted), CUTOUTS (the MiraBest test cutouts), BROKERS (127.0.0.1:9092),
# SINK_PROPERTIES (as in run.sh), OUT (out/latency-ab/<UTC time>). Each round also says what
# the slowest 1% met while they were in flight, the rest of the round's in brackets: the cores
# used (busy, steal, iowait, worker, broker, other) and the disks' state (lib.sh's
# paced_latency traces them with scripts/bench/cpu_trace.py).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
RATE="${RATE:-135}"
SECONDS_PER_ROUND="${SECONDS_PER_ROUND:-20}"
WARM_SECONDS="${WARM_SECONDS:-20}"
CUTOUTS="${CUTOUTS:-$ROOT/../shared/data/first-cutouts/mirabest-test}"
BROKERS="${BROKERS:-127.0.0.1:9092}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-$ROOT/out/latency-ab/$STAMP}"
RB=target/release/radiogate-bench
RG=target/release/radiogate
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
ab_usage "$@"
[ -n "$(broker_pid)" ] || { echo "latency-ab: no local broker (scripts/kafka/broker.sh start)" >&2; exit 1; }
cargo build --release --quiet --bin radiogate --bin radiogate-bench

# The paced detections: the cutouts cycled, each under a distinct name (distinct source ids).
items=$(python3 -c "print(max(50, int($RATE * $SECONDS_PER_ROUND)))")
links "$OUT/live" "$items" l
links "$OUT/warmup" "$(python3 -c "print(max(32, int($RATE * $WARM_SECONDS)))")" w
PREFIX="latency-ab-$STAMP"
TOPICS=()
WORKER=""
cleanup() {
  if [[ -n "$WORKER" ]] && kill -0 "$WORKER" 2>/dev/null; then kill -INT "$WORKER"; wait "$WORKER" || true; fi
  if ((${#TOPICS[@]})); then "$RB" topics --brokers "$BROKERS" --delete "${TOPICS[@]}" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
echo "latency-ab: $items detections at $RATE/s, $ROUNDS rounds, the broker's log on $(broker_log_fs)," \
  "load: $(uptime | sed 's/.*load/load/')" | tee "$OUT/summary.txt"

for r in $(seq "$ROUNDS"); do
  for variant in "$@"; do
    split_variant "$variant"
    name="$VARIANT_NAME"
    live="$PREFIX.$name-$r"
    TOPICS+=("$live" "$live.results" "$live.dead")
    "$RB" topics --brokers "$BROKERS" "$live:4" "$live.results:1:logappend" "$live.dead:1"
    worker_config "$OUT/$name-$r.toml" "$live" "$live" "$live.results" "$live.dead"
    "${VARIANT_CMD[@]}" run --config "$OUT/$name-$r.toml" 2>>"$OUT/$name.log" &
    WORKER=$!
    paced_latency "$live" "$live.results" "$RATE" "$OUT/warmup" "$OUT/live" "$name" \
      "$OUT/$name-$r-records.jsonl" "$WORKER" |
      sed "s/^{/{\"variant\":\"$name\",\"round\":$r,/" >>"$OUT/rounds.jsonl"
    kill -INT "$WORKER"
    wait "$WORKER" || true
    WORKER=""
  done
done

python3 - "$OUT" "$@" <<'EOF' | tee -a "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), [v.split("=", 1)[0] for v in sys.argv[2:]]
rows = [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]
for name in names:
    mine = [r["latency_ms"] for r in rows if r["variant"] == name]
    def med(key):
        values = [m[key] for m in mine]
        return f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})"
    print(f"{name}: p50 {med('p50')} ms; p99 {med('p99')} ms; max {med('max')} ms")
    # What the slowest 1% met, each round (scripts/bench/cpu_trace.py attribute): cores used
    # and the disks' state while they were in flight, against the rest of the round.
    for r in sorted({r["round"] for r in rows if r["variant"] == name}):
        a = json.loads((out / f"{name}-{r}-cpu-attribution.json").read_text())
        during, rest = a["while_slowest_in_flight"], a["otherwise"]
        print(
            f"  round {r}: slowest {a['slowest_from_s']}-{a['slowest_to_s']} s in: "
            + ", ".join(f"{k} {during[k]} ({rest[k]})" for k in during)
        )
EOF
echo "latency-ab: load at end: $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/summary.txt"
