#!/usr/bin/env bash
# `make run-fleet`: fleet mode on loopback in the foreground: a three-member etcd, the three
# services, and three Envoy gateways (node ids gateway-1..3, two workers each) running
# envoy/envoy.fleet.yaml, gateway-2 and gateway-3 with their ports substituted.
# The breakers' log lines and Envoy's warnings are shown, each with its gateway (Envoy's
# wasm component at info, the rest at warning). Ctrl-C (or any exit) stops every process
# this script started, etcd included, and removes etcd's data.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY=${ENVOY:-.venv/envoy}
CONFIG=envoy/envoy.fleet.yaml
# The ports envoy/envoy.fleet.yaml holds (gateway-1's) and the ones of each gateway;
# examples/school-system/src/fleet.rs says the same.
gateway_ports=(10001 10002 10003); admin_ports=(9911 9912 9913); control_ports=(9921 9922 9923)
etcd_client=(2379 22379 32379); etcd_peer=(2380 22380 32380)

data=$(mktemp -d -t ecb-run-fleet.XXXXXX)
pids=(); etcd_pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping: ${pids[*]:-nothing}"
  # etcd gets KILL: its data is thrown away anyway, a frozen member (kill -STOP) takes no
  # TERM, and a leader told to stop waits seconds to hand over to peers stopping too.
  for p in "${etcd_pids[@]:-}"; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true; done
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap stop INT TERM EXIT

for p in "${gateway_ports[@]}" "${admin_ports[@]}" "${control_ports[@]}" "${etcd_client[@]}" "${etcd_peer[@]}" 8081 8082 8083; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use (another make run or run-fleet?); stop that first" >&2
    exit 1
  fi
done

cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}etcd-$((i + 1))=http://127.0.0.1:${etcd_peer[$i]}"; done
for i in 0 1 2; do
  name=etcd-$((i + 1))
  etcd --name "$name" --data-dir "$data/$name" \
    --listen-client-urls "http://127.0.0.1:${etcd_client[$i]}" \
    --advertise-client-urls "http://127.0.0.1:${etcd_client[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${etcd_peer[$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${etcd_peer[$i]}" \
    --initial-cluster "$cluster" --initial-cluster-state new \
    --initial-cluster-token ecb-run-fleet 2>"$data/$name.log" &
  pids+=($!); etcd_pids+=($!)
done
endpoints=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints=$endpoints --dial-timeout=1s endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done

target/release/auth-service --port 8081 & pids+=($!)
target/release/school-service --port 8082 & pids+=($!)
target/release/student-service --port 8083 --gateway 127.0.0.1:10001 & pids+=($!)

for i in 0 1 2; do
  node=gateway-$((i + 1))
  config="$data/$node.yaml"
  sed -E -e "s/port_value: ${gateway_ports[0]}( |$)/port_value: ${gateway_ports[$i]}\1/" \
         -e "s/port_value: ${admin_ports[0]}( |$)/port_value: ${admin_ports[$i]}\1/" \
         -e "s/port_value: ${control_ports[0]}( |$)/port_value: ${control_ports[$i]}\1/" \
         "$CONFIG" >"$config"
  "$ENVOY" -c "$config" --service-node "$node" --concurrency 2 --disable-hot-restart \
    --log-level warning --component-log-level wasm:info \
    --log-format "[%Y-%m-%d %T.%e] $node %v" & pids+=($!)
done

cat <<TXT

  gateways       http://127.0.0.1:10001  10002  10003   (/auth, /schools, /students)
  control API    http://127.0.0.1:9921   9922   9923    (/health, /circuit-breakers, /circuit-breakers/dashboard)
  envoy admin    http://127.0.0.1:9911   9912   9913    (/stats/prometheus)
  etcd           $endpoints   (pids ${etcd_pids[*]}; data in $data)
  services       auth 8081, school 8082, student 8083

  trip the school breaker through gateway-1, see gateway-2 refuse without calling it:
    curl -XPOST 127.0.0.1:8082/simulate/failure -d '{"is_healthy": false}'
    for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' 127.0.0.1:10001/schools; done
    curl -s 127.0.0.1:10002/schools; curl -s 127.0.0.1:9922/circuit-breakers/school
  heal: curl -XPOST 127.0.0.1:8082/simulate/failure -d '{"is_healthy": true}'
    then wait the open time (60 s), or reset it everywhere through one gateway (needs
    CIRCUIT_BREAKER_ADMIN_TOKEN set when you ran make run-fleet):
    curl -XPOST -H "authorization: Bearer \$CIRCUIT_BREAKER_ADMIN_TOKEN" 127.0.0.1:9921/circuit-breakers/school/reset
  etcd faults: kill -STOP <etcd pid> freezes a member, kill -CONT <pid> thaws it;
    ETCDCTL_API=3 etcdctl --endpoints=$endpoints endpoint status -w table   (who leads)
  Ctrl-C stops everything.

TXT
# A gateway or service dying takes the rest down, so a half-started stack never lingers;
# etcd members are left out, so freezing or killing one is part of the play.
wait -n "${pids[@]:3}"
