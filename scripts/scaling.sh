#!/usr/bin/env bash
# What Redis pays per ping as heartbeat instances are added, on one Redis (each instance
# holding its PSUBSCRIBE) and on a Redis Cluster of three masters (each instance holding
# SSUBSCRIBE for just the users its streams watch): Redis's CPU time per ping (INFO cpu of
# every Redis, before and after) and the feed messages each instance receives per ping, with
# 1, 2 and 3 instances. wrk pings 1,000 users through the first instance; each user is
# watched by one stream on one instance (user k on instance k mod n, 100 users a stream), as
# when each user's contacts are connected somewhere. Redis's idle CPU (3 s measured before
# each step, scaled to the step) is also shown taken off: three cluster nodes spend some
# CPU on their cron and cluster bus whether pings flow or not.
#   [RATE=N] [CONNECTIONS=32] scripts/scaling.sh [SECONDS] [single|cluster|both]
# (default 10 s per step, both modes, as fast as wrk goes). Redis's CPU per ping depends on
# how deep the writers' pipelines are, which depends on the rate: RATE=8000 paces wrk
# (WRK_DELAY_MS in scripts/wrk-ping.lua) so every step runs at about the same rate.
# Needs redis-server, redis-cli, wrk and curl; starts its own Redis servers and heartbeats
# on free loopback ports (scripts/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
idle_seconds=3
modes=${2:-both}
[ "$modes" = both ] && modes="single cluster"
# HB=path/to/heartbeat measures another build (an older commit, say) instead.
if [ -z "${HB:-}" ]; then cargo build --release --locked -p heartbeat >&2; fi
hb=${HB:-target/release/heartbeat}
key_prefix=scale:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

redis_cpu() { # seconds of CPU, user plus sys, summed over the given Redis ports
  local p
  for p in "$@"; do redis-cli -p "$p" info cpu; done | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'
}
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {v = $2} END {print v + 0}'; }

# watch N: opens the streams of N instances, user k (of wrk's 1,000) on instance k mod N.
stream_pids=()
watch() {
  local n=$1 i k users
  for pid in "${stream_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  stream_pids=()
  for i in $(seq 0 $((n - 1))); do
    users=()
    for k in $(seq "$i" "$n" 999); do
      users+=("user=wrk-$k")
      if [ ${#users[@]} -eq 100 ]; then
        curl -sN "http://127.0.0.1:${ports[$i]}/subscribe?$(IFS='&'; echo "${users[*]}")" >/dev/null &
        stream_pids+=($!); pids+=($!)
        users=()
      fi
    done
    if [ ${#users[@]} -gt 0 ]; then
      curl -sN "http://127.0.0.1:${ports[$i]}/subscribe?$(IFS='&'; echo "${users[*]}")" >/dev/null &
      stream_pids+=($!); pids+=($!)
    fi
  done
  sleep 1 # the feeds subscribe
}

for mode in $modes; do
  ports=()
  if [ "$mode" = cluster ]; then
    start_cluster
    redis_ports=("${cluster_ports[@]}")
  else
    unset redis_url
    start_redis
    redis_ports=("$redis_port")
  fi
  echo
  echo "$mode: Redis ${redis_ports[*]}, wrk -c${CONNECTIONS:-32}${RATE:+ at about $RATE pings/s}"
  echo "| instances | pings | Redis CPU per ping | less idle CPU | feed messages per instance per ping | subscribed channels, all instances |"
  echo "| --- | --- | --- | --- | --- | --- |"
  for n in 1 2 3; do
    start_heartbeat
    ports+=("$port")
    watch "$n"
    # Redis's own idle CPU (cron, and the cluster bus between nodes), to take off the run's.
    idle0=$(redis_cpu "${redis_ports[@]}")
    sleep "$idle_seconds"
    idle1=$(redis_cpu "${redis_ports[@]}")
    cpu0=$(redis_cpu "${redis_ports[@]}")
    pings0=$(metric "${ports[0]}" heartbeat_pings_accepted_total)
    feeds0=()
    for p in "${ports[@]}"; do feeds0+=("$(metric "$p" heartbeat_feed_messages_total)"); done
    WRK_DELAY_MS=$(( ${RATE:+${CONNECTIONS:-32} * 1000 / RATE} + 0 )) \
      wrk -t2 -c"${CONNECTIONS:-32}" -d"${seconds}s" -s scripts/wrk-ping.lua "http://127.0.0.1:${ports[0]}" >/dev/null
    sleep 1 # the feeds take the last messages
    cpu1=$(redis_cpu "${redis_ports[@]}")
    pings=$(( $(metric "${ports[0]}" heartbeat_pings_accepted_total) - pings0 ))
    feeds=0
    channels=0
    for i in "${!ports[@]}"; do
      feeds=$(( feeds + $(metric "${ports[$i]}" heartbeat_feed_messages_total) - feeds0[i] ))
      channels=$(( channels + $(metric "${ports[$i]}" heartbeat_feed_channels) ))
    done
    awk -v c0="$cpu0" -v c1="$cpu1" -v i0="$idle0" -v i1="$idle1" -v is="$idle_seconds" \
      -v s="$((seconds + 1))" -v p="$pings" -v f="$feeds" -v n="$n" -v ch="$channels" 'BEGIN {
      idle = (i1 - i0) / is * s
      printf "| %d | %d | %.2f us | %.2f us | %.2f | %d |\n", n, p, (c1 - c0) * 1e6 / p,
        (c1 - c0 - idle) * 1e6 / p, f / p / n, ch }'
  done
  for pid in "${stream_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  stream_pids=()
done
