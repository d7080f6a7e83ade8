#!/usr/bin/env bash
# Fuzzes the layout parser with libFuzzer (cargo-fuzz) for SECONDS
# (default 60). Installs cargo-fuzz when missing. A panic fails the run
# and leaves the input under fuzz/artifacts/.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
cd fuzz
# The seed corpus is kept in git; what the fuzzer adds goes to a scratch copy.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp corpus/layout/* "$work/"
cargo +nightly fuzz run layout "$work" -- -max_total_time="$secs" -max_len=4096
