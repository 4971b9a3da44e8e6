#!/usr/bin/env bash
# Streaming A/B: `radiogate run` variants alternated over the same detections in one sitting,
# each round a fresh consumer group draining one topic to its own results topic on the
# broker. Prints each variant's median items/s (first consume to last publication, as
# `radiogate-bench collect` measures it), worker CPU per item and broker CPU per item (the
# broker runs on the same machine), the measures that load on a shared machine disturbs
# least when compared within one sitting.
#
#   scripts/bench/stream-ab.sh old=/tmp/radiogate-old new=target/release/radiogate \
#       'fetch1M=target/release/radiogate RADIOGATE__SOURCE__PROPERTIES={"max.partition.fetch.bytes"="1048576"}'
#
# A variant is NAME=BINARY, then any VAR=VALUE words for its environment (no spaces in a
# value). Needs the broker (scripts/kafka/broker.sh start). Environment: ROUNDS (3), COPIES
# (8 -> 1,256 detections), INLINE (1: FITS bytes in each message; 0: by path), CUTOUTS (the
# MiraBest test cutouts), BROKERS (127.0.0.1:9092), SINK_PROPERTIES (as in run.sh), OUT
# (out/stream-ab/<UTC time>).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
COPIES="${COPIES:-8}"
INLINE="${INLINE:-1}"
CUTOUTS="${CUTOUTS:-$ROOT/../shared/data/first-cutouts/mirabest-test}"
BROKERS="${BROKERS:-127.0.0.1:9092}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
OUT="${OUT:-$ROOT/out/stream-ab/$STAMP}"
RB=target/release/radiogate-bench
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
ab_usage "$@"
BROKER_PID="$(broker_pid)"
[ -n "$BROKER_PID" ] || { echo "stream-ab: no local broker (scripts/kafka/broker.sh start)" >&2; exit 1; }
cargo build --release --quiet --bin radiogate-bench

cutouts=("$CUTOUTS"/*.fits)
items=$((COPIES * ${#cutouts[@]}))
links "$OUT/items" "$items" c
PREFIX="stream-ab-$STAMP"
TOPICS=("$PREFIX.detections")
cleanup() { "$RB" topics --brokers "$BROKERS" --delete "${TOPICS[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$RB" topics --brokers "$BROKERS" "$PREFIX.detections:4"
publish=(target/release/radiogate publish --brokers "$BROKERS" --topic "$PREFIX.detections")
[ "$INLINE" = 1 ] && publish+=(--inline)
"${publish[@]}" "$OUT/items" 2>>"$OUT/publish.log"
echo "stream-ab: $items detections (inline $INLINE), $ROUNDS rounds, load: $(uptime | sed 's/.*load/load/')" | tee "$OUT/summary.txt"

for r in $(seq "$ROUNDS"); do
  for variant in "$@"; do
    split_variant "$variant"
    name="$VARIANT_NAME"
    results="$PREFIX.$name-$r"
    TOPICS+=("$results" "$results.dead")
    "$RB" topics --brokers "$BROKERS" "$results:1:logappend" "$results.dead:1"
    worker_config "$OUT/$name-$r.toml" "$PREFIX.detections" "$results" "$results" "$results.dead"
    broker0="$(cpu_s "$BROKER_PID")"
    "${VARIANT_CMD[@]}" run --config "$OUT/$name-$r.toml" 2>>"$OUT/$name.log" &
    worker=$!
    "$RB" collect --brokers "$BROKERS" --topic "$results" --expect "$items" --label "$name" >"$OUT/collect"
    worker_cpu="$(cpu_s "$worker")" broker1="$(cpu_s "$BROKER_PID")"
    kill -INT "$worker"
    wait "$worker" || true
    python3 - "$OUT/collect" "$name" "$r" "$items" "$worker_cpu" "$broker0" "$broker1" >>"$OUT/rounds.jsonl" <<'PY'
import json, sys
collect, name, rnd, items, worker, b0, b1 = sys.argv[1:]
rate = json.load(open(collect))["items_per_s"]
print(json.dumps({"variant": name, "round": int(rnd), "items_per_s": rate,
                  "worker_ms_per_item": 1e3 * float(worker) / int(items),
                  "broker_ms_per_item": 1e3 * (float(b1) - float(b0)) / int(items)}))
PY
  done
done

python3 - "$OUT" "$@" <<'EOF' | tee -a "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), [v.split("=", 1)[0] for v in sys.argv[2:]]
rows = [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]
for name in names:
    mine = [r for r in rows if r["variant"] == name]
    def med(key):
        values = [r[key] for r in mine]
        return f"{statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"
    print(f"{name}: items/s {med('items_per_s')}; worker ms per item {med('worker_ms_per_item')}; "
          f"broker ms per item {med('broker_ms_per_item')}")
EOF
echo "stream-ab: load at end: $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/summary.txt"
