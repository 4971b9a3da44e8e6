#!/usr/bin/env bash
# Regenerates what examples/ commits:
# - examples/radiogate_pb2.py: the Python classes of proto/radiogate/v1/radiogate.proto, from
#   the protoc that scripts/setup.sh installs (Debian's protobuf-compiler); its output works
#   with the protobuf runtime pinned in python/requirements.txt (python/tests/test_examples.py
#   checks both that it is current and that it decodes);
# - examples/data/first-sample.pb: `radiogate classify --format protobuf` over four bundled
#   FIRST cutouts (two FRI, two FRII), with every gate's map included.
#
#   scripts/regen-examples.sh            # both
#   scripts/regen-examples.sh proto      # only the Python classes
set -euo pipefail
cd "$(dirname "$0")/.."

protoc -Iproto/radiogate/v1 --python_out=examples proto/radiogate/v1/radiogate.proto
[[ ${1:-} == proto ]] && exit 0

cargo build --release --quiet
config=$(mktemp --suffix .toml)
trap 'rm -f "$config"' EXIT
printf '[summary]\nper_gate_maps = true\n' >"$config"
out=examples/data/first-sample.pb
target/release/radiogate classify --quiet --config "$config" --format protobuf --out "$out" \
  samples/first/100_125.339+025.318_0.2676_0038.05.fits \
  samples/first/104_243.545+008.960_0.2279_0077.36.fits \
  samples/first/200_181.118+050.172_0.2087_0104.62.fits \
  samples/first/201_202.202+027.874_0.0911_0130.56.fits
if [[ -s $out.rejections ]]; then
  echo "some sample was rejected: see $out.rejections" >&2
  exit 1
fi
rm -f "$out.rejections"
