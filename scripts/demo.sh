#!/usr/bin/env bash
# demo.sh up|down — a local control plane and an i2kit node inside a network namespace made for the demo, so that
# the node can have a non-loopback InternalIP (the apiserver's node proxy refuses loopback) and no traffic leaves
# the machine. Needs root. `make demo` builds what it needs first.
# BACKEND=aws (make demo BACKEND=aws) runs the node with the aws backend against a local EC2 whose instances are
# QEMU VMs (hack/devcloud, started in the namespace): the same pods, each an instance booted from a published AMI.
set -euo pipefail
cd "$(dirname "$0")/.."
NS=${I2KIT_DEMO_NETNS:-i2kit-demo}
NODE_IP=${I2KIT_DEMO_NODE_IP:-198.18.0.10}
STATE=${I2KIT_DEMO_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/i2kit/demo}
I2KIT=$PWD/bin/i2kit
KUBECONFIG_PATH=$STATE/plane/admin.kubeconfig
BACKEND=${BACKEND:-qemu}
DEVCLOUD_ADDR=127.0.0.1:4566

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
    inns "$I2KIT" dev up --state-dir "$STATE/plane" --advertise-address "$NODE_IP" | sed -n '1,/^control plane ready/p'
  fi
  KUBECTL=$(inns "$I2KIT" dev env --state-dir "$STATE/plane" | sed -n 's/^export PATH=\([^:]*\):.*/\1/p')/kubectl

  if [ -f "$STATE/registry.pid" ] && kill -0 "$(cat "$STATE/registry.pid")" 2>/dev/null; then
    say "local registry already runs"
  else
    say "building examples/hello and serving it from a local registry (127.0.0.1:5001 in the namespace)"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o bin/hello ./examples/hello
    ip netns exec "$NS" nohup "$I2KIT" dev registry --addr 127.0.0.1:5001 --busybox /bin/busybox --binary hello:1=bin/hello >"$STATE/registry.log" 2>&1 </dev/null &
    echo $! >"$STATE/registry.pid"
    for _ in $(seq 100); do grep -q "registry serving" "$STATE/registry.log" && break; sleep 0.1; done
    cat "$STATE/registry.log"
  fi

  case $BACKEND in
    qemu) ;;
    aws) devcloud ;;
    *) echo "demo.sh: BACKEND is qemu or aws, not $BACKEND" >&2; exit 2 ;;
  esac
  if [ -f "$STATE/node.pid" ] && kill -0 "$(cat "$STATE/node.pid")" 2>/dev/null; then
    say "i2kit node already runs (pid $(cat "$STATE/node.pid"))"
  else
    say "starting i2kit node, backend $BACKEND (log: $STATE/node.log)"
    if [ "$BACKEND" = aws ]; then
      # The devcloud's fixtures name the subnets and groups; LoadBalancer Services need an ELBv2 API it has not.
      printf 'backend: aws\nloadBalancers: {enabled: false}\naws:\n  region: us-east-1\n  cluster: demo\n  endpoint: http://%s\n  %s\n  %s\n  instanceTypes: [t3]\n  stateDir: %s\n' \
        "$DEVCLOUD_ADDR" "$(grep '^subnets:' "$STATE/devcloud.log")" "$(grep '^securityGroups:' "$STATE/devcloud.log")" "$STATE/aws" >"$STATE/node.yaml"
      # Credentials from the environment, as on a machine with keys; the namespace's metadata address is the
      # instances', not the node's.
      ip netns exec "$NS" env AWS_ACCESS_KEY_ID=AKIDDEMO AWS_SECRET_ACCESS_KEY=demo-secret-key AWS_EC2_METADATA_DISABLED=true \
        nohup "$I2KIT" node --config "$STATE/node.yaml" --kubeconfig "$KUBECONFIG_PATH" --node-name i2kit --internal-ip "$NODE_IP" \
        --client-ca-file "$STATE/plane/pki/ca.crt" --insecure-registry 127.0.0.1:5001 --image-store "$STATE/images" >"$STATE/node.log" 2>&1 </dev/null &
    else
      # The demo's node is the cluster's only load balancer: it claims LoadBalancer Services without a class too.
      printf 'loadBalancers: {claimUnclassed: true}\n' >"$STATE/node.yaml"
      ip netns exec "$NS" nohup "$I2KIT" node --config "$STATE/node.yaml" --kubeconfig "$KUBECONFIG_PATH" --node-name i2kit --internal-ip "$NODE_IP" \
        --client-ca-file "$STATE/plane/pki/ca.crt" --backend qemu --insecure-registry 127.0.0.1:5001 \
        --qemu-runtime-dir "$STATE/vms" --image-store "$STATE/images" >"$STATE/node.log" 2>&1 </dev/null &
    fi
    echo $! >"$STATE/node.pid"
  fi
  for _ in $(seq 300); do kctl get node i2kit >/dev/null 2>&1 && break; sleep 0.1; done
  kctl wait --for=condition=Ready node/i2kit --timeout=60s >/dev/null
  kctl get nodes -o wide

  say "the kubelet API answers through the apiserver"
  echo "kubectl get --raw /api/v1/nodes/i2kit/proxy/healthz: $(kctl get --raw /api/v1/nodes/i2kit/proxy/healthz)"

  say "applying examples/hello.yaml (3 replicas that tolerate the i2kit taint): each pod becomes a microVM"
  kctl apply -f examples/hello.yaml
  t0=$SECONDS
  for _ in $(seq 300); do
    ready=$(kctl get pods -l app=hello -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
    printf '\r  %d/3 pods Ready (%ds)' "$ready" $((SECONDS - t0))
    [ "$ready" -ge 3 ] && break
    sleep 1
  done
  echo
  kctl get pods -l app=hello -o wide
  ip=$(kctl get pods -l app=hello -o jsonpath='{.items[0].status.podIP}')
  say "fetching a page from the pod VM at $ip"
  for _ in $(seq 100); do inns curl -fs "http://$ip:8080/" && break; sleep 0.2; done
  pod=$(kctl get pods -l app=hello -o jsonpath='{.items[0].metadata.name}')
  say "kubectl logs $pod --tail=2 (the container's output, from the guest agent)"
  kctl logs "$pod" --tail=2
  say "kubectl exec $pod -- cat /etc/hostname"
  kctl exec "$pod" -- cat /etc/hostname

  if [ "$BACKEND" = aws ]; then
    say "the pods are EC2 instances of the local cloud (the AMI published once, from the first pod's image)"
    inns "$DEVCLOUD" --addr "$DEVCLOUD_ADDR" --list
    cat <<MSG

LoadBalancer Services are not demoed on aws: they are Network Load Balancers, and the local cloud serves no ELBv2
API. Tear down: make demo-down
MSG
    return
  fi
  say "kubectl expose deploy hello --type=LoadBalancer --port 80 --target-port 8080"
  kctl get svc hello >/dev/null 2>&1 || kctl expose deploy hello --type=LoadBalancer --port 80 --target-port 8080
  lb=
  for _ in $(seq 100); do
    lb=$(kctl get svc hello -o jsonpath='{.status.loadBalancer.ingress[0].ip}')
    [ -n "$lb" ] && break
    sleep 0.2
  done
  kctl get svc hello
  say "fetching pages through the load balancer at $lb (nftables on the node spreads connections over the pod VMs)"
  for _ in 1 2 3 4 5 6; do inns curl -fsS --retry 20 --retry-delay 1 --retry-all-errors "http://$lb/"; done
  cat <<MSG

Every pod above is its own QEMU microVM (TCG here: this machine has no usable KVM), on a bridge inside the network
namespace $NS; its IP is the VM's. kubectl talks to the VMs' agents through the node.

Try it:
  K="sudo ip netns exec $NS $KUBECTL --kubeconfig $KUBECONFIG_PATH"
  \$K get pods -o wide
  \$K logs -f $pod                    # follow; curl the pod in another shell to see requests
  \$K exec -it $pod -- sh             # a shell inside the pod VM (busybox)
  \$K port-forward pod/$pod 8080:8080 # then: sudo ip netns exec $NS curl localhost:8080
  \$K scale deploy/hello --replicas=5
  \$K get events
  sudo ip netns exec $NS curl http://$ip:8080/    # one pod VM
  sudo ip netns exec $NS curl http://$lb/         # the LoadBalancer Service: any ready pod
Tear down:
  make demo-down
MSG
}

# devcloud starts the local EC2 (hack/devcloud) in the namespace, unless it runs.
devcloud() {
  DEVCLOUD=$PWD/bin/devcloud
  if [ -f "$STATE/devcloud.pid" ] && kill -0 "$(cat "$STATE/devcloud.pid")" 2>/dev/null; then
    say "local EC2 already runs"
    return
  fi
  say "starting the local EC2 (hack/devcloud: instances are QEMU VMs) at http://$DEVCLOUD_ADDR in the namespace"
  go build -o "$DEVCLOUD" ./hack/devcloud
  ip netns exec "$NS" nohup "$DEVCLOUD" --addr "$DEVCLOUD_ADDR" --state "$STATE/devcloud" >"$STATE/devcloud.log" 2>&1 </dev/null &
  echo $! >"$STATE/devcloud.pid"
  for _ in $(seq 100); do grep -q "^securityGroups:" "$STATE/devcloud.log" && break; sleep 0.1; done
  cat "$STATE/devcloud.log"
}

down() {
  if [ -f "$STATE/plane/plane.json" ] && ip netns list | grep -qw "$NS"; then
    KUBECTL=$(inns "$I2KIT" dev env --state-dir "$STATE/plane" | sed -n 's/^export PATH=\([^:]*\):.*/\1/p')/kubectl
    # The Service first, while the node runs: its finalizer is the node's, which deletes the load balancer.
    kctl delete svc hello --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
    kctl delete -f examples/hello.yaml --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
  fi
  if [ -f "$STATE/node.pid" ]; then
    pid=$(cat "$STATE/node.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "i2kit node stopped"
    fi
    rm -f "$STATE/node.pid"
  fi
  # The local EC2 after the node: SIGTERM ends its instances (their VMs) before it exits.
  if [ -f "$STATE/devcloud.pid" ]; then
    pid=$(cat "$STATE/devcloud.pid")
    if kill -TERM "$pid" 2>/dev/null; then
      for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "local EC2 stopped"
    fi
    rm -f "$STATE/devcloud.pid"; rm -rf "$STATE/devcloud" "$STATE/aws"
  fi
  if [ -f "$STATE/registry.pid" ]; then kill "$(cat "$STATE/registry.pid")" 2>/dev/null || true; rm -f "$STATE/registry.pid"; fi
  for p in "$STATE"/vms/*/qemu.pid; do [ -f "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null; done; rm -rf "$STATE/vms"
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
