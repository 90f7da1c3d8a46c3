#!/usr/bin/env bash
# deps.sh installs the Debian packages i2kit's tests and demo need, only those missing.
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v go >/dev/null || { echo "deps.sh: Go is required (https://go.dev/dl); this machine's image has it in /usr/local/go" >&2; exit 1; }
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
# raw-bios / raw-efi disks, built without loop mounts, and the firmware that boots them in tests
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v syslinux >/dev/null || need+=(syslinux)
[ -e /usr/lib/syslinux/mbr/gptmbr.bin ] || need+=(syslinux-common)
[ -e /usr/lib/systemd/boot/efi/linuxx64.efi.stub ] || need+=(systemd-boot-efi)
[ -e /usr/share/ovmf/OVMF.fd ] || need+=(ovmf)
command -v objcopy >/dev/null || need+=(binutils)
# a static busybox: the example images carry it so that kubectl exec finds a shell
[ -x /bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "deps.sh: missing ${need[*]}; run as root to install them" >&2; exit 1; fi
  echo "deps.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
