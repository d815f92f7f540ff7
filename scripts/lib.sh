# Shared by scripts/bench.sh and scripts/scaling.sh (sourced, not run): a scratch directory
# and every process started, ended on exit; free ports; bounded waits; a private
# redis-server (sets redis_port); heartbeats on it (start_heartbeat sets port and hb_pid).
# The caller sets hb (the binary) and key_prefix before starting heartbeats.

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Ports below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 and up
# here), so no outgoing connection can hold the one we pick; a start that still loses the
# race is retried on another port.
free_port() { # a loopback port nothing listens on
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
  done
}

# wait_for WHAT PID SECONDS COMMAND...: runs COMMAND every 50 ms until it succeeds; fails
# when PID has exited or SECONDS have passed, so no wait can hang the run.
wait_for() {
  local what=$1 pid=$2 deadline=$((SECONDS + $3))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "${0##*/}: $what exited" >&2; return 1; fi
    if [ "$SECONDS" -ge "$deadline" ]; then echo "${0##*/}: $what not ready in time" >&2; return 1; fi
    sleep 0.05
  done
}

redis_ping() { [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; }
start_redis() { # sets redis_port; a port lost to a race is retried on another
  local try redis_pid
  for try in 1 2 3 4 5; do
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$work" --logfile "$work/redis.log" &
    redis_pid=$!
    if wait_for redis-server "$redis_pid" 10 redis_ping "$redis_port"; then
      pids+=("$redis_pid")
      return
    fi
    kill "$redis_pid" 2>/dev/null || true
  done
  tail -5 "$work/redis.log" >&2
  exit 1
}

healthy() { curl -sf --max-time 2 "http://127.0.0.1:$1/healthz"; }
start_heartbeat() { # sets port and hb_pid; a port lost to a race is retried on another
  local try
  for try in 1 2 3 4 5; do
    port=$(free_port)
    LISTEN="127.0.0.1:$port" REDIS="127.0.0.1:$redis_port" KEY_PREFIX="$key_prefix" LOG_LEVEL=warn \
      "$hb" 2>>"$work/heartbeat.log" &
    hb_pid=$!
    pids+=("$hb_pid")
    wait_for heartbeat "$hb_pid" 10 healthy "$port" && return
    kill "$hb_pid" 2>/dev/null || true
  done
  tail -5 "$work/heartbeat.log" >&2
  exit 1
}
