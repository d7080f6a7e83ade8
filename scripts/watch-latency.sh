#!/usr/bin/env bash
# Measures how fast `cgacct-pin watch` follows the host: mkdir of a cgroup
# to a readable net.stat, rmdir to its removal, veth creation to its TC
# links, veth deletion to their removal. Prints median, p90, p99 and worst
# over CGACCT_WATCH_EVENTS events of each kind (default 1000). Needs root;
# everything it makes has a unique prefix and is removed on every exit path
# (the selftest world's Drop).
#
#   scripts/watch-latency.sh
#   sudo CGACCT_WATCH_EVENTS=200 scripts/watch-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo test --release --test selftests -- --ignored --exact latency::watch_latency --nocapture
