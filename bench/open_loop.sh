#!/usr/bin/env bash
# Latency at half of peak, open loop, with and without 10,000 idle connections: credshard (its
# defaults, audit on, --fsync never, one shard) and redis-server (persistence off), each alone
# on CPU 1, the loadgen and the idle connections on CPU 0.
#
# For each server: its closed-loop peak (GET, 50 connections, pipeline 1, 100,000 preloaded
# keys of 256 B); then the loadgen's open loop at half that rate (50 connections, up to 4 in
# flight each, latency from the intended send times), RUNS runs; then 10,000 connections opened
# and left idle (a Python script on CPU 0) and the same open loop again.
#
#   bash bench/open_loop.sh          (build first: cargo build --release; about 2 minutes)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
L="$ROOT/target/release/credshard-loadgen"
C="$ROOT/target/release/credshard"
RUNS="${RUNS:-2}"
IDLE="${IDLE:-10000}"
ulimit -n "$(ulimit -Hn)"  # the idle connections need IDLE descriptors on each side
TMP="$(mktemp -d -t open-loop.XXXXXX)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Opens IDLE connections to port $1 and holds them until killed; prints "idle N" once open.
hold_idle() {
    taskset -c 0 python3 - "$1" "$IDLE" <<'PY' &
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    held.append(s)
print(f"idle {len(held)}", flush=True)
time.sleep(3600)
PY
    PIDS+=($!)
}

run() {  # run NAME TARGET RATE: one open-loop run, one line of figures
    taskset -c 0 "$L" --target "$2" --threads 1 --connections 50 --pipeline 4 --keys 100000 --no-preload \
        --mix get=1 --duration 5 --warmup 1 --rate "$3" --json "$TMP/r.json" >/dev/null 2>&1
    python3 - "$TMP/r.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
late = r["send_lateness"]
print(f"| {sys.argv[2]} | {r['p50_us']} | {r['p90_us']} | {r['p99_us']} | {r['p999_us']} | {late['p99_us']} | {r['errors']} |")
PY
}

echo "| server, idle connections | p50 µs | p90 µs | p99 µs | p99.9 µs | loadgen sent late, p99 µs | errors |"
echo "|---|---|---|---|---|---|---|"
for server in credshard redis; do
    port=$(free_port)
    if [ "$server" = credshard ]; then
        taskset -c 1 "$C" serve --listen "127.0.0.1:$port" --shards 1 --fsync never --idle-timeout-ms 600000 \
            --connections-max 20000 --data-dir "$TMP/data" >/dev/null 2>&1 &
        target="credshard://127.0.0.1:$port"
    else
        taskset -c 1 redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --maxclients 20000 \
            --dir "$TMP" --logfile "$TMP/redis.log" --daemonize no &
        target="redis://127.0.0.1:$port"
    fi
    PIDS+=($!)
    server_pid=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    # Preload, then the closed-loop peak.
    taskset -c 0 "$L" --target "$target" --threads 1 --connections 50 --pipeline 1 --keys 100000 --value-size 256 \
        --mix get=1 --duration 5 --warmup 1 --json "$TMP/peak.json" >/dev/null 2>&1
    peak=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$TMP/peak.json")
    rate=$((peak / 2))
    echo "<!-- $server: closed-loop peak $peak ops/s; open loop at $rate req/s -->"
    for _ in $(seq "$RUNS"); do run "$server (peak $peak/s, at $rate/s), 0" "$target" "$rate"; done
    hold_idle "$port" >"$TMP/idle.out"
    idle_pid=$!
    for _ in $(seq 600); do grep -q "^idle" "$TMP/idle.out" 2>/dev/null && break; sleep 0.1; done
    for _ in $(seq "$RUNS"); do run "$server (peak $peak/s, at $rate/s), $IDLE" "$target" "$rate"; done
    kill "$idle_pid" "$server_pid" 2>/dev/null || true
    wait "$idle_pid" "$server_pid" 2>/dev/null || true
done
