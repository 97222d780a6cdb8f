#!/usr/bin/env bash
# The group commit over time: 100% PUT at pipeline 1, 50 connections, 100,000 preloaded keys of
# 256 B, against one credshard build at a time (one shard, --fsync always, audit on, on CPU 1;
# the loadgen on CPU 0). Every 0.25 s it reads the server's /metrics and prints the writes
# committed per second, the average fdatasync of the log, and the snapshot bytes finished in
# that quarter second; then a summary line per build (the loadgen's ops/s, the average fsync,
# writes per commit). Extra `serve` flags in SERVE_FLAGS (e.g. "--compact-log-bytes 4000000000"
# for a run without snapshots); DURATION seconds per run (default 12).
#
#   bash bench/commit_timeline.sh [CREDSHARD_BINARY ...]     (build first: cargo build --release)
set -euo pipefail
DURATION="${DURATION:-12}"
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh" commit-timeline "$@"

for build in "${BUILDS[@]}"; do
    rm -rf "$TMP/data" "$TMP"/m.* "$TMP/r.json"
    port=$(free_port); metrics=$(free_port)
    # shellcheck disable=SC2086 # SERVE_FLAGS is a list of flags
    taskset -c 1 "$build" serve --shards 1 --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$metrics" \
        --data-dir "$TMP/data" ${SERVE_FLAGS:-} >"$TMP/serve.log" 2>&1 &
    server=$!; PIDS+=("$server")
    for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    taskset -c 0 "$L" --target "credshard://127.0.0.1:$port" --threads 1 --connections 50 --pipeline 1 \
        --duration "$DURATION" --warmup 1 --keys 100000 --value-size 256 --mix put=100 --json "$TMP/r.json" >/dev/null 2>&1 &
    loadgen=$!
    samples=$((DURATION * 4))
    for i in $(seq "$samples"); do curl -s "127.0.0.1:$metrics/metrics" >"$TMP/m.$i" || true; sleep 0.25; done
    wait "$loadgen"
    echo "== $build ${SERVE_FLAGS:-}"
    python3 - "$TMP" "$samples" <<'PY'
import json, os, re, sys
directory, samples = sys.argv[1], int(sys.argv[2])
def load(path):
    values = {}
    for line in open(path):
        match = re.match(r'(\w+)(\{[^}]*\})?\s+(\S+)$', line.strip())
        if match and not line.startswith('#') and not match.group(1).endswith('_bucket'):
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
    return values
series = [load(os.path.join(directory, f'm.{i}')) for i in range(1, samples + 1)]
for i in range(1, samples):
    delta = lambda name: series[i].get(name, 0) - series[i - 1].get(name, 0)
    syncs = delta('credshard_log_fsync_duration_seconds_count')
    print(f"{i * 0.25:6.2f} s  writes/s {delta('credshard_log_batch_writes_sum') * 4:7.0f}  "
          f"fsync avg {delta('credshard_log_fsync_duration_seconds_sum') / max(syncs, 1) * 1e6:5.0f} us  "
          f"snapshot MB {delta('credshard_snapshot_written_bytes_total') / 1e6:4.0f}")
first, last = series[0], series[-1]
delta = lambda name: last.get(name, 0) - first.get(name, 0)
syncs = delta('credshard_log_fsync_duration_seconds_count')
batches = delta('credshard_log_batch_writes_count')
report = json.load(open(os.path.join(directory, 'r.json')))
print(f"summary: {report['ops_per_sec']:.0f} ops/s (p50 {report['p50_us']} us, p99 {report['p99_us']} us), "
      f"fsync avg {delta('credshard_log_fsync_duration_seconds_sum') / max(syncs, 1) * 1e6:.0f} us, "
      f"{delta('credshard_log_batch_writes_sum') / max(batches, 1):.1f} writes per commit, "
      f"{delta('credshard_snapshots_written_total'):.0f} snapshots")
PY
    kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
done
