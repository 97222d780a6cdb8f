#!/usr/bin/env bash
# credshard builds against redis-server in one run: ROUNDS rounds (default 3), each starting
# redis-server (persistence off) and then each build (--shards 1 --fsync never) fresh on CPU 1,
# the loadgen on CPU 0: 50 connections, 100,000 keys of 256 B, pipeline P (default 1), mix MIX
# (default get=100), DURATION seconds (default 4) after a 1 s warm-up. Prints ops/s and
# latency per server; ratios are per round.
#
#   P=16 MIX=get=90,put=10 bash bench/ab_redis.sh [ROUNDS] [CREDSHARD_BINARY ...]
#       (build first: cargo build --release; default binary: this tree's release build)
set -euo pipefail
rounds="${1:-3}"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" ab_redis "${@:2}"
P="${P:-1}" MIX="${MIX:-get=100}" DURATION="${DURATION:-4}"

run() {  # run NAME: starts the server named (redis or a credshard binary), loads it, prints one line
    start_server "$1"
    local target=$TARGET
    taskset -c 0 "$L" --target "$target" --threads 1 --connections 50 --pipeline "$P" --duration "$DURATION" \
        --warmup 1 --keys 100000 --value-size 256 --mix "$MIX" --json "$TMP/result.json" >/dev/null 2>&1
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'round {sys.argv[2]} {sys.argv[3]} P$P $MIX: {r[\"ops_per_sec\"]:.0f} ops/s, p50 {r[\"p50_us\"]} us, p99 {r[\"p99_us\"]} us, errors {r[\"errors\"]}')" \
        "$TMP/result.json" "$round" "$1"
    stop_server
}

each_round "$rounds" run
