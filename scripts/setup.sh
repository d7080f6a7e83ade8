#!/usr/bin/env bash
# Install everything cgacct needs to build and test on a Debian 12 host, as root.
# Idempotent: every step checks first and is skipped when already satisfied.
#
#   scripts/setup.sh            install what is missing
#
# Steps: apt packages (LLVM 22 for bpf-linker, bpftool, iproute2, test tools,
# prometheus for the exporter test, docker.io, podman (with netavark, its
# podman0 bridge) and busybox-static for the image, daemonset and containers
# tests: only their binaries are used, services that installing started are
# stopped),
# rust-src for the nightly toolchain (kernel-side build), bpf-linker built
# against LLVM 22, kubernetes-validate (PyPI) in a venv at
# /opt/kubernetes-validate for the deploy/ manifests, bpffs mounted at
# /sys/fs/bpf.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, mount); try: sudo $0"

APT_PACKAGES=(llvm-22-dev libzstd-dev zlib1g-dev bpftool iproute2 iputils-ping procps util-linux python3 strace iptables prometheus
  docker.io podman netavark busybox-static)
# Debian's pip is externally managed: kubernetes-validate goes into a venv.
APT_PACKAGES+=(python3-venv)

# shellcheck source=scripts/apt-install.sh
. "$(dirname "$0")/apt-install.sh"
apt_install_missing setup "${APT_PACKAGES[@]}" || exit 1
# The exporter test runs /usr/bin/prometheus standalone; the containers test
# starts dockerd itself when none runs (and stops it after) and runs podman
# without a service. A daemon that installing started is not wanted.
stop_started_services setup prometheus:prometheus.service \
  docker.io:docker.socket,docker.service,containerd.service \
  podman:podman.socket,podman.service

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

# Validates deploy/*.yaml offline against bundled Kubernetes schemas
# (.ci/run: kubernetes-validate --strict deploy/*.yaml).
KV_VENV=/opt/kubernetes-validate
KV_VERSION=1.37.0
if [ "$("$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null)" = "$KV_VERSION" ]; then
  say "kubernetes-validate $KV_VERSION present in $KV_VENV"
else
  say "installing kubernetes-validate $KV_VERSION into the venv $KV_VENV"
  /usr/bin/python3 -m venv "$KV_VENV" || die "python3 -m venv $KV_VENV failed; is python3-venv installed?"
  "$KV_VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION" \
    || die "pip install kubernetes-validate==$KV_VERSION failed (PyPI reachable?)"
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
