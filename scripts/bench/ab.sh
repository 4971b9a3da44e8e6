#!/usr/bin/env bash
# Offline A/B: `radiogate classify` variants alternated over the same items in one sitting,
# so that a change is compared with what it replaces under the same load. Prints each
# variant's median items/s (wall time, start-up included) and CPU time (user + system) per
# item, the measure that load on a shared machine disturbs least, and checks that every variant
# wrote the same results (all but timestamps and timings).
#
#   scripts/bench/ab.sh old=/tmp/radiogate-old new=target/release/radiogate \
#       'one-worker=target/release/radiogate RADIOGATE__CUTOUT__WORKERS=1'
#
# A variant is NAME=BINARY, then any VAR=VALUE words for its environment. Needs GNU time
# (/usr/bin/time, Debian package `time`).
# Environment: ROUNDS (5), COPIES (32 -> 5,024 items), CUTOUTS (the MiraBest test cutouts),
# OUT (out/ab/<UTC time>), FROM (files; `memory`: each BINARY is a `radiogate-bench`, run as
# `radiogate-bench memory` over as many detections carrying the cutouts inline, no file read).
# The host's own cost, old against new:
#   FROM=memory scripts/bench/ab.sh \
#       'old=/tmp/radiogate-bench-old RADIOGATE__INFERENCE__MODEL=benches/models/null.onnx' \
#       'new=target/release/radiogate-bench RADIOGATE__INFERENCE__MODEL=benches/models/null.onnx'
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROUNDS="${ROUNDS:-5}"
COPIES="${COPIES:-32}"
CUTOUTS="${CUTOUTS:-$ROOT/../shared/data/first-cutouts/mirabest-test}"
OUT="${OUT:-$ROOT/out/ab/$(date -u +%Y%m%dT%H%M%SZ)}"
FROM="${FROM:-files}"
# shellcheck source=scripts/bench/lib.sh
. "$ROOT/scripts/bench/lib.sh"
ab_usage "$@"

cutouts=("$CUTOUTS"/*.fits)
items=$((COPIES * ${#cutouts[@]}))
mkdir -p "$OUT"
[[ "$FROM" == memory ]] || links "$OUT/items" "$items" c
echo "ab: $items items from $FROM, $ROUNDS rounds, load: $(uptime | sed 's/.*load/load/')" | tee "$OUT/summary.txt"

for r in $(seq "$ROUNDS"); do
  for variant in "$@"; do
    split_variant "$variant"
    name="$VARIANT_NAME"
    run=(classify --quiet --out "$OUT/$name-$r.jsonl" "$OUT/items")
    [[ "$FROM" != memory ]] || run=(memory --inputs "$CUTOUTS" --items "$items" --out "$OUT/$name-$r.jsonl")
    start=$(date +%s.%N)
    /usr/bin/time -f '%U %S' -o "$OUT/cpu.txt" "${VARIANT_CMD[@]}" "${run[@]}" >>"$OUT/$name.log" 2>&1
    end=$(date +%s.%N)
    read -r user sys <"$OUT/cpu.txt"
    echo "{\"variant\":\"$name\",\"round\":$r,\"items\":$items,\"start\":$start,\"end\":$end,\"user_s\":$user,\"sys_s\":$sys}" >>"$OUT/rounds.jsonl"
  done
done

python3 - "$OUT" "$@" <<'EOF' | tee -a "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out, names = Path(sys.argv[1]), [v.split("=", 1)[0] for v in sys.argv[2:]]
rows = [json.loads(l) for l in (out / "rounds.jsonl").read_text().splitlines()]

def results(path):
    kept = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        r.pop("classified_at", None), r.pop("timings_us", None)
        kept[json.dumps(r, sort_keys=True)] = None
    return set(kept)

reference = results(out / f"{names[0]}-1.jsonl")
for name in names:
    rates = [r["items"] / (r["end"] - r["start"]) for r in rows if r["variant"] == name]
    cpu = [1000 * (r["user_s"] + r["sys_s"]) / r["items"] for r in rows if r["variant"] == name]
    same = all(results(p) == reference for p in sorted(out.glob(f"{name}-*.jsonl")))
    print(f"{name}: median {statistics.median(rates):.1f} items/s over {len(rates)} rounds "
          f"({', '.join(f'{x:.1f}' for x in rates)}); CPU per item median "
          f"{statistics.median(cpu):.3f} ms ({', '.join(f'{x:.3f}' for x in cpu)}); "
          f"results {'identical' if same else 'DIFFER'}")
EOF
echo "ab: load at end: $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/summary.txt"
