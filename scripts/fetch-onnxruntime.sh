#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library that the `ort` crate loads at run time
# (`load-dynamic`), from the PyPI wheel through pip: no other download.
#
#   scripts/fetch-onnxruntime.sh            # -> vendor/onnxruntime/libonnxruntime.so
#   scripts/fetch-onnxruntime.sh gpu        # -> vendor/onnxruntime-gpu/: the onnxruntime-gpu
#                                           #    wheel (CUDA 13, cuDNN 9) with its CUDA provider
#   ORT_DEST=DIR scripts/fetch-onnxruntime.sh gpu   # into DIR instead
#
# Idempotent: when the library is already in place it does nothing but print its path.
# The last line of output is always the path to point ORT_DYLIB_PATH at (radiogate also
# finds it there on its own).
#
# Each variant is one arm of the `case` below (wheel, destination folder, files to
# extract), so another build of the runtime (for instance the onnxruntime-gpu wheel, whose
# provider libraries must sit beside libonnxruntime.so) is one more arm and the flag that
# picks it.
set -euo pipefail

ORT_VERSION="1.31.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

variant="${1:-cpu}"
case "$variant" in
  cpu | --cpu)
    wheel="onnxruntime"
    dest="$ROOT/vendor/onnxruntime"
    libs=("libonnxruntime.so.$ORT_VERSION" "libonnxruntime_providers_shared.so")
    ;;
  gpu | --gpu)
    # CUDA 13 / cuDNN 9 build; the CUDA, cuBLAS, cuRAND, cuFFT, NVRTC and cuDNN libraries are
    # not in the wheel (pip's nvidia-* wheels, e.g. those PyTorch installs, provide them).
    # The TensorRT provider is left out: it needs TensorRT 10 (libnvinfer), which those lack.
    wheel="onnxruntime-gpu"
    dest="${ORT_DEST:-$ROOT/vendor/onnxruntime-gpu}"
    libs=("libonnxruntime.so.$ORT_VERSION" "libonnxruntime_providers_shared.so" "libonnxruntime_providers_cuda.so")
    ;;
  -h | --help)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "fetch-onnxruntime: unknown variant '$variant' (known: cpu, gpu)" >&2
    exit 2
    ;;
esac

target="$dest/libonnxruntime.so"
if [[ -e "$target" && -e "$dest/libonnxruntime.so.$ORT_VERSION" ]]; then
  echo "$target"
  exit 0
fi

command -v python3 >/dev/null || { echo "fetch-onnxruntime: needs python3 (with pip)" >&2; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { echo "fetch-onnxruntime: needs pip (Debian: python3-pip)" >&2; exit 1; }

tmp="$(mktemp -d)"
stage=""
trap 'rm -rf "$tmp" ${stage:+"$stage"}' EXIT

# Any Python and platform can fetch the manylinux wheel: the shared library inside does not
# depend on the CPython ABI.
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp \
  "$wheel==$ORT_VERSION" -d "$tmp"

whl=("$tmp"/*.whl)
[[ -f "${whl[0]}" ]] || { echo "fetch-onnxruntime: pip fetched no wheel for $wheel==$ORT_VERSION" >&2; exit 1; }

mkdir "$tmp/lib"
python3 - "${whl[0]}" "$tmp/lib" "${libs[@]}" <<'PY'
import shutil, sys, zipfile
from pathlib import Path

wheel, out, *libs = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for lib in libs:
        with z.open(f"onnxruntime/capi/{lib}") as src, open(Path(out) / lib, "wb") as dst:
            shutil.copyfileobj(src, dst)
        (Path(out) / lib).chmod(0o755)
PY

# Install into a sibling folder and rename it into place, so that an interrupted run never
# leaves a half-filled folder that the check above would take for a finished one.
mkdir -p "$(dirname "$dest")"
stage="$(mktemp -d "$dest.partial.XXXXXX")"
chmod 755 "$stage"
cp "$tmp"/lib/* "$stage/"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$stage/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.$ORT_VERSION" "$stage/libonnxruntime.so"
rm -rf "$dest"
mv "$stage" "$dest"
stage=""

echo "$target"
