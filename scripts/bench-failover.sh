#!/usr/bin/env bash
# Failover time under Sentinel: runs tests/sentinel.rs's failover (three sentinels, failover
# after 1 s down, a master and a replica, two heartbeat instances) RUNS times and prints the
# time from the kill of the master to the first ping answered 200, each run and the median.
#   scripts/bench-failover.sh [RUNS]   (RUNS defaults to 5)
set -euo pipefail
runs=${1:-5}
cd "$(dirname "$0")/.."
times=()
for run in $(seq "$runs"); do
  t=$(cargo test --release --locked --test sentinel a_failover_is_followed_by_both_instances \
        -- --nocapture 2>&1 | sed -n 's/^failover: from the kill to the first 200 in //p')
  [ -n "$t" ] || { echo "bench-failover: run $run printed no time" >&2; exit 1; }
  echo "run $run: $t"
  times+=("$(awk -v t="$t" 'BEGIN { if (t ~ /ms$/) { sub(/ms$/, "", t); t /= 1000 } else sub(/s$/, "", t); printf "%.3f", t }')")
done
printf '%s\n' "${times[@]}" | sort -g | awk '{ v[NR] = $1 } END { printf "median of %d: %.2f s\n", NR, (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
