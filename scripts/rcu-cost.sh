#!/usr/bin/env bash
# Measures what expedited RCU grace periods ([tc] expedite_rcu, README)
# cost a workload that runs while `cgacct-pin apply` attaches TCX links to
# N veths (default 1000, CGACCT_RCU_N): a CPU-bound loop on each CPU (its
# rate against an idle period, and its longest gap between two clock
# reads) and cyclictest's wake-up latency on each CPU, during an apply with
# expedite_rcu = true, one with expedite_rcu = false, and an idle period of
# the same length as the expedited apply. Rounds rotate the order
# (CGACCT_RCU_ROUNDS, default 3). Needs root; the veths, the bpffs root and
# the scratch directory have a unique prefix and go on every exit path.
#
#   sudo scripts/rcu-cost.sh
#   sudo CGACCT_RCU_N=300 scripts/rcu-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
n=${CGACCT_RCU_N:-1000}
rounds=${CGACCT_RCU_ROUNDS:-3}
command -v cyclictest >/dev/null || { . scripts/apt-install.sh; apt_install_missing rcu-cost rt-tests || exit 2; }
cargo build --release -p cgacct-pin
pin=target/release/cgacct-pin
p="rcc$(( $$ % 100000 ))"
scratch=$(mktemp -d "/tmp/$p.XXXXXX")
root=/sys/fs/bpf/$p
spins=()
cyc=
cleanup() {
  for s in "${spins[@]}" $cyc; do kill "$s" 2>/dev/null || true; done
  [ -d "$root" ] && "$pin" destroy --root "$root" >/dev/null 2>&1 || true
  for i in $(seq 0 $((n - 1))); do echo "link del ${p}h$i"; done | ip -force -batch - 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$scratch/spin.c" <<'C'
#include <signal.h>
#include <stdio.h>
#include <time.h>
static volatile sig_atomic_t stop;
static void on(int s) { (void)s; stop = 1; }
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
int main(void) {
  signal(SIGINT, on);
  signal(SIGTERM, on);
  volatile unsigned long x = 0;
  unsigned long n = 0;
  double t0 = now(), last = t0, gap = 0;
  while (!stop) {
    for (int i = 0; i < 200; i++) x += (unsigned long)i * i;
    n++;
    double t = now();
    if (t - last > gap) gap = t - last;
    last = t;
  }
  printf("%.0f %.1f\n", n / (now() - t0), gap * 1e6);
  return 0;
}
C
gcc -O2 -o "$scratch/spin" "$scratch/spin.c"
for i in $(seq 0 $((n - 1))); do echo "link add ${p}h$i type veth peer name ${p}p$i"; done | ip -batch -
for e in true false; do
  printf 'root = "%s"\n[tc]\ninterfaces = ["%sh*"]\nexpedite_rcu = %s\n' "$root" "$p" "$e" > "$scratch/$e.toml"
done
ncpu=$(nproc)

# One measured period: the workload on every CPU while $@ runs.
# Writes to $scratch/line: wall ms, loop rate (iterations/s, summed over CPUs), worst loop
# gap (us), cyclictest average and worst latency (us, over CPUs).
measure() {
  spins=()
  for c in $(seq 0 $((ncpu - 1))); do
    taskset -c "$c" "$scratch/spin" > "$scratch/spin$c" & spins+=($!)
  done
  cyclictest -q -m -a -t "$ncpu" -p 90 -i 200 > "$scratch/cyc" 2>&1 & cyc=$!
  sleep 0.3
  local t0 t1
  t0=$(date +%s%N)
  "$@" > /dev/null
  t1=$(date +%s%N)
  kill -INT "$cyc" "${spins[@]}"
  wait "$cyc" "${spins[@]}" || true
  spins=()
  cyc=
  local rate=0 gap=0
  for c in $(seq 0 $((ncpu - 1))); do
    read -r cr g < "$scratch/spin$c"
    rate=$((rate + cr))
    gap=$(awk -v a="$gap" -v b="$g" 'BEGIN { print (b > a) ? b : a }')
  done
  local avg max
  avg=$(awk '/Avg:/ { for (i = 1; i <= NF; i++) if ($i == "Avg:") { s += $(i+1); k++ } } END { printf "%.0f", s / k }' "$scratch/cyc")
  max=$(awk '/Max:/ { for (i = 1; i <= NF; i++) if ($i == "Max:" && $(i+1) > m) m = $(i+1) } END { print m + 0 }' "$scratch/cyc")
  echo "$(( (t1 - t0) / 1000000 )) $rate $gap $avg $max" > "$scratch/line"
}

apply_fresh() { "$pin" destroy --root "$root" >/dev/null 2>&1 || true; }
echo "N = $n veths, $ncpu CPUs, $rounds rounds; uptime: $(uptime)"
printf '%-28s %8s %14s %10s %10s %10s\n' period wall_ms loop_rate loop_gap_us cyc_avg_us cyc_max_us
for r in $(seq 1 "$rounds"); do
  for k in 0 1 2; do
    case $(( (r + k) % 3 )) in
      0) apply_fresh; measure "$pin" apply "$scratch/true.toml"; name="apply, expedite_rcu = true"
         exp_ms=$(cut -d' ' -f1 "$scratch/line") ;;
      1) apply_fresh; measure "$pin" apply "$scratch/false.toml"; name="apply, expedite_rcu = false" ;;
      2) measure sleep "$(awk -v m="${exp_ms:-1500}" 'BEGIN { print m / 1000 }')"; name="idle (no apply)" ;;
    esac
    line=$(cat "$scratch/line")
    # shellcheck disable=SC2086
    printf '%-28s %8s %14s %10s %10s %10s\n' "$name" $line
  done
done
echo "uptime: $(uptime)"
