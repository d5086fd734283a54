#!/usr/bin/env bash
# Makes sure a Docker engine answers. A running engine (the user's own) is used as it is.
# With none, and only where this can be done without guessing (root, Debian's apt): installs
# docker.io and starts dockerd in the background, as the machines this project is built on
# need. Anywhere else it says there is no engine and stops.
set -euo pipefail
cd "$(dirname "$0")/../.."

if docker info >/dev/null 2>&1; then
  echo "docker engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "no Docker engine answers (docker info failed). Start your engine (or install Docker)" >&2
  echo "and run this again; nothing was started here." >&2
  exit 1
fi
tools/apt-install.sh dockerd:docker.io
if ! pgrep -x dockerd >/dev/null 2>&1; then
  log=/var/log/ecb-dockerd.log
  echo "starting dockerd in the background (log: $log)"
  setsid nohup dockerd >"$log" 2>&1 </dev/null &
fi
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker engine: $(docker version --format '{{.Server.Version}}') answers"
    exit 0
  fi
  sleep 0.5
done
echo "dockerd did not answer within 30 s; see /var/log/ecb-dockerd.log" >&2
exit 1
