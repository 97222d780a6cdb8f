#!/usr/bin/env bash
# WATCH fan-out: what watchers cost the writers. One credshard shard on CPU 1 (--fsync always,
# its default, audit on), the loadgen and its watchers on CPU 0: 50 connections of 100% PUT,
# pipeline 1, 10,000 preloaded keys of 256 B, 5 s runs, with 0 watchers, 10 watchers of every
# change, 1,000 watchers of one key each (watcher i: key i), and one watcher that never reads
# (`credshard watch | sleep`: the pipe fills, then its socket, and the server's watcher falls
# behind). ROUNDS rounds (default 3), the cases interleaved within each round.
#   bash bench/watch_fanout.sh [ROUNDS]          (build first: cargo build --release)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
L="$ROOT/target/release/credshard-loadgen"
C="$ROOT/target/release/credshard"
rounds=${1:-3}
for round in $(seq $rounds); do
  for case in none all10 key1000 stalled; do
    dir=$(mktemp -d); port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    taskset -c 1 $C serve --shards 1 --listen 127.0.0.1:$port --data-dir $dir/data >/dev/null 2>&1 & pid=$!
    for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
    watch_args=(); stalled=""
    case $case in
      all10) watch_args=(--watchers 10 --watch-scope all) ;;
      key1000) watch_args=(--watchers 1000 --watch-scope key) ;;
      stalled)
        CREDSHARD_ADDR=127.0.0.1:$port taskset -c 0 bash -c "$C watch | sleep 600" & stalled=$!
        sleep 0.5 ;;
    esac
    taskset -c 0 $L --target credshard://127.0.0.1:$port --threads 1 --connections 50 --pipeline 1 \
      --duration 5 --warmup 1 --keys 10000 --value-size 256 --mix put=100 --json $dir/r.json \
      "${watch_args[@]}" > $dir/out.txt 2>&1 || { cat $dir/out.txt; exit 1; }
    watched=$(grep '^watchers:' $dir/out.txt || true)
    behind=$($C stats --addr 127.0.0.1:$port 2>/dev/null | awk '$1=="watchers_behind"{print $2}')
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'round $round $case: PUT {r[\"ops_per_sec\"]:.0f}/s p50 {r[\"p50_us\"]} p99 {r[\"p99_us\"]} errors {r[\"errors\"]}; watchers_behind $behind; ' + sys.argv[2])" $dir/r.json "$watched"
    [ -n "$stalled" ] && { pkill -P $stalled 2>/dev/null || true; kill $stalled 2>/dev/null || true; wait $stalled 2>/dev/null || true; }
    kill $pid; wait $pid 2>/dev/null || true; rm -rf $dir
  done
done
