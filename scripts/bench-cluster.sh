#!/usr/bin/env bash
# The benchmark's stream workloads and wrk on a Redis Cluster of three masters (no replicas):
# 10,000 one-user streams over 1,000 users; 10,000 streams of 100 users over 100,000 users
# with a 256-user stream opened halfway; 1,000 pings/s for 20 s each; then wrk -c32 three
# times. All on this machine's 2 cores, beside the three Redis servers. About 2 minutes.
#   scripts/bench-cluster.sh
# Needs redis-server, redis-cli, wrk and curl (scripts/lib.sh starts everything on free
# loopback ports).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p heartbeat -p heartbeat-bench >&2
hb=target/release/heartbeat
bench=target/release/heartbeat-bench
key_prefix=bench-cluster:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
start_cluster
echo "cluster: $redis_url"

echo "== 10000 streams over 1000 users, 1000 pings/s for 20 s"
start_heartbeat
"$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams 10000 --users 1000 --rate 1000 --seconds 20
kill "$hb_pid"
wait "$hb_pid" 2>/dev/null || true

echo "== 10000 streams of 100 users over 100000 users, 1000 pings/s for 20 s, a 256-user stream opened halfway"
start_heartbeat
"$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams 10000 --users 100000 \
  --users-per-stream 100 --probe-users 256 --rate 1000 --seconds 20
kill "$hb_pid"
wait "$hb_pid" 2>/dev/null || true

echo "== wrk: POST /ping, 32 connections, 3 x 10 s"
start_heartbeat
for i in 1 2 3; do
  wrk -t2 -c32 -d10s --latency -s scripts/wrk-ping.lua "http://127.0.0.1:$port"
done
