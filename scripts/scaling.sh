#!/usr/bin/env bash
# What one Redis pays per ping as heartbeat instances are added: Redis's CPU time per ping
# (INFO cpu before and after) and the feed messages each instance receives per ping, with 1, 2
# and 3 instances attached to one Redis (each holding its PSUBSCRIBE), pings sent by wrk
# through the first instance. The single-Redis baseline for sharded pub/sub (issue 12).
#   scripts/scaling.sh [SECONDS]   (default 10 per step)
# Needs redis-server, redis-cli, wrk and curl; starts its own Redis and heartbeats on free
# loopback ports (scripts/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release --locked -p heartbeat >&2
hb=target/release/heartbeat
key_prefix=scale:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
start_redis

redis_cpu() { redis-cli -p "$redis_port" info cpu | tr -d '\r' |
  awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

ports=()
echo "| instances | pings | Redis CPU per ping | feed messages per instance per ping |"
echo "| --- | --- | --- | --- |"
for n in 1 2 3; do
  start_heartbeat
  ports+=("$port")
  cpu0=$(redis_cpu)
  pings0=$(metric "${ports[0]}" heartbeat_pings_accepted_total)
  feeds0=()
  for p in "${ports[@]}"; do feeds0+=("$(metric "$p" heartbeat_feed_messages_total)"); done
  wrk -t2 -c32 -d"${seconds}s" -s scripts/wrk-ping.lua "http://127.0.0.1:${ports[0]}" >/dev/null
  sleep 1 # the feeds take the last messages
  cpu1=$(redis_cpu)
  pings=$(( $(metric "${ports[0]}" heartbeat_pings_accepted_total) - pings0 ))
  feeds=0
  for i in "${!ports[@]}"; do
    feeds=$(( feeds + $(metric "${ports[$i]}" heartbeat_feed_messages_total) - feeds0[i] ))
  done
  awk -v c0="$cpu0" -v c1="$cpu1" -v p="$pings" -v f="$feeds" -v n="$n" 'BEGIN {
    printf "| %d | %d | %.2f us | %.2f |\n", n, p, (c1 - c0) * 1e6 / p, f / p / n }'
done
