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
