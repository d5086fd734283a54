#!/usr/bin/env bash
# Runs Docker Compose, whichever the machine has: the `docker compose` plugin (v2) or
# Debian's `docker-compose` (v1). Arguments are passed on.
set -euo pipefail
if docker compose version >/dev/null 2>&1; then
  exec docker compose "$@"
elif command -v docker-compose >/dev/null 2>&1; then
  exec docker-compose "$@"
fi
echo "neither \`docker compose\` nor \`docker-compose\` is installed" >&2
exit 1
