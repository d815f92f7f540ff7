#!/usr/bin/env bash
# What TLS to Redis costs: one redis-server listening both plain and TLS (certificates made
# here with openssl), and heartbeat on each in turn, alternated so a slow spell of the
# machine falls on both. Per round and transport: pings/s (wrk, POST /ping, 32 connections,
# 10 s, a user per request), heartbeat's CPU per ping, and the delivery p99 of 10,000
# streams over 1,000 users at 1,000 pings/s for 20 s.
#   scripts/bench-tls.sh [ROUNDS]   (ROUNDS defaults to 3)
# Needs redis-server (Debian's speaks TLS), redis-cli, wrk and openssl.
set -euo pipefail
rounds=${1:-3}
cd "$(dirname "$0")/.."
cargo build --release --locked -p heartbeat -p heartbeat-bench >&2
hb=target/release/heartbeat
bench=target/release/heartbeat-bench
key_prefix=tlsbench:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ulimit -n "$(ulimit -Hn)"

pki="$work/pki"
mkdir -p "$pki"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca -keyout ca.key -out ca.crt
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
  echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
    -out server.crt -extfile server.ext
) >/dev/null 2>&1
tls_port=$(free_port)
start_redis --tls-port "$tls_port" --tls-cert-file "$pki/server.crt" \
  --tls-key-file "$pki/server.key" --tls-ca-cert-file "$pki/ca.crt" --tls-auth-clients no

result() { sed -n "s/^result $1=//p" "$2" | tail -1; }
stop_heartbeat() { kill -TERM "$hb_pid"; wait "$hb_pid" 2>/dev/null || true; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run=0
one() { # plain | tls
  run=$((run + 1))
  if [ "$1" = tls ]; then
    redis_url="rediss://localhost:$tls_port"
    export REDIS_CA_FILE="$pki/ca.crt"
  else
    redis_url="127.0.0.1:$redis_port"
    unset REDIS_CA_FILE
  fi
  start_heartbeat
  local ticks0 ticks1
  ticks0=$(cpu_ticks "$hb_pid")
  wrk -t2 -c32 -d10s -s scripts/wrk-ping.lua "http://127.0.0.1:$port" >"$work/wrk"
  ticks1=$(cpu_ticks "$hb_pid")
  "$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams 10000 --users 1000 \
    --rate 1000 --seconds 20 --nonce "$(( $$ * 100 + run ))" >"$work/run"
  stop_heartbeat
  local rps requests lost
  rps=$(awk '/^Requests\/sec:/ {printf "%d", $2}' "$work/wrk")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk")
  lost=$(( $(result deliveries_expected "$work/run") - $(result deliveries_received "$work/run") ))
  echo "$1 pings_per_s=$rps" \
    "cpu_us_per_ping=$(awk -v t=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" -v n="$requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')" \
    "delivery_p50_us=$(result delivery_p50_us "$work/run") delivery_p99_us=$(result delivery_p99_us "$work/run")" \
    "lost=$lost repeated=$(result deliveries_repeated "$work/run")"
}
for round in $(seq "$rounds"); do
  if [ $((round % 2)) = 1 ]; then one plain; one tls; else one tls; one plain; fi
done
