#!/usr/bin/env bash
# Runs cgacct's whole test suite: unit tests and the kernel selftests
# (selftests/), which create their own netns, veths, cgroups and bpffs pins
# and remove them on every exit path. Needs root; installs what is missing
# first (scripts/setup.sh).
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# In CI a skipped kernel test is a failure, never a silent pass.
if [ "${CI:-}" = "true" ]; then export CGACCT_REQUIRE_KERNEL=1; fi
# The default members: programs/ is built for the BPF target by loader/build.rs.
exec cargo test "$@"
