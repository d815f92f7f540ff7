#!/usr/bin/env bash
# What WATCH_POLICY=contacts costs: 10,000 streams of 100 users over 100,000 users at 1,000
# pings/s, with a 256-user probe stream opened halfway, under open and under contacts
# (every stream claiming a watcher of its own, each user's set holding the watchers of the
# streams that watch it, so each stream's 100 users are checked and all allowed), alternated
# so that a slow spell of the machine falls on both. Prints one line per policy per round:
# the time to open all the streams, the probe's time to its last cached ping, the delivery
# p99, lost and repeated deliveries, and RSS per stream.
#   scripts/bench-contacts.sh [ROUNDS]   (ROUNDS defaults to 3)
# Starts its own redis-server on a free loopback port; needs redis-server and redis-cli.
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release --locked -p heartbeat -p heartbeat-bench >&2
hb=target/release/heartbeat
bench=target/release/heartbeat-bench
key_prefix=contacts:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ulimit -n "$(ulimit -Hn)"
start_redis

users=100000
result() { sed -n "s/^result $1=//p" "$2" | tail -1; }
stop_heartbeat() { kill -TERM "$hb_pid"; wait "$hb_pid" 2>/dev/null || true; }
# contact_sets NONCE: each user's set holds the watchers of the streams that watch it, as
# the benchmark assigns them (stream i, "watcher-i", watches users i*100 to i*100+99 modulo
# the users; the probe, "watcher-probe", the first 256).
contact_sets() {
  awk -v p="$key_prefix" -v n="$1" -v u="$users" 'BEGIN {
    for (i = 0; i < 10000; i++) for (k = 0; k < 100; k++)
      printf "SADD %swatchers:bench%d-%d watcher-%d\r\n", p, n, (i * 100 + k) % u, i
    for (k = 0; k < 256; k++) printf "SADD %swatchers:bench%d-%d watcher-probe\r\n", p, n, k
  }' | redis-cli -p "$redis_port" --pipe >/dev/null
}
run=0
one() { # POLICY
  run=$((run + 1))
  # Users of their own each run, so no run finds another's cached pings.
  local nonce=$(( $$ * 100 + run )) claims=()
  contact_sets "$nonce"
  export WATCH_POLICY=$1
  [ "$1" = open ] || claims=(--claims)
  start_heartbeat
  "$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams 10000 --users "$users" \
    --users-per-stream 100 --probe-users 256 --rate 1000 --seconds 20 --nonce "$nonce" \
    "${claims[@]}" >"$work/run"
  stop_heartbeat
  local lost=$(( $(result deliveries_expected "$work/run") - $(result deliveries_received "$work/run") ))
  echo "$1 streams=$(result streams_open "$work/run") open_ms=$(result open_ms "$work/run")" \
    "probe_ms=$(result probe_ms "$work/run") delivery_p99_us=$(result delivery_p99_us "$work/run")" \
    "lost=$lost repeated=$(result deliveries_repeated "$work/run")" \
    "rss_per_stream_kib=$(result rss_per_stream_kib "$work/run")"
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then one open; one contacts; else one contacts; one open; fi
done
