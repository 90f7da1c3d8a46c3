#!/usr/bin/env bash
# kernel.sh builds the minimal pod-VM kernel from Debian's linux-source-6.1 with vmimage/kernel/podvm.config merged
# into tinyconfig (everything built in, no modules), into $CACHE/kernel/6.1-<fragment hash>/{vmlinux,bzImage,config}.
# It skips the build when that directory is complete. Prints the directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
FRAG=$PWD/vmimage/kernel/podvm.config
CACHE=${I2KIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/i2kit}
HASH=$(sha256sum "$FRAG" | cut -c1-12)
OUT=$CACHE/kernel/6.1-$HASH
log() { echo "[kernel] $*" >&2; }
if [ -s "$OUT/vmlinux" ] && [ -s "$OUT/bzImage" ]; then echo "$OUT"; exit 0; fi

need=()
[ -d /usr/src ] && ls /usr/src/linux-source-6.1.tar.* >/dev/null 2>&1 || need+=(linux-source-6.1)
for p in flex bison bc; do command -v $p >/dev/null || need+=($p); done
[ -e /usr/include/libelf.h ] || need+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
WORK=$CACHE/kernel/src-6.1
TAR=$(ls /usr/src/linux-source-6.1.tar.* | head -1)
if [ ! -f "$WORK/.extracted" ]; then
  log "extracting $TAR"
  rm -rf "$WORK"; mkdir -p "$WORK"
  tar -C "$WORK" --strip-components=1 -xf "$TAR"
  touch "$WORK/.extracted"
fi
B=$CACHE/kernel/build-$HASH
rm -rf "$B"; mkdir -p "$B"
log "configuring (tinyconfig + $FRAG)"
make -C "$WORK" O="$B" -s tinyconfig >&2
"$WORK/scripts/kconfig/merge_config.sh" -m -O "$B" "$B/.config" "$FRAG" >/dev/null
make -C "$WORK" O="$B" -s olddefconfig >&2
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y' "$FRAG" | while read -r l; do grep -qx "$l" "$B/.config" || echo "$l"; done)
[ -z "$missing" ] || log "note: not set in the final config (dependencies): $(echo $missing)"
log "building vmlinux and bzImage with $(nproc) jobs (~8 min on 2 cores)"
t0=$SECONDS
make -C "$WORK" O="$B" -s -j"$(nproc)" vmlinux bzImage >&2
mkdir -p "$OUT.tmp"
cp "$B/vmlinux" "$OUT.tmp/vmlinux"
cp "$B/arch/x86/boot/bzImage" "$OUT.tmp/bzImage"
cp "$B/.config" "$OUT.tmp/config"
strip --strip-debug "$OUT.tmp/vmlinux" 2>/dev/null || true
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
rm -rf "$B"
log "built in $((SECONDS - t0)) s: $(du -h "$OUT/bzImage" | cut -f1) bzImage, $(du -h "$OUT/vmlinux" | cut -f1) vmlinux"
echo "$OUT"
