#!/usr/bin/env bash
# A/B of two credshard builds on 100% PUT: pinned (server CPU 1, loadgen CPU 0), one shard,
# --fsync never, 50 connections, pipeline 16 and 1, 100,000 keys of 256 B, 8 s each, rounds
# alternating builds; prints each run and the size of the data dir's logs and snapshots.
# Usage: bench/ab_put.sh OLD_BINARY NEW_BINARY [ROUNDS]   (build the old one as bench/ab_get.sh says)
set -euo pipefail
old=$1 new=$2 rounds=${3:-2}
loadgen="$(dirname "$0")/../target/release/credshard-loadgen"
for round in $(seq "$rounds"); do
  for which in old new; do
    binary=$old; [ "$which" = new ] && binary=$new
    dir=$(mktemp -d)
    taskset -c 1 "$binary" serve --listen 127.0.0.1:0 --shards 1 --fsync never --data-dir "$dir/data" >"$dir/address" 2>/dev/null &
    pid=$!
    until grep -q "listening on" "$dir/address" 2>/dev/null; do sleep 0.1; done
    address=$(sed -n 's/^listening on //p' "$dir/address")
    for pipeline in 16 1; do
      taskset -c 0 "$loadgen" --target "credshard://$address" --threads 1 --connections 50 --pipeline "$pipeline" \
          --duration 8 --warmup 1 --keys 100000 --value-size 256 --mix put=100 --json "$dir/result.json" >/dev/null
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'round $round $which P$pipeline: {r[\"ops_per_sec\"]:.0f} ops/s, p99 {r[\"p99_us\"]} us')" "$dir/result.json"
    done
    echo "  $which snapshots: $(ls -la $dir/data/wal-1 | grep -c snapshot) files, $(du -sm $dir/data/wal-1 | cut -f1) MB"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
