#!/usr/bin/env bash
# heartbeat against nchan 1.3.6 (../shared/peers/nchan-conf.sh), side by side in one run:
#   scripts/bench.sh --peer nchan [ROUNDS]     (this script; ROUNDS 3 by default)
# Two workloads, each in both store modes (memory, and one Redis shared by nothing else):
#   fan-out:    10,000 streams over 1,000 users, 1,000 pings/s for SECS s (20 by default)
#   many users: 10,000 streams of 100 users each over 100,000 users, the same pings
# The two servers are interleaved (the first of each round alternates), each run on a fresh
# server, with the same heartbeat-bench load: heartbeat's dialect for heartbeat, nchan's
# (GET /sub/<user>, GET /multi/<u1>,..., POST /pub/<user> with heartbeat's event as the body)
# for nchan. Prints every run, then the medians and each figure as heartbeat / nchan.
# Needs nginx-light and libnginx-mod-nchan (apt-get install -y nginx-light libnginx-mod-nchan).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
secs=${SECS:-20}
peer_conf=${NCHAN_CONF:-../shared/peers/nchan-conf.sh}
[ -f "$peer_conf" ] || { echo "bench-peer: $peer_conf not found (NCHAN_CONF=...)"; exit 1; }
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
  echo "bench-peer: nchan not installed (apt-get install -y nginx-light libnginx-mod-nchan)"; exit 1; }
cargo build --release --locked -p heartbeat -p heartbeat-bench >&2
hb=target/release/heartbeat
bench=target/release/heartbeat-bench
key_prefix=bench:
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ulimit -n "$(ulimit -Hn)"
start_redis
redis_port_shared=$redis_port

# start_nchan MODE: nginx with nchan on a free port (sets port, nchan_pid, server_pid: the
# worker, whose RSS and CPU are measured).
start_nchan() {
  local dir="$work/nchan" redis_arg=""
  [ "$1" = redis ] && redis_arg=$redis_port_shared
  rm -rf "$dir"
  port=$(free_port)
  bash "$peer_conf" "$dir" "$port" $redis_arg >/dev/null
  # A stream of 100 users is a /multi/ id of about 1,800 bytes: past nchan's default
  # nchan_max_channel_id_length (1,024), which answers 403. Its documented remedy:
  sed -i 's|nchan_channel_id_split_delimiter ",";|&\n      nchan_max_channel_id_length 8192;|' "$dir/nginx.conf"
  nginx -p "$dir" -c nginx.conf 2>>"$work/nchan.log" &
  nchan_pid=$!
  pids+=("$nchan_pid")
  nchan_up() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$1/pub/up" -d up; }
  wait_for nchan "$nchan_pid" 10 nchan_up "$port"
  server_pid=$(pgrep -P "$nchan_pid" | head -1)
}

# run_one SERVER MODE WORKLOAD: one run on a fresh server; its output in $work/SERVER-MODE-WORKLOAD-N.
runs=0
run_one() {
  local server=$1 mode=$2 workload=$3 args out
  case $workload in
    fanout) args=(--streams 10000 --users 1000) ;;
    many) args=(--streams 10000 --users 100000 --users-per-stream 100) ;;
  esac
  if [ "$server" = heartbeat ]; then
    if [ "$mode" = memory ]; then redis_url=memory; else redis_url="127.0.0.1:$redis_port_shared"; fi
    start_heartbeat
    server_pid=$hb_pid
    args+=(--dialect heartbeat)
  else
    start_nchan "$mode"
    args+=(--dialect nchan)
  fi
  runs=$((runs + 1))
  out="$work/$server-$mode-$workload-$runs"
  "$bench" run --addr "127.0.0.1:$port" --pid "$server_pid" "${args[@]}" --rate 1000 --seconds "$secs" >"$out" 2>&1 || true
  echo "$server $mode $workload: $(grep -E '^delivery latency' "$out" || tail -1 "$out")"
  if [ "$server" = heartbeat ]; then kill -TERM "$hb_pid"; wait "$hb_pid" 2>/dev/null || true
  else kill -TERM "$nchan_pid"; wait "$nchan_pid" 2>/dev/null || true; fi
  echo "$out" >>"$work/runs-$server-$mode-$workload"
}

for mode in memory redis; do
  for workload in fanout many; do
    for round in $(seq "$rounds"); do
      if [ $((round % 2)) = 1 ]; then order="heartbeat nchan"; else order="nchan heartbeat"; fi
      for server in $order; do run_one "$server" "$mode" "$workload"; done
    done
  done
done

result() { sed -n "s/^result $1=//p" "$2" | tail -1; }
# median KEY SERVER MODE WORKLOAD: the median over the rounds (the lower middle for an even count).
median() {
  local f values=()
  while read -r f; do values+=("$(result "$1" "$f")"); done <"$work/runs-$2-$3-$4"
  printf '%s\n' "${values[@]}" | { grep . || true; } | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "-"}'
}
all() {
  local f values=()
  while read -r f; do values+=("$(result "$1" "$f")"); done <"$work/runs-$2-$3-$4"
  local IFS=/; echo "${values[*]}"
}
ms() { awk -v u="$1" 'BEGIN {if (u == "-" || u == "") print "-"; else printf "%.2f", u / 1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b}'; }
lost() {
  local f total=0
  while read -r f; do
    total=$((total + $(result deliveries_expected "$f") - $(result deliveries_received "$f") + $(result deliveries_repeated "$f")))
  done <"$work/runs-$2-$3-$4"
  echo "$total"
}

echo
echo "Medians of $rounds rounds (every run's figure after it), heartbeat / nchan:"
echo
echo "| store | workload | figure | heartbeat | nchan | heartbeat / nchan |"
echo "| --- | --- | --- | --- | --- | --- |"
for mode in memory redis; do
  for workload in fanout many; do
    for key in delivery_p50_us delivery_p99_us delivery_max_us; do
      h=$(median "$key" heartbeat "$mode" "$workload"); n=$(median "$key" nchan "$mode" "$workload")
      echo "| $mode | $workload | ${key%_us} ms | $(ms "$h") ($(all "$key" heartbeat "$mode" "$workload")) | $(ms "$n") ($(all "$key" nchan "$mode" "$workload")) | $(ratio "$h" "$n") |"
    done
    for key in rss_per_stream_kib machine_kib_per_stream server_cpu_us_per_delivery open_ms; do
      h=$(median "$key" heartbeat "$mode" "$workload"); n=$(median "$key" nchan "$mode" "$workload")
      echo "| $mode | $workload | $key | $h ($(all "$key" heartbeat "$mode" "$workload")) | $n ($(all "$key" nchan "$mode" "$workload")) | $(ratio "$h" "$n") |"
    done
    echo "| $mode | $workload | deliveries lost or repeated, all rounds | $(lost x heartbeat "$mode" "$workload") | $(lost x nchan "$mode" "$workload") | |"
  done
done
