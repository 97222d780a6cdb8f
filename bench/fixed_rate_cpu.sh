#!/usr/bin/env bash
# Server CPU at a fixed load: redis-server (persistence off) and each credshard build
# (--shards 1 --fsync never) on CPU 1, the loadgen on CPU 0 sending GETs open loop at RATE per
# second (default 40000) on 50 connections at pipeline 1 (100,000 keys of 256 B) for 6 s; the
# server's user and system time is read from /proc/PID/stat over seconds 2-5. Prints CPU
# busy, CPU per operation and the loadgen's p50/p99 per server, ROUNDS rounds (default 2).
# Below saturation a server that spends more per operation queues sooner: this is what the
# open-loop p99 at half of peak (bench/open_loop.sh) is made of.
#
#   RATE=70000 bash bench/fixed_rate_cpu.sh [ROUNDS] [CREDSHARD_BINARY ...]
#       (build first: cargo build --release; default binary: this tree's release build)
set -euo pipefail
rounds="${1:-2}"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" fixed_rate_cpu "${@:2}"
RATE="${RATE:-40000}"

run() {  # run NAME: starts the server named, loads it at RATE, prints one line
    start_server "$1"
    local pid=$SERVER_PID
    taskset -c 0 "$L" --target "$TARGET" --threads 1 --connections 50 --pipeline 16 --duration 0.2 --warmup 0 \
        --keys 100000 --value-size 256 --mix get=100 >/dev/null 2>&1
    taskset -c 0 "$L" --target "$TARGET" --threads 1 --connections 50 --pipeline 1 --rate "$RATE" --duration 6 \
        --warmup 0 --keys 100000 --value-size 256 --mix get=100 --json "$TMP/result.json" >/dev/null 2>&1 &
    local loadgen=$!
    sleep 2
    local before after
    before=$(awk '{print $14, $15}' "/proc/$pid/stat")
    sleep 3
    after=$(awk '{print $14, $15}' "/proc/$pid/stat")
    wait "$loadgen"
    python3 - "$TMP/result.json" "$before" "$after" "$round" "$1" <<'PY'
import json, os, sys
result = json.load(open(sys.argv[1]))
hz = os.sysconf("SC_CLK_TCK")
before, after = (list(map(int, text.split())) for text in sys.argv[2:4])
user, system = ((after[i] - before[i]) / hz / 3 for i in (0, 1))
ops = result["ops_per_sec"]
print(f"round {sys.argv[4]} {sys.argv[5]}: {ops:.0f} ops/s, CPU {100 * (user + system):.0f}% "
      f"(user {100 * user:.0f}, system {100 * system:.0f}), {(user + system) / ops * 1e6:.1f} us per op, "
      f"p50 {result['p50_us']} us, p99 {result['p99_us']} us")
PY
    stop_server
}

each_round "$rounds" run
