#!/usr/bin/env bash
# What one Redis pays per ping as heartbeat instances are added: Redis's CPU time per ping
# (INFO cpu before and after) and the feed messages each instance receives per ping, with 1, 2
# and 3 instances attached to one Redis (each holding its PSUBSCRIBE), pings sent by wrk
# through the first instance. The single-Redis baseline for sharded pub/sub (issue 12).
#   scripts/scaling.sh [SECONDS]   (default 10 per step)
# Needs redis-server, redis-cli, wrk and curl; starts its own Redis and heartbeats on
# loopback ports below the ephemeral range.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
cargo build --release --locked -p heartbeat >&2
hb=target/release/heartbeat
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port_base=$((21000 + RANDOM % 5000))
redis_port=$port_base
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
  --logfile "$work/redis.log" &
pids+=($!)
deadline=$((SECONDS + 10))
until [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ]; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "scaling: redis-server did not start" >&2; exit 1; }
  sleep 0.05
done

redis_cpu() { redis-cli -p "$redis_port" info cpu | tr -d '\r' |
  awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}'; }

ports=()
echo "| instances | pings | Redis CPU per ping | feed messages per instance per ping |"
echo "| --- | --- | --- | --- |"
for n in 1 2 3; do
  port=$((port_base + n))
  LISTEN="127.0.0.1:$port" REDIS="127.0.0.1:$redis_port" KEY_PREFIX=scale: LOG_LEVEL=warn \
    "$hb" 2>>"$work/heartbeat.log" &
  pids+=($!)
  ports+=("$port")
  deadline=$((SECONDS + 10))
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "scaling: heartbeat did not start" >&2; exit 1; }
    sleep 0.05
  done
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
