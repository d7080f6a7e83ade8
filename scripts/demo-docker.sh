# shellcheck shell=bash
# The container demo of scripts/demo.sh (sourced by it after the build, not
# run): three Docker containers on docker0, a layout of the demo's own for
# them, their net.stat files, `cgacct-pin status` and `top --once` with the
# containers' names.
#
#   cgacct-demo-web     busybox httpd serving 5 files of 1 MiB, and a UDP sink on port 9000
#   cgacct-demo-client  pulls the 5 files from web with busybox wget, one a second
#   cgacct-demo-talker  sends UDP datagrams to web's sink: 50 a second of 1000 B for 8 s
#
# The image is made offline from busybox-static (tar of a rootfs | docker
# import), named cgacct-demo-busybox:<pid>; the containers carry compose
# labels (project cgacct-demo) and the label io.cgacct.demo=<token>, which the
# image carries too: removal touches nothing without it. The host's /usr is
# mounted read-only so that python3 (the sink and the talker) runs inside.
# When no dockerd answers, one is started (`dockerd --iptables=false`, in a
# session of its own) and stopped by its PID at the end, with the docker0
# bridge and the /docker cgroups it made for the demo. Traffic goes only
# between the demo's containers, over docker0.
#
# docker_demo runs it and exits through its trap; it returns (with the reason
# in DEMO_FALLBACK) only when Docker cannot be used and CGACCT_DEMO is not
# "docker", having removed anything it started.

DEMO_FALLBACK=''
D_DOCKER='' D_TOKEN='' D_IMAGE='' D_DOCKERD_PID='' D_DOCKERD_START='' D_DOCKER0_MADE=0 D_CGROUPS_MADE='' D_RUNDIR_MADE=0
D_APPLIED=0 D_STATE_WRITTEN=0 D_PIDS=()

FILES=5 FILE_SIZE=1048576                         # what web serves: file1..file5
SINK_PORT=9000 TALK_RATE=50 TALK_SECS=8 TALK_SIZE=1000 # the talker: datagrams a second, seconds, payload bytes

# Why the container demo cannot run here; nothing when it can.
docker_unusable() {
  [ -n "$D_DOCKER" ] || { echo "no docker command (scripts/setup.sh installs docker.io)"; return; }
  [ -x /bin/busybox ] || { echo "no /bin/busybox to make the image from (scripts/setup.sh installs busybox-static)"; return; }
  [ -x /usr/bin/python3 ] || { echo "no /usr/bin/python3 for the containers' sink and talker"; return; }
  docker_answers "$D_DOCKER" && return
  command -v dockerd >/dev/null || echo "no Docker daemon answers and there is no dockerd to start"
}

docker_write_state() {
  cat >"$STATE" <<EOF
# written by $REPO/scripts/demo.sh (container demo); read by scripts/cleanup.sh
PID=$$
KEPT=0
MODE=docker
BPF_ROOT=$BPF_ROOT
TMP=$TMP
DOCKER=$D_DOCKER
TOKEN=$D_TOKEN
IMAGE=$D_IMAGE
DOCKERD_PID=$D_DOCKERD_PID
DOCKERD_START=$D_DOCKERD_START
DOCKER0_MADE=$D_DOCKER0_MADE
CGROUPS_MADE=$D_CGROUPS_MADE
RUNDIR_MADE=$D_RUNDIR_MADE
EOF
  D_STATE_WRITTEN=1
}

# Removes everything the container demo made (or, with --keep and no
# argument, says how to). Returns 1 when something is left.
docker_undo() {
  local pid left=0 keep=$KEEP
  [ "${1:-}" = all ] && keep=0
  for pid in "${D_PIDS[@]}"; do
    if proc_alive "$pid"; then
      kill "$pid" 2>/dev/null
      info "stopped pid $pid"
    fi
    wait "$pid" 2>/dev/null
  done
  D_PIDS=()
  if [ "$keep" -eq 1 ] && [ "$D_STATE_WRITTEN" -eq 1 ]; then
    sed -i 's/^KEPT=.*/KEPT=1/' "$STATE"
    say "kept everything (--keep): containers ${DEMO_CONTAINERS[*]}, image $D_IMAGE, pins under $BPF_ROOT${D_DOCKERD_PID:+, dockerd pid $D_DOCKERD_PID}; the layout is $TMP/layout.toml. To remove it all run:"
    printf '  %s\n' "$REPO/scripts/cleanup.sh"
    return 0
  fi
  say "cleaning up"
  if [ "$D_APPLIED" -eq 1 ] && [ -e "$BPF_ROOT" ]; then
    "$BIN" destroy --root "$BPF_ROOT" "$TMP/layout.toml" || true
    if [ -e "$BPF_ROOT" ]; then info "could not remove $BPF_ROOT"; left=1; else info "removed $BPF_ROOT"; fi
  fi
  docker_demo_remove || left=1
  if [ "$left" -eq 0 ]; then
    [ "$D_STATE_WRITTEN" -eq 1 ] && rm -f "$STATE"
    D_STATE_WRITTEN=0
  fi
  rm -rf "$TMP"
  return "$left"
}

docker_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if docker_undo; then
    [ "$KEEP" -eq 1 ] || info "nothing left behind"
  else
    info "some objects could not be removed; run $REPO/scripts/cleanup.sh"
    [ "$rc" -eq 0 ] && rc=1
  fi
  exit "$rc"
}

# Starts dockerd in a session of its own (terminal signals do not reach it)
# and waits for it. Returns 1, with the reason in DEMO_FALLBACK, when it does
# not answer within 30 s.
docker_start_daemon() {
  local mnt i
  ip link show dev docker0 >/dev/null 2>&1 || D_DOCKER0_MADE=1
  D_CGROUPS_MADE=''
  while read -r mnt; do
    [ -e "$mnt/docker" ] || D_CGROUPS_MADE+="$mnt/docker "
  done < <(cgroup_mounts)
  # Not a job of an interactive shell: setsid execs dockerd in place, so $! is its PID.
  setsid dockerd --iptables=false </dev/null >"$TMP/dockerd.log" 2>&1 &
  D_DOCKERD_PID=$!
  for ((i = 0; i < 20; i++)); do
    [ "$(cat "/proc/$D_DOCKERD_PID/comm" 2>/dev/null)" = dockerd ] && break
    sleep 0.05
  done
  D_DOCKERD_START=$(proc_start "$D_DOCKERD_PID")
  docker_write_state
  for ((i = 0; i < 300; i++)); do
    docker_answers "$D_DOCKER" && return 0
    proc_alive "$D_DOCKERD_PID" || break
    sleep 0.1
  done
  if docker_answers "$D_DOCKER"; then return 0; fi # another one started meanwhile
  if proc_alive "$D_DOCKERD_PID"; then
    DEMO_FALLBACK="the dockerd started here did not answer within 30 s"
  else
    DEMO_FALLBACK="the dockerd started here exited: $(tail -n 3 "$TMP/dockerd.log" | tr '\n' ' ')"
  fi
  return 1
}

# The busybox image, offline: a rootfs of /bin/busybox and its applet links,
# with /lib and /lib64 pointing into the /usr the containers get from the host.
docker_import_image() {
  local r=$TMP/rootfs applet
  mkdir -p "$r"/{bin,dev,etc,proc,sys,tmp,usr}
  cp /bin/busybox "$r/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
  done
  ln -s usr/lib "$r/lib"
  ln -s usr/lib64 "$r/lib64"
  tar -C "$r" -c . | "$D_DOCKER" import --change "LABEL $DEMO_LABEL=$D_TOKEN" - "$D_IMAGE" >/dev/null
  rm -rf "$r"
}

# docker run NAME SERVICE COMMAND...: detached, on docker0, compose labels, /usr from the host.
docker_run() {
  local name=$1 service=$2
  shift 2
  "$D_DOCKER" run -d --name "$name" \
    --label "com.docker.compose.project=$PREFIX" --label "com.docker.compose.service=$service" \
    --label "$DEMO_LABEL=$D_TOKEN" -v /usr:/usr:ro "$D_IMAGE" "$@" >/dev/null
}

# Where the host sees container $1: sets C_ID, C_IP, C_CGROUP (below the
# cgroup2 mount, no leading slash), C_VETH (its host-side veth).
docker_locate() {
  local name=$1 pid iflink e
  read -r C_ID pid C_IP < <("$D_DOCKER" inspect -f '{{.Id}} {{.State.Pid}} {{.NetworkSettings.IPAddress}}' "$name")
  [ -n "$C_IP" ] || die "$name has no address on docker0 (does this dockerd run with a bridge?)"
  C_CGROUP=$(sed -n 's|^0::/||p' "/proc/$pid/cgroup")
  [ -n "$C_CGROUP" ] || die "no cgroup2 cgroup for $name (pid $pid)"
  iflink=$("$D_DOCKER" exec "$name" cat /sys/class/net/eth0/iflink)
  C_VETH=''
  for e in /sys/class/net/*; do
    [ "$(cat "$e/ifindex" 2>/dev/null)" = "$iflink" ] && C_VETH=${e##*/}
  done
  [ -n "$C_VETH" ] || die "no host interface with ifindex $iflink (the veth of $name)"
}

# The demo's layout: TC on the three veths with owners discovered, cgroup_skb
# at the cgroup2 root, a net.stat for every cgroup below the containers' parent.
docker_write_layout() {
  local parent=${CG[web]%/*} veths stats
  veths="\"${VETHS[web]}\", \"${VETHS[client]}\", \"${VETHS[talker]}\""
  if [ "$parent" != "${CG[web]}" ] && [ "$parent" = "${CG[client]%/*}" ] && [ "$parent" = "${CG[talker]%/*}" ]; then
    stats="\"/$parent/**\""
  else
    stats="\"/${CG[web]}\", \"/${CG[client]}\", \"/${CG[talker]}\""
  fi
  cat >"$TMP/layout.toml" <<EOF
# The container demo's layout (scripts/demo-docker.sh).
root = "$BPF_ROOT"
[tc]
interfaces = [$veths]
discover_owners = true
[cgroup_skb]
attach = ["/"]
[stats]
cgroups = [$stats]
EOF
}

SINK='
import socket, sys
port, total = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(5)
print("ready", flush=True)
n = b = 0
try:
    while n < total:
        b += len(s.recv(65536))
        n += 1
except socket.timeout:
    pass
print("sink (web): received %d datagrams, %d B" % (n, b), flush=True)
'
TALKER='
import socket, sys, time
addr, port, rate, secs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
total, n, start = int(rate * secs), 0, time.monotonic()
while n < total:
    due = start + n / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s.sendto(b"t" * size, (addr, port))
    n += 1
print("talker: sent %d datagrams of %d B to %s:%d in %.1f s" % (n, size, addr, port, time.monotonic() - start), flush=True)
'

docker_demo() {
  local why n i svc bad=0 got served sent
  D_DOCKER=$(docker_cli)
  why=$(docker_unusable)
  if [ -n "$why" ]; then
    [ "$MODE" = docker ] && die "CGACCT_DEMO=docker, but Docker cannot be used here: $why"
    DEMO_FALLBACK=$why
    return 0
  fi
  D_TOKEN="$$-$(date +%s)"
  D_IMAGE="$PREFIX-busybox:$$"
  [ -n "${CGACCT_STATE_DIR:-}" ] || [ -e /run/cgacct ] || D_RUNDIR_MADE=1
  trap docker_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  docker_write_state

  if docker_answers "$D_DOCKER"; then
    say "Docker: using the running daemon ($("$D_DOCKER" version --format 'server {{.Server.Version}}'))"
  else
    say "Docker: no daemon answers; starting dockerd --iptables=false (stopped by its PID at the end)"
    if ! docker_start_daemon; then
      [ "$MODE" = docker ] && die "CGACCT_DEMO=docker, but Docker cannot be used here: $DEMO_FALLBACK"
      docker_undo all || die "could not remove what the container demo started; run $REPO/scripts/cleanup.sh"
      trap 'rm -rf "$TMP"' EXIT
      trap - INT TERM
      TMP=$(mktemp -d /tmp/cgacct-demo.XXXXXX)
      return 0
    fi
    if [ -n "$D_DOCKERD_PID" ] && proc_alive "$D_DOCKERD_PID"; then
      info "dockerd pid $D_DOCKERD_PID answers ($("$D_DOCKER" version --format 'server {{.Server.Version}}'))"
    else
      D_DOCKERD_PID='' D_DOCKERD_START=''
      docker_write_state
      info "another dockerd answers meanwhile; using it"
    fi
  fi
  for n in "${DEMO_CONTAINERS[@]}"; do
    if "$D_DOCKER" inspect --type container "$n" >/dev/null 2>&1; then
      die "a container named $n exists (run scripts/cleanup.sh if a demo left it; otherwise it is not the demo's: remove or rename it)"
    fi
  done

  say "docker import: image $D_IMAGE from /bin/busybox ($(/bin/busybox --list | wc -l) applets)"
  docker_import_image
  say "docker run: ${DEMO_CONTAINERS[*]} (compose project $PREFIX, /usr from the host read-only)"
  docker_run "$PREFIX-web" web sh -c "mkdir -p /www && for i in \$(seq $FILES); do dd if=/dev/zero of=/www/file\$i bs=$FILE_SIZE count=1 2>/dev/null; done && exec httpd -f -p 80 -h /www"
  docker_run "$PREFIX-client" client sleep 86400
  docker_run "$PREFIX-talker" talker sleep 86400
  declare -gA CG VETHS IPS IDS
  for svc in web client talker; do
    docker_locate "$PREFIX-$svc"
    CG[$svc]=$C_CGROUP VETHS[$svc]=$C_VETH IPS[$svc]=$C_IP IDS[$svc]=$C_ID
    printf '  %-20s %-15s %-12s /%s\n' "$PREFIX-$svc" "$C_IP" "$C_VETH" "$C_CGROUP"
  done
  # web is ready once its last file is served (before any pin: not counted).
  for ((i = 0; i < 100; i++)); do
    "$D_DOCKER" exec "$PREFIX-client" wget -q --spider "http://${IPS[web]}/file$FILES" 2>/dev/null && break
    sleep 0.1
  done
  [ "$i" -lt 100 ] || die "web (${IPS[web]}) does not serve file$FILES"

  docker_write_layout
  say "the demo's layout ($TMP/layout.toml)"
  grep -v '^#' "$TMP/layout.toml"
  say "$BIN apply $TMP/layout.toml"
  D_APPLIED=1
  "$BIN" apply "$TMP/layout.toml"

  say "traffic over docker0: talker -> web UDP $TALK_RATE/s x $TALK_SIZE B for $TALK_SECS s; client <- web HTTP, $FILES files of $FILE_SIZE B"
  "$D_DOCKER" exec "$PREFIX-web" python3 -c "$SINK" "$SINK_PORT" "$((TALK_RATE * TALK_SECS))" >"$TMP/sink.out" 2>&1 &
  D_PIDS+=("$!")
  for ((i = 0; i < 100; i++)); do
    grep -q ready "$TMP/sink.out" && break
    sleep 0.1
  done
  grep -q ready "$TMP/sink.out" || { cat "$TMP/sink.out" >&2; die "the sink in $PREFIX-web did not start"; }
  "$D_DOCKER" exec "$PREFIX-talker" python3 -c "$TALKER" "${IPS[web]}" "$SINK_PORT" "$TALK_RATE" "$TALK_SECS" "$TALK_SIZE" >"$TMP/talker.out" 2>&1 &
  D_PIDS+=("$!")
  "$D_DOCKER" exec "$PREFIX-client" sh -c "for i in \$(seq $FILES); do echo \"client: file\$i \$(wget -q -O - http://${IPS[web]}/file\$i | wc -c) B\"; sleep 1; done" >"$TMP/client.out" 2>&1 &
  D_PIDS+=("$!")
  sleep 1
  say "$BIN top --once --interval 2 (while the traffic flows)"
  "$BIN" top --once --interval 2 --root "$BPF_ROOT" | head -n 12 || true
  for i in "${!D_PIDS[@]}"; do
    wait "${D_PIDS[i]}" || true
  done
  D_PIDS=()
  cat "$TMP/client.out" "$TMP/talker.out" "$TMP/sink.out" | grep -v '^ready$' || true

  for svc in web client talker; do
    say "cat $BPF_ROOT/${CG[$svc]}/net.stat   # $PREFIX-$svc"
    cat "$BPF_ROOT/${CG[$svc]}/net.stat"
  done
  say "$BIN status"
  "$BIN" status --root "$BPF_ROOT" | head -n 60 || true

  say "checking the counters against the traffic"
  stat_of() { awk -v k="$2" '$1 == k { print $2 }' "$BPF_ROOT/${CG[$1]}/net.stat"; }
  atleast() { # service key minimum what
    got=$(stat_of "$1" "$2")
    if [ -n "$got" ] && [ "$got" -ge "$3" ]; then
      printf '  ok        %-20s %-16s %10s >= %-10s %s\n' "$PREFIX-$1" "$2" "$got" "$3" "$4"
    else
      printf '  TOO LOW   %-20s %-16s %10s <  %-10s %s\n' "$PREFIX-$1" "$2" "${got:-<missing>}" "$3" "$4"
      bad=1
    fi
  }
  served=$(awk '/^client: file/ { s += $3 } END { print s + 0 }' "$TMP/client.out")
  [ "$served" -eq $((FILES * FILE_SIZE)) ] || { info "the client got $served B, not $((FILES * FILE_SIZE))"; bad=1; }
  sent=$(awk '/^talker: sent/ { print $3 }' "$TMP/talker.out")
  sent=${sent:-0}
  atleast web tx_bytes "$served" "bytes served (HTTP bodies)"
  atleast client rx_bytes "$served" "bytes served"
  atleast client veth_rx_bytes "$served" "bytes served, through its veth"
  atleast talker tx_packets "$sent" "datagrams sent"
  atleast talker tx_bytes "$((sent * (TALK_SIZE + 28)))" "$sent x ($TALK_SIZE + 28) B"
  atleast web rx_bytes "$((sent * (TALK_SIZE + 28)))" "the talker's datagrams"
  if [ "$bad" -eq 0 ]; then
    info "the counters cover the traffic sent"
  else
    info "some counters are below the traffic sent (see above)"
    exit 1
  fi
  exit 0
}
