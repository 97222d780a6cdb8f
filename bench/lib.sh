# Sourced by bench scripts that compare credshard builds given as arguments:
#   source "$(dirname "$0")/lib.sh" NAME "$@"
# Sets ROOT (the repository), L (the release loadgen), BUILDS (the arguments, or this tree's
# release build), TMP (a fresh temp dir named after NAME, removed on exit) and PIDS (every pid
# added is killed on exit); defines free_port, start_server, stop_server and each_round.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
L="$ROOT/target/release/credshard-loadgen"
BUILDS=("${@:2}")
[ ${#BUILDS[@]} -gt 0 ] || BUILDS=("$ROOT/target/release/credshard")
TMP="$(mktemp -d -t "$1.XXXXXX")"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server NAME: starts redis-server (NAME redis; persistence off) or the credshard binary
# NAME (one shard, --fsync never, its data dir $TMP/data emptied first) on CPU 1 on a free port,
# waits until it accepts connections, and sets SERVER_PID (added to PIDS) and TARGET (the
# loadgen's --target for it).
start_server() {
    local port
    port=$(free_port)
    rm -rf "$TMP/data"
    if [ "$1" = redis ]; then
        taskset -c 1 redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$TMP" \
            --logfile "$TMP/redis.log" --daemonize no &
        TARGET="redis://127.0.0.1:$port"
    else
        taskset -c 1 "$1" serve --listen "127.0.0.1:$port" --shards 1 --fsync never --data-dir "$TMP/data" >/dev/null 2>&1 &
        TARGET="credshard://127.0.0.1:$port"
    fi
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
}

# stop_server: stops the server start_server started last.
stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
}

# each_round ROUNDS FUNCTION: ROUNDS times, FUNCTION redis, then FUNCTION on each build in
# turn; `round` holds the round's number meanwhile.
each_round() {
    local build
    for round in $(seq "$1"); do
        "$2" redis
        for build in "${BUILDS[@]}"; do "$2" "$build"; done
    done
}
