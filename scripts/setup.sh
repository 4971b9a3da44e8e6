#!/usr/bin/env bash
# Installs what building and testing radiogate needs on a fresh Debian 12 machine, skipping
# whatever is already there: system packages (CFITSIO, protoc), the ONNX Runtime shared
# library (from the PyPI wheel, scripts/fetch-onnxruntime.sh). The Python packages are
# `make setup-python`'s.
set -euo pipefail
cd "$(dirname "$0")/.."

# gcc, make, libssl-dev: rdkafka builds its bundled librdkafka (with OpenSSL, for TLS and
# SASL/SCRAM). maven, openjdk-17-jdk-headless: the test broker (scripts/kafka/broker.sh; its
# readiness probe is a Java source file, hence the JDK). prometheus: the server that scrapes a
# running worker (tests/it/prometheus.rs) and promtool, which checks and unit-tests
# deploy/prometheus (scripts/check-deploy.sh). chromium: the HTML report test opens the report
# headless (tests/it/explain.rs).
apt_packages=(pkg-config libcfitsio-dev protobuf-compiler zlib1g-dev libssl-dev gcc make maven openjdk-17-jdk-headless prometheus chromium)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# pip fetches the ONNX Runtime wheel; Debian's python3 comes without it.
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

scripts/fetch-onnxruntime.sh >/dev/null
