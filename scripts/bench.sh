#!/usr/bin/env bash
# Runs cgacct's benchmark suite and prints one table (Markdown) of medians,
# spreads and ratios, each goal marked met or MISSED. See BENCHMARKS.md.
#
#   scripts/bench.sh                 the full suite (about 15 minutes)
#   scripts/bench.sh --smoke         every measurement, tiny (CI)
#   scripts/bench.sh --only packet   one section (packet, throughput,
#                                         attach, reads, watch, memory, live,
#                                         cgroups)
#
# Installs what it needs first (scripts/setup.sh, then iperf3 and strace),
# builds cgacct-pin and cgacct-bench in release mode, and removes every
# netns, veth, cgroup and bpffs pin it made on every exit path.
# Exit status: 0 all goals met, 1 some goal missed, 2 error.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/apt-install.sh
. scripts/apt-install.sh
apt_install_missing bench iperf3 strace || exit 2

cargo build --release -p cgacct-pin -p cgacct-bench

prefix="cgb$(( $$ % 100000 ))"
bench=target/release/cgacct-bench
cleanup() { "$bench" --cleanup "$prefix" || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
"$bench" --prefix "$prefix" "$@"
