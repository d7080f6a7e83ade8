#!/usr/bin/env bash
# Install everything cgacct needs to build and test on a Debian 12 host, as root.
# Idempotent: every step checks first and is skipped when already satisfied.
#
#   scripts/setup.sh            install what is missing
#
# Steps: apt packages (LLVM 22 for bpf-linker, bpftool, iproute2, test tools,
# prometheus for the exporter test: only its binary is used),
# rust-src for the nightly toolchain (kernel-side build), bpf-linker built
# against LLVM 22, bpffs mounted at /sys/fs/bpf.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mount); try: sudo $0"

APT_PACKAGES=(llvm-22-dev libzstd-dev zlib1g-dev bpftool iproute2 iputils-ping procps util-linux python3 strace prometheus)

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
  # The tests run /usr/bin/prometheus on their own with a temporary config;
  # the package's service is not needed. Stop it if installing just started it.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null \
     && systemctl is-active --quiet prometheus 2>/dev/null; then
    say "stopping and disabling the prometheus service the package started (only its binary is used)"
    systemctl disable --now prometheus >/dev/null 2>&1 || say "could not disable prometheus.service; it keeps running"
  fi
else
  say "apt packages present"
fi

command -v rustup >/dev/null || die "rustup not found; install Rust with rustup first"
rustup toolchain list | grep -q '^nightly' || { say "installing nightly toolchain"; rustup toolchain install nightly --profile minimal || die "rustup toolchain install nightly failed"; }
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
  say "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly || die "rustup component add rust-src --toolchain nightly failed"
else
  say "nightly rust-src present"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v bpf-linker >/dev/null; then
  say "building bpf-linker against LLVM 22 (about a minute)"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker --no-default-features --features llvm-22 \
    || die "cargo install bpf-linker failed; is llvm-22-dev installed?"
else
  say "bpf-linker present: $(bpf-linker --version 2>/dev/null | head -n1)"
fi

if ! grep -q ' - bpf ' /proc/self/mountinfo; then
  say "mounting bpffs at /sys/fs/bpf"
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf || die "mount -t bpf bpf /sys/fs/bpf failed; does the kernel have CONFIG_BPF_SYSCALL?"
else
  say "bpffs mounted"
fi
grep -q ' - cgroup2 ' /proc/self/mountinfo || die "no cgroup2 mount found in /proc/self/mountinfo; cgacct needs cgroup v2"
say "done"
