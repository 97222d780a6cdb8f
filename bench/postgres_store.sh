#!/usr/bin/env bash
# The PostgreSQL store measured beside the embedded one, on this machine, in one run:
#   - GET of cached credentials (loadgen, 100% GET) against a --store instance and an embedded
#     one (--fsync always), same settings;
#   - PUT (loadgen, 100% PUT) against the --store instance, beside pgbench's own figure for
#     the same kind of statement (one single-row INSERT ... ON CONFLICT per transaction) on the
#     same database as the ceiling;
#   - A->B visibility: a write acknowledged by instance A, read on instance B (bench binary
#     `visibility`), idle and while a loadgen run writes on A;
#   - the bounded cache: GET against an instance whose --cache-capacity holds a tenth of the
#     keys, uniform (nearly every GET a miss read from the database) and zipf:0.99 (the hit
#     ratio CLOCK reaches, from the instance's STATS, beside the best any cache of that size
#     can do on that distribution: the probability mass of its hottest keys).
# The database is a private cluster with durable settings (fsync on, synchronous_commit on).
#
#   bash bench/postgres_store.sh            (builds release binaries first)
#   SKIP_BUILD=1 bash bench/postgres_store.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p credshard-engine -p credshard-loadgen -p credshard-bench --bins
BIN="$ROOT/target/release"
TMP="$(mktemp -d)"
chmod 755 "$TMP" # the postgres user must reach its cluster below it
export PGROOT="$TMP/pg" PGPORT=5434 PGFSYNC=on
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    .ci/postgres stop || true
    [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$TMP"
}
trap cleanup EXIT
.ci/postgres start
URL="host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres"
"$BIN/credshard" keygen --out "$TMP/master.key" >/dev/null

start() { # name port extra-args...
    local name=$1 port=$2
    shift 2
    "$BIN/credshard" serve --listen "127.0.0.1:$port" --data-dir "$TMP/$name" --key-file "$TMP/master.key" \
        --shards 1 "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    pids+=($!)
    for _ in $(seq 100); do grep -q "listening on" "$TMP/$name.out" 2>/dev/null && return; sleep 0.1; done
    echo "$name did not start:" >&2; cat "$TMP/$name.err" >&2; exit 1
}
loadgen() { # target mix json [extra loadgen args...]
    local target=$1 mix=$2 json=$3
    shift 3
    "$BIN/credshard-loadgen" --target "$target" --connections 50 --pipeline 1 --duration 5 --warmup 1 \
        --keys 10000 --value-size 256 --mix "$mix" --threads 1 --json "$json" "$@" >/dev/null
}
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
compare() { # mix: the same loadgen run against the store instance and the embedded one
    local op=${1%%=*}
    loadgen credshard://127.0.0.1:7501 "$1" "$TMP/$op-store.json"
    loadgen credshard://127.0.0.1:7503 "$1" "$TMP/$op-embedded.json"
    for run in "$op-store" "$op-embedded"; do
        echo "$run: $(field "$TMP/$run.json" ops_per_sec) ops/s, p50 $(field "$TMP/$run.json" p50_us) us, p99 $(field "$TMP/$run.json" p99_us) us"
    done
}

start a 7501 --store "$URL"
start b 7502 --store "$URL"
start embedded 7503 --fsync always

echo "== GET of cached credentials (50 connections, P1, 10,000 keys, 256 B)"
compare get=100

echo "== PUT (50 connections, P1)"
compare put=100
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
"$PGBIN/psql" -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c \
    "CREATE TABLE IF NOT EXISTS bench_upsert (id text PRIMARY KEY, version bigint, record bytea)"
cat >"$TMP/upsert.sql" <<'SQL'
\set key random(1, 10000)
INSERT INTO bench_upsert (id, version, record) VALUES ('k' || :key, 1, decode(repeat('ab', 400), 'hex'))
  ON CONFLICT (id) DO UPDATE SET version = bench_upsert.version + 1, record = EXCLUDED.record;
SQL
"$PGBIN/pgbench" -n -h 127.0.0.1 -p "$PGPORT" -U postgres -c 50 -j 1 -T 5 -M prepared -f "$TMP/upsert.sql" postgres \
    | grep -E "^tps|latency average"

echo "== A->B visibility"
"$BIN/visibility" 127.0.0.1:7501 127.0.0.1:7502 500
"$BIN/credshard-loadgen" --target credshard://127.0.0.1:7501 --connections 20 --duration 8 --warmup 0 \
    --keys 10000 --mix put=100 --threads 1 >/dev/null &
load=$!
sleep 1
echo -n "under a PUT load on A: "
"$BIN/visibility" 127.0.0.1:7501 127.0.0.1:7502 500
wait $load

echo "== the bounded cache: an instance with --cache-capacity 1000 (a tenth of the 10,000 keys)"
start c 7504 --store "$URL" --cache-capacity 1000
stat() { "$BIN/credshard" stats --addr 127.0.0.1:7504 | awk -v name="$1" '$1 == name { print $2 }'; }
for distribution in uniform zipf:0.99; do
    hits0=$(stat cache_hits) misses0=$(stat cache_misses) loads0=$(stat cache_loads)
    loadgen credshard://127.0.0.1:7504 get=100 "$TMP/cache-$distribution.json" --no-preload --distribution "$distribution"
    hits=$(( $(stat cache_hits) - hits0 )) misses=$(( $(stat cache_misses) - misses0 )) loads=$(( $(stat cache_loads) - loads0 ))
    run="$TMP/cache-$distribution.json"
    echo "GET $distribution: $(field "$run" ops_per_sec) ops/s, p50 $(field "$run" p50_us) us, p99 $(field "$run" p99_us) us;" \
        "hits $hits, misses $misses ($(python3 -c "print(f'{$hits / max(1, $hits + $misses):.3f}')") hit ratio), $loads queries"
done
python3 -c "
weights = [k ** -0.99 for k in range(1, 10001)]
print(f'best possible hit ratio of a 1,000-credential cache on zipf:0.99 over 10,000 keys: {sum(weights[:1000]) / sum(weights):.3f}')"
