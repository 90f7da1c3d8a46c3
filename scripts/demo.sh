#!/usr/bin/env bash
# demo.sh up|down — a local control plane and an i2kit node inside a network namespace made for the demo, so that
# the node can have a non-loopback InternalIP (the apiserver's node proxy refuses loopback) and no traffic leaves
# the machine. Needs root. `make demo` builds what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${I2KIT_DEMO_NETNS:-i2kit-demo}
NODE_IP=${I2KIT_DEMO_NODE_IP:-198.18.0.10}
STATE=${I2KIT_DEMO_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/i2kit/demo}
I2KIT=$PWD/bin/i2kit
KUBECONFIG_PATH=$STATE/plane/admin.kubeconfig

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
inns() { ip netns exec "$NS" "$@"; }
kctl() { inns "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

up() {
  [ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates the network namespace $NS)" >&2; exit 1; }
  mkdir -p "$STATE"
  if ! ip netns list | grep -qw "$NS"; then
    say "creating network namespace $NS with node address $NODE_IP"
    ip netns add "$NS"
    inns ip link set lo up
    inns ip addr add "$NODE_IP/32" dev lo
  fi
  say "starting the control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)"
  if inns "$I2KIT" dev status --state-dir "$STATE/plane" 2>/dev/null | grep -q "kube-apiserver.*running"; then
    echo "already running"
  else
    inns "$I2KIT" dev up --state-dir "$STATE/plane" | sed -n '1,/^control plane ready/p'
  fi
  KUBECTL=$(inns "$I2KIT" dev env --state-dir "$STATE/plane" | sed -n 's/^export PATH=\([^:]*\):.*/\1/p')/kubectl

  if [ -f "$STATE/node.pid" ] && kill -0 "$(cat "$STATE/node.pid")" 2>/dev/null; then
    say "i2kit node already runs (pid $(cat "$STATE/node.pid"))"
  else
    say "starting i2kit node (log: $STATE/node.log)"
    inns nohup "$I2KIT" node --kubeconfig "$KUBECONFIG_PATH" --node-name i2kit --internal-ip "$NODE_IP" \
      --client-ca-file "$STATE/plane/pki/ca.crt" >"$STATE/node.log" 2>&1 </dev/null &
    echo $! >"$STATE/node.pid"
  fi
  for _ in $(seq 300); do kctl get node i2kit >/dev/null 2>&1 && break; sleep 0.1; done
  kctl wait --for=condition=Ready node/i2kit --timeout=60s >/dev/null
  kctl get nodes -o wide

  say "the kubelet API answers through the apiserver"
  echo "kubectl get --raw /api/v1/nodes/i2kit/proxy/healthz: $(kctl get --raw /api/v1/nodes/i2kit/proxy/healthz)"

  say "applying examples/hello.yaml (3 replicas that tolerate the i2kit taint)"
  kctl apply -f examples/hello.yaml
  for _ in $(seq 100); do
    n=$(kctl get pods -l app=hello -o jsonpath='{range .items[*]}{.status.containerStatuses[0].state.waiting.reason}{"\n"}{end}' | grep -c . || true)
    [ "$n" -ge 3 ] && break
    sleep 0.2
  done
  kctl get pods -l app=hello -o wide
  cat <<MSG

The pods are bound to the i2kit node and stay Pending with reason NoBackend: this build of i2kit registers a real
node but has no VM backend yet (the qemu backend is the next milestone). It never reports a pod Running that is not.

Try it:
  sudo ip netns exec $NS $KUBECTL --kubeconfig $KUBECONFIG_PATH describe pod -l app=hello
  sudo ip netns exec $NS $KUBECTL --kubeconfig $KUBECONFIG_PATH get events
Tear down:
  make demo-down
MSG
}

down() {
  if [ -f "$STATE/node.pid" ]; then
    pid=$(cat "$STATE/node.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "i2kit node stopped"
    fi
    rm -f "$STATE/node.pid"
  fi
  if [ -f "$STATE/plane/plane.json" ]; then
    if ip netns list | grep -qw "$NS"; then inns "$I2KIT" dev down --purge --state-dir "$STATE/plane"; else "$I2KIT" dev down --purge --state-dir "$STATE/plane"; fi
  fi
  if ip netns list | grep -qw "$NS"; then ip netns del "$NS"; echo "network namespace $NS removed"; fi
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
