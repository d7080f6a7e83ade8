#!/usr/bin/env bash
# Installs what scripts/vm-matrix.sh needs on a Debian 12 host, as root:
# QEMU (qemu-system-x86), a static busybox for the initramfs, and kmod
# (depmod/modprobe --show-depends to resolve kernel module dependencies).
# Idempotent: packages already installed are skipped.
#
#   scripts/vm-setup.sh
set -euo pipefail

say() { printf 'vm-setup: %s\n' "$*"; }
die() { printf 'vm-setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get); try: sudo $0"

APT_PACKAGES=(qemu-system-x86 busybox-static kmod xz-utils zstd gzip)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed; check the network and /etc/apt/sources.list.d"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
else
  say "apt packages present: ${APT_PACKAGES[*]}"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"
[ -x /bin/busybox ] || die "/bin/busybox not found after installing busybox-static"
