#!/usr/bin/env bash
# redis-benchmark, Redis's own tool, against credshard's RESP listener and against
# redis-server, with the same settings: each server pinned on CPU 1 (credshard --shards 1),
# redis-benchmark on CPU 0; 50 connections, 256-byte values, 100,000 random keys,
# `-t set,get`, pipeline 1 and 16; ROUNDS alternating rounds, medians of the figures
# redis-benchmark prints (--csv). Durability matched in two pairings:
#
#   fsync:      redis-server --appendonly yes --appendfsync always   credshard --fsync always (its default)
#   page cache: redis-server --appendonly yes --appendfsync no       credshard --fsync never
#
# credshard runs as in production otherwise (audit log on, every secret encrypted).
#
#   bash bench/resp_benchmark.sh                 # writes the section into docs/performance.md
#   RESP_OUT=FILE bash bench/resp_benchmark.sh   # writes it to FILE instead
#
# About 4 minutes with ROUNDS=3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CREDSHARD="$ROOT/target/release/credshard"
ROUNDS="${ROUNDS:-3}"
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null \
    || { echo "resp_benchmark.sh: needs redis-server and redis-tools (apt-get install redis-server redis-tools)" >&2; exit 1; }
[ "${RESP_SKIP_BUILD:-0}" = 1 ] || cargo build --release -q -p credshard-engine --bin credshard
TMP="$(mktemp -d -t resp-benchmark.XXXXXX)"
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    SERVER_PID=""
}
trap 'stop_server; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_ping() { for _ in $(seq 200); do [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return; sleep 0.05; done; echo "no PONG on $1" >&2; exit 1; }

# start_server redis|credshard fsync|pagecache: starts it on a fresh dir; sets PORT.
start_server() {
    PORT=$(free_port)
    rm -rf "$TMP/dir" && mkdir -p "$TMP/dir"
    if [ "$1" = redis ]; then
        local fsync=always
        [ "$2" = pagecache ] && fsync=no
        taskset -c 1 redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly yes \
            --appendfsync "$fsync" --dir "$TMP/dir" --logfile "$TMP/dir/redis.log" --daemonize no &
    else
        local fsync=always
        [ "$2" = pagecache ] && fsync=never
        taskset -c 1 "$CREDSHARD" serve --shards 1 --listen 127.0.0.1:0 --resp-listen "127.0.0.1:$PORT" \
            --data-dir "$TMP/dir/data" --fsync "$fsync" >/dev/null 2>"$TMP/dir/credshard.log" &
    fi
    SERVER_PID=$!
    wait_ping "$PORT"
}

RESULTS="$TMP/results.csv"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for durability in fsync pagecache; do
        for server in redis credshard; do
            start_server "$server" "$durability"
            for p in 1 16; do
                n=$(( p == 1 ? 200000 : 1000000 ))
                [ "$durability" = fsync ] && [ "$p" = 1 ] && n=60000
                taskset -c 0 redis-benchmark -p "$PORT" -c 50 -P "$p" -d 256 -r 100000 -t set,get -n "$n" --csv \
                    2>"$TMP/err" | tail -n +2 | sed "s/^/$round,$durability,$server,$p,/" >>"$RESULTS"
                if grep -Eq 'ERROR|WARNING' "$TMP/err"; then echo "redis-benchmark against $server: $(cat "$TMP/err")" >&2; exit 1; fi
            done
            stop_server
        done
    done
done

SECTION="$TMP/section.md"
python3 - "$RESULTS" "$ROUNDS" "$(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)" >"$SECTION" <<'PY'
import csv, statistics, sys
rounds, version = sys.argv[2], sys.argv[3]
rows = list(csv.reader(open(sys.argv[1])))
# round, durability, server, pipeline, test, rps, avg, min, p50, p95, p99, max
def median(durability, server, p, test, column):
    values = [float(r[column]) for r in rows if r[1:5] == [durability, server, p, test]]
    return statistics.median(values)
out = [f"redis-server {version} and credshard (`--shards 1`, audit on), each on CPU 1; redis-benchmark on CPU 0: "
       f"`-c 50 -d 256 -r 100000 -t set,get`; {rounds} alternating rounds, medians of redis-benchmark's own figures.\n",
       "| durability | pipeline | op | redis-server ops/s | credshard ops/s | credshard / redis | p99 ms redis | p99 ms credshard |",
       "|---|---|---|---|---|---|---|---|"]
names = {"fsync": "fsync every write (`appendfsync always` / `--fsync always`)",
         "pagecache": "page cache (`appendfsync no` / `--fsync never`)"}
for durability in ("fsync", "pagecache"):
    for p in ("1", "16"):
        for test in ("SET", "GET"):
            redis, ours = median(durability, "redis", p, test, 5), median(durability, "credshard", p, test, 5)
            redis_p99, ours_p99 = median(durability, "redis", p, test, 10), median(durability, "credshard", p, test, 10)
            out.append(f"| {names[durability]} | {p} | {test} | {redis:,.0f} | {ours:,.0f} | {ours / redis:.2f} | {redis_p99:.3f} | {ours_p99:.3f} |")
print("\n".join(out))
PY

python3 "$ROOT/bench/splice_section.py" resp_benchmark.sh "$SECTION" ${RESP_OUT:+"$RESP_OUT"}
cat "$SECTION"
