#!/usr/bin/env bash
# The streams curve: the same load at more and more streams in one heartbeat process.
#   scripts/bench.sh --curve [STREAMS...]      (this script; 1000 10000 30000 100000 by default)
# For each count N, two runs on a fresh heartbeat on Redis (STORE=memory for REDIS=memory):
#   single: N streams over N/10 users (10 watchers each), 1,000 pings/s for SECS s (20)
#   multi:  N streams of 10 users each over N users, the same pings
# and for each: the time to open them all, RSS and RSS per stream, machine memory per
# stream (MemAvailable before and after: heartbeat's, the kernel's and the load's own
# sockets), delivery p50/p99/max, deliveries lost and repeated, heartbeat's CPU per
# delivery, and how long SIGTERM takes to end every stream and the process.
#
# Client sockets are spread over loopback source addresses (127.0.0.2 and on: about 28,000
# ephemeral ports each). Each process needs N + 1,000 open files and the machine N + 1,000
# threads and 4 maps a thread: the script raises kernel.pid_max, kernel.threads-max and
# vm.max_map_count as root when they are lower, puts them back on exit, and skips (saying
# why) a count this shell's open-files limit cannot reach.
set -euo pipefail
cd "$(dirname "$0")/.."

counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1000 10000 30000 100000)
secs=${SECS:-20}
cargo build --release --locked -p heartbeat -p heartbeat-bench >&2
hb=target/release/heartbeat
bench=target/release/heartbeat-bench
key_prefix=bench:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Kernel settings raised for the run, put back by the trap.
restore=()
put_back() {
  local setting
  for setting in "${restore[@]}"; do sysctl -q -w "$setting" >/dev/null || echo "curve: could not put back $setting" >&2; done
  cleanup
}
trap put_back EXIT
raise() { # raise NAME AT_LEAST
  local now
  now=$(sysctl -n "$1")
  [ "$now" -ge "$2" ] && return
  if sysctl -q -w "$1=$2" >/dev/null 2>&1; then
    # Only the value found before the first raise is put back.
    printf '%s\n' "${restore[@]}" | grep -q "^$1=" || restore+=("$1=$now")
    echo "curve: raised $1 from $now to $2 (put back on exit)"
  else
    echo "curve: $1 is $now, below the $2 needed, and cannot be raised here (not root?)"
  fi
}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
files=$(ulimit -n)

if [ "${STORE:-redis}" = memory ]; then redis_url=memory; else start_redis; fi

rows=()
run_one() { # run_one N SHAPE
  local n=$1 shape=$2 args out began took
  if [ $((n + 1000)) -gt "$files" ]; then
    rows+=("| $n | $shape | skipped: needs $((n + 1000)) open files a process; the hard limit here is $(ulimit -Hn) (raising it needs CAP_SYS_RESOURCE: ulimit -Hn, systemd LimitNOFILE=) | | | | | | | | |")
    echo "curve: $n streams skipped: open files limited to $files here"
    return
  fi
  raise kernel.pid_max $((n * 2 + 32768))
  raise kernel.threads-max $((n * 2 + 32768))
  raise vm.max_map_count $((n * 4 + 65536))
  case $shape in
    single) args=(--users $((n / 10 > 0 ? n / 10 : 1))) ;;
    multi) args=(--users "$n" --users-per-stream 10) ;;
  esac
  start_heartbeat
  out="$work/curve-$n-$shape"
  "$bench" run --addr "127.0.0.1:$port" --pid "$hb_pid" --streams "$n" "${args[@]}" \
    --sources $((n / 10000 + 1)) --rate 1000 --seconds "$secs" --terminate >"$out" 2>&1 || true
  wait "$hb_pid" 2>/dev/null || true
  grep -E '^(streams|server|machine|delivery latency|deliveries|SIGTERM)' "$out" | sed "s/^/$n $shape: /"
  r() { sed -n "s/^result $1=//p" "$out" | tail -1; }
  ms() { awk -v u="$1" 'BEGIN {if (u == "") print "-"; else printf "%.2f", u / 1000}'; }
  local expected received lost
  expected=$(r deliveries_expected); received=$(r deliveries_received)
  lost=$(( ${expected:-0} - ${received:-0} ))
  rows+=("| $n | $shape | $(r streams_open) in $(ms "$(r open_ms)") s | $(awk -v k="$(r rss_after_kib)" 'BEGIN {printf "%.0f", k / 1024}') MiB, $(r rss_per_stream_kib) KiB a stream | $(r machine_kib_per_stream) KiB | $(ms "$(r delivery_p50_us)") / $(ms "$(r delivery_p99_us)") / $(ms "$(r delivery_max_us)") ms | $lost, $(r deliveries_repeated) of $(r deliveries_expected) | $(r server_cpu_us_per_delivery) us | $(r term_last_closed_ms) / $(r term_exited_ms) ms | $(r stalls) |")
}

for n in "${counts[@]}"; do
  for shape in single multi; do run_one "$n" "$shape"; done
done

echo
echo "| streams | shape | open | heartbeat RSS | machine memory a stream | delivery p50 / p99 / max | lost, repeated | heartbeat CPU a delivery | SIGTERM: last stream closed / process exited | machine stalls |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
