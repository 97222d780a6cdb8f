#!/usr/bin/env bash
# A/B of two credshard builds on the GET path: pinned (server CPU 1, loadgen CPU 0), one shard,
# --fsync never, 50 connections, pipeline 1 and 16, 256 B values, rounds alternating builds.
# MIX (default get=100) and DURATION (seconds, default 5) change the load: MIX=put=100 for the
# write path, which also prints the size of each run's logs and snapshots.
# Usage: bench/ab_get.sh OLD_BINARY NEW_BINARY [ROUNDS]
# (build the old one with e.g. `git worktree add /tmp/old REV && cd /tmp/old &&
#  CARGO_TARGET_DIR=/tmp/oldtarget cargo build --release --bin credshard`).
set -euo pipefail
old=$1 new=$2 rounds=${3:-2}
mix=${MIX:-get=100} duration=${DURATION:-5}
loadgen="$(dirname "$0")/../target/release/credshard-loadgen"
for round in $(seq "$rounds"); do
  for which in old new; do
    binary=$old; [ "$which" = new ] && binary=$new
    dir=$(mktemp -d)
    taskset -c 1 "$binary" serve --listen 127.0.0.1:0 --shards 1 --fsync never --data-dir "$dir/data" \
        >"$dir/address" 2>/dev/null &
    pid=$!
    until grep -q "listening on" "$dir/address" 2>/dev/null; do sleep 0.1; done
    address=$(sed -n 's/^listening on //p' "$dir/address")
    for pipeline in 1 16; do
      taskset -c 0 "$loadgen" --target "credshard://$address" --threads 1 --connections 50 --pipeline "$pipeline" \
          --duration "$duration" --warmup 1 --keys 100000 --value-size 256 --mix "$mix" --json "$dir/result.json" >/dev/null
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f'round $round $which P$pipeline: {r[\"ops_per_sec\"]:.0f} ops/s, p99 {r[\"p99_us\"]} us')" "$dir/result.json"
    done
    echo "  $which logs and snapshots: $(du -sm "$dir/data" | cut -f1) MB"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
  done
done
