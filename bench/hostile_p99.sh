#!/usr/bin/env bash
# Honest clients' latency with and without one hostile client (bench/hostile.py, one per
# finding of issue 11), against one release server: 1 shard pinned to CPU 1, tokens and the
# audit log on, default limits and timeouts. The honest load is the bundled loadgen (CPU 0):
# 50 connections, pipeline 1, get=90,put=10, 10,000 keys of 256 B, --fsync never, 10 s per
# row. The hostile client runs beside it on CPU 0 at nice 10 (so it takes CPU from the
# loadgen only when the loadgen leaves some).
# Usage: bench/hostile_p99.sh [SECONDS]   (build first: cargo build --release)
set -euo pipefail
seconds=${1:-10}
root="$(cd "$(dirname "$0")/.." && pwd)"
server_bin="$root/target/release/credshard"
loadgen="$root/target/release/credshard-loadgen"
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT

honest=cst_honest-loadgen-token-0123456789
reader=cst_hostile-reader-token-0123456789
admin=cst_bench-admin-token-0123456789
table() { printf '[[token]]\nid = "%s"\nsha256 = "%s"\nops = [%s]\n\n' "$1" "$(printf %s "$2" | sha256sum | cut -d' ' -f1)" "$3"; }
{ table honest "$honest" '"read", "write"'; table hostile-reader "$reader" '"read"'; table admin "$admin" '"admin"'; } \
    >"$dir/tokens.toml"
chmod 600 "$dir/tokens.toml"

taskset -c 1 "$server_bin" serve --listen 127.0.0.1:0 --shards 1 --fsync never --data-dir "$dir/data" \
    --tokens "$dir/tokens.toml" >"$dir/address" 2>"$dir/server.log" &
pid=$!
until grep -q "listening on" "$dir/address" 2>/dev/null; do sleep 0.1; done
address=$(sed -n 's/^listening on //p' "$dir/address")
head -c 49152 /dev/urandom | base64 -w0 >"$dir/big"  # 65,536 bytes
CREDSHARD_TOKEN=$honest "$server_bin" put big/secret --owner bench --scope bench --raw --addr "$address" <"$dir/big" >/dev/null

# The keys are written once, before any hostile client runs.
CREDSHARD_TOKEN=$honest taskset -c 0 "$loadgen" --target "credshard://$address" --threads 1 --connections 50 \
    --duration 1 --warmup 0 --keys 10000 --value-size 256 --mix get=100 >/dev/null

audit_bytes() { du -sb "$dir/data/audit" | cut -f1; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
stat_value() { CREDSHARD_TOKEN=$admin "$server_bin" stats --addr "$address" 2>/dev/null | awk -v name="$1" '$1 == name {print $2}'; }

printf '%-10s %10s %8s %8s %8s %8s %10s %10s  %s\n' row ops/s p50_us p99_us p999_us errors rss_MiB audit_MB hostile
run() {
  local row=$1 mode=$2 hostile_out="$dir/hostile.out" peak=0 audit_before hostile_pid=
  audit_before=$(audit_bytes)
  : >"$hostile_out"
  if [ "$mode" != none ]; then
    taskset -c 0 nice -n 10 python3 "$root/bench/hostile.py" "$mode" "$address" "$((seconds + 3))" "$reader" big/secret \
        >"$hostile_out" 2>&1 &
    hostile_pid=$!
    sleep 1
  fi
  CREDSHARD_TOKEN=$honest taskset -c 0 "$loadgen" --target "credshard://$address" --threads 1 --connections 50 \
      --pipeline 1 --duration "$seconds" --warmup 1 --keys 10000 --value-size 256 --mix get=90,put=10 \
      --no-preload --json "$dir/result.json" >/dev/null 2>"$dir/loadgen.err" &
  local loadgen_pid=$!
  while kill -0 "$loadgen_pid" 2>/dev/null; do
    local rss; rss=$(rss_kib); [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 0.2
  done
  wait "$loadgen_pid" || { cat "$dir/loadgen.err"; exit 1; }
  [ -z "$hostile_pid" ] || wait "$hostile_pid" || true
  python3 - "$dir/result.json" "$row" "$peak" "$(( $(audit_bytes) - audit_before ))" "$(cat "$hostile_out")" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
row, peak_kib, audit, hostile = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
kinds = r.get("errors_by_kind") or {}
kinds = " (" + ", ".join(f"{k} {v}" for k, v in kinds.items()) + ")" if kinds else ""
print(f"{row:<10} {r['ops_per_sec']:>10.0f} {r['p50_us']:>8} {r['p99_us']:>8} {r['p999_us']:>8} {r['errors']:>8} "
      f"{peak_kib / 1024:>10.0f} {audit / 1e6:>10.1f}  {hostile}{kinds}")
EOF
}

# Each hostile row follows a baseline row of its own: the machine drifts over a run.
for mode in audit unread bigreply bigframe; do
  run baseline none
  run "$mode" "$mode"
  sleep 3
done
for name in connections_timed_out connections_closed_refusals frames_rejected unauthorized_total audit_waits audit_events_dropped; do
  printf '%s %s\n' "$name" "$(stat_value "$name")"
done
