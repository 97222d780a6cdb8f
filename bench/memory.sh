#!/usr/bin/env bash
# RSS of 1,000,000 credentials of 256 B against redis-server holding the same 1M values: each
# server alone on CPU 1 (credshard: one shard, --fsync never), filled by the loadgen's preload on
# CPU 0 (50 connections, pipeline 16), VmRSS two seconds after. ROUNDS rounds, the servers one
# after the other in each; other builds to compare as arguments (default: this tree's release
# build).
#
#   bash bench/memory.sh [CREDSHARD_BINARY ...]     (build first: cargo build --release)
set -euo pipefail
ROUNDS="${ROUNDS:-2}"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" memory "$@"

measure() {  # measure NAME: starts the server named (redis or a credshard binary), fills it, prints its RSS
    [ "$1" != redis ] || echo "round $round"
    start_server "$1"
    local pid=$SERVER_PID target=$TARGET
    taskset -c 0 "$L" --target "$target" --threads 1 --connections 50 --pipeline 16 --keys 1000000 --value-size 256 \
        --mix get=1 --duration 0.2 --warmup 0 >/dev/null 2>&1
    sleep 2
    echo "$1: $(awk '/VmRSS/ {printf "%d MB", $2 / 1000}' "/proc/$pid/status")"
    stop_server
}

each_round "$ROUNDS" measure
