#!/bin/sh
# The stand-in Envoy image's entrypoint, behaving as the official image's does: arguments
# starting with '-' are Envoy's, `$loglevel` adds --log-level, and Envoy runs as the user
# `envoy` (uid 101, or $ENVOY_UID/$ENVOY_GID) unless ENVOY_UID=0.
set -e
loglevel="${loglevel:-}"
if [ "${1#-}" != "$1" ]; then
    set -- envoy "$@"
fi
if [ "$1" = 'envoy' ] && [ -n "$loglevel" ]; then
    set -- "$@" --log-level "$loglevel"
fi
if [ "$ENVOY_UID" != "0" ] && [ "$(id -u)" = 0 ]; then
    [ -z "$ENVOY_UID" ] || usermod -u "$ENVOY_UID" envoy
    [ -z "$ENVOY_GID" ] || groupmod -g "$ENVOY_GID" envoy
    # So the envoy user can write to the container's log.
    chown envoy:envoy /dev/stdout /dev/stderr 2>/dev/null || true
    exec setpriv --reuid envoy --regid envoy --init-groups "$@"
fi
exec "$@"
