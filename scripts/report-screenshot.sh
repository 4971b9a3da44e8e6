#!/usr/bin/env bash
# Regenerates docs/img/report.png, the README's picture of the HTML report: `radiogate
# classify --report` on the bundled sample (samples/first/, 20 real FIRST cutouts), opened
# in headless Chromium (Debian package `chromium`, installed by scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cargo build --quiet
target/debug/radiogate classify --quiet --config config/offline-sample.toml \
  --out "$work/sample.jsonl" --report "$work/report.html"
# --no-sandbox: Chromium refuses to start its sandbox as root (CI, containers); the page
# is our own local file.
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
  --user-data-dir="$work/profile" --window-size=1200,1500 \
  --screenshot="$PWD/docs/img/report.png" "file://$work/report.html" 2>/dev/null
echo "docs/img/report.png"
