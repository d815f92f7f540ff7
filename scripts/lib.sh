# Shared by scripts/bench.sh and scripts/scaling.sh (sourced, not run): a scratch directory
# and every process started, ended on exit; free ports; bounded waits; a private
# redis-server (sets redis_port) or a Redis Cluster of three masters (start_cluster sets
# cluster_ports and redis_url); heartbeats on it (start_heartbeat sets port and hb_pid).
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
start_redis() { # [ARGS...]: sets redis_port; a port lost to a race is retried on another
  local try redis_pid dir
  for try in 1 2 3 4 5; do
    redis_port=$(free_port)
    dir="$work/redis-$redis_port"
    mkdir -p "$dir"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
      --dir "$dir" --logfile "$work/redis.log" "$@" &
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

# Three cluster-enabled masters joined by redis-cli (no replicas); sets cluster_ports and
# redis_url. Each node also takes its port + 10000 (the cluster bus); a node that cannot
# bind it exits, and start_redis tries another port.
start_cluster() {
  local addrs=() n
  cluster_ports=()
  for n in 1 2 3; do
    start_redis --cluster-enabled yes --cluster-node-timeout 2000 --cluster-config-file nodes.conf
    cluster_ports+=("$redis_port")
    addrs+=("127.0.0.1:$redis_port")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$work/cluster.log"
  cluster_ok() { redis-cli -p "$1" cluster info | grep -q cluster_state:ok; }
  for n in "${cluster_ports[@]}"; do wait_for "cluster node $n" "${pids[-1]}" 20 cluster_ok "$n"; done
  redis_url="cluster://127.0.0.1:${cluster_ports[0]}"
}

healthy() { curl -sf --max-time 2 "http://127.0.0.1:$1/healthz"; }
start_heartbeat() { # sets port and hb_pid; a port lost to a race is retried on another
  local try
  for try in 1 2 3 4 5; do
    port=$(free_port)
    # A benchmark's devices ping far faster than a phone: the limit is kept on, at its
    # highest, so its cost is measured while it refuses nothing.
    LISTEN="127.0.0.1:$port" REDIS="${redis_url:-127.0.0.1:$redis_port}" KEY_PREFIX="$key_prefix" LOG_LEVEL=warn \
      MAX_PINGS_PER_MINUTE="${MAX_PINGS_PER_MINUTE:-60000}" "$hb" 2>>"$work/heartbeat.log" &
    hb_pid=$!
    pids+=("$hb_pid")
    wait_for heartbeat "$hb_pid" 10 healthy "$port" && return
    kill "$hb_pid" 2>/dev/null || true
  done
  tail -5 "$work/heartbeat.log" >&2
  exit 1
}
