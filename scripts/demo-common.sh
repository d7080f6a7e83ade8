# Shared by scripts/demo.sh and scripts/cleanup.sh (sourced, not run):
# the names of everything the demo creates, and cgroup2 discovery.
# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the scripts that source this

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYOUT="$REPO/pin-layout.toml"
BIN="$REPO/target/release/cgacct-pin"
STATE=/run/cgacct-demo.state
PREFIX=cgacct-demo
VETH=vethcgd0

# Mount point of cgroup v2, from /proc/self/mountinfo (never assumed).
cgroup2_mount() {
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
    /proc/self/mountinfo
}

# ---- the container demo (scripts/demo-docker.sh) ----
# Its containers, and the label that marks them and its image as this demo's
# (value: the demo's token, in the state file): nothing without it is touched.
DEMO_CONTAINERS=("$PREFIX-web" "$PREFIX-client" "$PREFIX-talker")
DEMO_LABEL=io.cgacct.demo

# The docker command: Debian's (what setup.sh installs, matching its dockerd),
# else the first on PATH.
docker_cli() {
  if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker || true; fi
}

# Whether a Docker daemon answers the docker command $1.
docker_answers() {
  timeout 5 "$1" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# Mount points of every cgroup hierarchy, v1 and v2, one a line.
cgroup_mounts() {
  awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2" || $(i + 1) == "cgroup") print $5; break } }' \
    /proc/self/mountinfo
}

# Start time of process $1 (field 22 of /proc/PID/stat), to tell it from a
# later process with the same PID; empty when it is gone.
proc_start() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  s=${s##*) }
  # shellcheck disable=SC2086 # the fields after the command name, split
  set -- $s
  echo "${20}"
}

# Whether process $1 runs (exists and is not a zombie).
proc_alive() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  [ "${s%% *}" != Z ]
}

# PIDs of the dockerd processes that run (zombies not counted), space separated.
live_dockerds() {
  local pid out=''
  for pid in $(pgrep -x dockerd); do
    proc_alive "$pid" && out+="$pid "
  done
  echo "${out% }"
}

# Removes what the container demo made, as its state says (the variables
# below), and nothing else. Used by demo.sh on exit and by cleanup.sh.
#   D_DOCKER      the docker command
#   D_TOKEN       the value of label $DEMO_LABEL on the demo's containers and image
#   D_IMAGE       the image
#   D_DOCKERD_PID, D_DOCKERD_START   a dockerd the demo started (empty: none)
#   D_DOCKER0_MADE=1                 docker0 did not exist before that dockerd
#   D_CGROUPS_MADE                   the <cgroup mount>/docker directories that did not exist before it
#   D_RUNDIR_MADE=1                  /run/cgacct (where cgacct-pin remembers names) did not exist before the demo
# Messages go through info(); D_REMOVED counts what went. Returns 1 when
# something is left.
D_REMOVED=0
docker_demo_remove() {
  local left=0 n got dir i others
  if [ -n "$D_DOCKER" ] && [ -n "$D_TOKEN" ] && docker_answers "$D_DOCKER"; then
    for n in "${DEMO_CONTAINERS[@]}"; do
      got=$("$D_DOCKER" inspect --type container -f "{{index .Config.Labels \"$DEMO_LABEL\"}}" "$n" 2>/dev/null) || continue
      if [ "$got" != "$D_TOKEN" ]; then
        info "leaving container $n alone: it is not this demo's (label $DEMO_LABEL=${got:-<none>})"
      elif "$D_DOCKER" rm -f "$n" >/dev/null; then
        info "removed container $n"
        D_REMOVED=$((D_REMOVED + 1))
      else
        left=1
      fi
    done
    if [ -n "$D_IMAGE" ] && got=$("$D_DOCKER" inspect --type image -f "{{index .Config.Labels \"$DEMO_LABEL\"}}" "$D_IMAGE" 2>/dev/null); then
      if [ "$got" != "$D_TOKEN" ]; then
        info "leaving image $D_IMAGE alone: it is not this demo's"
      elif "$D_DOCKER" rmi "$D_IMAGE" >/dev/null; then
        info "removed image $D_IMAGE"
        D_REMOVED=$((D_REMOVED + 1))
      else
        left=1
      fi
    fi
  elif [ -n "$D_TOKEN" ]; then
    info "no Docker daemon answers: cannot look for the demo's containers (${DEMO_CONTAINERS[*]}) and image ${D_IMAGE:-?}"
    left=1
  fi
  if [ -n "$D_DOCKERD_PID" ]; then
    if [ -n "$D_DOCKERD_START" ] && [ "$(proc_start "$D_DOCKERD_PID")" = "$D_DOCKERD_START" ] && proc_alive "$D_DOCKERD_PID"; then
      kill -TERM "$D_DOCKERD_PID" 2>/dev/null
      for ((i = 0; i < 200; i++)); do
        proc_alive "$D_DOCKERD_PID" || break
        sleep 0.1
      done
      if proc_alive "$D_DOCKERD_PID"; then
        info "dockerd (pid $D_DOCKERD_PID) did not stop within 20 s of SIGTERM: SIGKILL"
        kill -KILL "$D_DOCKERD_PID" 2>/dev/null
        sleep 0.5
      fi
      info "stopped dockerd (pid $D_DOCKERD_PID), which the demo started"
      D_REMOVED=$((D_REMOVED + 1))
    else
      info "dockerd (pid $D_DOCKERD_PID), which the demo started, is no longer running"
    fi
    # What that dockerd made and leaves behind when it stops.
    if [ "${D_DOCKER0_MADE:-0}" = 1 ] && ip link show dev docker0 >/dev/null 2>&1; then
      others=$(live_dockerds)
      if [ -n "$others" ]; then
        info "leaving bridge docker0: another dockerd runs now (pid $others)"
      elif ip link del docker0; then
        info "removed bridge docker0 (made by that dockerd)"
        D_REMOVED=$((D_REMOVED + 1))
      else
        left=1
      fi
    fi
    for dir in $D_CGROUPS_MADE; do
      grep -qxF "${dir%/docker}" < <(cgroup_mounts) || continue
      [ -d "$dir" ] || continue
      if rmdir "$dir" 2>/dev/null; then
        info "removed cgroup $dir (made for the demo's containers)"
        D_REMOVED=$((D_REMOVED + 1))
      else
        info "left cgroup $dir (not empty)"
      fi
    done
  fi
  if [ "${D_RUNDIR_MADE:-0}" = 1 ] && [ -d /run/cgacct ] && rmdir /run/cgacct 2>/dev/null; then
    info "removed /run/cgacct (made by cgacct-pin status for the demo)"
    D_REMOVED=$((D_REMOVED + 1))
  fi
  return "$left"
}
