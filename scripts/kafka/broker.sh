#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) broker on loopback for the tests and local runs.
#
#   scripts/kafka/broker.sh start    fetch the jars if missing, format, start, wait until ready
#   scripts/kafka/broker.sh stop     stop it (SIGTERM, then SIGKILL after 20 s)
#   scripts/kafka/broker.sh status   exit 0 if it runs and answers, 1 otherwise
#
# Every command is idempotent. Environment: KAFKA_PORT (default 9092, PLAINTEXT; the
# controller listens on KAFKA_PORT + 1, a SASL_PLAINTEXT listener with SCRAM-SHA-256/512 on
# KAFKA_PORT + 2, for the security tests), KAFKA_SCRAM_USER / KAFKA_SCRAM_PASSWORD (the SCRAM
# user created at start; defaults radiogate / radiogate-test-secret: a loopback test broker's
# credentials, not a secret), KAFKA_DIR (state: data, pid file, log; default
# vendor/kafka/run-$KAFKA_PORT), KAFKA_HEAP (default "-Xms256m -Xmx512m": the build machine
# is small and shared). Jars come from Maven Central (scripts/kafka/pom.xml) into
# vendor/kafka/lib, which is gitignored.
set -euo pipefail
cd "$(dirname "$0")/../.."

port="${KAFKA_PORT:-9092}"
controller_port=$((port + 1))
sasl_port=$((port + 2))
scram_user="${KAFKA_SCRAM_USER:-radiogate}"
scram_password="${KAFKA_SCRAM_PASSWORD:-radiogate-test-secret}"
lib="vendor/kafka/lib"
dir="${KAFKA_DIR:-vendor/kafka/run-$port}"
# Absolute from here on, for the paths handed to Java (a relative one is the repository's;
# an absolute one, such as a tmpfs for a log in memory, stays where it is).
[[ "$dir" == /* ]] || dir="$PWD/$dir"
heap="${KAFKA_HEAP:--Xms256m -Xmx512m}"
pid_file="$dir/broker.pid"
log_file="$dir/broker.log"
address="127.0.0.1:$port"

log() { echo "broker.sh: $*" >&2; }

fetch() {
  if [ -f "$lib/.complete" ]; then return; fi
  command -v mvn >/dev/null || { log "mvn is missing (apt-get install maven)"; exit 1; }
  log "fetching the Kafka jars into $lib"
  local started=$SECONDS
  rm -rf "$lib"
  (cd scripts/kafka && mvn -q -B -Dstyle.color=never dependency:copy-dependencies \
    -DoutputDirectory="$PWD/../../$lib" -DincludeScope=runtime)
  touch "$lib/.complete"
  log "jars fetched in $((SECONDS - started)) s"
}

java_run() {
  # shellcheck disable=SC2086 # heap holds several flags
  java $heap -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$lib/*" "$@"
}

running() {
  [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

ready() {
  java -Xmx64m -cp "$lib/*" scripts/kafka/Ready.java "$address" "$1" >/dev/null 2>&1
}

write_config() {
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_PLAINTEXT://127.0.0.1:$sasl_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sasl_port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
  cat >"$dir/log4j2.properties" <<PROPS
rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.server.name=kafka.server.KafkaRaftServer
logger.server.level=INFO
PROPS
}

start() {
  if running; then
    if ready 20; then
      add_scram_user
      log "already running on $address (pid $(cat "$pid_file"))"
      return
    fi
    log "pid $(cat "$pid_file") runs but does not answer; restarting it"
    stop
  fi
  fetch
  command -v java >/dev/null || { log "java is missing (apt-get install openjdk-17-jre-headless)"; exit 1; }
  local started=$SECONDS
  write_config
  if [ ! -f "$dir/cluster.id" ]; then
    java_run kafka.tools.StorageTool random-uuid >"$dir/cluster.id"
  fi
  java_run kafka.tools.StorageTool format -t "$(cat "$dir/cluster.id")" \
    -c "$dir/server.properties" --ignore-formatted >>"$log_file" 2>&1
  # shellcheck disable=SC2086 # heap holds several flags
  nohup java $heap -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$lib/*" \
    kafka.Kafka "$dir/server.properties" >>"$log_file" 2>&1 </dev/null &
  echo $! >"$pid_file"
  if ! ready 120; then
    log "the broker did not become ready within 120 s; last log lines:"
    tail -n 30 "$log_file" >&2 || true
    stop
    exit 1
  fi
  add_scram_user
  log "ready on $address (pid $(cat "$pid_file")) in $((SECONDS - started)) s; SASL/SCRAM on" \
    "127.0.0.1:$sasl_port; log $log_file"
}

# The SCRAM user of the SASL listener (an admin request on the PLAINTEXT listener; idempotent).
add_scram_user() {
  local mechanism
  for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
    java_run kafka.admin.ConfigCommand --bootstrap-server "$address" --alter --entity-type users \
      --entity-name "$scram_user" --add-config "$mechanism=[password=$scram_password]" \
      >>"$log_file" 2>&1 || { log "cannot create the SCRAM user ($mechanism); see $log_file"; exit 1; }
  done
}

stop() {
  if ! running; then rm -f "$pid_file"; log "not running"; return; fi
  local pid
  pid="$(cat "$pid_file")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 80); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid ignored SIGTERM for 20 s; killing it"
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
  log "stopped"
}

status() {
  if running && ready 5; then
    log "running on $address (pid $(cat "$pid_file"))"
  else
    log "not running on $address"
    return 1
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
