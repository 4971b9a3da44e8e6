#!/usr/bin/env bash
# What resampling (`cutout.resample`) costs: the MiraBest test cutouts split into pixels
# half the size (each pixel 2 x 2: 0.9 arcsec, 600 x 600, the same sky), classified with
# resampling, alternated with the originals cut as they are. Prints each side's CPU time
# (user + system) per item and the median; checks that both gave the same labels and
# probabilities. Uses the null model unless MODEL is set, so that the host's work shows.
#
#   scripts/bench/resample.sh
#
# Environment: ROUNDS (3), COPIES (8 -> 1,256 items), CUTOUTS (the MiraBest test cutouts),
# MODEL (benches/models/null.onnx), OUT (out/resample/<UTC time>). Needs GNU time and
# python3 with numpy and astropy (python/requirements.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROUNDS="${ROUNDS:-3}"
COPIES="${COPIES:-8}"
CUTOUTS="${CUTOUTS:-$ROOT/../shared/data/first-cutouts/mirabest-test}"
MODEL="${MODEL:-$ROOT/benches/models/null.onnx}"
OUT="${OUT:-$ROOT/out/resample/$(date -u +%Y%m%dT%H%M%SZ)}"
# shellcheck source=scripts/bench/lib.sh
. "$ROOT/scripts/bench/lib.sh"

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
RG="$ROOT/target/release/radiogate"
mkdir -p "$OUT/fine"
"${PYTHON:-python3}" - "$CUTOUTS" "$OUT/fine" <<'PY'
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for path in sorted(src.glob("*.fits")):
    with fits.open(path) as hdul:
        header, data = hdul[0].header, hdul[0].data
        fine = np.repeat(np.repeat(data, 2, axis=0), 2, axis=1).astype(">f4")
        out = fits.Header()
        for key in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "RADESYS", "EQUINOX"):
            out[key] = header[key]
        # Pixel p (0-based) becomes pixels 2p and 2p + 1: the reference pixel r (1-based)
        # becomes 2r - 0.5.
        out["CRPIX1"] = 2 * header["CRPIX1"] - 0.5
        out["CRPIX2"] = 2 * header["CRPIX2"] - 0.5
        out["CDELT1"] = header["CDELT1"] / 2
        out["CDELT2"] = header["CDELT2"] / 2
        fits.PrimaryHDU(fine, out).writeto(dst / path.name)
PY
cutouts=("$CUTOUTS"/*.fits)
items=$((COPIES * ${#cutouts[@]}))
links "$OUT/original" "$items" c
CUTOUTS="$OUT/fine" links "$OUT/resampled" "$items" c
echo "resample: $items items a side, $ROUNDS rounds, load: $(uptime | sed 's/.*load/load/')" | tee "$OUT/summary.txt"

for r in $(seq "$ROUNDS"); do
  for side in original resampled; do
    resample=false
    [[ $side == resampled ]] && resample=true
    RADIOGATE__CUTOUT__RESAMPLE=$resample RADIOGATE__INFERENCE__MODEL="$MODEL" \
      /usr/bin/time -f '%U %S' -o "$OUT/cpu.txt" \
      "$RG" classify --quiet --out "$OUT/$side-$r.jsonl" "$OUT/$side" 2>>"$OUT/$side.log"
    read -r user sys <"$OUT/cpu.txt"
    echo "{\"side\":\"$side\",\"round\":$r,\"items\":$items,\"user_s\":$user,\"sys_s\":$sys}" >>"$OUT/rounds.jsonl"
  done
done

"${PYTHON:-python3}" - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def verdicts(path):
    found = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        found[r["source_id"]] = (r.get("label"), r.get("probabilities"))
    return found


for side in ("original", "resampled"):
    cpu = [1000 * (r["user_s"] + r["sys_s"]) / r["items"] for r in rows if r["side"] == side]
    rounds = ", ".join(f"{c:.3f}" for c in cpu)
    print(f"{side}: CPU per item median {statistics.median(cpu):.3f} ms ({rounds})")
same = verdicts(out / "original-1.jsonl") == verdicts(out / "resampled-1.jsonl")
print("labels and probabilities: " + ("identical" if same else "DIFFER"))
PY
echo "resample: load at end: $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/summary.txt"
