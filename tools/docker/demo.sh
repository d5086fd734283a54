#!/usr/bin/env bash
# `make demo-docker`: `make demo`'s story played against the docker-compose stack. Brings the
# stack up with the demo's short open times (envoy/docker-compose.demo.yml on top of the
# shipped file), follows Envoy's container log into a file for the demo to read, plays, and
# takes the stack down again (also on Ctrl-C or a failure).
set -euo pipefail
cd "$(dirname "$0")/../.."
compose=(tools/docker/compose.sh -f envoy/docker-compose.yml -f envoy/docker-compose.demo.yml)

tools/docker/engine.sh
tools/docker/stand-ins.sh
target/release/docker-config --plugin envoy/demo-plugin.json --out target/docker-demo/envoy.yaml
CIRCUIT_BREAKER_ADMIN_TOKEN="demo-$(date +%s%N | sha256sum | cut -c1-16)"
export CIRCUIT_BREAKER_ADMIN_TOKEN
log=target/docker-demo/envoy.log
follower=""

cleanup() {
  [ -z "$follower" ] || kill "$follower" 2>/dev/null || true
  echo "taking the compose stack down"
  "${compose[@]}" down --volumes --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

rm -f "$log"
echo "building the service images (log: target/docker-demo/build.log)"
"${compose[@]}" build >target/docker-demo/build.log 2>&1 ||
  { tail -40 target/docker-demo/build.log >&2; exit 1; }
"${compose[@]}" up -d
# The container is looked up first: done inside the background command, the lookup would
# leave the demo reading a log of an earlier run for a second.
envoy=$("${compose[@]}" ps -q envoy)
docker logs --follow "$envoy" >"$log" 2>&1 &
follower=$!
target/release/demo --running --envoy-log "$log" "$@"
