#!/usr/bin/env bash
# run.sh — run Kubernetes v1.37.2's node conformance specs (test/e2e/common/node, [NodeConformance] or [Conformance],
# not [Slow] [Serial] [Disruptive] [Flaky] [Feature:*]) with the unmodified upstream e2e.test against an i2kit node,
# and print passed/failed/skipped counts and the failed specs. See hack/conformance/README.md.
#
#   hack/conformance/run.sh KUBECONFIG NODE_NAME      # the cluster's only schedulable node must be NODE_NAME
#   DRY_RUN=1 hack/conformance/run.sh                 # list the selected specs and count them; needs no cluster
#
# Environment:
#   REGISTRY   host:port of a plain-HTTP registry that this script can push to and the node pulls from (the node
#              runs with --insecure-registry REGISTRY); default 127.0.0.1:5001, the demo's registry
#   OUT        report directory (junit_01.xml, e2e.log, repo-list.yaml); default _output/conformance/<timestamp>
#   TIMEOUT    ginkgo's timeout for the whole run; default 8h (serial, VMs under TCG)
#   FOCUS_FILE, FOCUS, SKIP  override the spec filters below (FOCUS_FILE=test/e2e/common/ adds common/storage's
#              [NodeConformance] volume specs: the set kubelet's own node e2e runs)
#   E2E_ARGS   extra flags for e2e.test (e.g. --ginkgo.fail-fast)
#   PROCS      specs run in parallel by the ginkgo CLI (v2.32.0, the one e2e.test is built with, installed beside
#              it); default 1, serially by the bare binary
set -euo pipefail
cd "$(dirname "$0")/../.."

KUBECONFIG_PATH=${1:-${KUBECONFIG:-}}
NODE_NAME=${2:-${NODE_NAME:-i2kit}}
REGISTRY=${REGISTRY:-127.0.0.1:5001}
OUT=${OUT:-$PWD/_output/conformance/$(date +%Y%m%d-%H%M%S)}
TIMEOUT=${TIMEOUT:-8h}
# The specs of test/e2e/common/node: the code location of each spec is in that directory (the binary is built with
# -trimpath, so locations read k8s.io/kubernetes/test/e2e/common/node/<file>.go). --ginkgo.focus-file keeps out the
# [sig-node] specs of test/e2e/node, which are not node conformance.
FOCUS_FILE=${FOCUS_FILE:-test/e2e/common/node/}
FOCUS=${FOCUS:-'\[NodeConformance\]|\[Conformance\]'}
SKIP=${SKIP:-'\[Slow\]|\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Feature:'}

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }

say "building e2e.test (kubernetes v1.37.2) unless cached"
E2E=$(go run ./hack/conformance/e2etest build)
echo "$E2E" >&2

filters=(--ginkgo.focus-file="$FOCUS_FILE" --ginkgo.focus="$FOCUS" --ginkgo.skip="$SKIP")

if [ "${DRY_RUN:-}" = 1 ]; then
  say "specs selected (dry run)"
  # A dry run walks the spec tree without running any node, BeforeSuite included: no cluster is contacted.
  "$E2E" --provider=skeleton --ginkgo.dry-run --ginkgo.v --ginkgo.no-color "${filters[@]}" >"${TMPDIR:-/tmp}/conformance-dry-run.log" 2>&1 || true
  # A spec's text is the line before its code location; the trailing [labels] repeat what the text says.
  grep -B1 -E "^k8s.io/kubernetes@[^/]+/$FOCUS_FILE" "${TMPDIR:-/tmp}/conformance-dry-run.log" |
    grep -vE '^(k8s.io/|--$)' | sed 's/ \[[^]]*\]$//' | sort
  grep -E '^Ran [0-9]+ of [0-9]+ Specs' "${TMPDIR:-/tmp}/conformance-dry-run.log" >&2 ||
    { echo "run.sh: the dry run did not finish; its log: ${TMPDIR:-/tmp}/conformance-dry-run.log" >&2; exit 1; }
  exit 0
fi

[ -n "$KUBECONFIG_PATH" ] || { echo "usage: hack/conformance/run.sh KUBECONFIG [NODE_NAME]" >&2; exit 2; }
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
[ -n "$KUBECTL" ] || { echo "run.sh: no kubectl on PATH (eval \"\$(i2kit dev env)\" puts the plane's on it) or in \$KUBECTL" >&2; exit 2; }
kctl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_PATH" "$@"; }

say "checking node $NODE_NAME"
kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null
taints=$(kctl get node "$NODE_NAME" -o jsonpath='{range .spec.taints[*]}{.key}={.value}:{.effect}{" "}{end}')
if [ -n "$taints" ]; then
  # The suite's pods carry no tolerations; a tainted node would leave them Pending (and the framework waits for
  # every node to be schedulable before it starts).
  echo "run.sh: node $NODE_NAME has taints ($taints); start it with --taints= (or taints: [] in its config)" >&2
  exit 1
fi
others=$(kctl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.unschedulable}{"\n"}{end}' |
  awk -v n="$NODE_NAME" '$1 != n && $2 != "true" {print $1}')
if [ -n "$others" ]; then
  echo "run.sh: other schedulable nodes would take the suite's pods: $others (cordon them or use a cluster with only $NODE_NAME)" >&2
  exit 1
fi

mkdir -p "$OUT"
say "pushing the test images' stand-ins to $REGISTRY"
go run ./hack/conformance/images --registry "$REGISTRY" --repo-list "$OUT/repo-list.yaml"

e2e_flags=(--kubeconfig="$KUBECONFIG_PATH" --provider=skeleton --node-os-distro=custom --kubectl-path="$KUBECTL"
  --report-dir="$OUT" --e2e-output-dir="$OUT" --disable-log-dump --allowed-not-ready-nodes=0)
PROCS=${PROCS:-1}
if [ "$PROCS" -gt 1 ]; then
  GINKGO=$(dirname "$E2E")/ginkgo
  [ -x "$GINKGO" ] || GOBIN=$(dirname "$E2E") go install github.com/onsi/ginkgo/v2/ginkgo@v2.32.0
  say "running the node conformance specs, $PROCS at a time (report: $OUT)"
  set +e
  KUBE_TEST_REPO_LIST=$OUT/repo-list.yaml "$GINKGO" run --procs="$PROCS" --timeout="$TIMEOUT" --no-color -v \
    --focus-file="$FOCUS_FILE" --focus="$FOCUS" --skip="$SKIP" --junit-report=junit_01.xml --output-dir="$OUT" \
    "$E2E" -- "${e2e_flags[@]}" ${E2E_ARGS:-} 2>&1 | tee "$OUT/e2e.log"
  rc=${PIPESTATUS[0]}
  set -e
else
say "running the node conformance specs serially (report: $OUT)"
set +e
KUBE_TEST_REPO_LIST=$OUT/repo-list.yaml "$E2E" \
  --kubeconfig="$KUBECONFIG_PATH" \
  --provider=skeleton \
  --node-os-distro=custom \
  --kubectl-path="$KUBECTL" \
  --report-dir="$OUT" \
  --e2e-output-dir="$OUT" \
  --disable-log-dump \
  --allowed-not-ready-nodes=0 \
  --ginkgo.timeout="$TIMEOUT" \
  --ginkgo.no-color \
  --ginkgo.v \
  "${filters[@]}" \
  ${E2E_ARGS:-} 2>&1 | tee "$OUT/e2e.log"
rc=${PIPESTATUS[0]}
set -e
fi

say "results (e2e.test exited $rc)"
if [ ! -f "$OUT/junit_01.xml" ]; then
  echo "run.sh: no $OUT/junit_01.xml; the end of $OUT/e2e.log:" >&2
  tail -40 "$OUT/e2e.log" >&2
  exit 1
fi
go run ./hack/conformance/e2etest summary "$OUT/junit_01.xml" | tee "$OUT/summary.txt"
