#!/usr/bin/env bash
# Durable writes: credshard (--fsync always, its default; one shard, audit on) against
# redis-server (--appendonly yes --appendfsync always), the same loadgen, each server on CPU 1
# and the loadgen on CPU 0: pipeline 1, 50 connections, 100,000 preloaded keys of 256 B, 5 s
# runs of 100% PUT and of 90% GET / 10% PUT, ROUNDS alternating rounds (default 3).
#   bash bench/durable_writes.sh [ROUNDS]        (build first: cargo build --release)
#   C=/path/to/other/credshard bash bench/durable_writes.sh [ROUNDS]   (another build)
#   BUILDS="before=/tmp/credshard-old after=target/release/credshard" bash bench/durable_writes.sh [ROUNDS]
#       (several builds, each after Redis in every round)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
L="$ROOT/target/release/credshard-loadgen"
C="${C:-$ROOT/target/release/credshard}"
rounds=${1:-3}
for round in $(seq $rounds); do
  for server in redis ${BUILDS:-credshard=$C}; do
    dir=$(mktemp -d); port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ $server = redis ]; then
      taskset -c 1 redis-server --bind 127.0.0.1 --port $port --save '' --appendonly yes --appendfsync always --dir $dir --logfile $dir/log --daemonize no & pid=$!
      target=redis://127.0.0.1:$port
      for _ in $(seq 100); do [ "$(redis-cli -p $port ping 2>/dev/null)" = PONG ] && break; sleep 0.05; done
    else
      taskset -c 1 "${server#*=}" serve --shards 1 --listen 127.0.0.1:$port --data-dir $dir/data >/dev/null 2>&1 & pid=$!
      target=credshard://127.0.0.1:$port
      for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    fi
    for mix in put=100 get=90,put=10; do
      taskset -c 0 $L --target $target --threads 1 --connections 50 --pipeline 1 --duration 5 --warmup 1 --keys 100000 --value-size 256 --mix $mix --json $dir/r.json >/dev/null 2>&1
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'round $round ${server%%=*} $mix: {r[\"ops_per_sec\"]:.0f} ops/s p50 {r[\"p50_us\"]} p99 {r[\"p99_us\"]} errors {r[\"errors\"]}')" $dir/r.json
    done
    kill $pid; wait $pid 2>/dev/null || true; rm -rf $dir
  done
done
