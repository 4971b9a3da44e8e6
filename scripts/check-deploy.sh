#!/usr/bin/env bash
# Checks everything under deploy/ without a cluster, a Docker daemon or the internet (package
# registries only); `make check-deploy`, part of `make test`.
#
#   scripts/check-deploy.sh                    # everything
#   SCRAPE=metrics.txt scripts/check-deploy.sh # also check the metrics against a real /metrics
#
#  1. Prometheus: promtool check config + rules, promtool test rules (alert unit tests); the
#     Kubernetes PrometheusRule holds the same groups.
#  2. Metrics: the rules and dashboards use only metrics of the contract (docs/operations.md).
#  3. Kubernetes: kustomize build of the base and the GPU overlay, validated by kubeconform
#     -strict against offline schemas (Kubernetes from the PyPI wheel kubernetes-validate; KEDA
#     and prometheus-operator CRDs from their Go modules), no schema may be missing; a broken
#     manifest must be refused (so the schemas really apply); grace period > drain_timeout.
#  4. The worker configuration of the ConfigMap passes `radiogate check-config` (CPU and CUDA).
#  5. Compose parses, and every file it and the Dockerfiles name exists (and is not .dockerignored);
#     the Dockerfiles' build stage compiles (`cargo check`) from only the files it copies.
#
# Tools (Go installs) and schemas are cached under vendor/deploy/ (DEPLOY_CACHE), so reruns are
# fast. Needs: promtool (Debian: prometheus), go, python3 with pyyaml and prometheus-client.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECONFORM_VERSION=v0.8.0
KUSTOMIZE_VERSION=v5.8.1         # v5.8.2+ need Go 1.27
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSION=1.35.0        # the Kubernetes API the manifests are checked against
KEDA_MODULE=github.com/kedacore/keda/v2@v2.21.0
PROMETHEUS_OPERATOR_MODULE=github.com/prometheus-operator/prometheus-operator@v0.85.0

cache="${DEPLOY_CACHE:-vendor/deploy}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
export PATH="$PATH:/usr/local/go/bin:$cache/bin"
# The module cache under vendor/ too, writable so that `rm -rf vendor/deploy` works.
export GOMODCACHE="$cache/gomod" GOFLAGS=-modcacherw GOTOOLCHAIN=local
step() { printf '\n== check-deploy: %s\n' "$*"; }

step "Prometheus rules and their unit tests"
promtool check config deploy/prometheus/prometheus.yml
promtool test rules deploy/prometheus/*.test.yml
# Kubernetes carries the same rules as a PrometheusRule, generated from the rule file.
python3 scripts/check_deploy_files.py prometheus-rule deploy/prometheus/radiogate.rules.yml \
  deploy/k8s/base/prometheusrule.yaml

step "metrics used by rules and dashboards"
python3 scripts/check_metrics_usage.py ${SCRAPE:+--scrape "$SCRAPE"}

step "tools"
install_tool() { # name, version, package
  local stamp="$cache/bin/.$1-$2"
  if [[ ! -x "$cache/bin/$1" || ! -e "$stamp" ]]; then
    echo "installing $3@$2"
    GOBIN="$cache/bin" go install "$3@$2"
    rm -f "$cache/bin/.$1-"*
    touch "$stamp"
  fi
}
install_tool kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform
install_tool kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5
echo "kubeconform $(kubeconform -v), kustomize $(kustomize version)"

step "offline schemas"
schemas="$cache/schemas-k8s$KUBERNETES_VERSION-kv$KUBERNETES_VALIDATE_VERSION-${KEDA_MODULE##*@}-${PROMETHEUS_OPERATOR_MODULE##*@}-rules"
if [[ ! -e "$schemas/.complete" ]]; then
  rm -rf "$schemas" "$schemas.partial"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" -d "$cache/wheels"
  python3 scripts/deploy_schemas.py kubernetes \
    "$cache/wheels/kubernetes_validate-$KUBERNETES_VALIDATE_VERSION-py3-none-any.whl" \
    "$KUBERNETES_VERSION" "$schemas.partial/kubernetes"
  keda="$(go mod download -json "$KEDA_MODULE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  prom="$(go mod download -json "$PROMETHEUS_OPERATOR_MODULE" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  python3 scripts/deploy_schemas.py crd "$schemas.partial/crd" \
    "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
    "$prom/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
    "$prom/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
  touch "$schemas.partial/.complete"
  mv "$schemas.partial" "$schemas"
fi
kubeconform_strict() {
  kubeconform -strict -summary \
    -schema-location "$schemas/kubernetes/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$schemas/crd/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json" \
    "$@"
}

step "Kubernetes manifests: kustomize build + kubeconform -strict"
rendered="$cache/rendered"
mkdir -p "$rendered"
for variant in base overlays/gpu; do
  out="$rendered/${variant##*/}.yaml"
  kustomize build "deploy/k8s/$variant" >"$out"
  echo "deploy/k8s/$variant: $(grep -c '^kind:' "$out") resources ($(grep '^kind:' "$out" | cut -d' ' -f2 | sort | paste -sd' '))"
  kubeconform_strict "$out"
  python3 scripts/check_deploy_files.py manifests "$out"
done

# The schemas must bite: an unknown field in each kind of custom resource, and a wrong type in
# a Deployment, are refused.
broken="$rendered/broken.yaml"
python3 - "$rendered/base.yaml" "$broken" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    if d["kind"] == "ScaledObject":
        d["spec"]["maxReplicas"] = 3  # the field is maxReplicaCount
    elif d["kind"] == "PodMonitor":
        d["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    elif d["kind"] == "PrometheusRule":
        d["spec"]["groups"][0]["rules"][0]["alerts"] = "x"  # the field is alert
    elif d["kind"] == "Deployment":
        d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "60"
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if out="$(kubeconform_strict "$broken" 2>&1)"; then
  echo "kubeconform accepted deliberately broken manifests:" >&2
  echo "$out" >&2
  exit 1
fi
invalid="$(grep -c ' is invalid' <<<"$out" || true)"
if [[ "$invalid" -ne 4 ]]; then
  echo "kubeconform should have refused exactly the 4 broken resources:" >&2
  echo "$out" >&2
  exit 1
fi
echo "kubeconform refused the 4 deliberately broken resources (ScaledObject, PodMonitor, PrometheusRule, Deployment)"

step "worker configuration (radiogate check-config)"
config=deploy/k8s/base/radiogate.toml
cargo run --quiet --bin radiogate -- check-config "$config"
RADIOGATE__INFERENCE__EXECUTION_PROVIDER=cuda RADIOGATE__BATCH__MAX_BATCH=128 \
  cargo run --quiet --bin radiogate -- check-config "$config"

step "compose file and Dockerfiles"
python3 scripts/check_deploy_files.py compose deploy/compose.yaml
python3 scripts/check_deploy_files.py dockerfiles . deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda
# The build stage compiles from exactly what it copies (cargo reads every target Cargo.toml
# declares; include_bytes! reads assets/): `cargo check` on that tree, offline, sharing this
# checkout's target folder for the dependencies.
repo="$PWD"
for dockerfile in deploy/docker/Dockerfile deploy/docker/Dockerfile.cuda; do
  context="$(mktemp -d)"
  python3 scripts/check_deploy_files.py build-context . "$dockerfile" "$context"
  (cd "$context" && CARGO_TARGET_DIR="$repo/target" cargo check --offline --locked --quiet --bin radiogate)
  rm -rf "$context"
  echo "$dockerfile: the build stage's files compile"
done

echo
echo "check-deploy: all passed"
