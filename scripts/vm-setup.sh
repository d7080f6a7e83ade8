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

# shellcheck source=scripts/apt-install.sh
. "$(dirname "$0")/apt-install.sh"
apt_install_missing vm-setup "${APT_PACKAGES[@]}" || exit 1
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found after installing qemu-system-x86"
[ -x /bin/busybox ] || die "/bin/busybox not found after installing busybox-static"
