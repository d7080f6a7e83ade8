#!/usr/bin/env bash
# End-to-end demo of cgacct, as root. Where Docker can be used (a dockerd
# answers, or one can be started here), the container demo
# (scripts/demo-docker.sh): three busybox containers on docker0, a web
# server, a client pulling from it and a background talker, a layout of the
# demo's own, and their net.stat files, `status` and `top --once` with the
# containers' names. Otherwise, or with CGACCT_DEMO=netns, the netns demo:
# it builds a small world under the prefix "cgacct-demo", applies the DEFAULT
# pin layout, sends a known number of UDP datagrams from processes in the
# demo's cgroups and shows the counters.
#
#   scripts/demo.sh                     run the demo and remove everything it made
#   scripts/demo.sh --keep              leave it all in place; remove later with scripts/cleanup.sh
#   CGACCT_DEMO=netns scripts/demo.sh   the netns demo, even where Docker runs
#   CGACCT_DEMO=docker scripts/demo.sh  the container demo, or fail (no fallback)
#   scripts/demo.sh --help
#
# What the netns demo creates (and refuses to run if any of it already exists):
#   <cgroup2 mount>/cgacct-demo/{web.slice/{nginx.scope,api.scope},db.slice/postgres.scope,sink.scope}
#   netns cgacct-demo-<pid>, veth pair vethcgd0 (host) <-> vethcgd0p (in the netns),
#   10.213.0.1/30 + fd00:213::1/64 on the host side, 10.213.0.2/30 + fd00:213::2/64 in the netns
#   the pin root of pin-layout.toml (/sys/fs/bpf/cgacct), via `cgacct-pin apply pin-layout.toml`
#   the state file /run/cgacct-demo.state (what scripts/cleanup.sh removes), a scratch dir /tmp/cgacct-demo.*
#
# The default layout attaches cgroup_skb at the cgroup2 root (it counts every
# socket of the host while the demo runs) and TC to every interface matching
# veth* in this network namespace, not only to vethcgd0.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/demo.sh [--keep] [--help]

Runs cgacct end to end as root: scripts/setup.sh, cargo build --release, then
one of two demos.

The container demo, where Docker can be used (a dockerd answers on its socket,
or `dockerd` can be started: the demo then starts it, with --iptables=false,
and stops it by its PID at the end): an image imported offline from
busybox-static (cgacct-demo-busybox:<pid>), three containers with compose
labels on docker0 -- cgacct-demo-web (busybox httpd, 5 files of 1 MiB, and a
UDP sink), cgacct-demo-client (pulls the files with wget), cgacct-demo-talker
(UDP to web, 50 datagrams/s for 8 s) -- a layout of its own (root
/sys/fs/bpf/cgacct, TC on the three veths with owners discovered,
cgroup_skb at /, net.stat for /docker/**), then `cgacct-pin top --once`, each
container's net.stat, `cgacct-pin status` (names from Docker) and a check
that the counters cover the bytes served and the datagrams sent.

The netns demo, otherwise: a demo world (cgroups under <cgroup2
mount>/cgacct-demo, netns cgacct-demo-<pid>, veth vethcgd0 with
10.213.0.0/30 and fd00:213::/64), `cgacct-pin apply pin-layout.toml`,
bounded UDP traffic from the demo cgroups to an echo server in the netns,
and the resulting net.stat files, map entries, links and status.

  --keep   do not remove anything at the end; remove it later with scripts/cleanup.sh
  --help   print this help

Environment:
  CGACCT_DEMO=auto    (default) the container demo where Docker can be used,
                      else the netns demo, saying why
  CGACCT_DEMO=netns   the netns demo, even where Docker runs
  CGACCT_DEMO=docker  the container demo; fail if Docker cannot be used

Without --keep everything the demo made is removed on every exit path
(success, error, Ctrl-C, SIGTERM), including the pin root /sys/fs/bpf/cgacct,
and for the container demo its containers, its image and a dockerd it
started. Containers and images without the demo's label are never touched.
The demo refuses to run if /sys/fs/bpf/cgacct or any of its own objects exist.
EOF
}

KEEP=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'demo: unknown argument: %s\n\n' "$arg" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '\n==> %s\n' "$*"; }
info() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

MODE=${CGACCT_DEMO:-auto}
case "$MODE" in
  auto | docker | netns) ;;
  *) printf 'demo: CGACCT_DEMO must be auto, docker or netns, not %s\n\n' "$MODE" >&2; usage >&2; exit 2 ;;
esac

[ "$(id -u)" -eq 0 ] || die "must run as root (netns, veth, cgroups, BPF); try: sudo $0"

# shellcheck source=scripts/demo-common.sh
. "$(dirname "${BASH_SOURCE[0]}")/demo-common.sh"
NETNS="$PREFIX-$$"
PEER=vethcgd0p
HOST4=10.213.0.1 PEER4=10.213.0.2 NET4=10.213.0.0/30
HOST6=fd00:213::1 PEER6=fd00:213::2 NET6=fd00:213::/64
PORT=40213
# Parents before children; the cleanup removes them in reverse order.
CGROUPS=("$PREFIX" "$PREFIX/web.slice" "$PREFIX/web.slice/nginx.scope" "$PREFIX/web.slice/api.scope"
  "$PREFIX/db.slice" "$PREFIX/db.slice/postgres.scope" "$PREFIX/sink.scope")
[ -d "$HOME/.cargo/bin" ] && PATH="$HOME/.cargo/bin:$PATH"

[ -f "$LAYOUT" ] || die "layout not found: $LAYOUT"
# The layout's root (the default layout says /sys/fs/bpf/cgacct).
BPF_ROOT=$(sed -n 's/^[[:space:]]*root[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$LAYOUT" | head -n1)
BPF_ROOT=${BPF_ROOT:-/sys/fs/bpf/cgacct}

# The cgroup2 mount point from /proc/self/mountinfo: the field after " - " is
# the filesystem type, the 5th field the mount point.
# Prints why the demo must not run; prints nothing when it may.
conflicts() {
  local mnt=$1 ns
  [ -e "$BPF_ROOT" ] && echo "$BPF_ROOT exists (someone else's cgacct pins?); remove it with 'cgacct-pin destroy' if it is yours"
  [ -e "$STATE" ] && echo "$STATE exists (a demo kept with --keep?); run scripts/cleanup.sh first"
  [ -n "$mnt" ] && [ -e "$mnt/$PREFIX" ] && echo "cgroup $mnt/$PREFIX exists; run scripts/cleanup.sh first"
  ip link show dev "$VETH" >/dev/null 2>&1 && echo "interface $VETH exists; run scripts/cleanup.sh first"
  while read -r ns _; do
    case "$ns" in "$PREFIX"-*) echo "netns $ns exists; run scripts/cleanup.sh first" ;; esac
  done < <(ip netns list 2>/dev/null)
  [ -n "$(ip -4 addr show to "$NET4" 2>/dev/null)" ] && echo "addresses in $NET4 are already in use on this host"
  [ -n "$(ip -6 addr show to "$NET6" 2>/dev/null)" ] && echo "addresses in $NET6 are already in use on this host"
  return 0
}

refuse_if_conflicts() {
  local why
  why=$(conflicts "$(cgroup2_mount)")
  if [ -n "$why" ]; then
    printf 'demo: refusing to run, nothing was created:\n' >&2
    printf '  - %s\n' "${why//$'\n'/$'\n'  - }" >&2
    exit 1
  fi
}

# Refuse before touching anything; checked again right before creating.
refuse_if_conflicts

say "scripts/setup.sh (packages, bpf-linker, rust-src, bpffs)"
"$REPO/scripts/setup.sh"

TMP=$(mktemp -d /tmp/cgacct-demo.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
say "cargo build --release (log: $TMP/build.log)"
if ! (cd "$REPO" && cargo build --release) >"$TMP/build.log" 2>&1; then
  tail -n 30 "$TMP/build.log" >&2
  die "cargo build --release failed (last lines above)"
fi
tail -n 1 "$TMP/build.log"
[ -x "$BIN" ] || die "build succeeded but $BIN is missing"

CGMNT=$(cgroup2_mount)
[ -n "$CGMNT" ] || die "no cgroup2 mount in /proc/self/mountinfo"
refuse_if_conflicts

# ---- the container demo, where Docker can be used (it exits when done) ----
if [ "$MODE" != netns ]; then
  # shellcheck source=scripts/demo-docker.sh
  . "$REPO/scripts/demo-docker.sh"
  docker_demo
  say "Docker cannot be used here ($DEMO_FALLBACK): the netns demo instead"
else
  say "CGACCT_DEMO=netns: the netns demo"
fi

# ---- from here on everything created is recorded and removed on exit ----
STATE_WRITTEN=0 NETNS_MADE=0 VETH_MADE=0 APPLIED=0
MADE_CGROUPS=()
PIDS=()

cleanup() {
  local rc=$? pid i cg left=0
  trap - EXIT INT TERM
  set +e
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null
      info "stopped pid $pid"
    fi
    wait "$pid" 2>/dev/null
  done
  if [ "$KEEP" -eq 1 ]; then
    if [ "$STATE_WRITTEN" -eq 1 ]; then
      sed -i 's/^KEPT=.*/KEPT=1/' "$STATE"
      say "kept everything (--keep); to remove it run:"
      printf '  %s\n' "$REPO/scripts/cleanup.sh"
    fi
    rm -rf "$TMP"
    exit "$rc"
  fi
  say "cleaning up"
  if [ "$APPLIED" -eq 1 ] && [ -e "$BPF_ROOT" ]; then
    "$BIN" destroy "$LAYOUT" || true
    if [ -e "$BPF_ROOT" ]; then info "could not remove $BPF_ROOT"; left=1; else info "removed $BPF_ROOT"; fi
  fi
  if [ "$NETNS_MADE" -eq 1 ]; then
    if ip netns del "$NETNS"; then info "removed netns $NETNS"; else left=1; fi
  fi
  if [ "$VETH_MADE" -eq 1 ]; then
    # Deleting the netns deletes the peer, and with it the host side.
    if ! ip link show dev "$VETH" >/dev/null 2>&1; then
      info "removed veth pair $VETH <-> $PEER"
    elif ip link del "$VETH"; then
      info "removed veth pair $VETH <-> $PEER"
    else
      left=1
    fi
  fi
  for ((i = ${#MADE_CGROUPS[@]} - 1; i >= 0; i--)); do
    cg=${MADE_CGROUPS[i]}
    if rmdir "$CGMNT/$cg"; then info "removed cgroup $cg"; else left=1; fi
  done
  if [ "$left" -eq 0 ]; then
    [ "$STATE_WRITTEN" -eq 1 ] && rm -f "$STATE"
    info "nothing left behind"
  else
    info "some objects could not be removed; run $REPO/scripts/cleanup.sh"
    [ "$rc" -eq 0 ] && rc=1
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "creating the demo world (cgroup2 at $CGMNT)"
cat >"$STATE" <<EOF
# written by $REPO/scripts/demo.sh; read by scripts/cleanup.sh
PID=$$
KEPT=0
NETNS=$NETNS
VETH=$VETH
CGROUP=$PREFIX
CGROUP_MOUNT=$CGMNT
BPF_ROOT=$BPF_ROOT
TMP=$TMP
EOF
STATE_WRITTEN=1

for cg in "${CGROUPS[@]}"; do
  mkdir "$CGMNT/$cg"
  MADE_CGROUPS+=("$cg")
  info "cgroup /$cg (id $(stat -c %i "$CGMNT/$cg"))"
done

ip netns add "$NETNS"
NETNS_MADE=1
ip link add "$VETH" type veth peer name "$PEER" netns "$NETNS"
VETH_MADE=1
ip addr add "$HOST4/30" dev "$VETH"
ip -6 addr add "$HOST6/64" dev "$VETH" nodad
ip link set "$VETH" up
ip -n "$NETNS" addr add "$PEER4/30" dev "$PEER"
ip -n "$NETNS" -6 addr add "$PEER6/64" dev "$PEER" nodad
ip -n "$NETNS" link set "$PEER" up
ip -n "$NETNS" link set lo up
info "netns $NETNS; $VETH $HOST4 $HOST6 <-> $PEER $PEER4 $PEER6 (in $NETNS)"

others=$(ip -o link show type veth | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' | grep -v -x "$VETH" | grep '^veth' || true)
[ -z "$others" ] || info "note: the default layout also hooks TC on these veth* interfaces: $(echo "$others" | tr '\n' ' ')"

say "$BIN apply $LAYOUT"
APPLIED=1
"$BIN" apply "$LAYOUT"

# ---- traffic ----
# An echo server in the netns, itself in cgroup sink.scope: it answers every
# datagram to its sender, so the senders count rx as well as tx.
RECEIVER='
import select, socket, sys
port, total = int(sys.argv[1]), int(sys.argv[2])
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s4.bind((sys.argv[3], port))
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s6.bind((sys.argv[4], port))
print("ready", flush=True)
n = 0
while n < total:
    ready, _, _ = select.select([s4, s6], [], [], 30)
    if not ready:
        break
    for s in ready:
        data, addr = s.recvfrom(65536)
        s.sendto(data, addr)
        n += 1
print("echo server in sink.scope: echoed %d of %d datagrams" % (n, total), flush=True)
'
SENDER='
import socket, sys
name, addr, port, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
echoed, waiting = 0, True
for _ in range(count):
    s.sendto(b"x" * size, (addr, port))
    if waiting:
        try:
            s.recv(65536)
            echoed += 1
        except socket.timeout:
            waiting = False
print("%-15s sent %3d x %4d B to %-12s %3d echoed" % (name, count, size, addr, echoed), flush=True)
'
# cgroup (below $PREFIX), family, datagrams, payload bytes
TRAFFIC=("web.slice/nginx.scope 4 100 200" "web.slice/api.scope 4 60 1000" "db.slice/postgres.scope 6 80 300")
total=0
for t in "${TRAFFIC[@]}"; do
  read -r _ _ count _ <<<"$t"
  total=$((total + count))
done

say "traffic: UDP to an echo server in $NETNS ($PEER4 and [$PEER6] port $PORT)"
(
  echo "$BASHPID" >"$CGMNT/$PREFIX/sink.scope/cgroup.procs"
  exec ip netns exec "$NETNS" python3 -c "$RECEIVER" "$PORT" "$total" "$PEER4" "$PEER6"
) >"$TMP/receiver.out" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do
  grep -q ready "$TMP/receiver.out" && break
  kill -0 "${PIDS[0]}" 2>/dev/null || break
  sleep 0.1
done
grep -q ready "$TMP/receiver.out" || { cat "$TMP/receiver.out" >&2; die "the echo server in $NETNS did not start"; }

for t in "${TRAFFIC[@]}"; do
  read -r cg fam count size <<<"$t"
  if [ "$fam" = 6 ]; then addr=$PEER6; else addr=$PEER4; fi
  (
    echo "$BASHPID" >"$CGMNT/$PREFIX/$cg/cgroup.procs"
    exec python3 -c "$SENDER" "${cg##*/}" "$addr" "$PORT" "$count" "$size"
  )
done
wait "${PIDS[0]}" || true
PIDS=()
grep -v '^ready$' "$TMP/receiver.out" || true

# ---- what the kernel counted ----
# The stats file of a cgroup path ("" = the cgroup2 root). Dotted names are
# mirrored as they are; older kernels get them escaped as %2e.
stat_file() {
  local rel=$1 esc
  if [ -z "$rel" ]; then echo "$BPF_ROOT/net.stat"; return; fi
  if [ -e "$BPF_ROOT/$rel/net.stat" ]; then echo "$BPF_ROOT/$rel/net.stat"; return; fi
  esc=${rel//%/%25}
  echo "$BPF_ROOT/${esc//./%2e}/net.stat"
}
stat_value() { awk -v k="$2" '$1 == k { print $2 }' "$(stat_file "$1")"; }

for cg in "${CGROUPS[@]}"; do
  say "cat $(stat_file "$cg")"
  cat "$(stat_file "$cg")"
done

say "cgroup_stats entries of the demo cgroups (bpftool map lookup pinned $BPF_ROOT/maps/cgroup_stats)"
le_bytes() {
  local v=$1 i out=()
  for i in 0 1 2 3 4 5 6 7; do out+=("$(printf '%02x' $(((v >> (8 * i)) & 255)))"); done
  echo "${out[*]}"
}
for cg in "${CGROUPS[@]}"; do
  id=$(stat -c %i "$CGMNT/$cg")
  printf -- '--- /%s (cgroup id %s)\n' "$cg" "$id"
  # shellcheck disable=SC2046 # the key is eight separate hex bytes
  if entry=$(bpftool map lookup pinned "$BPF_ROOT/maps/cgroup_stats" key hex $(le_bytes "$id") 2>/dev/null); then
    echo "$entry"
  else
    echo "no entry: no socket of this cgroup itself sent or received (net.stat sums its subtree)"
  fi
done

say "ip -d link show $VETH"
ip -d link show "$VETH"
say "bpftool net show dev $VETH"
net_show=$(bpftool net show dev "$VETH" 2>&1 || true)
echo "$net_show"
case "$net_show" in
  *tcx*) ;;
  *) info "note: $(bpftool version 2>/dev/null | head -n1) predates TCX; cgacct's TC links show as 'type 11' below" ;;
esac
say "bpftool link show | head -n 30"
bpftool link show | head -n 30 || true
say "$BIN status | head -n 40"
"$BIN" status | head -n 40 || true

# ---- check the counts against what was sent ----
say "checking the counters against the traffic sent"
bad=0
check() { # cgroup key expected
  local got
  got=$(stat_value "$1" "$2")
  if [ "$got" = "$3" ]; then
    printf '  ok        /%-32s %-17s %s\n' "$1" "$2" "$got"
  else
    printf '  MISMATCH  /%-32s %-17s %s, expected %s\n' "$1" "$2" "${got:-<missing>}" "$3"
    bad=1
  fi
}
all_packets=0 all_bytes=0 web_packets=0 web_bytes=0
for t in "${TRAFFIC[@]}"; do
  read -r cg fam count size <<<"$t"
  if [ "$fam" = 6 ]; then hdr=48; else hdr=28; fi # IPv6 + UDP headers, IPv4 + UDP headers
  bytes=$((count * (size + hdr)))
  check "$PREFIX/$cg" self_tx_packets "$count"
  check "$PREFIX/$cg" self_tx_bytes "$bytes"
  check "$PREFIX/$cg" self_rx_packets "$count"
  check "$PREFIX/$cg" self_rx_bytes "$bytes"
  all_packets=$((all_packets + count)) all_bytes=$((all_bytes + bytes))
  case "$cg" in web.slice/*) web_packets=$((web_packets + count)) web_bytes=$((web_bytes + bytes)) ;; esac
done
check "$PREFIX/sink.scope" self_rx_packets "$all_packets"
check "$PREFIX/sink.scope" self_tx_packets "$all_packets"
check "$PREFIX/web.slice" tx_packets "$web_packets"
check "$PREFIX/web.slice" tx_bytes "$web_bytes"
check "$PREFIX" tx_packets "$((2 * all_packets))"
check "$PREFIX" rx_packets "$((2 * all_packets))"
check "$PREFIX" tx_bytes "$((2 * all_bytes))"
check "$PREFIX" subtree_cgroups "${#CGROUPS[@]}"
if [ "$bad" -eq 0 ]; then
  info "all counters match the traffic sent"
else
  info "some counters do not match the traffic sent (see MISMATCH above)"
  exit 1
fi
