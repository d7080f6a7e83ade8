#!/usr/bin/env bash
# Removes what scripts/demo.sh creates, and nothing else, as root. Needed after
# `scripts/demo.sh --keep`, or if a demo was killed with SIGKILL. Idempotent:
# running it again finds nothing to remove.
#
#   scripts/cleanup.sh
#   scripts/cleanup.sh --help
#
# What it removes, in this order:
#   the pin root of pin-layout.toml (/sys/fs/bpf/cgacct), with `cgacct-pin destroy pin-layout.toml`,
#     only when demo.sh's state file /run/cgacct-demo.state says the demo made it
#     (without the state file the root may be someone else's and is left alone)
#   the demo's netns (named in the state file; without it: every netns named cgacct-demo-<pid>
#     whose demo.sh is not running), which removes the veth peer vethcgd0p with it
#   the veth vethcgd0
#   the cgroup subtree <cgroup2 mount>/cgacct-demo: processes still in it are moved to the
#     cgroup2 root first, then the cgroups are removed deepest first
#   for the container demo (MODE=docker in the state file): its containers cgacct-demo-web,
#     -client, -talker and its image cgacct-demo-busybox:<pid>, each only if it carries the
#     label io.cgacct.demo with the demo's token; a dockerd the demo started (by its PID, checked
#     against its start time), and the docker0 bridge and /docker cgroups that dockerd made
#   the demo's scratch directory /tmp/cgacct-demo.* named in the state file, and the state file
# Processes still in the demo's cgroups (only after a SIGKILLed demo) are moved, not
# killed: they are the demo's bounded senders and echo server and end by themselves.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/cleanup.sh [--help]

Removes, as root, what scripts/demo.sh creates: the cgacct pin root via
`cgacct-pin destroy pin-layout.toml` (only when /run/cgacct-demo.state says the
demo made it), the netns cgacct-demo-<pid>, the veth vethcgd0, the cgroup
subtree <cgroup2 mount>/cgacct-demo (moving any processes left in it to the
cgroup2 root) and the state file. After the container demo: its containers and
image (only those with its label io.cgacct.demo=<token>), the dockerd it
started (by PID), and the docker0 bridge and /docker cgroups that dockerd
made. Safe to run more than once.
EOF
}

for arg in "$@"; do
  case "$arg" in
    -h | --help) usage; exit 0 ;;
    *) printf 'cleanup: unknown argument: %s\n\n' "$arg" >&2; usage >&2; exit 2 ;;
  esac
done

info() { printf 'cleanup: %s\n' "$*"; }
die() { printf 'cleanup: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (netns, veth, cgroups, BPF); try: sudo $0"

# shellcheck source=scripts/demo-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"

# Whether pid $1 is a running scripts/demo.sh.
demo_running() {
  [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'demo\.sh'
}

# ---- the state file of demo.sh (plain KEY=value lines; read, never sourced) ----
S_PID='' S_NETNS='' S_BPF_ROOT='' S_TMP='' S_MODE=''
D_DOCKER='' D_TOKEN='' D_IMAGE='' D_DOCKERD_PID='' D_DOCKERD_START='' D_DOCKER0_MADE=0 D_CGROUPS_MADE='' D_RUNDIR_MADE=0
if [ -f "$STATE" ]; then
  while IFS='=' read -r key value; do
    case "$key" in
      PID) S_PID=$value ;;
      MODE) S_MODE=$value ;;
      NETNS) S_NETNS=$value ;;
      BPF_ROOT) S_BPF_ROOT=$value ;;
      TMP) S_TMP=$value ;;
      DOCKER) D_DOCKER=$value ;;
      TOKEN) D_TOKEN=$value ;;
      IMAGE) D_IMAGE=$value ;;
      DOCKERD_PID) D_DOCKERD_PID=$value ;;
      DOCKERD_START) D_DOCKERD_START=$value ;;
      DOCKER0_MADE) D_DOCKER0_MADE=$value ;;
      CGROUPS_MADE) D_CGROUPS_MADE=$value ;;
      RUNDIR_MADE) D_RUNDIR_MADE=$value ;;
    esac
  done <"$STATE"
  [[ "$S_PID" =~ ^[0-9]+$ ]] || S_PID=''
  if [ "$S_MODE" = docker ]; then
    [[ "$D_DOCKER" =~ ^/[A-Za-z0-9/._-]+$ ]] && [ -x "$D_DOCKER" ] || D_DOCKER=$(docker_cli)
    [[ "$D_TOKEN" =~ ^[0-9]+-[0-9]+$ ]] || D_TOKEN=''
    [[ "$D_IMAGE" =~ ^$PREFIX-busybox:[0-9]+$ ]] || D_IMAGE=''
    [[ "$D_DOCKERD_PID" =~ ^[0-9]+$ ]] && [[ "$D_DOCKERD_START" =~ ^[0-9]+$ ]] || D_DOCKERD_PID='' D_DOCKERD_START=''
    [ -n "$D_TOKEN" ] || info "no valid TOKEN in $STATE: the demo's containers and image cannot be told from others; leaving them"
  fi
  [[ "$S_NETNS" =~ ^$PREFIX-[0-9]+$ ]] || { [ -z "$S_NETNS" ] || info "ignoring odd netns name in $STATE: $S_NETNS"; S_NETNS=''; }
  info "state file $STATE: demo pid ${S_PID:-?}, netns ${S_NETNS:-?}, pin root ${S_BPF_ROOT:-?}"
  if demo_running "$S_PID" && grep -q '^KEPT=0' "$STATE"; then
    die "demo.sh (pid $S_PID) is still running and removes its objects itself when it ends; not touching them"
  fi
fi

removed=0 left=0

# ---- the pin root ----
BPF_ROOT=$(sed -n 's/^[[:space:]]*root[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$LAYOUT" 2>/dev/null | head -n1)
BPF_ROOT=${BPF_ROOT:-/sys/fs/bpf/cgacct}
if [ -n "$S_BPF_ROOT" ] && [ "$S_BPF_ROOT" != "$BPF_ROOT" ]; then
  info "the demo pinned at $S_BPF_ROOT but $LAYOUT now says $BPF_ROOT; destroying $S_BPF_ROOT"
  BPF_ROOT=$S_BPF_ROOT
fi
if [ ! -e "$BPF_ROOT" ]; then
  :
elif [ ! -f "$STATE" ]; then
  info "leaving $BPF_ROOT alone: no $STATE, so the demo did not make it (remove it with 'cgacct-pin destroy' if it is yours)"
elif [ ! -x "$BIN" ]; then
  info "cannot remove $BPF_ROOT: $BIN does not exist; build it with 'cargo build --release' in $REPO and run this again"
  left=1
else
  if out=$("$BIN" destroy --root "$BPF_ROOT" "$LAYOUT" 2>&1) && [ ! -e "$BPF_ROOT" ]; then
    info "removed $BPF_ROOT with cgacct-pin destroy: $(tail -n 1 <<<"$out")"
    removed=$((removed + 1))
  else
    printf '%s\n' "$out" >&2
    info "could not remove $BPF_ROOT with $BIN destroy"
    left=1
  fi
fi

# ---- the container demo: containers, image, a dockerd it started ----
if [ "$S_MODE" = docker ]; then
  docker_demo_remove || left=1
  removed=$((removed + D_REMOVED))
fi

# ---- the netns (and with it the veth peer) ----
namespaces=()
if [ -n "$S_NETNS" ]; then
  namespaces+=("$S_NETNS")
elif [ ! -f "$STATE" ]; then
  # No state file: demo namespaces by their name, unless their demo.sh still runs.
  while read -r ns _; do
    [[ "$ns" =~ ^$PREFIX-([0-9]+)$ ]] || continue
    if demo_running "${BASH_REMATCH[1]}"; then
      info "leaving netns $ns alone: its demo.sh (pid ${BASH_REMATCH[1]}) is still running"
      continue
    fi
    namespaces+=("$ns")
  done < <(ip netns list 2>/dev/null)
fi
veth_before=0
ip link show dev "$VETH" >/dev/null 2>&1 && veth_before=1
for ns in "${namespaces[@]}"; do
  ip netns list 2>/dev/null | grep -q "^$ns\( \|$\)" || continue
  if ip netns del "$ns"; then
    info "removed netns $ns"
    removed=$((removed + 1))
  else
    left=1
  fi
done

# ---- the host side of the veth pair (gone already if the netns went) ----
if ip link show dev "$VETH" >/dev/null 2>&1; then
  if ip link del "$VETH"; then
    info "removed interface $VETH"
    removed=$((removed + 1))
  else
    left=1
  fi
elif [ "$veth_before" -eq 1 ]; then
  info "removed interface $VETH (with its peer, when the netns went)"
  removed=$((removed + 1))
fi

# ---- the cgroup subtree ----
CGMNT=$(cgroup2_mount)
if [ -z "$CGMNT" ]; then
  info "no cgroup2 mount in /proc/self/mountinfo; no cgroups to remove"
elif [ -d "$CGMNT/$PREFIX" ]; then
  # Deepest first (find -depth lists children before their parent).
  while IFS= read -r -d '' dir; do
    while read -r pid; do
      [ -n "$pid" ] || continue
      if echo "$pid" >"$CGMNT/cgroup.procs" 2>/dev/null; then
        info "moved pid $pid ($(tr '\0\n' '  ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-50)) from ${dir#"$CGMNT"} to the cgroup2 root"
      fi
    done <"$dir/cgroup.procs"
    if rmdir "$dir"; then
      info "removed cgroup ${dir#"$CGMNT"}"
      removed=$((removed + 1))
    else
      left=1
    fi
  done < <(find "$CGMNT/$PREFIX" -depth -type d -print0)
fi

# ---- the demo's scratch directory (left behind only if the demo was killed) ----
if [[ "$S_TMP" =~ ^/tmp/$PREFIX\.[A-Za-z0-9]+$ ]] && [ -d "$S_TMP" ]; then
  rm -rf "$S_TMP"
  info "removed $S_TMP"
  removed=$((removed + 1))
fi

# ---- the state file ----
if [ "$left" -ne 0 ]; then
  info "some objects are left (see above); keeping $STATE"
  exit 1
fi
if [ -f "$STATE" ]; then
  rm -f "$STATE"
  info "removed $STATE"
  removed=$((removed + 1))
fi
if [ "$removed" -eq 0 ]; then
  info "nothing to remove"
else
  info "done: removed $removed objects"
fi
