#!/usr/bin/env bash
# Benchmarks heartbeat on this machine and prints every figure against its target.
#   scripts/bench.sh           the full run (a few minutes): 10,000 and 15,000 streams, and
#                              plots of the 10,000-stream run's delivery latency (gnuplot)
#   scripts/bench.sh --quick   a CI-sized run (a few hundred streams, a few seconds)
#   scripts/bench.sh --peer nchan [ROUNDS]   heartbeat and nchan side by side (bench-peer.sh)
#   scripts/bench.sh --curve [STREAMS...]    1,000 to 100,000 streams (bench-curve.sh)
# Starts its own redis-server and heartbeat (release build) on free loopback ports; needs
# redis-server, redis-benchmark and wrk (apt-get install -y redis-server redis-tools wrk).
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  --peer) [ "${2:-}" = nchan ] || { echo "bench: --peer nchan is the one peer"; exit 1; }
          exec scripts/bench-peer.sh "${@:3}" ;;
  --curve) exec scripts/bench-curve.sh "${@:2}" ;;
esac
quick=false
[ "${1:-}" = "--quick" ] && quick=true
if $quick; then
  streams=300; streams_max=500; users=30; rate=200; seconds=3; wrk_time=2s; rb_requests=20000
  multi_streams=300; multi_users=600; multi_each=20; multi_probe=64
else
  streams=10000; streams_max=15000; users=1000; rate=1000; seconds=20; wrk_time=10s; rb_requests=300000
  multi_streams=10000; multi_users=100000; multi_each=100; multi_probe=256
fi

for tool in redis-server redis-cli redis-benchmark wrk; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found (apt-get install -y redis-server redis-tools wrk)"; exit 1; }
done
cargo build --release --locked -p heartbeat -p heartbeat-bench >&2
hb=target/release/heartbeat
bench=target/release/heartbeat-bench

key_prefix=bench:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
start_redis

stop_heartbeat() { kill -TERM "$hb_pid"; wait "$hb_pid" 2>/dev/null || true; }
result() { sed -n "s/^result $1=//p" "$2" | tail -1; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

echo "== machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -r)"
echo "== heartbeat $("$hb" --version | cut -d' ' -f2), release build; redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"

size=$(stat -c %s "$hb")
echo "binary: $size bytes"

port=$(free_port)
"$bench" startup "127.0.0.1:$port" env LISTEN="127.0.0.1:$port" REDIS=memory LOG_LEVEL=warn "$hb" | tee "$work/startup"
ready=$(result ready_ms "$work/startup")

start_heartbeat
sleep 1
idle=$(rss_kib "$hb_pid")
echo "idle RSS on Redis: $idle KiB"

echo "== $streams streams over $users users, $rate pings/s for $seconds s"
plots=()
$quick || plots=(--plot-data "$work")
"$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams "$streams" --users "$users" \
  --rate "$rate" --seconds "$seconds" "${plots[@]}" | tee "$work/run"
# The full run draws its delivery latency (docs/bench/*.png, shown in BENCHMARKS.md).
if ! $quick; then
  if command -v gnuplot >/dev/null; then
    mkdir -p docs/bench
    gnuplot -e "data='$work'; out='docs/bench'; title='$streams streams, $rate pings/s'" scripts/plot.gp
    echo "plots: docs/bench/delivery_by_second.png, docs/bench/delivery_distribution.png"
  else
    echo "plots: skipped, no gnuplot (apt-get install -y gnuplot-nox)"
  fi
fi
stop_heartbeat

echo "== $streams_max streams held (memory), $rate pings/s for 3 s"
start_heartbeat
"$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams "$streams_max" --users "$users" \
  --rate "$rate" --seconds 3 | tee "$work/run_max"
stop_heartbeat

echo "== $multi_streams streams of $multi_each users each over $multi_users users, $rate pings/s for $seconds s, a $multi_probe-user stream opened halfway"
start_heartbeat
"$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams "$multi_streams" --users "$multi_users" \
  --users-per-stream "$multi_each" --probe-users "$multi_probe" --rate "$rate" --seconds "$seconds" \
  | tee "$work/multi"
stop_heartbeat

# Three wrk runs: on this shared 2-core VM one run's rate can differ from the next by a
# quarter, so the table gives the median and every run. heartbeat's CPU time per ping
# (/proc/PID/stat) varies much less with the machine's load than its rate does.
echo "== wrk: POST /ping, 32 connections, 3 x $wrk_time, a different user each request"
start_heartbeat
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks0=$(cpu_ticks "$hb_pid")
for i in 1 2 3; do
  wrk -t2 -c32 -d"$wrk_time" --latency -s scripts/wrk-ping.lua "http://127.0.0.1:$port" | tee "$work/wrk$i"
done
ticks1=$(cpu_ticks "$hb_pid")
stop_heartbeat

echo "== ceiling: redis-benchmark of the store-and-publish script (EVALSHA), 32 clients"
sha=$(redis-cli -p "$redis_port" SCRIPT LOAD "$("$bench" record-script)")
redis-benchmark -p "$redis_port" -c 32 -n "$rb_requests" -r 1000 -q \
  EVALSHA "$sha" 1 "bench:last:__rand_int__" 1700000000000000 phone 1 "bench:ping:__rand_int__" PUBLISH 0 1700000000 1700000060000000 \
  | tr '\r' '\n' | grep -E 'requests per second' | tail -1 | tee "$work/redis"

echo "== ceiling: wrk against heartbeat's HTTP layer answering a constant, 32 connections"
port=$(free_port)
"$bench" hello "127.0.0.1:$port" >/dev/null &
hello_pid=$!
pids+=("$hello_pid")
hello_up() { curl -sf --max-time 2 "http://127.0.0.1:$1/"; }
wait_for heartbeat-bench-hello "$hello_pid" 10 hello_up "$port"
wrk -t2 -c32 -d"$wrk_time" --latency "http://127.0.0.1:$port/" | tee "$work/hello"

# The figures against their targets.
rps() { awk '/^Requests\/sec:/ {printf "%d", $2}' "$1"; }
p99_ms() { awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 }; printf "%.2f", v }' "$1"; }
median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
ping_runs="$(rps "$work/wrk1"), $(rps "$work/wrk2"), $(rps "$work/wrk3")"
ping_rps=$(median "$(rps "$work/wrk1")" "$(rps "$work/wrk2")" "$(rps "$work/wrk3")")
ping_p99=$(median "$(p99_ms "$work/wrk1")" "$(p99_ms "$work/wrk2")" "$(p99_ms "$work/wrk3")")
ping_requests=$(awk '/requests in/ {n += $1} END {print n}' "$work/wrk1" "$work/wrk2" "$work/wrk3")
cpu_us_per_ping=$(awk -v t=$((ticks1 - ticks0)) -v hz="$(getconf CLK_TCK)" -v n="$ping_requests" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
hello_rps=$(rps "$work/hello")
redis_rps=$(awk '{for (i = 1; i <= NF; i++) if ($(i+1) == "requests") printf "%d", $i}' "$work/redis")
per_stream=$(result rss_per_stream_kib "$work/run")
per_stream_max=$(result rss_per_stream_kib "$work/run_max")
rss_max_mib=$(awk -v k="$(result rss_after_kib "$work/run_max")" 'BEGIN {printf "%.1f", k / 1024}')
d99=$(awk -v u="$(result delivery_p99_us "$work/run")" 'BEGIN {printf "%.2f", u / 1000}')
lost=$(( $(result deliveries_expected "$work/run") - $(result deliveries_received "$work/run") ))
stalls="$(result stalls "$work/run"), longest $(awk -v u="$(result stall_longest_us "$work/run")" 'BEGIN {printf "%.1f", u / 1000}') ms"
multi_rss_mib=$(awk -v k="$(result rss_after_kib "$work/multi")" 'BEGIN {printf "%.1f", k / 1024}')
multi_open_s=$(awk -v m="$(result open_ms "$work/multi")" 'BEGIN {printf "%.1f", m / 1000}')
multi_d99=$(awk -v u="$(result delivery_p99_us "$work/multi")" 'BEGIN {printf "%.2f", u / 1000}')
multi_lost=$(( $(result deliveries_expected "$work/multi") - $(result deliveries_received "$work/multi") ))
multi_repeated=$(result deliveries_repeated "$work/multi")
multi_probe_ms=$(result probe_ms "$work/multi")
check() { if awk "BEGIN {exit !($1)}"; then echo "yes"; else echo "NO"; fi; }

echo
echo "| figure | measured | target | met |"
echo "| --- | --- | --- | --- |"
echo "| streams held | $(result streams_open "$work/run") | $streams | $(check "$(result streams_open "$work/run") >= $streams") |"
echo "| delivery p99 at $rate pings/s | $d99 ms | <= 5 ms | $(check "$d99 <= 5") |"
echo "| machine stalls in that run (1 ms sleeps woken 10+ ms late) | $stalls | | |"
echo "| deliveries lost | $lost of $(result deliveries_expected "$work/run") | 0 | $(check "$lost == 0") |"
echo "| RSS per stream ($streams) | $per_stream KiB | <= 12 KiB | $(check "$per_stream <= 12") |"
echo "| RSS per stream ($streams_max) | $per_stream_max KiB | <= 12 KiB | $(check "$per_stream_max <= 12") |"
echo "| RSS with $streams_max streams | $rss_max_mib MiB | < 250 MiB | $(check "$rss_max_mib < 250") |"
echo "| streams of $multi_each users open ($(result watches "$work/multi") watches), time to open all | $(result streams_open "$work/multi") in $multi_open_s s | $multi_streams within 60 s | $(check "$(result streams_open "$work/multi") >= $multi_streams && $multi_open_s <= 60") |"
echo "| RSS with those streams | $multi_rss_mib MiB | <= 300 MiB | $(check "$multi_rss_mib <= 300") |"
echo "| their delivery p99 at $rate pings/s | $multi_d99 ms | <= 5 ms | $(check "$multi_d99 <= 5") |"
echo "| their deliveries lost, repeated | $multi_lost, $multi_repeated of $(result deliveries_expected "$work/multi") | 0, 0 | $(check "$multi_lost == 0 && $multi_repeated == 0") |"
echo "| new $multi_probe-user stream: all cached pings, under that load | $multi_probe_ms ms | <= 20 ms | $(check "$multi_probe_ms >= 0 && $multi_probe_ms <= 20") |"
echo "| pings/s, wrk -c32, median of 3 ($ping_runs) | $ping_rps | >= 35000 | $(check "$ping_rps >= 35000") |"
echo "| ping p99, wrk -c32, median of 3 | $ping_p99 ms | < 10 ms | $(check "$ping_p99 < 10") |"
echo "| heartbeat CPU per ping under wrk | $cpu_us_per_ping us | | |"
echo "| idle RSS | $((idle)) KiB | < 5120 KiB | $(check "$idle < 5120") |"
echo "| release binary | $size bytes | < 3000000 | $(check "$size < 3000000") |"
echo "| ready after spawn | $ready ms | <= 50 ms | $(check "$ready <= 50") |"
echo "| ceiling: Redis, script calls/s | $redis_rps | heartbeat at $(awk -v a="$ping_rps" -v b="$redis_rps" 'BEGIN {printf "%.0f%%", 100 * a / b}') | |"
echo "| ceiling: HTTP layer, requests/s | $hello_rps | heartbeat at $(awk -v a="$ping_rps" -v b="$hello_rps" 'BEGIN {printf "%.0f%%", 100 * a / b}') | |"
