#!/usr/bin/env bash
# Closed-loop GET peak with and without 10,000 idle connections, for two credshard builds in
# alternating rounds: each server alone on CPU 1 (one shard, --fsync never), the loadgen and a
# Python script holding the idle connections on CPU 0; 50 connections, 100,000 keys of 256 B.
# Prints each run's ops/s and p99, and the idle/none ratio per build.
#
#   bash bench/idle_peak.sh OLD_BINARY NEW_BINARY [ROUNDS]    (P=16 for pipeline 16)
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
L="$ROOT/target/release/credshard-loadgen"
old=$1 new=$2 rounds=${3:-2}
ulimit -n "$(ulimit -Hn)"  # 10,000 descriptors on each side
one() { # binary label
    local port tmp spid ipid none idle
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    tmp=$(mktemp -d)
    taskset -c 1 "$1" serve --listen "127.0.0.1:$port" --shards 1 --fsync never --idle-timeout-ms 600000 \
        --connections-max 20000 --data-dir "$tmp/data" >/dev/null 2>"$tmp/err" &
    spid=$!
    for _ in $(seq 50); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
    peak() { # extra loadgen args
        taskset -c 0 "$L" --target "credshard://127.0.0.1:$port" --threads 1 --connections 50 --pipeline "${P:-1}" \
            --keys 100000 --value-size 256 --mix get=1 --duration 5 --warmup 1 --json "$tmp/r.json" "$@" >/dev/null 2>&1
        python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(int(r['ops_per_sec']), r['p99_us'])" "$tmp/r.json"
    }
    none=$(peak)
    taskset -c 0 python3 - "$port" 10000 >"$tmp/idle.out" <<'PY' &
import socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    s = socket.socket(); s.connect(("127.0.0.1", port)); held.append(s)
print(f"idle {len(held)}", flush=True)
time.sleep(3600)
PY
    ipid=$!
    for _ in $(seq 600); do grep -q "^idle" "$tmp/idle.out" 2>/dev/null && break; sleep 0.1; done
    idle=$(peak --no-preload)
    kill "$ipid" "$spid"; wait "$spid" 2>/dev/null; rm -rf "$tmp"
    python3 -c "import sys; n, np99, i, ip99 = sys.argv[2:6]; print(f'{sys.argv[1]} P${P:-1}: no idle {n} ops/s (p99 {np99} us), 10,000 idle {i} ops/s (p99 {ip99} us): {int(i)/int(n):.2f}x')" \
        "$2" $none $idle
}
for round in $(seq "$rounds"); do
    one "$old" "round $round old"
    one "$new" "round $round new"
done
