#!/usr/bin/env bash
# Regenerates docs/img/explain.png, the README's example of `radiogate explain`: one real
# FIRST cutout of the bundled sample, classified with the default model, with a panel per
# attention gate.
set -euo pipefail
cd "$(dirname "$0")/.."
source_id="200_149.170-000.023_0.1392_0107.66"
cargo build --quiet
target/debug/radiogate explain --gates --size 600 \
  --out docs/img/explain.png "samples/first/${source_id}.fits"
