#!/usr/bin/env bash
# Prepares, on a machine with network access, everything scripts/gpu/run.sh needs on a GPU
# machine that has none: the onnxruntime-gpu libraries (CUDA 13, cuDNN 9, from the PyPI wheel
# of the ONNX Runtime version the CPU build uses), stripped release binaries of radiogate and
# radiogate-bench, and the shared libraries they link (CFITSIO and its dependencies) in case
# the GPU machine lacks them, and the float16 copy of the model and its fused form without the
# upsampling as matrix products, which run.sh times beside it (python -m radiogate_model.half
# and radiogate_model.fuse --no-upsample; need python/requirements.txt). Packed, compressed
# (xz) and split into pieces of at most PIECE_MB MiB (default: what one 64 MiB device call
# leaves beside the working tree, which travels with every call, less 1 MiB; 50 with the
# 13 MiB tree of November 2026):
#
#   scripts/gpu/prepare.sh            # -> vendor/gpu/radiogate-gpu.tar.xz.part-NN + .sha256
#   DEST=dir scripts/gpu/prepare.sh   # elsewhere (a gitignored folder of the repository)
#
# The GPU machine needs the CUDA 13 runtime, cuBLAS 13, cuRAND 10, cuFFT and cuDNN 9 (PyPI's
# nvidia-* wheels, as PyTorch installs them) and an NVIDIA driver; run.sh finds them.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST="${DEST:-vendor/gpu}"
# The working tree that travels: tracked files and untracked ones that git does not ignore.
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
PIECE_MB="${PIECE_MB:-$((63 - (tree_bytes + 1048575) / 1048576))}"
log() { echo "gpu/prepare: $*" >&2; }
((PIECE_MB >= 8)) || { log "the working tree ($tree_bytes bytes) leaves no room for pieces"; exit 1; }

cargo build --release --quiet --bin radiogate --bin radiogate-bench

stage="$(mktemp -d)"
pack="$stage.tar.xz"
trap 'rm -rf "$stage" "$pack"' EXIT
mkdir -p "$stage/bin" "$stage/syslibs" "$stage/models"

log "fetching onnxruntime-gpu"
ORT_DEST="$stage/onnxruntime-gpu" scripts/fetch-onnxruntime.sh gpu >/dev/null
for bin in radiogate radiogate-bench; do
  strip -o "$stage/bin/$bin" "target/release/$bin"
done

log "the float16 copy of the model"
# (Its constants below float16's range, an epsilon of 1e-12, are warned about: expected.)
(cd python && python3 -W ignore::UserWarning -m radiogate_model.half \
  ../models/agcnn-mirabest-confident.onnx "$stage/models/agcnn-mirabest-confident-fp16.onnx")
log "the fused form with the Resizes kept (the GPU's Resize may beat the matrix products)"
(cd python && python3 -m radiogate_model.fuse --no-upsample \
  ../models/agcnn-mirabest-confident.onnx "$stage/models/agcnn-mirabest-confident-fusedconv.onnx")

# The binaries' shared libraries, except the C library itself (glibc: its version on the GPU
# machine must be at least what the binaries were linked against, see below).
ldd target/release/radiogate target/release/radiogate-bench |
  awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u |
  grep -Ev '/(libc|libm|libdl|librt|libpthread|libgcc_s|ld-linux[^/]*|libresolv)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/syslibs/"; done
objdump -T target/release/radiogate | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1 >"$stage/GLIBC_NEEDED"
{
  echo "built $(date -u +%FT%TZ) on $(uname -srm), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)"
  echo "onnxruntime-gpu $(grep -m1 '^ORT_VERSION=' scripts/fetch-onnxruntime.sh | cut -d'"' -f2)"
  echo "needs $(cat "$stage/GLIBC_NEEDED") or newer"
} >"$stage/BUILD"
# shellcheck disable=SC2094 # find leaves SHA256SUMS out
(cd "$stage" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)

mkdir -p "$DEST"
rm -f "$DEST"/radiogate-gpu.tar.*
log "packing into $DEST (pieces of at most $PIECE_MB MB)"
# xz: tar and Python's standard library both read it, whatever else the GPU machine lacks.
tar -C "$stage" -cf - . | xz -T0 -6 >"$pack"
sha256sum "$pack" | awk '{print $1}' >"$DEST/radiogate-gpu.tar.xz.sha256"
split -d -a 2 -b "${PIECE_MB}M" "$pack" "$DEST/radiogate-gpu.tar.xz.part-"
ls -l "$DEST"/radiogate-gpu.tar.xz.* >&2
log "carry each piece to the GPU machine (one per call if need be), then run scripts/gpu/run.sh there"
