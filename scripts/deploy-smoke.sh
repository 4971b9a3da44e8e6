#!/usr/bin/env bash
# End-to-end check of deploy/ against a real worker and a real Prometheus on this machine (not
# part of `make test`: it needs a running broker and a worker built with telemetry).
#
#   scripts/kafka/broker.sh start && cargo build && scripts/deploy-smoke.sh
#
# 1. A worker runs with the deployment's configuration (deploy/k8s/base/radiogate.toml; brokers,
#    topics, group and port overridden through RADIOGATE__ variables) and classifies the bundled
#    sample plus one truncated FITS file (a rejection).
# 2. /healthz and /readyz answer 200; /metrics is saved to $OUT/metrics.txt, linted by
#    `promtool check metrics` and checked against the contract (check_metrics_usage.py --scrape).
# 3. A Prometheus scrapes the worker with the alert rules loaded; every rule must be healthy and
#    every dashboard query must evaluate, and return data, through its HTTP API.
# 4. SIGTERM: the worker drains and exits 0 within pipeline.drain_timeout.
#
# Environment: RADIOGATE (binary; default target/debug/radiogate), BROKERS (127.0.0.1:9092),
# OUT (default out/deploy-smoke). Topics and group are named deploy-smoke-<pid>.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${RADIOGATE:-target/debug/radiogate}"
brokers="${BROKERS:-127.0.0.1:9092}"
out="${OUT:-out/deploy-smoke}"
id="deploy-smoke-$$"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
log() { printf 'deploy-smoke: %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
is_200() { [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1" || true)" == 200 ]]; }
wait_for() { # seconds, description, command...
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || { log "timed out waiting for $what"; return 1; }
    sleep 1
  done
}

[[ -x "$bin" ]] || { log "no worker binary at $bin (cargo build)"; exit 1; }
port="$(free_port)"
base="http://127.0.0.1:$port"

log "worker on $base, topics $id-*"
RADIOGATE__SOURCE__BROKERS="$brokers" RADIOGATE__SINK__BROKERS="$brokers" \
  RADIOGATE__SOURCE__TOPIC="$id-detections" RADIOGATE__SOURCE__GROUP_ID="$id" \
  RADIOGATE__SINK__RESULTS_TOPIC="$id-classifications" RADIOGATE__SINK__DEAD_LETTER_TOPIC="$id-rejections" \
  RADIOGATE__TELEMETRY__LISTEN="127.0.0.1:$port" \
  "$bin" run --config deploy/k8s/base/radiogate.toml >"$out/worker.log" 2>&1 &
worker=$!
pids+=("$worker")
wait_for 60 "/healthz" is_200 "$base/healthz"

# The sample, and one FITS file cut short (a bad_fits rejection).
first="$(find samples/first -name '*.fits' | sort | head -n1)"
head -c 20000 "$first" >"$work/truncated.fits"
"$bin" publish --brokers "$brokers" --topic "$id-detections" --inline samples/first "$work/truncated.fits" \
  2>>"$out/worker.log"
sent="$(find samples/first -name '*.fits' | wc -l)"

metric_sum() { # name: the sum of its samples in the current scrape
  curl -s "$base/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { print s + 0 }'
}
done_all() { [[ "$(metric_sum radiogate_classifications_total)" == "$sent" && "$(metric_sum radiogate_rejections_total)" == 1 ]]; }
wait_for 120 "$sent classifications and 1 rejection" done_all
wait_for 30 "/readyz" is_200 "$base/readyz"
# The lag gauge comes with the Kafka client's statistics, a few seconds apart.
wait_for 30 "the lag gauge" bash -c "curl -s $base/metrics | grep -q '^radiogate_consumer_lag_messages{'"
curl -s "$base/metrics" >"$out/metrics.txt"
log "classified $sent, rejected 1; scrape saved to $out/metrics.txt"

promtool check metrics <"$out/metrics.txt" || log "promtool check metrics: the lint findings above are advice"
python3 scripts/check_metrics_usage.py --scrape "$out/metrics.txt"

# A Prometheus scraping the worker every second, with the rules.
prom_port="$(free_port)"
cat >"$work/prometheus.yml" <<EOF
global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: ["$PWD/deploy/prometheus/radiogate.rules.yml"]
scrape_configs:
  - job_name: radiogate
    static_configs: [{targets: ["127.0.0.1:$port"]}]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$out/prometheus.log" 2>&1 &
pids+=("$!")
wait_for 60 "Prometheus" is_200 "http://127.0.0.1:$prom_port/-/ready"
sleep 15 # enough scrapes for rate() over the dashboard's 1m windows
python3 - "http://127.0.0.1:$prom_port" <<'PY'
import json, sys, urllib.parse, urllib.request
sys.path.insert(0, "scripts")
import check_metrics_usage as c

api = sys.argv[1]
def get(path, **params):
    with urllib.request.urlopen(f"{api}{path}?{urllib.parse.urlencode(params)}") as r:
        return json.load(r)["data"]

rules = [r for g in get("/api/v1/rules")["groups"] for r in g["rules"]]
bad = [r["name"] for r in rules if r["health"] != "ok"]
firing = [r["name"] for r in rules if r.get("state") == "firing"]
print(f"deploy-smoke: {len(rules)} rules loaded, unhealthy: {bad or 'none'}, firing: {firing or 'none'}")
failed = bool(bad)
for path in c.DEFAULT_DASHBOARDS:
    for where, expr in c.dashboard_expressions(path):
        query = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        if query.startswith("label_values("):
            query = query[len("label_values(") : query.rindex(",")]
        result = get("/api/v1/query", query=query)["result"]
        ok = len(result) > 0
        failed |= not ok
        print(f"  {'ok  ' if ok else 'EMPTY'} {len(result):2d} series  {where}")
sys.exit(1 if failed else 0)
PY

log "SIGTERM: the worker must drain and exit 0"
start=$SECONDS
kill -TERM "$worker"
status=0
wait "$worker" || status=$?
pids=("${pids[@]:1}")
log "worker exited with $status after $((SECONDS - start)) s"
[[ "$status" -eq 0 ]]
log "all passed"
