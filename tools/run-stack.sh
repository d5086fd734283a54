#!/usr/bin/env bash
# `make run`: the three services and Envoy with envoy/envoy.yaml, in the foreground.
# Ctrl-C (or any exit) stops every process this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/envoy}
pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping: ${pids[*]:-nothing}"
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

target/release/auth-service --port 8081 & pids+=($!)
target/release/school-service --port 8082 & pids+=($!)
target/release/student-service --port 8083 --gateway 127.0.0.1:10000 & pids+=($!)
"$ENVOY" -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart --log-level info & pids+=($!)

cat <<'TXT'

  gateway        http://127.0.0.1:10000   (/auth, /schools, /students)
  envoy admin    http://127.0.0.1:9901/stats/prometheus
  fault switches POST http://127.0.0.1:808{1,2,3}/simulate/failure
                 e.g. curl -XPOST 127.0.0.1:8082/simulate/failure -d '{"is_healthy": false}'
  Ctrl-C stops everything.

TXT
# Any process dying takes the rest down, so a half-started stack never lingers.
wait -n
