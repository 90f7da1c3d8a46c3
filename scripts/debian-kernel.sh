#!/usr/bin/env bash
# debian-kernel.sh fetches Debian's stock kernel package (linux-image-amd64's current version) and extracts it,
# without installing it, into $CACHE/kernel/debian-<version>/ (boot/vmlinuz-*, lib/modules/<ver>/). i2kit images
# can boot it instead of the podvm kernel with `kernel: {image: "debian:<that dir>"}`. Prints the directory.
set -euo pipefail
CACHE=${I2KIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/i2kit}
log() { echo "[debian-kernel] $*" >&2; }
existing=$(ls -d "$CACHE"/kernel/debian-*/ 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$existing" ] && [ -f "$existing/.complete" ]; then echo "${existing%/}"; exit 0; fi
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$pkg" ]; then
  apt-get update -qq >&2
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$pkg" ] || { log "cannot find Debian's kernel package"; exit 1; }
out=$CACHE/kernel/debian-${pkg#linux-image-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading $pkg"
(cd "$work" && apt-get download "$pkg" >&2)
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
dpkg-deb -x "$work"/*.deb "$out.tmp"
rm -rf "$out"; mv "$out.tmp" "$out"
touch "$out/.complete"
log "extracted into $out"
echo "$out"
