#!/usr/bin/env bash
# What access control costs: the GET-heavy loadgen row (get=90,put=10, pipeline 1, 50
# connections, 256-byte values, 100,000 keys, --fsync never) against credshard with the audit
# log off and on, over plain TCP and over TLS, with a token on every connection; redis-server
# (persistence off) runs the same loadgen row for the ratio. Pinned: server on CPU 1
# (--shards 1), loadgen on CPU 0 (--threads 1). The configurations run in turns, ROUNDS times,
# so that slow drift of the machine spreads over all of them; the table gives each one's median.
# Throughput on this shared 2-CPU machine moves by up to 25% from run to run, so each run also
# reports the server's CPU time per operation (user + system, from /proc/PID/stat, over the
# measured run only: keys are preloaded by an earlier short run). Time the server spends
# descheduled does not count there, which makes it the steadier measure of what a feature costs.
#
#   bash bench/security_cost.sh            # prints a markdown table
#
# Environment knobs: ROUNDS (default 5), DURATION (seconds, default 6), KEEP_TMP=1.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-6}"
SERVER_BIN="$ROOT/target/release/credshard"
LOADGEN_BIN="$ROOT/target/release/credshard-loadgen"
cargo build --release -q -p credshard-engine -p credshard-loadgen

TMP="$(mktemp -d /tmp/credshard-security-cost.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ "${KEEP_TMP:-0}" != 1 ]; then rm -rf "$TMP"; else echo "kept $TMP" >&2; fi
}
trap cleanup EXIT

# A self-signed certificate for localhost (CA:FALSE: rustls refuses a CA as an end entity).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
TOKEN_OUTPUT="$("$SERVER_BIN" token new --id loadgen --ops '*')"
export CREDSHARD_TOKEN="$(sed -n 's/^token: //p' <<<"$TOKEN_OUTPUT")"
sed -n '/^\[\[token\]\]/,$p' <<<"$TOKEN_OUTPUT" >"$TMP/tokens.toml"
"$SERVER_BIN" keygen --out "$TMP/master.key" >/dev/null

CONFIGS=(plain-audit-off plain-audit-on tls-audit-off tls-audit-on redis)
WARMUP=1
LOADGEN_ARGS=(--threads 1 --connections 50 --pipeline 1 --mix get=90,put=10 --value-size 256
    --keys 100000 --warmup "$WARMUP")

start_credshard() { # $1 = on|off, $2 = plain|tls; sets SERVER_PID and PORT
    local data="$TMP/data-$RANDOM"
    local tls=()
    if [ "$2" = tls ]; then tls=(--tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem"); fi
    taskset -c 1 "$SERVER_BIN" serve --listen 127.0.0.1:0 --shards 1 --fsync never --data-dir "$data" \
        --key-file "$TMP/master.key" --tokens "$TMP/tokens.toml" --audit "$1" "${tls[@]}" \
        >"$TMP/server.out" 2>"$TMP/server.err" &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if grep -q '^listening on' "$TMP/server.out" 2>/dev/null; then break; fi
        sleep 0.05
    done
    PORT="$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$TMP/server.out")"
}

cpu_ticks() { # user + system clock ticks of process $1
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

stop_server() {
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
}

run_one() { # $1 = config, $2 = round; prints "ops/s p99_us cpu_us_per_op errors"
    local config="$1" json="$TMP/$1-$2.json" target
    case "$config" in
        redis)
            taskset -c 1 redis-server --port 6397 --bind 127.0.0.1 --save '' --appendonly no \
                --dir "$TMP" >/dev/null 2>&1 &
            SERVER_PID=$!
            for _ in $(seq 100); do redis-cli -p 6397 ping >/dev/null 2>&1 && break; sleep 0.05; done
            target=redis://127.0.0.1:6397 ;;
        plain-audit-*) start_credshard "${config##*-}" plain; target="credshard://127.0.0.1:$PORT" ;;
        tls-audit-*) start_credshard "${config##*-}" tls; target="credshards://localhost:$PORT" ;;
    esac
    local tls=()
    if [[ "$config" == tls-* ]]; then tls=(--tls-ca "$TMP/cert.pem"); fi
    # Preload every key (and warm up), then measure with --no-preload.
    taskset -c 0 "$LOADGEN_BIN" --target "$target" "${LOADGEN_ARGS[@]}" "${tls[@]}" --duration 1 \
        >/dev/null 2>"$TMP/$config-$2-preload.err" || { echo failed; stop_server; return; }
    local before after
    before="$(cpu_ticks "$SERVER_PID")"
    taskset -c 0 "$LOADGEN_BIN" --target "$target" "${LOADGEN_ARGS[@]}" "${tls[@]}" --no-preload \
        --duration "$DURATION" --json "$json" >/dev/null 2>"$TMP/$config-$2.err" || { echo failed; stop_server; return; }
    after="$(cpu_ticks "$SERVER_PID")"
    stop_server
    python3 -c "
import json, os, sys
r = json.load(open(sys.argv[1]))
# ops over the measured window, CPU over the whole run (warm-up included): scale to the window.
ops_run = r['ops_per_sec'] * (r['duration_s'] + float(sys.argv[4]))
cpu_us = (int(sys.argv[3]) - int(sys.argv[2])) / os.sysconf('SC_CLK_TCK') * 1e6
print(round(r['ops_per_sec']), r['p99_us'], round(cpu_us / ops_run, 2), r['errors'])
" "$json" "$before" "$after" "$WARMUP"
}

declare -A RESULTS
for round in $(seq "$ROUNDS"); do
    for config in "${CONFIGS[@]}"; do
        result="$(run_one "$config" "$round")"
        RESULTS["$config"]+="$result;"
        echo "round $round $config: $result" >&2
    done
done

median() { # "ops p99 errors;..." field index -> median
    tr ';' '\n' <<<"$1" | awk -v f="$2" 'NF { print $f }' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}
# Each configuration against plain/audit off of the same round, then the median over rounds:
# pairing within a round cancels most of the machine's drift between rounds.
python3 - "$ROUNDS" "${CONFIGS[@]}" <<PY
import statistics, sys
rounds, configs = int(sys.argv[1]), sys.argv[2:]
raw = {$(for config in "${CONFIGS[@]}"; do printf '"%s": "%s", ' "$config" "${RESULTS[$config]}"; done)}
runs = {c: [tuple(map(float, r.split())) for r in raw[c].split(";") if r.strip() and r.strip() != "failed"] for c in configs}
base = "plain-audit-off"
med = lambda values: statistics.median(values) if values else float("nan")
print(f"| configuration | ops/s | p99 µs | server CPU µs/op | CPU/op vs {base} (paired) | ops/s vs {base} (paired) | ops/s vs redis-server (paired) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for c in configs:
    n = min(len(runs[c]), len(runs[base]), len(runs["redis"]))
    ops, p99, cpu = (med([r[i] for r in runs[c]]) for i in range(3))
    cpu_ratio = med([runs[c][k][2] / runs[base][k][2] for k in range(n)])
    ops_ratio = med([runs[c][k][0] / runs[base][k][0] for k in range(n)])
    redis_ratio = med([runs[c][k][0] / runs["redis"][k][0] for k in range(n)])
    print(f"| {c} | {ops:,.0f} | {p99:.0f} | {cpu:.2f} | {cpu_ratio:.2f} | {ops_ratio:.2f} | {redis_ratio:.2f} |")
print()
print(f"Medians of {rounds} rounds; ratios are medians of the per-round ratios. Every run (ops/s p99_us cpu_us_per_op errors):")
for c in configs:
    print(f"- {c}: " + "; ".join(" ".join(f"{v:g}" for v in r) for r in runs[c]))
PY
