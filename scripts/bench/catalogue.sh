#!/usr/bin/env bash
# Reading a survey-sized catalogue: ROWS random positions as a FITS table with PyBDSF's
# columns and units (LoTSS's names: Source_Name, RA, DEC in deg, fluxes in mJy, sizes in
# arcsec), as the same table in astropy's ECSV, and as radiogate's CSV of the same positions,
# each classified against the bundled sample's 20 images (so nearly every row is a
# `not_covered` rejection: the run measures the catalogue's reading and the rejections' path,
# not the model). Alternated ROUNDS times; prints wall time, peak RSS and rows/s of each, and
# checks that all three gave the same outcome for every row. Then times resuming the
# finished FITS run (`--resume`: every row skipped).
#
#   scripts/bench/catalogue.sh
#
# Environment: ROWS (1000000), ROUNDS (2), OUT (out/catalogue/<UTC time>). Needs GNU time and
# python3 with numpy and astropy (python/requirements.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ROWS="${ROWS:-1000000}"
ROUNDS="${ROUNDS:-2}"
OUT="${OUT:-$ROOT/out/catalogue/$(date -u +%Y%m%dT%H%M%SZ)}"

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
RG="$ROOT/target/release/radiogate"
mkdir -p "$OUT"
"${PYTHON:-python3}" - "$ROWS" "$OUT" <<'PY'
import sys

import astropy.units as u
import numpy as np
from astropy.table import Table

n, out = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(1)
t = Table()
t["Source_Name"] = np.array([f"ILTJ{i:012d}+000000.0" for i in range(n)])
t["RA"] = rng.uniform(0, 360, n) * u.deg
t["DEC"] = rng.uniform(-30, 90, n) * u.deg
for column in ("Peak_flux", "Total_flux", "Isl_rms"):
    t[column] = rng.uniform(0.1, 100, n) * u.mJy
for column in ("Maj", "Min"):
    t[column] = rng.uniform(5, 30, n) * u.arcsec
t["PA"] = rng.uniform(0, 180, n) * u.deg
t.write(f"{out}/catalogue.fits", overwrite=True)
t.write(f"{out}/catalogue.ecsv", format="ascii.ecsv", overwrite=True)
with open(f"{out}/catalogue.csv", "w") as f:
    f.write("source_id,ra,dec\n")
    f.writelines(f"{s},{r:.10f},{d:.10f}\n" for s, r, d in zip(t["Source_Name"], t["RA"], t["DEC"]))
PY
echo "catalogue: $ROWS rows ($(du -h "$OUT/catalogue.fits" | cut -f1) FITS), load: $(uptime | sed 's/.*load/load/')"
for r in $(seq "$ROUNDS"); do
  for form in fits ecsv csv; do
    /usr/bin/time -f '%e %M' -o "$OUT/time.txt" "$RG" classify --quiet --catalog "$OUT/catalogue.$form" \
      --mosaics "$ROOT/samples/first" --out "$OUT/$form.jsonl" 2>/dev/null
    read -r wall peak_kb <"$OUT/time.txt"
    awk -v f="$form" -v r="$r" -v w="$wall" -v k="$peak_kb" -v n="$ROWS" \
      'BEGIN { printf "%s round %d: %.2f s, %.0f rows/s, peak RSS %.0f MB\n", f, r, w, n / w, k / 1024 }'
  done
done
# Resuming the finished run (`--resume`): the cost of reading the results back and skipping
# as many rows, with nothing left to classify; the file must come out as it went in.
cp "$OUT/fits.jsonl" "$OUT/resumed.jsonl"
/usr/bin/time -f '%e %M' -o "$OUT/time.txt" "$RG" classify --quiet --catalog "$OUT/catalogue.fits" \
  --mosaics "$ROOT/samples/first" --out "$OUT/resumed.jsonl" --resume 2>"$OUT/resume.log"
read -r wall peak_kb <"$OUT/time.txt"
cmp -s "$OUT/fits.jsonl" "$OUT/resumed.jsonl" || { echo "resuming changed the results" >&2; exit 1; }
awk -v w="$wall" -v k="$peak_kb" -v n="$ROWS" -v b="$(stat -c %s "$OUT/fits.jsonl")" \
  'BEGIN { printf "resume of the finished FITS run (%d records, %.0f MB of results): %.2f s, peak RSS %.0f MB\n", n, b / 1e6, w, k / 1024 }'
# The same outcome for every row: its label and P(FRII), or its reason.
"${PYTHON:-python3}" - "$OUT/fits.jsonl" "$OUT/ecsv.jsonl" "$OUT/csv.jsonl" <<'PY'
import json, sys
def outcomes(path):
    with open(path) as f:
        return {r["source_id"]: (r.get("label"), r.get("probabilities"), r.get("reason")) for r in map(json.loads, f)}
fits, ecsv, csv = map(outcomes, sys.argv[1:])
same = fits == csv == ecsv
print(f"{len(fits)} outcomes, {'the same' if same else 'DIFFERENT'} from the FITS table, the ECSV and the CSV")
PY
rm -f "$OUT"/catalogue.* "$OUT"/*.jsonl
