# shellcheck shell=bash
# Sourced by setup.sh, vm-setup.sh and bench.sh: installs the Debian
# packages given that are not installed yet, and says what it did under the
# caller's name. Nothing runs apt-get when all are present. The packages it
# installed are left in APT_INSTALLED (empty when none were missing).
#
#   apt_install_missing NAME PACKAGE...
#   stop_started_services NAME PACKAGE:UNIT[,UNIT...]...
APT_INSTALLED=()
apt_install_missing() {
  local name=$1
  shift
  local missing=() p
  APT_INSTALLED=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    printf '%s: apt packages present: %s\n' "$name" "$*"
    return 0
  fi
  printf '%s: installing apt packages: %s\n' "$name" "${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Other installs on the host may hold the dpkg lock for a while: wait for it.
  local wait=(-o DPkg::Lock::Timeout=600)
  apt-get "${wait[@]}" update -qq || {
    printf '%s: error: apt-get update failed; check the network and /etc/apt/sources.list.d\n' "$name" >&2
    return 1
  }
  apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    printf '%s: error: apt-get install %s failed\n' "$name" "${missing[*]}" >&2
    return 1
  }
  APT_INSTALLED=("${missing[@]}")
}

# Stops and disables the systemd units of packages that apt_install_missing
# just installed, when installing started them: the tests use the packages'
# binaries and run their own daemons (and stop them by PID). Units of
# packages that were already installed are left as they are, running or not.
stop_started_services() {
  local name=$1
  shift
  command -v systemctl >/dev/null && [ -d /run/systemd/system ] || return 0
  local spec pkg units unit
  for spec in "$@"; do
    pkg=${spec%%:*}
    units=${spec#*:}
    [[ " ${APT_INSTALLED[*]} " == *" $pkg "* ]] || continue
    for unit in ${units//,/ }; do
      systemctl is-active --quiet "$unit" 2>/dev/null || systemctl is-enabled --quiet "$unit" 2>/dev/null || continue
      printf '%s: stopping and disabling %s, started by installing %s (the tests run their own)\n' "$name" "$unit" "$pkg"
      systemctl disable --now "$unit" >/dev/null 2>&1 \
        || printf '%s: warning: could not disable %s; it keeps running\n' "$name" "$unit" >&2
    done
  done
}
