#!/usr/bin/env bash
# cluster.sh up|run|down — a cluster for hack/conformance/run.sh, made as scripts/demo.sh makes the demo's: a local
# control plane, an in-memory registry and one i2kit node (backend qemu) inside a network namespace of its own, but
# with the node UNTAINTED (--taints=), since the suite's pods tolerate nothing, and nothing else deployed. Needs
# root, and `make deps controlplane kernel build` first.
#
#   sudo hack/conformance/cluster.sh up     # start it
#   sudo hack/conformance/cluster.sh run    # run.sh inside the namespace (pushes images, runs the specs)
#   sudo hack/conformance/cluster.sh down   # stop it and remove its state
set -euo pipefail
cd "$(dirname "$0")/../.."
NS=${I2KIT_CONF_NETNS:-i2kit-conf}
NODE_IP=${I2KIT_CONF_NODE_IP:-198.18.0.20}
STATE=${I2KIT_CONF_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/i2kit/conformance-cluster}
REGISTRY=127.0.0.1:5001
I2KIT=$PWD/bin/i2kit
KUBECONFIG_PATH=$STATE/plane/admin.kubeconfig

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
# inns runs a command in the namespace. Background processes are started with `ip netns exec` itself, not inns: $!
# of a backgrounded shell function is a subshell's, and killing it would leave the process running.
inns() { ip netns exec "$NS" "$@"; }
kubectl_path() { echo "$(inns "$I2KIT" dev env --state-dir "$STATE/plane" | sed -n 's/^export PATH=\([^:]*\):.*/\1/p')/kubectl"; }

up() {
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: run as root (it creates the network namespace $NS)" >&2; exit 1; }
  mkdir -p "$STATE"
  if ! ip netns list | grep -qw "$NS"; then
    say "creating network namespace $NS with node address $NODE_IP"
    ip netns add "$NS"
    inns ip link set lo up
    inns ip addr add "$NODE_IP/32" dev lo
  fi
  say "starting the control plane"
  if inns "$I2KIT" dev status --state-dir "$STATE/plane" 2>/dev/null | grep -q "kube-apiserver.*running"; then
    echo "already running"
  else
    inns "$I2KIT" dev up --state-dir "$STATE/plane" --advertise-address "$NODE_IP" | sed -n '1,/^control plane ready/p'
  fi
  if [ -f "$STATE/registry.pid" ] && kill -0 "$(cat "$STATE/registry.pid")" 2>/dev/null; then
    say "registry already runs"
  else
    say "starting an in-memory registry at $REGISTRY in the namespace (run.sh pushes the test images to it)"
    ip netns exec "$NS" nohup "$I2KIT" dev registry --addr "$REGISTRY" >"$STATE/registry.log" 2>&1 </dev/null &
    echo $! >"$STATE/registry.pid"
    for _ in $(seq 100); do grep -q "registry serving" "$STATE/registry.log" && break; sleep 0.1; done
    cat "$STATE/registry.log"
  fi
  if [ -f "$STATE/node.pid" ] && kill -0 "$(cat "$STATE/node.pid")" 2>/dev/null; then
    say "i2kit node already runs (pid $(cat "$STATE/node.pid"))"
  else
    say "starting the i2kit node without taints (log: $STATE/node.log)"
    ip netns exec "$NS" nohup "$I2KIT" node --kubeconfig "$KUBECONFIG_PATH" --node-name i2kit --internal-ip "$NODE_IP" \
      --client-ca-file "$STATE/plane/pki/ca.crt" --backend qemu --insecure-registry "$REGISTRY" \
      --qemu-runtime-dir "$STATE/vms" --image-store "$STATE/images" --taints= >"$STATE/node.log" 2>&1 </dev/null &
    echo $! >"$STATE/node.pid"
  fi
  KUBECTL=$(kubectl_path)
  for _ in $(seq 300); do inns "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get node i2kit >/dev/null 2>&1 && break; sleep 0.1; done
  inns "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" wait --for=condition=Ready node/i2kit --timeout=60s >/dev/null
  inns "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" get nodes -o wide
}

run() {
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: run as root (it enters the network namespace $NS)" >&2; exit 1; }
  # run.sh pushes to the namespace's registry and reaches the apiserver at the node address, so it runs inside.
  inns env KUBECTL="$(kubectl_path)" REGISTRY="$REGISTRY" hack/conformance/run.sh "$KUBECONFIG_PATH" i2kit
}

down() {
  if [ -f "$STATE/node.pid" ]; then
    pid=$(cat "$STATE/node.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      # A node that has not stopped in 30 s (its pods' VMs ending, an apiserver gone) is killed: it holds the
      # image store's lock, which the next `up` needs.
      kill -KILL "$pid" 2>/dev/null && echo "i2kit node killed after 30 s" || echo "i2kit node stopped"
    fi
    rm -f "$STATE/node.pid"
  fi
  if [ -f "$STATE/registry.pid" ]; then kill "$(cat "$STATE/registry.pid")" 2>/dev/null || true; rm -f "$STATE/registry.pid"; fi
  for p in "$STATE"/vms/*/qemu.pid; do [ -f "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null; done; rm -rf "$STATE/vms" "$STATE/images" # the next up pulls the stand-ins afresh (IfNotPresent keeps a cached tag)
  if [ -f "$STATE/plane/plane.json" ]; then
    if ip netns list | grep -qw "$NS"; then inns "$I2KIT" dev down --purge --state-dir "$STATE/plane"; else "$I2KIT" dev down --purge --state-dir "$STATE/plane"; fi
  fi
  if ip netns list | grep -qw "$NS"; then ip netns del "$NS"; echo "network namespace $NS removed"; fi
}

case ${1:-} in
  up) up ;;
  run) run ;;
  down) down ;;
  *) echo "usage: $0 up|run|down" >&2; exit 2 ;;
esac
