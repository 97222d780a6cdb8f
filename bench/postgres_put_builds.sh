#!/usr/bin/env bash
# PUT through the database, several credshard builds side by side in one run: each build in
# turn on a fresh database of one private cluster (fsync on), instances A and B (B follows A's
# changes), a 3 s fill then 5 s of 100% PUT on A (loadgen 50 connections, P1, 10,000 keys of
# 256 B); pgbench's one-row upsert (50 clients) on the same cluster once per round as the
# ceiling. Prints ops/s and the machine's busy CPU time per write (both CPUs, µs).
#
#   bash bench/postgres_put_builds.sh NAME=PATH/TO/credshard [NAME=PATH ...]
#   ROUNDS=3 (default)
# Build the loadgen first (cargo build --release -p credshard-loadgen).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ $# -ge 1 ] || { echo "usage: $0 NAME=BINARY [NAME=BINARY ...]" >&2; exit 2; }
BIN="$ROOT/target/release"
TMP="$(mktemp -d)"
chmod 755 "$TMP" # the postgres user must reach its cluster below it
export PGROOT="$TMP/pg" PGPORT=5434 PGFSYNC=on
pids=()
stop_instances() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done; done
    pids=()
}
cleanup() { stop_instances; .ci/postgres stop >/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
.ci/postgres start >/dev/null
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
psql() { "$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres "$@"; }
"$BIN/credshard" keygen --out "$TMP/master.key" >/dev/null
psql -c "CREATE TABLE bench_upsert (id text PRIMARY KEY, version bigint, record bytea)"
cat >"$TMP/upsert.sql" <<'SQL'
\set key random(1, 10000)
INSERT INTO bench_upsert (id, version, record) VALUES ('k' || :key, 1, decode(repeat('ab', 400), 'hex'))
  ON CONFLICT (id) DO UPDATE SET version = bench_upsert.version + 1, record = EXCLUDED.record;
SQL
start() { # name port binary database
    "$3" serve --listen "127.0.0.1:$2" --data-dir "$TMP/$1" --key-file "$TMP/master.key" --shards 1 \
        --store "host=127.0.0.1 port=$PGPORT user=postgres dbname=$4" >"$TMP/$1.out" 2>"$TMP/$1.err" &
    pids+=($!)
    for _ in $(seq 100); do grep -q "listening on" "$TMP/$1.out" 2>/dev/null && return; sleep 0.1; done
    echo "$1 did not start:" >&2; cat "$TMP/$1.err" >&2; exit 1
}
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; } # jiffies, all CPUs
put() { # seconds [loadgen args...]
    local seconds=$1
    shift
    "$BIN/credshard-loadgen" --target credshard://127.0.0.1:7601 --connections 50 --pipeline 1 --duration "$seconds" \
        --warmup 0 --keys 10000 --value-size 256 --mix put=100 --threads 1 "$@" >/dev/null
}
one() { # name binary round
    local db="b_$1_$3" before after
    psql -c "CREATE DATABASE \"$db\""
    start "a_$db" 7601 "$2" "$db"
    start "b_$db" 7602 "$2" "$db"
    put 3
    before=$(busy)
    put 5 --no-preload --json "$TMP/run.json"
    after=$(busy)
    stop_instances
    python3 -c "import json, os; r = json.load(open('$TMP/run.json'))['ops_per_sec']
print(f'{r:.0f} ops/s {($after - $before) * 1e6 / os.sysconf(\"SC_CLK_TCK\") / (r * 5):.0f} µs/write')"
}
for round in $(seq "${ROUNDS:-3}"); do
    tps=$("$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PGPORT" -U postgres -c 50 -j 1 -T 5 -M prepared -f "$TMP/upsert.sql" postgres |
        awk '/^tps/ { print int($3) }')
    line="round $round: pgbench $tps tps"
    for build in "$@"; do
        result=$(one "${build%%=*}" "${build#*=}" "$round")
        line="$line | ${build%%=*} $result ($(python3 -c "print(f'{${result%% *} / $tps:.2f}')") of pgbench)"
    done
    echo "$line"
done
