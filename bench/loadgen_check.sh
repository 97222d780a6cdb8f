#!/usr/bin/env bash
# Does credshard-loadgen measure the server, not itself? Checks it against a tool we did not
# write (redis-benchmark) and against the server's own count (redis INFO), on one stock
# redis-server (persistence off) pinned on CPU 1, each client pinned on CPU 0:
#
# 1. Throughput, 50 connections, 256 B GETs of preloaded keys, pipeline 1 and 16: redis-benchmark
#    and the loadgen (--threads 1) in alternation, ROUNDS times each; for every run the server's
#    own rate (INFO instantaneous_ops_per_sec, sampled mid-run) beside the client's figure.
#    Passes when the loadgen's median is within ±15% of redis-benchmark's, or above it with
#    the server's own count agreeing with the loadgen's figure within 15% (the loadgen then
#    drives the server harder than redis-benchmark can, and what it reports is real).
# 2. Latency at low load: the loadgen open loop at 1,000 GET/s on one connection (latency from
#    the intended send times) beside redis-benchmark's closed loop on one connection. Passes
#    when the loadgen's p50 is within 1.5× of redis-benchmark's. The loadgen also reports how
#    late it sent.
#
#   bash bench/loadgen_check.sh            # writes the section into docs/performance.md
#   CHECK_OUT=FILE bash bench/loadgen_check.sh   # writes the section to FILE instead
#
# Exit status 0 when both checks pass, 1 when one fails. About 2 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
LOADGEN="$ROOT/target/release/credshard-loadgen"
ROUNDS="${ROUNDS:-3}"
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null && command -v redis-cli >/dev/null \
    || { echo "loadgen_check.sh: needs redis-server, redis-benchmark and redis-cli (apt-get install redis-server redis-tools)" >&2; exit 1; }
[ "${CHECK_SKIP_BUILD:-0}" = 1 ] || cargo build --release -q -p credshard-loadgen
TMP="$(mktemp -d -t loadgen-check.XXXXXX)"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
taskset -c 1 redis-server --bind 127.0.0.1 --port "$PORT" --save '' --appendonly no --daemonize no \
    --dir "$TMP" --logfile "$TMP/redis.log" &
REDIS_PID=$!
trap 'kill $REDIS_PID 2>/dev/null; wait $REDIS_PID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 100); do [ "$(redis-cli -p "$PORT" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done

# The server's own rate, sampled in the middle of a run that started just now.
server_rate() { sleep "$1"; redis-cli -p "$PORT" info stats | tr -d '\r' | sed -n 's/^instantaneous_ops_per_sec://p'; }
KEYS=100000
# Keys for both clients: redis-benchmark reads key:NNNNNNNNNNNN, the loadgen loadgen-N.
taskset -c 0 redis-benchmark -p "$PORT" -c 50 -P 16 -d 256 -r "$KEYS" -t set -n 1000000 -q >/dev/null 2>&1
taskset -c 0 "$LOADGEN" --target "redis://127.0.0.1:$PORT" --threads 1 --connections 50 --pipeline 16 \
    --keys "$KEYS" --value-size 256 --mix put=1 --duration 0.5 --warmup 0 >/dev/null 2>&1

RESULTS="$TMP/results.tsv"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for p in 1 16; do
        n=$(( p == 1 ? 300000 : 2000000 ))
        server_rate 2 >"$TMP/rate" &
        sampler=$!
        out=$(taskset -c 0 redis-benchmark -p "$PORT" -c 50 -P "$p" -d 256 -r "$KEYS" -t get -n "$n" -q 2>&1 | tr '\r' '\n')
        wait "$sampler"
        rb=$(grep -o 'GET: [0-9.]*' <<<"$out" | tail -1 | cut -d' ' -f2)
        printf 'throughput\t%s\tredis-benchmark\t%s\t%s\n' "$p" "$rb" "$(cat "$TMP/rate")" >>"$RESULTS"
        server_rate 2.5 >"$TMP/rate" &
        sampler=$!
        taskset -c 0 "$LOADGEN" --target "redis://127.0.0.1:$PORT" --threads 1 --connections 50 --pipeline "$p" \
            --keys "$KEYS" --value-size 256 --mix get=1 --no-preload --duration 3 --warmup 1 \
            --json "$TMP/lg.json" >/dev/null 2>&1
        wait "$sampler"
        lg=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops_per_sec"])' "$TMP/lg.json")
        printf 'throughput\t%s\tloadgen\t%s\t%s\n' "$p" "$lg" "$(cat "$TMP/rate")" >>"$RESULTS"
    done
    out=$(taskset -c 0 redis-benchmark -p "$PORT" -c 1 -P 1 -d 256 -r "$KEYS" -t get -n 20000 2>&1 | tr '\r' '\n')
    rb_p50=$(awk '/latency summary/{getline; getline; print $3; exit}' <<<"$out")
    printf 'latency\t1\tredis-benchmark\t%s\t\n' "$(python3 -c "print(round($rb_p50 * 1000))")" >>"$RESULTS"
    taskset -c 0 "$LOADGEN" --target "redis://127.0.0.1:$PORT" --threads 1 --connections 1 --pipeline 1 \
        --keys "$KEYS" --value-size 256 --mix get=1 --no-preload --duration 5 --warmup 1 --rate 1000 \
        --json "$TMP/lg.json" >/dev/null 2>&1
    python3 - "$TMP/lg.json" >>"$RESULTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
late = r["send_lateness"]
print(f"latency\t1\tloadgen\t{r['p50_us']}\tsent late p50 {late['p50_us']} µs, p99 {late['p99_us']} µs; loadgen p99 {r['p99_us']} µs")
PY
done

SECTION="$TMP/section.md"
STATUS=0
python3 - "$RESULTS" "$ROUNDS" "$(redis-server --version | grep -o 'v=[0-9.]*' | cut -d= -f2)" >"$SECTION" <<'PY' || STATUS=1
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rounds, version = sys.argv[2], sys.argv[3]
median = lambda values: statistics.median(values)
ok = True
out = []
out.append(f"redis-server {version}, persistence off, on CPU 1; each client on CPU 0; 100,000 preloaded keys of 256 B; "
           f"{rounds} alternating rounds, medians. \"server's own\" is redis's `instantaneous_ops_per_sec` sampled mid-run.\n")
out.append("| 50 connections, GET | redis-benchmark ops/s (server's own) | loadgen ops/s (server's own) | loadgen / redis-benchmark | verdict |")
out.append("|---|---|---|---|---|")
for p in ("1", "16"):
    rb = [(float(r[3]), float(r[4] or 0)) for r in rows if r[0] == "throughput" and r[1] == p and r[2] == "redis-benchmark"]
    lg = [(float(r[3]), float(r[4] or 0)) for r in rows if r[0] == "throughput" and r[1] == p and r[2] == "loadgen"]
    rb_ops, rb_server = median([a for a, _ in rb]), median([b for _, b in rb])
    lg_ops, lg_server = median([a for a, _ in lg]), median([b for _, b in lg])
    ratio = lg_ops / rb_ops
    server_agrees = abs(lg_server - lg_ops) <= 0.15 * lg_ops
    if 0.85 <= ratio <= 1.15:
        verdict = "agree within ±15%"
    elif ratio > 1.15 and server_agrees:
        verdict = "the loadgen drives the server harder; the server's own count agrees with it"
    else:
        verdict = "FAIL"
        ok = False
    out.append(f"| pipeline {p} | {rb_ops:,.0f} ({rb_server:,.0f}) | {lg_ops:,.0f} ({lg_server:,.0f}) | {ratio:.2f} | {verdict} |")
rb = median([float(r[3]) for r in rows if r[0] == "latency" and r[2] == "redis-benchmark"])
lg_rows = [r for r in rows if r[0] == "latency" and r[2] == "loadgen"]
lg = median([float(r[3]) for r in lg_rows])
ratio = lg / rb
verdict = "within 1.5×" if ratio <= 1.5 else "FAIL"
ok = ok and ratio <= 1.5
out.append("")
out.append("| one connection, GET | redis-benchmark closed loop p50 µs | loadgen open loop at 1,000/s p50 µs | ratio | verdict |")
out.append("|---|---|---|---|---|")
out.append(f"| pipeline 1 | {rb:.0f} | {lg:.0f} | {ratio:.2f} | {verdict} |")
out.append("")
out.append("The loadgen's own lateness in those open-loop runs: " + "; ".join(r[4] for r in lg_rows) + ".")
print("\n".join(out))
sys.exit(0 if ok else 1)
PY

python3 "$ROOT/bench/splice_section.py" loadgen_check.sh "$SECTION" ${CHECK_OUT:+"$CHECK_OUT"}
cat "$SECTION"
exit "$STATUS"
