#!/usr/bin/env bash
# metrics-server.sh builds metrics-server (the one `kubectl top` reads through the API aggregation layer) from the Go
# module proxy into $CACHE/tools/metrics-server-<version>/metrics-server, once. The e2e tests run it against the
# local control plane and i2kit nodes. Prints the binary's path on stdout.
set -euo pipefail
V=v0.8.0
CACHE=${I2KIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/i2kit}
OUT=$CACHE/tools/metrics-server-$V
if [ -x "$OUT/metrics-server" ]; then echo "$OUT/metrics-server"; exit 0; fi
echo "[metrics-server] building sigs.k8s.io/metrics-server $V (a few minutes, once)" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
go mod init i2kit.local/metrics-server >/dev/null 2>&1
go get "sigs.k8s.io/metrics-server/cmd/metrics-server@$V" >&2
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server
mkdir -p "$OUT"
mv "$tmp/metrics-server" "$OUT/metrics-server.tmp" && mv "$OUT/metrics-server.tmp" "$OUT/metrics-server"
echo "$OUT/metrics-server"
