# shellcheck shell=bash
# Sourced by setup.sh, vm-setup.sh and bench.sh: installs the Debian
# packages given that are not installed yet, and says what it did under the
# caller's name. Nothing runs apt-get when all are present.
#
#   apt_install_missing NAME PACKAGE...
apt_install_missing() {
  local name=$1
  shift
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    printf '%s: apt packages present: %s\n' "$name" "$*"
    return 0
  fi
  printf '%s: installing apt packages: %s\n' "$name" "${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || {
    printf '%s: error: apt-get update failed; check the network and /etc/apt/sources.list.d\n' "$name" >&2
    return 1
  }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    printf '%s: error: apt-get install %s failed\n' "$name" "${missing[*]}" >&2
    return 1
  }
}
