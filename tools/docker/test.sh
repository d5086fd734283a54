#!/usr/bin/env bash
# `make test-docker`: a Docker engine (tools/docker/engine.sh), the images the compose stack
# names (pulled, or stand-ins built once: tools/docker/stand-ins.sh), then
#  1. tests/docker_stack.rs: envoy/docker-compose.yml as shipped, built and brought up, checked
#     through its published loopback ports, taken down with its volumes;
#  2. tests/breaker_in_envoy.rs with Envoy started from the Envoy image instead of the binary;
#  3. tests/docker_fleet.rs: envoy/docker-compose.fleet.yml (three etcd members, three
#     gateways) with the etcd leader killed, a member frozen, a gateway cut off from etcd.
# Whatever fails, nothing of either is left running.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
started=$(date +%s)

cleanup() {
  tools/docker/compose.sh -p ecb-docker-test -f envoy/docker-compose.yml \
    down --volumes --remove-orphans >/dev/null 2>&1 || true
  tools/docker/compose.sh -p ecb-fleet-test -f envoy/docker-compose.fleet.yml \
    down --volumes --remove-orphans >/dev/null 2>&1 || true
  docker ps --all --quiet --filter name=ecb-envoy- | xargs -r docker rm --force >/dev/null 2>&1 || true
}
trap cleanup EXIT

tools/docker/engine.sh
tools/docker/stand-ins.sh
echo "images ready after $(( $(date +%s) - started )) s"

# Bounded: a first run builds the service images (three release builds of the services).
timeout 1800 cargo test --features envoy-tests --test docker_stack -- --ignored --nocapture
echo "compose stack tested after $(( $(date +%s) - started )) s"

ENVOY_DOCKER_IMAGE=$ENVOY_IMAGE timeout 900 cargo test --features envoy-tests --test breaker_in_envoy -- --test-threads 2
left=$(docker ps --all --quiet --filter name=ecb-envoy-)
if [ -n "$left" ]; then
  echo "containers left behind by the Envoy tests: $left" >&2
  exit 1
fi
echo "Envoy tests in the Envoy image done after $(( $(date +%s) - started )) s"

timeout 1200 cargo test --features envoy-tests --test docker_fleet -- --ignored --nocapture
echo "make test-docker: passed in $(( $(date +%s) - started )) s"
