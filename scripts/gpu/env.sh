#!/usr/bin/env bash
# Sourced by scripts/gpu/run.sh and scripts/gpu/profile.sh, from the repository root, with OUT
# and GPU_SCRIPT (the caller's name, for the log) set, and SRC (default vendor/gpu), where the
# pieces are: makes the results folder OUT
# (absolute from here on) and defines log (to stderr and OUT/run.log) and die; reassembles,
# checks and unpacks the pieces that scripts/gpu/prepare.sh made (in SRC; once: a later call
# finds them unpacked), then puts ONNX Runtime's GPU build and the CUDA 13 / cuDNN 9 libraries
# of the machine's Python packages on LD_LIBRARY_PATH. Sets unpacked, ORT_DIR, RG and RB (the
# bundle's radiogate and radiogate-bench), PYTHON (the first Python with the nvidia-* packages,
# unless PYTHON was given) and variant_settings.
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
log() { echo "gpu/$GPU_SCRIPT: $*" | tee -a "$OUT/run.log" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}
SRC="${SRC:-vendor/gpu}"
PYTHON_GIVEN="${PYTHON:-}"
PYTHON="${PYTHON:-python3}"

# 1. Reassemble and unpack.
pieces=("$SRC"/radiogate-gpu.tar.xz.part-*)
[[ -f "${pieces[0]}" ]] || die "no pieces in $SRC (run scripts/gpu/prepare.sh where there is network, carry $SRC here)"
want="$(cat "$SRC/radiogate-gpu.tar.xz.sha256")"
unpacked="$SRC/unpacked"
if [[ ! -f "$unpacked/.sha256" || "$(cat "$unpacked/.sha256")" != "$want" ]]; then
  log "reassembling ${#pieces[@]} pieces"
  got="$(cat "${pieces[@]}" | sha256sum | awk '{print $1}')"
  [[ "$got" == "$want" ]] || die "pieces do not add up (sha256 $got, expected $want): a piece is missing or damaged"
  rm -rf "$unpacked"
  mkdir -p "$unpacked"
  cat "${pieces[@]}" | tar -C "$unpacked" -xJf - 2>/dev/null ||
    cat "${pieces[@]}" | python3 -c '
import sys, tarfile
tarfile.open(fileobj=sys.stdin.buffer, mode="r|xz").extractall(sys.argv[1])' "$unpacked" ||
    die "cannot unpack (neither tar with xz nor python3 worked)"
  (cd "$unpacked" && sha256sum --quiet -c SHA256SUMS) || die "unpacked files do not match their checksums"
  echo "$want" >"$unpacked/.sha256"
fi
log "bundle: $(tr '\n' ' ' <"$unpacked/BUILD")"
ORT_DIR="$(cd "$unpacked/onnxruntime-gpu" && pwd)"
RG="$(cd "$unpacked/bin" && pwd)/radiogate"
RB="$(cd "$unpacked/bin" && pwd)/radiogate-bench"

# 2. CUDA libraries from the Python packages: the first Python that has them.
if [[ -z "$PYTHON_GIVEN" ]] && ! "$PYTHON" -c 'import nvidia' 2>/dev/null; then
  for py in python3 python /opt/conda/bin/python /usr/local/bin/python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import nvidia' 2>/dev/null; then
      PYTHON="$py"
      break
    fi
  done
fi
log "Python with the nvidia-* packages: $PYTHON"
nvidia_dirs="$("$PYTHON" - <<'PY' 2>/dev/null || true
import os
try:
    import nvidia
except ImportError:
    raise SystemExit(0)
dirs = set()
for base in nvidia.__path__:
    for here, _, files in os.walk(base):
        if any(".so" in f for f in files) and os.path.basename(here) in ("lib", "lib64"):
            dirs.add(here)
print(":".join(sorted(dirs)))
PY
)"
[[ -n "$nvidia_dirs" ]] || die "no nvidia-* library folders found through $PYTHON (import nvidia)"
export LD_LIBRARY_PATH="$ORT_DIR:$nvidia_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH="$ORT_DIR/libonnxruntime.so"
if ldd "$RG" | grep -q 'not found'; then
  log "using the bundled system libraries for: $(ldd "$RG" | awk '/not found/ {print $1}' | tr '\n' ' ')"
  syslibs="$(cd "$unpacked/syslibs" && pwd)"
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$syslibs"
fi
missing="$(ldd "$RG" "$RB" "$ORT_DIR/libonnxruntime_providers_cuda.so" | awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')"
[[ -z "$missing" ]] || die "libraries not found: $missing"
for lib in libcudnn.so.9 libcufft.so libnvrtc.so; do
  found=""
  IFS=: read -ra dirs <<<"$LD_LIBRARY_PATH"
  for d in "${dirs[@]}"; do compgen -G "$d/$lib*" >/dev/null && found=1; done
  [[ -n "$found" ]] || log "warning: $lib not found on LD_LIBRARY_PATH (the CUDA provider loads it on demand)"
done

# An arithmetic variant's radiogate-bench flags, worker settings and model (into flags, settings
# and model): "tf32" TF32 convolutions, "nhwc" channels-last kernels, "fp16" the bundle's float16
# copy of the shipped model, "fused" its fused form (models/*-fused.onnx: the upsampling as
# matrix products, each convolution with its Relu and a gate's Add as FusedConv), "fusedconv"
# the bundle's copy of that form with the upsampling left as Resize, combined with "+" ("fp32":
# none of them). MODEL replaces the shipped model in the others.
FP16_MODEL="$unpacked/models/agcnn-mirabest-confident-fp16.onnx"
FUSED_MODEL="models/agcnn-mirabest-confident-fused.onnx"
FUSEDCONV_MODEL="$unpacked/models/agcnn-mirabest-confident-fusedconv.onnx"
# shellcheck disable=SC2034 # flags, settings and model are what the callers read
variant_settings() {
  flags=() settings=() model="${MODEL:-models/agcnn-mirabest-confident.onnx}"
  if [[ "$1" == *tf32* ]]; then flags+=(--gpu-tf32) settings+=(RADIOGATE__INFERENCE__GPU_TF32=true); fi
  if [[ "$1" == *nhwc* ]]; then flags+=(--gpu-nhwc) settings+=(RADIOGATE__INFERENCE__GPU_NHWC=true); fi
  if [[ "$1" == *fp16* && "$1" == *fused* ]]; then die "variant $1: the fused copy is float32 (FusedConv)"; fi
  if [[ "$1" == *fp16* ]]; then model="$FP16_MODEL"; fi
  if [[ "$1" == *fusedconv* ]]; then
    model="$FUSEDCONV_MODEL"
  elif [[ "$1" == *fused* ]]; then
    model="$FUSED_MODEL"
  fi
}
