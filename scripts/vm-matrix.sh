#!/usr/bin/env bash
# Runs cgacct's kernel selftests on a matrix of kernels: natively on the
# host's kernel, and in QEMU virtual machines booting Debian's kernel
# packages. Reports pass/fail and run times per kernel. As root.
#
#   scripts/vm-matrix.sh                    host, 6.1 and 6.12 (the full matrix)
#   scripts/vm-matrix.sh 6.1                one kernel
#   scripts/vm-matrix.sh 5.10               Debian 11's kernel (no cgroup iterators: degraded mode)
#   scripts/vm-matrix.sh --tests removal:: 5.10   only the selftests matching a filter
#   scripts/vm-matrix.sh --help
#
# Per VM kernel: the package is fetched from Debian's archive with apt (a
# private apt configuration under the cache; the host's apt sources are not
# touched), unpacked with dpkg-deb, and booted with a small initramfs (busybox,
# the kernel's own modules for virtio, 9p, veth, clsact and cls_bpf, and
# vm/init). The guest mounts the host's root file system read-only over 9p
# and runs the selftests binary built here, at the same absolute paths, with
# fresh proc, sys, tmp, run, cgroup2 and bpffs mounts. Nothing the tests make
# touches the host: it all lives in the guest's kernel.
#
# KVM is used when a probe boot under it works; otherwise (no /dev/kvm, or
# nested KVM failing with an emulation error) everything runs under TCG.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/vm-matrix.sh [--accel auto|kvm|tcg] [--timeout SECONDS] [--no-build] [--tests FILTER] [KERNEL...]

Runs the kernel selftests (cargo test's selftests binary) on each KERNEL and
prints pass/fail and run times per kernel. Default KERNELs: host 5.10 6.1 6.12.

KERNEL is one of:
  host          the running kernel, natively (no VM)
  6.1           Debian 12's kernel (linux-image-amd64 from bookworm and bookworm-security)
  6.12          Debian 12 backports' kernel (linux-image-amd64 from bookworm-backports)
  5.10          Debian 11's kernel (linux-image-amd64 from bullseye and bullseye-security):
                no cgroup iterators, so cgacct runs without net.stat files there
  6.1-cloud     Debian 12's cloud kernel (linux-image-cloud-amd64; has no 9p: reported UNBOOTABLE)
  6.12-cloud    the backports cloud kernel (the same)
  linux-image-<version>-amd64[=<package version>]   an exact package from those suites

  --accel MODE     auto (default): KVM when a probe boot works, else TCG; kvm; tcg
  --timeout S      per-kernel limit for the VM run (default 600 under KVM, 1800 under TCG)
  --no-build       use the existing test build instead of running cargo
  --tests FILTER   run only the selftests whose names contain FILTER (cargo test's
                   filter; several words: any of them); the default is every selftest
  --help           print this help

Environment: CGACCT_VM_CACHE (default target/vm: apt state, kernel packages,
initramfs images, logs), CGACCT_VM_MIRROR (default http://deb.debian.org/debian),
CGACCT_VM_SECURITY_MIRROR (default http://deb.debian.org/debian-security).
Exit status: 0 when every kernel passed, 1 otherwise, 2 on bad usage.
EOF
}

ACCEL=auto TIMEOUT='' BUILD=1 KERNELS=() FILTER=''
# Tests of container runtimes run on the host only: the guest's root is the
# host's, read-only, where no runtime can keep its state. They test the
# runtime, not the kernel, and the host run covers them.
VM_SKIP='--skip daemonset:: --skip containers::'
while [ $# -gt 0 ]; do
  case "$1" in
    --accel) ACCEL=${2:-}; shift 2 ;;
    --timeout) TIMEOUT=${2:-}; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --tests) FILTER=${2:-}; [ -n "$FILTER" ] || { printf 'vm-matrix: --tests needs a filter\n' >&2; exit 2; }; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) printf 'vm-matrix: unknown option: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
    *) KERNELS+=("$1"); shift ;;
  esac
done
case "$ACCEL" in auto | kvm | tcg) ;; *) printf 'vm-matrix: --accel must be auto, kvm or tcg\n' >&2; exit 2 ;; esac
[[ -z "$TIMEOUT" || "$TIMEOUT" =~ ^[0-9]+$ ]] || { printf 'vm-matrix: --timeout needs seconds\n' >&2; exit 2; }
[[ "$FILTER" =~ ^[A-Za-z0-9_:\ ]*$ ]] || { printf 'vm-matrix: --tests takes test name words (letters, digits, _ and ::)\n' >&2; exit 2; }
[ ${#KERNELS[@]} -gt 0 ] || KERNELS=(host 5.10 6.1 6.12)

say() { printf '\n==> %s\n' "$*"; }
info() { printf 'vm-matrix: %s\n' "$*"; }
die() { printf 'vm-matrix: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (the host run needs root; apt and QEMU too); try: sudo $0"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CACHE=${CGACCT_VM_CACHE:-$REPO/target/vm}
MIRROR=${CGACCT_VM_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${CGACCT_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
mkdir -p "$CACHE"/{logs,kernels,debs,initramfs}
CACHE=$(cd "$CACHE" && pwd)
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"

# Everything this run starts in the background, and its scratch files.
QEMU_PID='' TAIL_PID='' SCRATCH=''
cleanup() {
  if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null || true; fi
  if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi
  if [ -n "$SCRATCH" ]; then rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
SCRATCH=$(mktemp -d /tmp/cgacct-vm.XXXXXX)

# ---- setup and build ----
bash scripts/setup.sh
bash scripts/vm-setup.sh
TESTBIN=''
if [ "$BUILD" -eq 1 ]; then
  say "building the selftests (cargo test --no-run)"
  cargo test --no-run --message-format=json >"$SCRATCH/build.json" || die "cargo test --no-run failed"
fi
# The newest selftests binary: CARGO_BIN_EXE_cgacct-pin is baked into it.
TESTBIN=$(find "$REPO/target/debug/deps" -maxdepth 1 -type f -executable -name 'selftests-*' \
  -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2-)
[ -n "$TESTBIN" ] || die "no selftests binary in target/debug/deps; run without --no-build"
info "selftests binary: $TESTBIN"

# ---- kernels from Debian's archive ----
APT_DIR="$CACHE/apt"
apt_opts() {
  printf '%s\n' -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o "Dir::Etc::SourceParts=$APT_DIR/sources.list.d" \
    -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" \
    -o "Dir::Etc::Preferences=$APT_DIR/preferences" -o "Dir::Etc::PreferencesParts=$APT_DIR/preferences.d" \
    -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1"
}
APT_READY=0
apt_ready() {
  [ "$APT_READY" -eq 1 ] && return 0
  mkdir -p "$APT_DIR"/{sources.list.d,preferences.d,lists/partial,cache/archives/partial}
  local key=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$key" ] || die "$key is missing; install debian-archive-keyring"
  cat >"$APT_DIR/sources.list" <<EOF
deb [signed-by=$key] $MIRROR bookworm main
deb [signed-by=$key] $MIRROR bookworm-backports main
deb [signed-by=$key] $SECURITY_MIRROR bookworm-security main
deb [signed-by=$key] $MIRROR bullseye main
deb [signed-by=$key] $SECURITY_MIRROR bullseye-security main
EOF
  # The stamp names the suites: a list made before a suite was added is stale.
  local stamp="$APT_DIR/lists/updated-bookworm-bullseye"
  if [ -z "$(find "$stamp" -mmin -720 2>/dev/null)" ]; then
    info "apt-get update (private lists in $APT_DIR)"
    local opts
    mapfile -t opts < <(apt_opts)
    apt-get "${opts[@]}" update -qq || die "apt-get update for bookworm, bookworm-backports, bookworm-security, bullseye, bullseye-security failed; check the network or set CGACCT_VM_MIRROR"
    touch "$stamp"
  fi
  APT_READY=1
}

# Sets KPKG (package), KVERSION (package version), KDIR (unpacked), KREL (uname -r).
fetch_kernel() {
  local spec=$1 meta='' series='' pkg='' version='' opts line
  case "$spec" in
    6.1) meta=linux-image-amd64 ;;
    5.10) meta=linux-image-amd64 series=5.10 ;;
    6.12) meta=linux-image-amd64/bookworm-backports ;;
    6.1-cloud) meta=linux-image-cloud-amd64 ;;
    6.12-cloud) meta=linux-image-cloud-amd64/bookworm-backports ;;
    linux-image-*=*) pkg=${spec%%=*} version=${spec#*=} ;;
    linux-image-*) pkg=$spec ;;
    *) die "unknown kernel '$spec' (see --help)" ;;
  esac
  apt_ready
  mapfile -t opts < <(apt_opts)
  if [ -n "$meta" ]; then
    # The metapackage's dependency names the kernel package and version.
    if [ -n "$series" ]; then
      # Every version of the metapackage (bullseye's and bullseye-security's
      # among bookworm's): the newest one depending on a $series kernel.
      line=$(apt-cache "${opts[@]}" show "$meta" 2>/dev/null | sed -n 's/^Depends: //p' \
        | grep -E "^linux-image-${series//./\\.}\.[0-9]+-[0-9]+-amd64 " | sort -V | tail -n1)
    else
      line=$(apt-cache "${opts[@]}" show --no-all-versions "$meta" 2>/dev/null | sed -n 's/^Depends: //p' | head -n1)
    fi
    [[ "$line" =~ ^(linux-image-[^ ,]+)\ \(=\ ([^\)]+)\) ]] || die "cannot resolve $meta to a kernel package (Depends: '$line')"
    pkg=${BASH_REMATCH[1]} version=${BASH_REMATCH[2]}
  elif [ -z "$version" ]; then
    version=$(apt-cache "${opts[@]}" show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1)
    [ -n "$version" ] || die "package $pkg not found in bookworm, bookworm-backports, bookworm-security, bullseye or bullseye-security"
  fi
  KPKG=$pkg KVERSION=$version
  KDIR="$CACHE/kernels/${pkg}_${version}"
  if [ ! -f "$KDIR/.complete" ]; then
    info "downloading $pkg=$version"
    rm -rf "$KDIR"
    (cd "$CACHE/debs" && apt-get "${opts[@]}" download "$pkg=$version" 2>&1 | grep -v 'unsandboxed as root') \
      || die "apt-get download $pkg=$version failed"
    local deb
    deb=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
    [ -n "$deb" ] || die "apt-get download left no ${pkg}_*.deb in $CACHE/debs"
    mkdir -p "$KDIR"
    dpkg-deb -x "$deb" "$KDIR" || die "dpkg-deb -x $deb failed"
    rm -f "$deb"
    local rel
    rel=$(find "$KDIR/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)
    [ -n "$rel" ] || die "$pkg has no lib/modules/<release>"
    depmod -b "$KDIR" "$rel" || die "depmod for $pkg failed"
    touch "$KDIR/.complete"
  fi
  KREL=$(find "$KDIR/lib/modules" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | head -n1)
  [ -f "$KDIR/boot/vmlinuz-$KREL" ] || die "$KDIR/boot/vmlinuz-$KREL missing"
}

# Modules the guest loads, with their dependencies (built-in ones skipped).
# nf_tables and nft_compat: the health selftests drop segments with iptables (nf_tables
# backend) in their own netns.
GUEST_MODULES=(virtio_pci 9pnet_virtio 9p veth sch_ingress cls_bpf nf_tables nft_compat)
# Loaded where the kernel has them as modules: nft_counter is part of nf_tables since
# Linux 6.0, a module before (5.10's iptables rules fail without it: "RULE_APPEND
# failed (No such file or directory)").
GUEST_MODULES_IF_ANY=(nft_counter)

# Builds $CACHE/initramfs/<krel>-<mode>.cpio.gz; prints its path.
build_initramfs() {
  local mode=$1
  local dir="$SCRATCH/initramfs-$KREL-$mode" out="$CACHE/initramfs/$KREL-$mode.cpio.gz" m path base
  rm -rf "$dir"
  mkdir -p "$dir"/{bin,proc,sys,dev,host,lib/modules,etc/cgacct-vm}
  cp /bin/busybox "$dir/bin/busybox"
  cp "$REPO/vm/init" "$dir/init"
  chmod 755 "$dir/init"
  : >"$dir/etc/cgacct-vm/modules"
  if [ "$mode" = test ]; then
    local seen=' '
    for m in "${GUEST_MODULES[@]}" "${GUEST_MODULES_IF_ANY[@]}"; do
      if ! modprobe -d "$KDIR" -S "$KREL" --show-depends "$m" >"$SCRATCH/deps" 2>&1; then
        case " ${GUEST_MODULES_IF_ANY[*]} " in *" $m "*) continue ;; esac
        die "$KPKG has no module $m, which the guest needs: $(tail -n1 "$SCRATCH/deps")"
      fi
      while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        base=$(basename "$path")
        base=${base%.xz} base=${base%.zst} base=${base%.gz}
        case "$seen" in *" $base "*) continue ;; esac
        seen="$seen$base "
        case "$path" in
          *.xz) xz -dc "$path" >"$dir/lib/modules/$base" ;;
          *.zst) zstd -dcq "$path" >"$dir/lib/modules/$base" ;;
          *.gz) gzip -dc "$path" >"$dir/lib/modules/$base" ;;
          *) cp "$path" "$dir/lib/modules/$base" ;;
        esac
        echo "$base" >>"$dir/etc/cgacct-vm/modules"
      done <"$SCRATCH/deps"
    done
  fi
  cat >"$dir/etc/cgacct-vm/env" <<EOF
CGACCT_VM_MODE=$mode
CGACCT_VM_TESTBIN='$TESTBIN'
CGACCT_VM_CWD='$REPO'
CGACCT_VM_TESTARGS='--test-threads=2 --show-output $VM_SKIP $FILTER'
EOF
  (cd "$dir" && find . -print | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$out"
  rm -rf "$dir"
  printf '%s\n' "$out"
}

# What QEMU prints when KVM cannot run the guest (nested KVM here stops with
# an emulation failure, or an assertion on MSRs with -cpu host).
KVM_FAILED='KVM internal error|emulation failure|failed to initialize kvm|Could not access KVM|failed to set MSR|kvm_buf_set_msrs'

# Boots KDIR's kernel with an initramfs under $1 (kvm|tcg), logging the
# serial console to $2, waiting at most $3 s. Returns 0 when the guest
# printed CGACCT_VM_RC=..., 3 when KVM failed (the caller falls back to
# TCG), 4 on timeout, 5 when QEMU exited without a result.
boot() {
  local accel=$1 log=$2 limit=$3 initrd=$4 label=$5
  local -a accel_args
  if [ "$accel" = kvm ]; then
    accel_args=(-accel kvm -cpu host)
  else
    accel_args=(-accel 'tcg,thread=multi' -cpu max)
  fi
  : >"$log"
  qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine pc "${accel_args[@]}" -smp 2 -m 2048 \
    -kernel "$KDIR/boot/vmlinuz-$KREL" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 loglevel=4 rdinit=/init" \
    -serial stdio \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    </dev/null >"$log" 2>&1 &
  QEMU_PID=$!
  if [ -n "$label" ]; then
    tail -n +1 -f --pid="$QEMU_PID" "$log" 2>/dev/null | tr -d '\r' | sed -u "s/^/[$label] /" &
    TAIL_PID=$!
  fi
  local start=$SECONDS status=5
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    if [ "$accel" = kvm ] && grep -qE "$KVM_FAILED" "$log"; then
      status=3
      break
    fi
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      status=4
      break
    fi
    sleep 1
  done
  if kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
  fi
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=''
  if [ -n "$TAIL_PID" ]; then
    wait "$TAIL_PID" 2>/dev/null || true
    TAIL_PID=''
  fi
  if [ "$status" -eq 5 ]; then
    if [ "$accel" = kvm ] && grep -qE "$KVM_FAILED" "$log"; then status=3; fi
    if grep -q 'CGACCT_VM_RC=' "$log"; then status=0; fi
  fi
  return "$status"
}

# Decides KVM or TCG once, with a probe boot of the first VM kernel.
ACCEL_USED='' ACCEL_WHY=''
choose_accel() {
  [ -n "$ACCEL_USED" ] && return 0
  case "$ACCEL" in
    tcg) ACCEL_USED=tcg ACCEL_WHY="--accel tcg"; return 0 ;;
    kvm) ACCEL_USED=kvm ACCEL_WHY="--accel kvm"; return 0 ;;
  esac
  if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    ACCEL_USED=tcg ACCEL_WHY="no usable /dev/kvm"
    return 0
  fi
  local initrd log="$CACHE/logs/kvm-probe.log" rc=0
  initrd=$(build_initramfs probe)
  boot kvm "$log" 30 "$initrd" '' || rc=$?
  if [ "$rc" -eq 0 ] && grep -q 'CGACCT_VM_RC=0' "$log"; then
    ACCEL_USED=kvm ACCEL_WHY="a probe boot under KVM worked"
  else
    ACCEL_USED=tcg
    ACCEL_WHY="a probe boot under KVM failed ($(grep -m1 -E "$KVM_FAILED" "$log" | tr -d '\r' || echo "no result in 30 s")); see $log"
  fi
}

# ---- the matrix ----
ROWS=()
FAILED=0
row() { printf '%-11s %-50s %-6s %-10s %-7s %-6s %7s %8s %8s\n' "$@"; }
record() { ROWS+=("$(row "$@")"); }

# How the selftests saw TC attach: "tcx" or "clsact" (printed by
# tc_modes::the_probed_mode_is_the_one_used).
tc_mode() {
  local line
  line=$(tr -d '\r' <"$1" | grep -m1 -o 'tc attach on this kernel: tc programs attach as [a-zA-Z]*' || true)
  case "$line" in
    *TCX) echo tcx ;;
    *clsact) echo clsact ;;
    *) echo '?' ;;
  esac
}

# Counts "test ... ok" / "... FAILED" lines of a test log.
test_counts() {
  local log=$1 ok bad
  ok=$(tr -d '\r' <"$log" | grep -cE '^(\[[^]]*\] )?test .* \.\.\. ok$' || true)
  bad=$(tr -d '\r' <"$log" | grep -cE '^(\[[^]]*\] )?test .* \.\.\. FAILED$' || true)
  printf '%s/%s' "$ok" "$((ok + bad))"
}

for k in "${KERNELS[@]}"; do
  if [ "$k" = host ]; then
    say "host kernel $(uname -r), natively"
    log="$CACHE/logs/host.log"
    t0=$SECONDS result=pass
    # shellcheck disable=SC2086  # the filter is words
    if ! CGACCT_REQUIRE_KERNEL=1 "$TESTBIN" --test-threads=2 --show-output $FILTER 2>&1 | tee "$log"; then
      result=FAIL FAILED=1
    fi
    record host "$(uname -r)" native "$result" "$(test_counts "$log")" "$(tc_mode "$log")" - "$((SECONDS - t0))" "$((SECONDS - t0))"
    continue
  fi
  say "kernel $k"
  t0=$SECONDS
  fetch_kernel "$k"
  info "$KPKG $KVERSION (uname -r $KREL) in $KDIR"
  choose_accel
  info "accelerator: $ACCEL_USED ($ACCEL_WHY)"
  log="$CACHE/logs/$k.log"
  # In a subshell: a kernel the matrix cannot boot (say, without 9p) is a
  # failed row, not the end of the run.
  if ! initrd=$(build_initramfs test 2>"$SCRATCH/initramfs.err"); then
    cat "$SCRATCH/initramfs.err" >&2
    info "$k: cannot build its initramfs; not run"
    FAILED=1
    record "$k" "$KPKG $KVERSION" - UNBOOTABLE 0/0 - - - "$((SECONDS - t0))"
    continue
  fi
  accel=$ACCEL_USED
  limit=${TIMEOUT:-$([ "$accel" = kvm ] && echo 600 || echo 1800)}
  rc=0
  boot "$accel" "$log" "$limit" "$initrd" "$k" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 4 ] && [ "$accel" = kvm ] && [ "$ACCEL" = auto ]; then
    info "KVM failed during the run ($(grep -m1 -E "$KVM_FAILED" "$log" | tr -d '\r' || echo "no result")); again under TCG"
    ACCEL_USED=tcg ACCEL_WHY="KVM failed during a run"
    accel=tcg limit=${TIMEOUT:-1800} rc=0
    boot tcg "$log" "$limit" "$initrd" "$k" || rc=$?
  fi
  clean=$(tr -d '\r' <"$log")
  boot_s=$(sed -n 's/^cgacct-vm: running .* at uptime \([0-9.]*\) s$/\1/p' <<<"$clean" | head -n1)
  end_s=$(sed -n 's/^cgacct-vm: uptime \([0-9.]*\) s$/\1/p' <<<"$clean" | tail -n1)
  test_s=-
  [ -n "$boot_s" ] && [ -n "$end_s" ] && test_s=$(awk -v a="$boot_s" -v b="$end_s" 'BEGIN { printf "%.1f", b - a }')
  vm_rc=$(sed -n 's/^CGACCT_VM_RC=\([0-9]*\)$/\1/p' <<<"$clean" | tail -n1)
  case "$rc" in
    0) [ "$vm_rc" = 0 ] && result=pass || result=FAIL ;;
    4) result=TIMEOUT ;;
    *) result=NO-RESULT ;;
  esac
  [ "$result" = pass ] || FAILED=1
  [ "$result" = pass ] || info "$k: $result; the guest's console log is $log"
  record "$k" "$KPKG $KVERSION" "$accel" "$result" "$(test_counts "$log")" "$(tc_mode "$log")" "${boot_s:--}" "$test_s" "$((SECONDS - t0))"
done

say "kernel matrix (selftests: $(basename "$TESTBIN"))"
row kernel package accel result passed tc 'boot s' 'tests s' 'total s'
printf '%s\n' "${ROWS[@]}"
info "logs: $CACHE/logs/<kernel>.log; boot s: guest uptime when the tests start; total s: download, boot and tests"
[ "$FAILED" -eq 0 ] || exit 1
