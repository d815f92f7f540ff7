#!/usr/bin/env bash
# Compares two heartbeat binaries on this machine, alternating them so that a slow spell of
# the machine falls on both: each round runs wrk (POST /ping, -c32, 8 s) and the benchmark's
# 10,000 streams over 1,000 users at 1,000 pings/s for 10 s against each, the order flipped
# every round. Prints one line per binary per round.
#   scripts/alternate.sh OLD_BINARY NEW_BINARY [ROUNDS]   (ROUNDS defaults to 3)
# Starts its own redis-server on a free loopback port; needs redis-server and wrk.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: scripts/alternate.sh OLD_BINARY NEW_BINARY [ROUNDS]" >&2; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
rounds=${3:-3}
cd "$(dirname "$0")/.."
cargo build --release --locked -p heartbeat-bench >&2
bench=target/release/heartbeat-bench
key_prefix=alternate:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ulimit -n "$(ulimit -Hn)"
# The repository's .env is this tree's; an older binary may not take all of it (it read
# MAX_STREAM_SECS=0 before that became empty), so both are given that one explicitly.
export MAX_STREAM_SECS=0
start_redis

result() { sed -n "s/^result $1=//p" "$2" | tail -1; }
stop_heartbeat() { kill -TERM "$hb_pid"; wait "$hb_pid" 2>/dev/null || true; }
one() { # NAME BINARY
  hb=$2
  start_heartbeat
  wrk -t2 -c32 -d8s -s scripts/wrk-ping.lua "http://127.0.0.1:$port" >"$work/wrk"
  local rps
  rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$work/wrk")
  stop_heartbeat
  start_heartbeat
  "$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams 10000 --users 1000 \
    --rate 1000 --seconds 10 >"$work/run"
  stop_heartbeat
  local lost=$(( $(result deliveries_expected "$work/run") - $(result deliveries_received "$work/run") ))
  echo "$1 pings/s=$rps delivery_p50_us=$(result delivery_p50_us "$work/run")" \
    "delivery_p99_us=$(result delivery_p99_us "$work/run") lost=$lost"
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then one old "$old"; one new "$new"; else one new "$new"; one old "$old"; fi
done
